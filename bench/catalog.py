"""`bench list`: what is registered, one line each."""
from __future__ import annotations

import dataclasses
import inspect

from bench.registry import METHODS, METRICS, MODELS, PROMPT_SETS, PROTOCOLS


def _first_line(obj: object) -> str:
    doc = getattr(obj, "description", "") or inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _params(cls: type) -> str:
    params = getattr(cls, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        return ""
    fields = [f"{f.name}={f.default}" for f in dataclasses.fields(params)]
    return f"  [{', '.join(fields)}]" if fields else ""


def listing(what: str) -> str:
    if what == "models":
        from bench.models import ALIASES

        rows = [f"{n:<14} {_first_line(obj)}" for n, obj in MODELS.items()]
        rows += [f"{a:<14} {hub}" for a, hub in ALIASES.items()]
        rows.append("(or any hub id or local diffusers pipeline directory)")
        return "\n".join(rows)
    if what == "protocols":
        from bench.protocols import describe

        return "\n\n".join("\n".join(describe(p)) for _, p in PROTOCOLS.items())
    registry = {"methods": METHODS, "metrics": METRICS, "prompt-sets": PROMPT_SETS}[what]
    entries = list(registry.items())
    width = max((len(n) for n, _ in entries), default=0) + 2
    rows = []
    for name, obj in entries:
        extra = _params(obj) if what == "methods" else ""
        kind = f"{_metric_kind(obj):<11}" if what == "metrics" else ""
        rows.append(f"{name:<{width}}{kind}{_first_line(obj)}{extra}")
    return "\n".join(rows)


def _metric_kind(obj: object) -> str:
    from metrics.base import Aggregator, Scorer

    if isinstance(obj, type) and issubclass(obj, Scorer):
        return "scorer"
    return "aggregator" if isinstance(obj, type) and issubclass(obj, Aggregator) else ""
