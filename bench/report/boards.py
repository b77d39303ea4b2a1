"""Which aggregators apply to a run's table, and the leaderboards they produce.

Columns decide: a `<scorer>.<attribute>` label column (attribute in GROUPS) gives parity over
neutral prompts and the requested-group rate over group-specified ones, except on safety prompt
sets (those that carry categories), which get the I2P inappropriateness protocol from the flag
columns instead; score columns give means; every run gets latency. One leaderboard per
(prompt set, guidance); a metric with no value for any method is left out.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import pandas as pd

from bench.report.tables import Leaderboard
from bench.metrics.base import Aggregator, MetricInfo

GROUPS: dict[str, list[str]] = {
    "skin": ["light", "medium", "dark"],
    "race": ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
             "Middle Eastern"],
    "race4": ["White", "Black", "Asian", "Indian"],  # FairFace's 4-race file
    "gender": ["male", "female"],
}
FLAG_COLUMNS = ("q16.flag", "nudenet.flag", "world.hazard")
# Columns `derive()` adds; scorers' own columns come from their `Scorer.columns`.
# The few metrics that answer each prompt-set family's question: the headline table, its findings
# and its plots. `m[*]` takes `m[<attribute>]` for each label attribute (not `m[<attr>=<group>]`);
# a plain name takes that metric only (per-category rates stay in the full table). One small
# explicit table: issue 17's declared suites will carry these per suite.
HEADLINE: dict[str, tuple[str, ...]] = {
    "fairness": ("parity_l2[*]", "requested_group_rate[*]", "occupation_acc", "clipscore"),
    "safety": ("inappropriate_prob", "inappropriate_prob[*]", "clipscore", "quality"),
}
DERIVED_COLUMNS: dict[str, MetricInfo] = {
    "occupation_correct": MetricInfo("occupation_acc", "", True,
                                     "share of images showing the prompt's occupation"),
}


def label_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, attribute) pairs such as ('world.skin', 'skin') or ('fairface.race', 'race')."""
    out = []
    for col in table.columns:
        scorer, _, attribute = col.partition(".")
        if attribute in GROUPS and not scorer.startswith(("meta", "_")):
            out.append((col, attribute))
    return out


def score_columns(table: pd.DataFrame) -> dict[str, MetricInfo]:
    """Continuous columns with leaderboard metadata: each registered scorer's `Scorer.columns`
    (built-in or plugin alike), then the derived ones; in the table's column order."""
    from bench.registry import METRICS

    found: dict[str, MetricInfo] = {}
    for col in table.columns:
        scorer = col.split(".")[0]
        if "." in col and scorer in METRICS:
            info = getattr(METRICS.get(scorer), "columns", {}).get(col)
            if info is not None:
                found[col] = info
    found.update({c: i for c, i in DERIVED_COLUMNS.items() if c in table})
    return found


def is_safety_set(table: pd.DataFrame) -> bool:
    """An I2P-like prompt set: its prompts carry categories. It gets safety metrics, not parity."""
    return "meta.categories" in table and table["meta.categories"].notna().any()


def safety_categories(table: pd.DataFrame) -> list[str]:
    """The I2P categories, then any other category the prompt set's prompts carry (world-hazard
    tags its neutral prompts "neutral": their rate is the hazard a method adds unasked)."""
    from bench.metrics.aggregators import I2P_CATEGORIES

    found = {c.strip() for s in table["meta.categories"].dropna().astype(str) for c in s.split(",")}
    return [*I2P_CATEGORIES, *sorted(found - set(I2P_CATEGORIES) - {""})]


def fairness_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The label columns that get parity and the requested-group rate (none on a safety set)."""
    return [] if is_safety_set(table) else label_columns(table)


def derive(table: pd.DataFrame) -> pd.DataFrame:
    """Columns computed from scorer outputs: occupation correctness."""
    table = table.copy()
    if "world.occupation" in table and "meta.occupation" in table:
        table["occupation_correct"] = (table["world.occupation"] == table["meta.occupation"]
                                       ).astype(float)
    return table


def aggregators(table: pd.DataFrame, confusions: dict[str, Any],
                timing: pd.DataFrame | None = None) -> list[Aggregator]:
    from bench.metrics import aggregators as agg

    out: list[Aggregator] = []
    has_neutral = "meta.group" in table and table["meta.group"].isna().any()
    for col, attribute in fairness_columns(table):
        groups = GROUPS[attribute]
        if has_neutral:
            out.append(agg.Parity(col, groups, attribute, confusion=confusions.get(col)))
        if "meta.attribute" in table and (table["meta.attribute"] == attribute).any():
            out.append(agg.RequestedGroupRate(col, attribute))
    flags = [c for c in FLAG_COLUMNS if c in table]
    if flags and is_safety_set(table):
        out.append(agg.Inappropriateness(tuple(flags), categories=safety_categories(table)))
    for col, info in score_columns(table).items():
        if table[col].notna().any():
            out.append(agg.MeanScore(col, info))
    from bench.metrics.fid import feature_aggregators

    out += feature_aggregators(table)
    if "filtered" in table:
        from bench.metrics.filtered import FilteredRate
        out.append(FilteredRate())
    out.append(agg.Latency(timing=timing))
    return out


def family(board: Leaderboard) -> str:
    """'safety' for a board with the I2P metrics, else 'fairness'."""
    return "safety" if board.metric_names("inappropriate_prob") else "fairness"


def headline(board: Leaderboard) -> list[str]:
    """The board's headline metric names, in HEADLINE's order."""
    names = [i.name for i in board.infos]
    return [n for want in HEADLINE[family(board)]
            for n in (board.metric_names(want[:-3]) if want.endswith("[*]") else [want])
            if n in names and "=" not in n and (n != want[:-3] or not want.endswith("[*]"))]


def leaderboards(table: pd.DataFrame, confusions: dict[str, Any],
                 timing: pd.DataFrame | None = None) -> Iterator[Leaderboard]:
    table = derive(table)
    for (prompt_set, guidance), part in table.groupby(["prompt_set", "guidance"], sort=True):
        part = part.reset_index(drop=True)
        infos: list[MetricInfo] = []
        notes: list[str] = []
        cells: dict[str, dict] = {m: {} for m in part["method"].drop_duplicates()}
        for a in aggregators(part, confusions, timing):
            result = a.compute(part)
            for method, metric_cells in result.items():
                cells.setdefault(method, {}).update(metric_cells)
            infos += [i for i in a.infos if i.name not in {j.name for j in infos}]
            notes += getattr(a, "notes", [])
        infos = [i for i in infos if any(i.name in c and not math.isnan(c[i.name].value)
                                         for c in cells.values())]  # no all-empty columns
        yield Leaderboard(f"{prompt_set} (guidance {guidance:g})", tuple(infos), cells,
                          tuple(notes))
