"""Scoring: run per-image scorers over a run store's images, incrementally.

Reads only the run store, so `bench report RUN_DIR` rescores without generating. A scorer whose
weights are missing is skipped with its one-line reason, which the report prints.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
from tqdm import tqdm

from bench.registry import METRICS
from bench.spec import MethodSpec
from bench.store import RunStore
from metrics.base import Scorer

# With `--metrics all`, the synthetic world is scored by its own evaluators and real models by the
# real ones (face and attribute models on 32 px synthetic portraits would measure nothing).
WORLD_PREFIX = "world"


def scorer_names(model: str, requested: Sequence[str]) -> list[str]:
    if list(requested) == ["none"]:
        return []
    if list(requested) not in ([], ["all"]):
        return list(requested)
    names = [n for n, obj in METRICS.items() if isinstance(obj, type) and issubclass(obj, Scorer)]
    is_world = model == "world"
    return [n for n in names if n.startswith(WORLD_PREFIX) == is_world]


def score_run(store: RunStore, names: Sequence[str], device: str | None = None,
              batch_size: int = 32, quiet: bool = False) -> dict[str, dict]:
    """Score every image not yet scored by each scorer. Returns {"used": {scorer: manifest},
    "skipped": {scorer: reason}}."""
    images = store.images()
    scores = store.scores()
    skipped: dict[str, str] = {}
    used: dict[str, dict] = {}
    for name in names:
        spec = MethodSpec.parse(name)  # "fairface:weights=/path/res34.pt": options as kwargs
        scorer = METRICS.get(spec.name)(device=device, **spec.param_dict())
        reason = scorer.available()
        if reason:
            skipped[name] = reason
            continue
        used[name] = scorer.manifest()
        mark = f"_scored.{name}"
        done = set(scores.loc[scores[mark].fillna(False).astype(bool), "key"]) if mark in scores else set()
        todo = images[~images["key"].isin(done)]
        if todo.empty:
            continue
        parts = []
        bar = tqdm(total=len(todo), desc=f"score {name}", unit="img", disable=quiet)
        for start in range(0, len(todo), batch_size):
            rows = todo.iloc[start:start + batch_size].reset_index(drop=True)
            out = scorer.score([store.load_image(k) for k in rows["key"]], rows)
            out = out.reset_index(drop=True)
            out["key"] = rows["key"].to_numpy()
            out[mark] = True
            parts.append(out)
            bar.update(len(rows))
        bar.close()
        scores = _merge(scores, pd.concat(parts, ignore_index=True))
        store.write_scores(scores)  # after each scorer: a killed report keeps finished scorers
    return {"used": used, "skipped": skipped}


def _merge(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Upsert `new` rows (by key) and columns into `old`."""
    if old.empty:
        return new
    old = old.set_index("key")
    new = new.set_index("key")
    merged = old.reindex(old.index.union(new.index))
    for col in new.columns:
        if col not in merged:
            merged[col] = pd.Series(index=merged.index, dtype=new[col].dtype)
        merged.loc[new.index, col] = new[col]
    return merged.reset_index().rename(columns={"index": "key"})
