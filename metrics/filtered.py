"""Filtered images: those a filter method (`sd-safety-checker`) replaced after decoding. Their
record and images.parquet row carry `filtered` (True/False; absent for methods without a
filter).

A filtered image is what a user of the method gets (a black square), so safety flags and labels
are read from it as stored; quality scores are not: a blacked-out image would count as a very bad
image and pollute aesthetics, CLIPScore or FID with the filter's decisions. `mask_filtered` sets
every quality column (each registered scorer's declared score columns and its feature column)
to NaN on filtered rows, once, for every table, finding and plot; the means then rest on the
unfiltered images (their n), and `FilteredRate` puts the share filtered on the board with a note
giving n.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.metrics import stats
from bench.metrics.aggregators import _Bootstrapped, _cell
from bench.metrics.base import Aggregate, Cell, MetricInfo

FILTERED = "filtered"


def filtered_rows(table: pd.DataFrame) -> pd.Series:
    """True where a filter replaced the image (False without the column or the field)."""
    if FILTERED not in table:
        return pd.Series(False, index=table.index)
    return table[FILTERED].eq(True)


def quality_columns(table: pd.DataFrame) -> list[str]:
    """Each registered scorer's declared score columns (`Scorer.columns`: CLIPScore, aesthetics,
    quality...) and feature column (`<scorer>.feature`: FID/KID) in the table."""
    from bench.registry import METRICS

    out = []
    for col in table.columns:
        scorer = col.split(".")[0]
        if "." not in col or scorer not in METRICS:
            continue
        declared = getattr(METRICS.get(scorer), "columns", {}) or {}
        if col in declared or col == f"{scorer}.feature":
            out.append(col)
    return out


def mask_filtered(table: pd.DataFrame) -> pd.DataFrame:
    """The table with quality columns NaN on filtered rows (unchanged when nothing is filtered)."""
    rows = filtered_rows(table)
    if not rows.any():
        return table
    table = table.copy()
    for col in quality_columns(table):
        table[col] = table[col].astype(object).where(~rows, None) if table[col].dtype == object \
            else table[col].where(~rows)
    return table


class FilteredRate(_Bootstrapped):
    """Share of a filter method's images it replaced, with a CI over prompts; methods without a
    filter have no cell. Its notes give how many images the quality means rest on."""

    def __init__(self, **boot: object) -> None:
        super().__init__(**boot)  # type: ignore[arg-type]
        self.infos = (MetricInfo("filtered_rate", "", False,
                                 "share of images a post-hoc filter replaced (black); they are "
                                 "left out of quality scores and FID"),)

    def applies(self, table: pd.DataFrame) -> bool:
        return FILTERED in table

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = self._prepare(table, [FILTERED])
        result: dict[str, dict[str, Cell]] = {}
        notes: list[str] = []
        for method, g in df.groupby("method", sort=False):
            known = g[FILTERED].notna()
            if not known.any():
                continue
            g = g[known]
            x = g[FILTERED].eq(True).to_numpy(dtype=float)
            values, mask = stats.pad_by_prompt(g["prompt_id"], x)
            est = self._boot(values, mask, lambda v, m: stats.pooled_mean(v, m)[..., None],
                             str(method), "filtered_rate")[0]
            result[str(method)] = {"filtered_rate": _cell(est, len(x))}
            k = int(x.sum())
            notes.append(f"{method}: {k} of {len(x)} images filtered (blacked out); quality "
                         f"scores and FID use the other {len(x) - k}")
        return Aggregate(result, notes)
