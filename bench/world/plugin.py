"""What the world registers besides its model, prompt sets, scorers and suites, through the same
entry points (pyproject.toml): the default run, the `bench world` command and the skin-tone
scorer's confusion counts measured on its renders. Kept free of torch imports: the command line
lists plugin commands on every start.
"""
from __future__ import annotations

from typing import Sequence

from bench.metrics.base import Calibration
from bench.plugins import Command, DefaultRun
from bench.spec import SpecError

# The main job, `bench run --methods all`: both prompt sets, sized so it separates its known
# effects within 10 minutes on 2 CPU cores; parity is measured on the neutral prompts, so they
# get the images (results/world/README.md).
DEFAULT_RUN = DefaultRun(
    model="world", prompt_sets=("world-occupations", "world-hazard"),
    samples_by_kind=(("world-occupations.group", 2), ("world-occupations.neutral", 24)))

COMMAND = Command(help="build the synthetic-portrait world", main="bench.world.plugin:command",
                  epilog="examples:\n  bench world build\n  bench world build --quick --out "
                         "/tmp/world\n  bench world build --help")

# Skin-group confusion counts of `skin_tone:fallback=center` on 600 renders at 32 px (rows true
# light/medium/dark, columns predicted): `python -m bench.world.skin_tone 600 32` (docs/metrics.md).
SKIN_TONE_32PX = Calibration(
    scorer="skin_tone", attribute="skin", groups=("light", "medium", "dark"),
    counts=((185, 1, 0), (0, 240, 1), (0, 0, 173)),
    source="600 renders of the synthetic world at 32 px, fallback=center "
           "(python -m bench.world.skin_tone 600 32)")

ACTIONS = ("build",)


def command(argv: Sequence[str]) -> int:
    """`bench world ACTION [flags]`: the action's own command line gets the flags."""
    if not argv or argv[0] not in ACTIONS:
        given = f"'{argv[0]}' is not an action" if argv else "no action given"
        raise SpecError(f"bench world: {given}; use one of {', '.join(ACTIONS)} (e.g. `bench "
                        f"world build --help`)")
    from bench.world.build import main

    return main(list(argv[1:])) or 0
