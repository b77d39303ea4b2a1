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
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from bench.registry import Registry


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
    # Boolean columns that flag an image as inappropriate (a safety suite's inappropriateness).
    flags: ClassVar[tuple[str, ...]] = ()
    # Model families whose images this scorer reads ("" = real images): a suite's default
    # scorers for a model are the registered scorers of its family (bench/suites.py).
    family: ClassVar[str] = ""
    # Not among a suite's default scorers: runs only when named (e.g. needs a user's folder).
    opt_in: ClassVar[bool] = False
    # Aggregators this scorer's columns feed on every board where they are not declared:
    # (registered aggregator name, its arguments), e.g. ("fid-to-baseline", {"column": ...}).
    aggregators: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()

    def __init__(self, device: str | None = None) -> None:
        """Options come as keywords (`name:key=value`), each a string from the command line."""
        self.device = device

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

    def confusion(self, attribute: str) -> "np.ndarray | None":
        """P(predicted | true) of this scorer's `attribute` labels as configured (rows true,
        columns predicted, in the attribute's group order), for parity's correction; None when
        unknown."""
        return None



@dataclass(frozen=True)
class Calibration:
    """A label scorer's confusion counts for one attribute, registered by whoever measured them
    (`CALIBRATIONS`, entry-point group `bench.calibrations`): rows the true group, columns the
    predicted one, both in `groups` order. A scorer that takes a `calibration=` option reads it
    through `calibration()`."""
    scorer: str
    attribute: str
    groups: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    source: str  # how they were measured (a command, a paper), for the reader

    def matrix(self) -> np.ndarray:
        """P(predicted | true): each row of the counts divided by its sum."""
        m = np.asarray(self.counts, dtype=float)
        return m / m.sum(axis=1, keepdims=True)


CALIBRATIONS: Registry[Calibration] = Registry(
    "calibration", "bench.calibrations", "bench.metrics.base",
    ("a bench.metrics.base.Calibration", lambda obj: isinstance(obj, Calibration)))


def calibration(scorer: str, attribute: str, name: str = "") -> Calibration | None:
    """The calibration a scorer's `calibration=` option selects: "none" -> None; a registered
    name -> that one; "" -> the one registered for (scorer, attribute), None when there is none.
    ValueError (one line) for one of another scorer or attribute, or several to choose from."""
    if name == "none":
        return None
    if name:
        found = CALIBRATIONS.get(name)
        if (found.scorer, found.attribute) != (scorer, attribute):
            raise ValueError(f"{scorer}: calibration={name} measures {found.scorer}'s "
                             f"{found.attribute} labels, not {scorer}'s {attribute}")
        return found
    mine = [n for n in CALIBRATIONS.names()
            if (CALIBRATIONS.get(n).scorer, CALIBRATIONS.get(n).attribute) == (scorer, attribute)]
    if len(mine) > 1:
        raise ValueError(f"{scorer}: several calibrations of its {attribute} labels are "
                         f"registered ({', '.join(mine)}); pass calibration=NAME or none")
    return CALIBRATIONS.get(mine[0]) if mine else None

class Aggregate(Mapping[str, dict[str, Cell]]):
    """What an aggregator's `compute` returns: {method: {metric name: Cell}} (read it as that
    mapping) and the notes a reader needs beside the cells (why a cell is NaN, what was left
    out), which the report prints under the board."""

    def __init__(self, cells: dict[str, dict[str, Cell]], notes: Sequence[str] = ()) -> None:
        self.cells = cells
        self.notes: tuple[str, ...] = tuple(notes)

    def __getitem__(self, method: str) -> dict[str, Cell]:
        return self.cells[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.cells)

    def __len__(self) -> int:
        return len(self.cells)

    def __repr__(self) -> str:
        return f"Aggregate({self.cells!r}, notes={self.notes!r})"


class Aggregator:
    """Turns the per-image score table into leaderboard cells.

    `compute(table)` gets the per-image table joined with scorer columns (one prompt set and
    guidance, all methods) and returns an `Aggregate`: the cells and the notes. It keeps no state
    between calls. `infos` names the metrics it can produce (set per instance: names depend on
    the attribute, groups and categories it was built for). `applies(table)` says whether the
    table holds what it reads; a suite's aggregator that does not apply is left out of the board.
    """

    infos: Sequence[MetricInfo] = ()

    def applies(self, table: pd.DataFrame) -> bool:
        return True

    def compute(self, table: pd.DataFrame) -> Aggregate:
        raise NotImplementedError
