"""What a plugin registers besides methods, metrics, prompt sets, models, suites and protocols:
the default run (what `bench run` makes when no model is named) and commands of the command line.

Both register like every other entry (bench/registry.py): in code, or through the entry-point
groups `bench.defaults` and `bench.commands` (the entry point's value is "module:attr" naming a
`DefaultRun` or a `Command`). Nothing is built in: with no plugin registering a default run,
`bench run` asks for a model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence

from bench.registry import Registry
from bench.spec import SpecError


@dataclass(frozen=True)
class DefaultRun:
    """The model `bench run` uses when none is named; with it, the prompt sets (and images per
    prompt kind, RunSpec.samples_by_kind) a run of that model gets when none are named."""
    model: str
    prompt_sets: tuple[str, ...]
    samples_by_kind: tuple[tuple[str, int], ...] = ()  # sorted (kind, images per prompt) pairs


@dataclass(frozen=True)
class Command:
    """`bench NAME ARGS...`: `main` ("module:function", imported when the command runs) receives
    ARGS as a list of strings and returns the exit code (None: 0)."""
    help: str
    main: str
    epilog: str = ""  # examples, shown by `bench NAME --help`


DEFAULT_RUNS: Registry[DefaultRun] = Registry("default run", "bench.defaults", "bench.plugins", (
    "a bench.plugins.DefaultRun", lambda obj: isinstance(obj, DefaultRun)))
COMMANDS: Registry[Command] = Registry("command", "bench.commands", "bench.plugins", (
    "a bench.plugins.Command", lambda obj: isinstance(obj, Command)))


def default_model() -> str:
    """The registered default run's model; SpecError when none or several are registered."""
    names = DEFAULT_RUNS.names()
    if len(names) != 1:
        found = (f"several plugins register a default run ({', '.join(names)})" if names
                 else "no installed plugin registers a default run")
        raise SpecError(f"no model named, and {found}: pass --model (an alias such as sd15, a "
                        f"registered model from `bench list models`, a hub id or a local "
                        f"diffusers directory)")
    return DEFAULT_RUNS.get(names[0]).model


def default_run(model: str) -> DefaultRun | None:
    """The default run registered for `model` (its prompt sets and per-kind counts), or None."""
    runs = (DEFAULT_RUNS.get(n) for n in DEFAULT_RUNS.names())
    return next((r for r in runs if r.model == model), None)


def run_command(name: str, argv: Sequence[str]) -> int:
    """Run the registered command `name` with its arguments."""
    module, _, attr = COMMANDS.get(name).main.partition(":")
    return getattr(importlib.import_module(module), attr)(list(argv)) or 0
