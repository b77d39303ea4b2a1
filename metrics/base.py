"""The metric contract.

Two kinds of module live in `metrics/`:

* **Scorers** read images (and their per-image rows) from the run store and return one or more
  numeric or categorical columns per image. They are batched and device-aware, and declare what
  weights they need; `available()` says why they cannot run (missing weights) instead of crashing.
* **Aggregators** turn the per-image score table into leaderboard cells: per (method, prompt set)
  a `Cell` with value and 95% CI, using `bench.metrics.stats`.

Metric metadata (`higher_is_better`, unit) drives the leaderboard arrows and the "best" marks.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import pandas as pd
from PIL import Image


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a weight file, for report/scoring.json. Cached per (path, size, mtime):
    a file replaced in a long-lived process is hashed again."""
    stat = Path(path).stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MetricInfo:
    name: str  # leaderboard column, e.g. "parity_l2"
    unit: str  # e.g. "", "s/image", "%"
    higher_is_better: bool
    description: str
    # What a cell's lo/hi are: "ci" a 95% CI, "sd" mean -/+ 1 std (not a CI), "none" no interval
    # (p-values: lo = hi = value). Tables print each kind in its own notation.
    interval: str = "ci"


@dataclass(frozen=True)
class Cell:
    """One leaderboard cell: a value with its 95% CI and the sample it came from."""
    value: float
    lo: float
    hi: float
    n: int  # images (or prompts) behind the value


class Scorer:
    """Per-image scorer.

    `score(images, rows)` gets a batch of PIL images and the matching per-image table rows (prompt,
    metadata, seed, method...) and returns a DataFrame with one row per image, columns prefixed by
    the scorer name (e.g. `mtcnn.n_faces`). `available()` returns None when the scorer can run, or a
    one-line reason naming the missing weights and how to get them.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Continuous output columns the report turns into mean ± CI leaderboard cells.
    columns: ClassVar[dict[str, MetricInfo]] = {}

    def available(self) -> str | None:
        return None

    def check(self) -> None:
        """Called before generation: raise ValueError (one line naming the file and what is wrong)
        when a weight file that is present would fail at scoring; missing files are available()'s
        to report. Cheap: the container reads, keys and shapes are as expected; no model is put
        on the device."""

    def manifest(self) -> dict[str, str]:
        """What a reviewer needs to know to reproduce these scores: package versions, model
        names, weight files and their hashes. Written to RUN/report/scoring.json."""
        return {}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError


class Aggregator:
    """Turns the per-image score table into leaderboard cells.

    `compute(scores)` gets the per-image table joined with scorer columns (one prompt set, all
    methods) and returns {method_spec: {metric_name: Cell}}.
    """

    # Set per instance: names depend on the attribute, groups and categories it was built for.
    infos: Sequence[MetricInfo] = ()
    # Why a cell is NaN or what was excluded, refilled by each compute(); the report prints them.
    notes: list[str]

    def compute(self, scores: pd.DataFrame) -> dict[str, dict[str, Cell]]:
        raise NotImplementedError
