"""What plugins register besides methods, metrics, prompt sets and models (bench/plugins.py,
bench.metrics.base.CALIBRATIONS): the default run, commands, measured confusion counts; and
that nothing outside the world's package names it."""
import ast
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench import planning
from bench.cli import main, parser, spec_from_args
from bench.manifest import Manifest
from bench.metrics.base import CALIBRATIONS, Calibration, calibration
from bench.plugins import COMMANDS, DEFAULT_RUNS, DefaultRun
from bench.registry import RegistryTypeError, UnknownNameError
from bench.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "results" / "world" / "bundle.zip"


@pytest.fixture
def registries(monkeypatch):
    """Plugins loaded, then the entries restored after the test."""
    for reg in (DEFAULT_RUNS, COMMANDS, CALIBRATIONS):
        reg.names()
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))


# ------------------------------------------------------------------------------ default run

def test_bench_run_with_no_model_is_the_reference_run():
    """`bench run --methods all` resolves to the spec results/world/bundle.zip recorded (its
    --out aside) and loads the prompt sets it hashed: the world's default run is the old one."""
    with zipfile.ZipFile(BUNDLE) as z:
        recorded = Manifest.from_json(z.read("manifest.json"), str(BUNDLE))
    args = parser().parse_args(["run", "--methods", "all", "--out", recorded.spec.out])
    spec = spec_from_args(args)
    assert spec.model == "" and spec.samples_by_kind is None  # nothing named: the plugin's
    resolved = planning.resolve_defaults(spec)
    assert resolved.to_dict() == recorded.spec.to_dict()
    assert resolved.model == "world"
    assert dict(resolved.samples_by_kind) == {"world-occupations.group": 2,
                                              "world-occupations.neutral": 24}
    sets = planning.load_prompt_sets(resolved)
    assert [(s.name, s.content_hash()) for s in sets] == [
        (r.name, r.sha256) for r in recorded.prompt_sets]


def test_default_counts_only_with_the_default_sets():
    assert planning.resolve_defaults(RunSpec(model="world", prompt_sets=("world-hazard",))
                                     ).samples_by_kind == ()
    assert planning.resolve_defaults(RunSpec(model="sd15")).samples_by_kind == ()
    assert [s.name for s in planning.load_prompt_sets(RunSpec(model="tiny-random", limit=1))] == [
        "occupations"]  # no default run for the model: the fallback set


def test_no_default_run_registered_is_one_line(registries, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(DEFAULT_RUNS, "_entries", {})
    assert main(["run", "--methods", "baseline", "--dry-run", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no installed plugin registers a default run" in err
    assert "pass --model" in err
    # a named model needs none
    assert planning.resolve_defaults(RunSpec(model="tiny-random")).model == "tiny-random"


def test_several_default_runs_ask_for_a_model(registries, capsys, tmp_path):
    DEFAULT_RUNS.register("other", DefaultRun("tiny-random", ("occupations",)))
    assert main(["generate", "--prompt", "a doctor", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "several plugins register a default run (other, world)" in err and "--model" in err


def test_bench_list_plugins_shows_each_registered_entry(registries, monkeypatch, capsys):
    DEFAULT_RUNS.register("other", DefaultRun("tiny-random", ("occupations",)))
    monkeypatch.setattr(COMMANDS, "_entries", {})
    assert main(["list", "plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    runs = out[1:out.index("commands (bench NAME ...):")]
    assert "  other: model tiny-random, prompt sets occupations" in runs
    assert len(runs) == len(DEFAULT_RUNS.names())
    assert out[out.index("commands (bench NAME ...):") + 1] == "  (none)"
    cal = CALIBRATIONS.get("world-32px")
    assert f"  world-32px: skin_tone skin ({', '.join(cal.groups)}); {cal.source}" in out

def test_registries_refuse_what_they_do_not_hold(registries):
    with pytest.raises(RegistryTypeError, match="a bench.plugins.DefaultRun"):
        DEFAULT_RUNS.register("x", ("tiny-random",))
    with pytest.raises(RegistryTypeError, match="a bench.plugins.Command"):
        COMMANDS.register("x", print)
    with pytest.raises(RegistryTypeError, match="a bench.metrics.base.Calibration"):
        CALIBRATIONS.register("x", ((1, 0), (0, 1)))


# --------------------------------------------------------------------------------- commands

def test_plugin_command_through_entry_point(install_plugin, capsys):
    install_plugin(
        "hello_plugin",
        "from bench.plugins import Command\n"
        "COMMAND = Command(help='say hello', main='hello_plugin:main', epilog='example: bench hello x')\n"
        "def main(argv):\n"
        "    print('hello', argv)\n"
        "    return 3\n",
        "[bench.commands]\nhello = hello_plugin:COMMAND\nrun = hello_plugin:COMMAND\n", COMMANDS)
    assert main(["hello", "a", "--flag"]) == 3
    assert capsys.readouterr().out == "hello ['a', '--flag']\n"
    assert main(["--help"]) == 0
    assert "say hello" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0  # a built-in keeps its name
    assert "--methods" in capsys.readouterr().out


def test_the_world_command(capsys):
    assert "world" in COMMANDS.names()
    assert main(["world"]) == 2
    assert capsys.readouterr().err == ("bench: error: bench world: no action given; use one of "
                                       "build (e.g. `bench world build --help`)\n")
    assert main(["world", "train"]) == 2
    assert "'train' is not an action" in capsys.readouterr().err
    assert main(["world", "build", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: bench world build")


# ----------------------------------------------------------------------------- calibrations

def test_skin_tone_calibration_is_the_registered_counts(registries):
    from bench.metrics.skin_tone import SkinTone

    by_hand = np.array([[185 / 186, 1 / 186, 0], [0, 240 / 241, 1 / 241], [0, 0, 1]])
    np.testing.assert_allclose(SkinTone().confusion("skin"), by_hand, rtol=1e-12)
    assert SkinTone(calibration="world-32px").calibration is CALIBRATIONS.get("world-32px")
    assert SkinTone(calibration="none").confusion("skin") is None
    assert SkinTone().confusion("gender") is None
    CALIBRATIONS.register("mine", Calibration("skin_tone", "skin", ("light", "medium", "dark"),
                                              ((8, 2, 0), (0, 10, 0), (0, 5, 5)), "a test"))
    with pytest.raises(ValueError, match=r"several calibrations .* \(mine, world-32px\)"):
        SkinTone()
    np.testing.assert_allclose(SkinTone(calibration="mine").confusion("skin"),
                               [[.8, .2, 0], [0, 1, 0], [0, .5, .5]])


def test_a_calibration_of_something_else_is_refused(registries):
    from bench.metrics.skin_tone import SkinTone

    CALIBRATIONS.register("fairface-race", Calibration("fairface", "race", ("a", "b"),
                                                       ((1, 0), (0, 1)), "a test"))
    CALIBRATIONS.register("reordered", Calibration("skin_tone", "skin", ("dark", "medium", "light"),
                                                   ((1, 0, 0), (0, 1, 0), (0, 0, 1)), "a test"))
    with pytest.raises(ValueError, match="measures fairface's race labels, not skin_tone's skin"):
        SkinTone(calibration="fairface-race")
    with pytest.raises(ValueError, match="orders its groups"):
        SkinTone(calibration="reordered")
    with pytest.raises(UnknownNameError, match="unknown calibration 'nope'"):
        SkinTone(calibration="nope")
    assert calibration("fairface", "race") is CALIBRATIONS.get("fairface-race")
    assert calibration("fairface", "gender") is None


def test_a_bad_calibration_fails_before_generation(tmp_path, capsys):
    assert main(["run", "--model", "tiny-random", "--metrics", "skin_tone:calibration=nope",
                 "--dry-run", "--out", str(tmp_path / "r")]) == 2
    assert "unknown calibration 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------ nothing else names the world

def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)}


def names_and_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every identifier (names, attributes, definitions, arguments, keywords,
    imported modules and names) and every string constant that is not a docstring. Comments
    and docstrings are prose, not names."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        texts: list[str | None] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts = [node.value]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword):
            texts = [node.arg]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname]
        elif isinstance(node, ast.ImportFrom):
            texts = [node.module]
        out += [(getattr(node, "lineno", 0), t) for t in texts if t]
    return out


def test_nothing_outside_the_worlds_package_names_it():
    """No identifier or non-docstring string in bench/ (outside bench/world/), methods/,
    metrics/ or prompt_sets/ contains "world": the world registers through entry points."""
    files = [p for d in ("methods", "metrics", "prompt_sets") for p in (ROOT / d).rglob("*.py")]
    files += [p for p in (ROOT / "bench").rglob("*.py")  # rglob does not follow the symlinks
              if (ROOT / "bench" / "world") not in p.parents]
    offenders = [f"{p.relative_to(ROOT)}:{line}: {text[:60]!r}" for p in files
                 for line, text in names_and_strings(p.read_text()) if "world" in text.lower()]
    assert len(files) > 80 and offenders == []


def test_the_scan_sees_names_and_strings_but_not_prose():
    found = names_and_strings('"""the world, in a docstring"""\n'
                              "from bench.world import render as world_render  # world\n"
                              "def f(world_x, *, k=1):\n    '''world'''\n"
                              "    return g(world=world_x).world, 'a world'\n")
    assert sorted(t for _, t in found if "world" in t) == [
        "a world", "bench.world", "world", "world", "world_render", "world_x", "world_x"]
