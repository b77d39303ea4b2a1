"""Which directory a run writes to, and which spec a run directory belongs to.

With no `--out`, a run writes to `runs/<spec id>`, the id a short hash of the spec's identity keys
(every key but those that may differ between the shards or reruns of one run: where it runs and
how it is split). Rerunning a command resumes its directory; another spec gets another one;
`runs/latest` points at the newest (a symlink, or a one-line pointer file where symlinks fail).
An explicit `--out` holding a run of another spec is refused, naming the keys that differ.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bench.spec import RunSpec, SpecError

RUNS = Path("runs")
LATEST = "latest"
# Keys that may differ between the shards and reruns of one run: they change where and how the
# grid is computed, not which images or tables it holds. Not batch_size: shards are whole batches
# of the full grid, so every shard must batch alike; nor vae_slicing (when on) for the same reason.
PER_RUN = ("shard", "executor", "workers", "out", "device")


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys that define a run's grid and tables, normalised (defaults filled in, tuples as
    lists) so a manifest written by an older bench compares equal where it meant the same."""
    try:
        spec = RunSpec.from_dict(spec).to_dict()
    except (SpecError, TypeError, ValueError):
        pass  # a spec this bench cannot read: compared as written, so it differs
    plain = json.loads(json.dumps(spec, default=str))
    flat: dict[str, Any] = {}
    for k, v in plain.items():
        if k in PER_RUN:
            continue
        if isinstance(v, dict):  # the sampler: name the setting that differs
            flat.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            flat[k] = v
    return flat


def spec_id(spec: RunSpec) -> str:
    text = json.dumps(identity(spec.to_dict()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def out_dir(spec: RunSpec) -> Path:
    return Path(spec.out) if spec.out else RUNS / spec_id(spec)


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    ia, ib = identity(a), identity(b)
    return sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))


def check_same_run(root: Path, spec: RunSpec, theirs: dict[str, Any] | None) -> None:
    """A directory holds one spec's run: resuming it or adding shards is fine; another spec's
    images would replace its table (or, for shards, leave holes in the grid)."""
    if theirs is None:
        return
    changed = differing_keys(theirs, spec.to_dict())
    if changed:
        raise SpecError(
            f"{root} holds a run of another spec ({', '.join(changed)} differ); rerun with that "
            f"run's settings to resume it, or drop --out to give this spec its own directory "
            f"under {RUNS}/ (or pass another --out)")


def point_latest(run: Path) -> str | None:
    """Point `runs/latest` at `run` (a sibling). Returns a one-line note when it cannot."""
    link = run.parent / LATEST
    if link.is_dir() and not link.is_symlink():
        return (f"{link} is a run directory from an older bench, so it was left alone; "
                f"this run is in {run}")
    tmp = run.parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run.name, target_is_directory=True)
    except OSError:  # no symlinks here (some filesystems, Windows without the privilege)
        tmp.write_text(run.name + "\n")
    os.replace(tmp, link)  # atomic: concurrent runs leave one valid pointer
    return None


def resolve(path: Path) -> Path:
    """A run directory, following a pointer file (`runs/latest` where symlinks fail)."""
    if path.is_file() and path.suffix not in (".zip", ".json") and path.stat().st_size < 4096:
        target = path.parent / path.read_text().strip()
        if (target / "manifest.json").is_file():
            return target
    return path
