"""`bench list`: what is registered, one line each."""
from __future__ import annotations

import dataclasses
import inspect

from bench.protocols import PROTOCOLS
from bench.registry import METHODS, METRICS, MODELS, PROMPT_SETS


def _first_line(obj: object) -> str:
    doc = getattr(obj, "description", "") or inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _params(cls: type) -> str:
    params = getattr(cls, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        return ""
    fields = [f"{f.name}={f.default}" for f in dataclasses.fields(params)]
    return f"  [{', '.join(fields)}]" if fields else ""


def _sdxl(cls: type) -> str:
    """What a method cannot do on SDXL (its class's SDXL_SKIP, which its skip_reason returns)."""
    note = getattr(cls, "SDXL_SKIP", "")
    return f"  SDXL: {note}" if note else ""


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
    if what == "metrics":
        return _metrics_listing()
    if what == "suites":
        return _suites_listing()
    if what == "plugins":
        return _plugins_listing()
    registry = {"methods": METHODS, "metrics": METRICS, "prompt-sets": PROMPT_SETS}[what]
    entries = list(registry.items())
    width = max((len(n) for n, _ in entries), default=0) + 2
    rows = []
    for name, obj in entries:
        extra = _params(obj) + _sdxl(obj) if what == "methods" else ""
        kind = f"{_metric_kind(obj):<11}" if what == "metrics" else ""
        rows.append(f"{name:<{width}}{kind}{_first_line(obj)}{extra}")
    return "\n".join(rows)


def _plugins_listing() -> str:
    """What plugins registered besides methods, metrics, prompt sets, models and suites: default
    runs, commands and label-scorer calibrations."""
    from bench.metrics.base import CALIBRATIONS
    from bench.plugins import COMMANDS, DEFAULT_RUNS

    rows = ["default runs (bench run with no --model):"]
    rows += [f"  {n}: model {d.model}, prompt sets {', '.join(d.prompt_sets)}"
             for n, d in DEFAULT_RUNS.items()] or ["  (none)"]
    rows.append("commands (bench NAME ...):")
    rows += [f"  {n}: {c.help}" for n, c in COMMANDS.items()] or ["  (none)"]
    rows.append("calibrations (a label scorer's measured confusion counts):")
    rows += [f"  {n}: {c.scorer} {c.attribute} ({', '.join(c.groups)}); {c.source}"
             for n, c in CALIBRATIONS.items()] or ["  (none)"]
    return "\n".join(rows)


def _suites_listing() -> str:
    """Each suite: its description, headline metrics and the aggregators it declares."""
    from bench.suites import SUITES

    rows = []
    for name, s in SUITES.items():
        rows.append(f"{name} ({s.kind}): {s.description}")
        rows.append(f"  headline: {', '.join(h.metric for h in s.headline) or '-'}; "
                    f"baseline: {s.baseline}")
        rows += [f"  {u.name}: {', '.join(f'{k}={v}' for k, v in u.args.items())}"
                 for u in s.aggregators]
    return "\n".join(rows)


def _metric_kind(obj: object) -> str:
    from bench.metrics.base import Aggregator, Scorer

    if isinstance(obj, type) and issubclass(obj, Scorer):
        return "scorer"
    return "aggregator" if isinstance(obj, type) and issubclass(obj, Aggregator) else ""


def _metrics_listing() -> str:
    """Every metric, and for each scorer: its --metrics options with defaults, the columns it
    writes, and whether it can run here (its weights present) or why not."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # "usable here" looks at files, not the network
    entries = list(METRICS.items())
    width = max((len(n) for n, _ in entries), default=0) + 2
    rows = ["--metrics takes scorers (name[:option=value,...]); aggregators apply by themselves."]
    for name, obj in entries:
        kind = _metric_kind(obj)
        rows.append(f"{name:<{width}}{kind:<11}{_first_line(obj)}")
        if kind == "scorer":
            pad = " " * (width + 11)
            rows.append(f"{pad}options: {_scorer_options(obj) or '(none)'}")
            rows.append(f"{pad}columns: {', '.join(_scorer_columns(name, obj))}")
            rows.append(f"{pad}here: {_usable(obj)}")
    return "\n".join(rows)


def _scorer_options(cls: type) -> str:
    from bench.scoring import scorer_options

    names = scorer_options(cls)
    found: dict[str, object] = {}
    for klass in reversed(cls.__mro__):  # subclasses' defaults win
        init = klass.__dict__.get("__init__")
        if init is not None:
            found.update({p.name: p.default for p in inspect.signature(init).parameters.values()
                          if p.name in names})
    return ", ".join(f"{k}={'(required)' if v is inspect.Parameter.empty else v}"
                     for k, v in found.items())


def _scorer_columns(name: str, cls: type) -> list[str]:
    """Declared columns: continuous ones (`columns`), attribute fields (`fields`, with the face
    count), any others the scorer lists in `outputs`."""
    fields = getattr(cls, "fields", ())
    fields = fields if isinstance(fields, (tuple, list)) else ()  # per-instance: a property
    cols = [*getattr(cls, "outputs", ()), *getattr(cls, "columns", {})]
    if fields:
        cols += [f"{name}.n_faces", *(f"{name}.{f}" for f in fields)]
    return list(dict.fromkeys(cols)) or [f"{name}.* (docs/metrics.md)"]


def _usable(cls: type) -> str:
    """Constructed with its defaults, `available()` says whether its weights are here."""
    try:
        reason = cls().available()
    except Exception as exc:  # noqa: BLE001 - a listing names the problem, it never fails on it
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return "usable" if reason is None else f"not usable: {reason}"
