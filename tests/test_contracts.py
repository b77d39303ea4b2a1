"""Contracts as types: registries refuse entries that are not what they hold, in one line; the
world is a plugin: registered by entry points, imported by nothing in methods/, metrics/,
prompt_sets/."""
import ast
from pathlib import Path

import pytest

from bench.adapter import Adapter
from bench.cli import main
from bench.protocols import PROTOCOLS
from bench.registry import METHODS, METRICS, MODELS, PROMPT_SETS, RegistryTypeError


@pytest.fixture
def registries(monkeypatch):
    """Built-ins loaded, then every registry's entries restored after the test."""
    for reg in (METHODS, METRICS, MODELS, PROMPT_SETS, PROTOCOLS):
        reg.names()
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))


class NotAnAdapter:
    name = "plain"


def loader():
    return None


def test_an_object_of_the_wrong_kind_is_refused_when_registered(registries):
    with pytest.raises(RegistryTypeError) as err:
        METHODS.register("plain", NotAnAdapter)
    assert str(err.value) == (f"method 'plain' is the class {__name__}.NotAnAdapter; a method must "
                              "be a subclass of bench.adapter.Adapter")
    with pytest.raises(RegistryTypeError, match=r"metric 'ad' is the class bench.adapter.Adapter; "
                                                r"a metric must be a subclass of .*Scorer or Aggregator"):
        METRICS.register("ad", Adapter)
    with pytest.raises(RegistryTypeError, match=r"prompt-set 'n' is an object of type int; a prompt-set must be a callable"):
        PROMPT_SETS.register("n", 3)
    with pytest.raises(RegistryTypeError, match=r"protocol 'f' is the function .*loader; a protocol must be a "
                                                r"bench.protocols.Protocol"):
        PROTOCOLS.register("f", loader)
    assert "plain" not in METHODS and "ad" not in METRICS  # nothing half-registered
    # What each holds still registers: the decorator form checks too.
    assert METHODS.register("ok")(type("Ok", (Adapter,), {"name": "ok"})).name == "ok"
    MODELS.register("fn", loader)
    assert MODELS.get("fn") is loader


def test_a_lazy_entry_is_checked_when_first_imported(registries):
    METRICS.register("bad", "bench.adapter:Adapter")  # a string: nothing is imported yet
    METHODS.register("fn", "bench.sampler:sample")
    with pytest.raises(RegistryTypeError, match=r"^metric 'bad' \(bench.adapter:Adapter\) is the class "):
        METRICS.get("bad")
    with pytest.raises(RegistryTypeError, match=r"^method 'fn' \(bench.sampler:sample\) is the function "
                                                r"bench.sampler.sample; a method must be a subclass"):
        METHODS.get("fn")
    assert issubclass(METHODS.get("baseline"), Adapter)  # built-ins pass their own check


def test_cli_prints_a_wrong_entry_as_one_line(registries, capsys, tmp_path):
    METHODS.register("fn", "bench.sampler:sample")  # as a plugin's entry point would name it
    code = main(["run", "--model", "tiny-random", "--steps", "2", "--metrics", "none", "--quiet",
                 "--samples", "1", "--methods", "fn", "--prompt-set", "occupations",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "method 'fn' (bench.sampler:sample) is the function" in err[0]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ the world as a plugin

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; `from bench import world` gives bench.world)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_methods_metrics_and_prompt_sets_import_nothing_from_the_world():
    files = [p for d in ("methods", "metrics", "prompt_sets") for p in (ROOT / d).rglob("*.py")]
    offenders = sorted(f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imported_modules(p)
                       if m == "bench.world" or m.startswith("bench.world."))
    assert len(files) > 20 and offenders == []
    # The scan sees what it looks for: the world's own scorers import bench.world.
    assert "bench.world.render" in _imported_modules(ROOT / "bench" / "world" / "scorers.py")


def test_the_world_registers_only_through_entry_points():
    """Its names come from pyproject.toml's entry points (as a third party's would), not from a
    built-in registration; each entry resolves to the world's own module."""
    text = (ROOT / "pyproject.toml").read_text()
    for d in ("methods", "metrics", "prompt_sets"):
        assert "world" not in (ROOT / d / "__init__.py").read_text()
    assert "bench.world" not in (ROOT / "bench" / "models.py").read_text()
    for registry, name in ((METRICS, "world"), (METRICS, "world-clipscore"), (METRICS, "world-fid"),
                           (METRICS, "world-fid-to-renders"), (PROMPT_SETS, "world-occupations"),
                           (PROMPT_SETS, "world-hazard"), (MODELS, "world")):
        assert f'\n{name} = "bench.world' in text
        assert registry.get(name).__module__.startswith("bench.world"), name
    from bench.suites import SUITES
    from bench.world import suite as world_suite

    assert "bench.world" not in (ROOT / "bench" / "suites.py").read_text()
    for name, declared in (("world-occupations", world_suite.OCCUPATIONS),
                           ("world-hazard", world_suite.HAZARD)):
        assert f'\n{name} = "bench.world.suite:' in text
        assert SUITES.get(name) is declared, name
