"""Scoring: which per-image scorers run, what is left for each, and the batch step.

The scoring stage (`bench.runner.score`) plans with `plan_scoring`, has its executor score each
job's rows with `score_rows` over `chunks` (in this process or on Ray actors: the same batches,
so the same numbers) and merges them into scores.parquet with `merge_scores`. It reads only the
run store, so `bench report RUN_DIR` rescores without generating. A scorer whose weights are
missing is skipped with its one-line reason, which the report prints.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from bench.registry import METRICS
from bench.spec import NamedOptions, SpecError
from bench.store import RunStore
from bench.suites import run_scorers
from bench.metrics.base import Scorer


def scorer_names(model: str, requested: Sequence[str], prompt_sets: Sequence[str] = (),
                 suites: Sequence[str] = ()) -> list[str]:
    """The scorers a run uses: those requested, none, or (`all`, the default) its suites'
    (bench/suites.py: each suite's scorers for this model; the generic suites take the registered
    scorers of the model's family)."""
    if list(requested) == ["none"]:
        return []
    if list(requested) not in ([], ["all"]):
        return list(requested)
    return run_scorers(model, prompt_sets, suites)


def check_scorers(names: Sequence[str], device: str | None) -> None:
    """Fail on an unknown scorer or a bad option before any image is generated: scoring runs
    last, and on real Stable Diffusion a typo found there costs the whole generation time.
    Constructing a scorer checks its options; `check()` then reads those of its weight files that
    are present (missing ones stay a skip with a reason); models load when it first scores."""
    for name in names:
        spec = NamedOptions.parse(name, "metric spec")
        cls = METRICS.get(spec.name)  # unknown name: one line with close-name suggestions
        if not (isinstance(cls, type) and issubclass(cls, Scorer)):
            raise SpecError(f"metric '{name}' is an aggregator, not a per-image scorer; "
                            f"pass scorers to --metrics (see `bench list metrics`)")
        options = scorer_options(cls)
        unknown = sorted(set(spec.param_dict()) - options)
        if unknown:
            raise SpecError(f"metric '{name}': '{spec.name}' has no option '{unknown[0]}'; "
                            f"options: {sorted(options)}")
        try:
            cls(device=device, **spec.param_dict()).check()
        except (TypeError, ValueError, OSError) as e:
            raise SpecError(f"metric '{name}': {e}") from None


def scorer_options(cls: type) -> set[str]:
    """Keyword options a scorer accepts: its constructor's and, through **options, its bases'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY}
    return names - {"self", "device"}


@dataclass
class ScoringJob:
    name: str  # as requested, options included: "fairface:weights=x.pt"
    scorer_cls: type
    params: dict[str, str]
    rows: pd.DataFrame  # images this scorer has not scored yet


@dataclass
class ScoringPlan:
    used: dict[str, dict] = field(default_factory=dict)  # scorer -> its manifest()
    skipped: dict[str, str] = field(default_factory=dict)  # scorer -> one-line reason
    jobs: list[ScoringJob] = field(default_factory=list)

    def summary(self) -> dict[str, dict]:
        return {"used": self.used, "skipped": self.skipped}


def plan_scoring(store: RunStore, names: Sequence[str], device: str | None) -> ScoringPlan:
    images, scores = store.images(), store.scores()
    plan = ScoringPlan()
    for name in names:
        spec = NamedOptions.parse(name, "metric spec")
        cls = METRICS.get(spec.name)
        scorer = cls(device=device, **spec.param_dict())
        reason = scorer.available()
        if reason:
            plan.skipped[name] = reason
            continue
        plan.used[name] = scorer.manifest()
        mark = f"_scored.{name}"
        done = set(scores.loc[scores[mark].fillna(False).astype(bool), "key"]) \
            if mark in scores else set()
        # Scores belong to images: grid positions sharing an image share its scores.
        todo = images[~images["key"].isin(done)].drop_duplicates("key").reset_index(drop=True)
        if not todo.empty:
            plan.jobs.append(ScoringJob(name, cls, spec.param_dict(), todo))
    return plan


def score_rows(scorer: Scorer, name: str, store: RunStore, rows: pd.DataFrame) -> pd.DataFrame:
    """One batch: the scorer's columns plus the key and the `_scored.<name>` mark."""
    out = scorer.score([store.load_image(k) for k in rows["key"]], rows).reset_index(drop=True)
    out["key"] = rows["key"].to_numpy()
    out[f"_scored.{name}"] = True
    return out


def chunks(rows: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [rows.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(rows), size)]


def merge_scores(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
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
