"""Findings: each method against the baseline on a board's headline metrics, in words.

For one headline metric and one method, images of the method and of the baseline pair on
(prompt_id, seed, sample). The metric is recomputed from the per-image values exactly as its
aggregator computes the leaderboard cell (parity: mean over neutral prompts of each prompt's
parity_l2; rates and scores: pooled mean over images), and

* the difference d = metric(method) - metric(baseline) gets a 95% percentile CI from a paired
  bootstrap over prompts (each replicate draws prompts with replacement and takes both methods'
  images of the drawn prompts);
* its two-sided p-value comes from a paired permutation test over prompts: under "no effect"
  the method's and the baseline's images of a prompt are exchangeable, so each prompt's two
  halves are swapped at random. Every swap pattern is enumerated when there are at most
  2^EXACT_PROMPTS of them, otherwise PERMUTATIONS random ones are drawn (p = (1 + hits)/(1 + B));
* p-values are Holm-adjusted per headline metric, across the methods: each headline metric is one
  declared question ("which methods change it?"), and a family spanning every metric of the table
  would let few prompts hide even a total effect (sld-max's hazard 1 -> 0 over 10 prompts: p 0.002,
  x 50 tests = 0.10).

Definitions and the smallest attainable p: docs/metrics.md ("Findings").
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bench.metrics.filtered import FILTERED
from bench.report import boards as boards_mod
from bench.report.tables import Finding, Leaderboard
from bench.metrics import stats
from bench.metrics.aggregators import (BASELINE, PAIR_KEYS, Inappropriateness, MeanScore, Parity,
                                       RequestedGroupRate, neutral_rows)
from bench.metrics.base import Aggregator, MetricInfo

EXACT_PROMPTS = 12  # up to 2^12 = 4096 swap patterns: enumerate them all
PERMUTATIONS = 9999
N_BOOT = 2000

# per-image values (N,) and the statistic over padded (..., P, n) values -> (...)
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------- per-image values


def _qualifier(name: str) -> tuple[str, str | None]:
    base, _, rest = name.partition("[")
    return base, rest[:-1] if rest else None


def board_aggregators(table: pd.DataFrame, board: Leaderboard
                      ) -> tuple[pd.DataFrame, tuple[Aggregator, ...]]:
    """A board's rows with its suite's derived columns, and the aggregators its cells came from
    (whose columns and groups the findings read)."""
    suite = boards_mod.suite_of(board)
    table = boards_mod.derive(table, suite)
    return table, boards_mod.plan(table, suite).aggregators


def _find(aggregators: Sequence[Aggregator], kind: type, name: str | None = None) -> Any:
    return next((a for a in aggregators if isinstance(a, kind)
                 and (name is None or getattr(a, "name", None) == name)), None)


def metric_values(table: pd.DataFrame, name: str, aggregators: Sequence[Aggregator]
                  ) -> tuple[pd.DataFrame, Statistic] | None:
    """Rows of `table` the metric `name` reads, with a `_v` column, and the statistic that turns
    padded values into the leaderboard value; None for a metric findings do not cover. The
    columns come from the board's `aggregators` (`board_aggregators`)."""
    base, q = _qualifier(name)
    if base == "parity_l2" and q and (par := _find(aggregators, Parity, q)):
        df = table[neutral_rows(table)]
        parity = stats.parity_statistic(len(par.groups), ["parity_l2"])
        return (df.assign(_v=par.codes(df)),  # an intersection's joint codes too
                lambda v, m: parity(v, m)[..., 0])
    if base == "requested_group_rate" and q and "=" not in q and (
            rate := _find(aggregators, RequestedGroupRate, q)):
        df = table[table.get("meta.attribute", pd.Series(index=table.index)).eq(rate.attribute)
                   & table["meta.group"].notna()]
        label = df[rate.label_column].astype(object)
        got = label.where(label.isna(), label.astype(str).str.strip().str.casefold())
        wanted = df["meta.group"].astype(str).str.strip().str.casefold()
        return df.assign(_v=np.where(got.isna(), np.nan, (got == wanted).astype(float))), \
            stats.pooled_mean
    if base == "inappropriate_prob":
        found = _find(aggregators, Inappropriateness)
        if found is None:
            return None
        flags, df = found.flag_columns, table
        if q is not None:
            cats = df["meta.categories"]
            df = df[cats.notna() & cats.astype(str).str.contains(q, regex=False)]
        f = np.column_stack([df[c].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
                             for c in flags])
        v = np.where((f == 1).any(1), 1.0, np.where(np.isnan(f).any(1), np.nan, 0.0))
        return df.assign(_v=v), stats.pooled_mean
    mean = next((a for a in aggregators if isinstance(a, MeanScore) and a.info.name == name), None)
    if mean is not None and q is None:
        return (table.assign(_v=table[mean.column].astype("Float64").to_numpy(
            dtype=float, na_value=np.nan)), stats.pooled_mean)
    return None


def paired_values(rows: pd.DataFrame, method: str, baseline: str = BASELINE
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(P, n, 2) values of the method (channel 0) and the baseline (1) on images paired by
    prompt, seed and sample; the mask marks each prompt's pairs."""
    keys = [c for c in PAIR_KEYS if c in rows.columns]
    a = rows[rows["method"] == method][[*keys, "_v", *([FILTERED] if FILTERED in rows else [])]]
    b = rows[rows["method"] == baseline][[*keys, "_v"]]
    pairs = a.merge(b, on=keys, suffixes=("", "_b")).sort_values(keys, kind="stable")
    if pairs.empty:
        return np.zeros((0, 0, 2)), np.zeros((0, 0), bool)
    gone = pairs[FILTERED].eq(True) & pairs["_v"].isna() if FILTERED in pairs else None
    if gone is not None and gone.any():  # a filtered image has no quality score: nor its partner
        pairs.loc[gone, "_v_b"] = np.nan  # (only then: a float column for the parity codes)
    return stats.pad_by_prompt(pairs["prompt_id"], pairs[["_v", "_v_b"]].to_numpy())


# ----------------------------------------------------------------------- the two tests


def _diff_stat(statistic: Statistic) -> Statistic:
    def diff(v: np.ndarray, m: np.ndarray) -> np.ndarray:
        return statistic(v[..., 0], m) - statistic(v[..., 1], m)
    return diff


def swap_patterns(n_prompts: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(B, P) booleans, True = swap that prompt's halves; all 2^P when few, else random."""
    if n_prompts <= EXACT_PROMPTS:
        return (np.arange(2 ** n_prompts)[:, None] >> np.arange(n_prompts)) & 1 == 1, True
    return rng.random((PERMUTATIONS, n_prompts)) < 0.5, False


def permutation_p(values: np.ndarray, mask: np.ndarray, statistic: Statistic,
                  rng: np.random.Generator) -> float:
    """Two-sided paired permutation p-value of statistic(ch0) - statistic(ch1) over prompts."""
    diff = _diff_stat(statistic)
    observed = float(diff(values, mask))
    if not math.isfinite(observed):
        return float("nan")
    swaps, exact = swap_patterns(mask.shape[0], rng)
    swapped = values[..., ::-1]
    chunk = max(1, 2_000_000 // max(values.size, 1))
    t = np.concatenate([diff(np.where(s[:, :, None, None], swapped, values), mask)
                        for s in np.array_split(swaps, max(1, math.ceil(len(swaps) / chunk)))])
    hits = int((np.abs(t) >= abs(observed) - 1e-12).sum())  # NaN replicates never count
    return hits / len(t) if exact else (1 + hits) / (1 + len(t))


def compare(rows: pd.DataFrame, statistic: Statistic, method: str, seed_key: str,
            baseline: str = BASELINE) -> tuple[float, float, float, float, int]:
    """(diff, lo, hi, p, n_prompts) of one method against the baseline."""
    values, mask = paired_values(rows, method, baseline)
    if not mask.any():
        return (math.nan,) * 4 + (0,)  # type: ignore[return-value]
    rng = np.random.default_rng([0, zlib.crc32(seed_key.encode())])
    est = stats.bootstrap(values, mask, lambda v, m: _diff_stat(statistic)(v, m)[..., None],
                          rng, N_BOOT, resample_images=False)[0]
    p = permutation_p(values, mask, statistic, rng)
    return est.value, est.lo, est.hi, p, int(mask.shape[0])


def findings(table: pd.DataFrame, board: Leaderboard, metrics: Sequence[MetricInfo],
             baseline: str | None = None) -> list[Finding]:
    """One finding per (method other than the baseline, headline metric) of one board's rows
    (one prompt set and guidance), Holm-adjusted across the methods of each metric. The
    baseline: the board suite's."""
    table, aggregators = board_aggregators(table, board)
    baseline = baseline or boards_mod.suite_of(board).baseline
    if baseline not in board.cells:
        return []
    raw: list[tuple[str, MetricInfo, tuple[float, float, float, float, int]]] = []
    for info in metrics:
        got = metric_values(table, info.name, aggregators)
        if got is None:
            continue
        rows, statistic = got
        for method in board.methods():
            if method != baseline:
                raw.append((method, info, compare(rows, statistic, method,
                                                  f"{board.title}|{method}|{info.name}", baseline)))
    adjusted = np.full(len(raw), np.nan)
    for name in dict.fromkeys(r[1].name for r in raw):
        family = [k for k, r in enumerate(raw) if r[1].name == name]
        adjusted[family] = stats.holm([raw[k][2][3] for k in family])
    return [Finding(m, info, d, lo, hi, p, float(pa), n)
            for (m, info, (d, lo, hi, p, n)), pa in zip(raw, adjusted)]
