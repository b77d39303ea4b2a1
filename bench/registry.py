"""Typed registries with lazy "module:attr" entries and entry-point plugins.

Built-ins are registered as strings so `bench list` and `--help` never import torch-heavy modules.
Third-party packages add entries through the entry-point groups `bench.methods`, `bench.metrics`,
`bench.prompt_sets` and `bench.models` (the entry point's value is the "module:attr" string).
Each registry checks what an entry is (a method must be an `Adapter` subclass, a metric a
`Scorer` or `Aggregator` subclass, ...) when it is registered as an object or first imported:
anything else is one `RegistryTypeError` line naming the entry and what it is instead.
"""
from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])


class RegistryTypeError(TypeError):
    """A registered entry is not what its registry holds (a plugin's typo, a wrong class)."""


# (what the registry holds, in words; the test an entry must pass)
Expected = tuple[str, Callable[[Any], bool]]


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtins: str, expected: Expected) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins  # module whose import registers the built-in entries
        self.expected = expected
        self._entries: dict[str, str | T] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: str | T | None = None) -> Any:
        """`reg.register("x", "pkg.mod:Cls")`, or as a decorator `@reg.register("x")`."""
        if target is not None:
            if not isinstance(target, str):
                self._check(name, target)
            self._entries[name] = target
            return target

        def deco(obj: T) -> T:
            self._check(name, obj)
            self._entries[name] = obj
            return obj

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        importlib.import_module(self.builtins)
        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def get(self, name: str) -> T:
        self._load_plugins()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{hint} See `bench list {self.kind}s`."
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            obj = _import(entry)
            self._check(name, obj, entry)
            self._entries[name] = entry = obj
        return entry  # type: ignore[return-value]

    def _check(self, name: str, obj: Any, target: str = "") -> None:
        what, accepts = self.expected
        if not accepts(obj):
            where = f" ({target})" if target else ""
            raise RegistryTypeError(f"{self.kind} '{name}'{where} is {_describe(obj)}; a "
                                    f"{self.kind} must be {what}")

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    kind = type(obj).__name__
    if name:
        return f"the {kind} {module + '.' if module else ''}{name}"
    return f"an object of type {kind}"


def _subclass(module: str, *names: str) -> Callable[[Any], bool]:
    """A test: a subclass of one of `module`'s classes (imported when first used, so listing
    built-ins never imports torch)."""
    def accepts(obj: Any) -> bool:
        bases = tuple(getattr(importlib.import_module(module), n) for n in names)
        return isinstance(obj, type) and issubclass(obj, bases)
    return accepts


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


# name -> Adapter subclass (methods/), Scorer or Aggregator class (metrics/),
# prompt-set loader callable (prompt_sets/), model loader callable (bench/models.py). Registries
# of a type defined elsewhere live beside it, so this module imports none of them:
# PROTOCOLS (bench/protocols.py), SUITES (bench/suites.py).
METHODS: Registry[Any] = Registry("method", "bench.methods", "bench.methods", (
    "a subclass of bench.adapter.Adapter", _subclass("bench.adapter", "Adapter")))
METRICS: Registry[Any] = Registry("metric", "bench.metrics", "bench.metrics", (
    "a subclass of bench.metrics.base.Scorer or Aggregator",
    _subclass("bench.metrics.base", "Scorer", "Aggregator")))
PROMPT_SETS: Registry[Callable[..., Any]] = Registry(
    "prompt-set", "bench.prompt_sets", "bench.prompt_sets",
    ("a callable returning a PromptSet (a loader function)", callable))
MODELS: Registry[Any] = Registry("model", "bench.models", "bench.models", (
    "a callable returning a pipeline (a loader function)", callable))
