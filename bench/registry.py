"""Typed registries with lazy "module:attr" entries and entry-point plugins.

Built-ins are registered as strings so `bench list` and `--help` never import torch-heavy modules.
Third-party packages add entries through the entry-point groups `bench.methods`, `bench.metrics`,
`bench.prompt_sets` and `bench.models` (the entry point's value is the "module:attr" string).
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


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtins: str) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins  # module whose import registers the built-in entries
        self._entries: dict[str, str | T] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: str | T | None = None) -> Any:
        """`reg.register("x", "pkg.mod:Cls")`, or as a decorator `@reg.register("x")`."""
        if target is not None:
            self._entries[name] = target
            return target

        def deco(obj: T) -> T:
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
            entry = _import(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


# name -> Adapter subclass (methods/), Scorer or Aggregator class (metrics/),
# prompt-set loader callable (prompt_sets/), model loader callable (bench/models.py),
# paper protocol (bench/protocols.py).
METHODS: Registry[Any] = Registry("method", "bench.methods", "bench.methods")
METRICS: Registry[Any] = Registry("metric", "bench.metrics", "bench.metrics")
PROMPT_SETS: Registry[Callable[..., Any]] = Registry("prompt-set", "bench.prompt_sets", "bench.prompt_sets")
MODELS: Registry[Any] = Registry("model", "bench.models", "bench.models")
PROTOCOLS: Registry[Any] = Registry("protocol", "bench.protocols", "bench.protocols")
