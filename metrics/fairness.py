"""Fairness, deeper (issue 20): intersectional parity, over-correction, per-group quality.

* `IntersectionalParity`: parity over the joint groups of two attributes (race x gender) from
  the same per-image labels, with Parity's CIs, paired comparison and confusion correction (the
  joint confusion is the Kronecker product of the two, errors independent given the truth).
* `OverrideRate`: on prompts that fix the group by fact or by request, how often a method shows
  another group where the baseline, on the same prompt and seed, showed the requested one.
* `RequestedGroupQuality`: a per-image score (CLIPScore, aesthetics) per requested group and the
  largest gap between groups, with CIs from a bootstrap over images within groups.

Definitions, statistics and the peers' conventions: docs/metrics.md.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bench.metrics import stats
from bench.metrics.aggregators import (BASELINE, PAIR_KEYS, Parity, _Bootstrapped, _cell,
                                       _floats, neutral_rows)
from bench.metrics.base import Aggregate, Cell, MetricInfo


def requested_hits(df: pd.DataFrame, label_column: str) -> np.ndarray:
    """1 where the label is the requested `meta.group` (case- and space-insensitive), 0 another
    group, NaN no label."""
    label = df[label_column].astype(object)
    wanted = df["meta.group"].astype(str).str.strip().str.casefold()
    got = label.where(label.isna(), label.astype(str).str.strip().str.casefold())
    return np.where(got.isna(), np.nan, (got == wanted).astype(float))


def group_specified(df: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """Rows of prompts that fix `attribute` (by fact or by request): meta.attribute and
    meta.group."""
    return df[df["meta.attribute"].eq(attribute) & df["meta.group"].notna()]


def _fixes(table: pd.DataFrame, attribute: str) -> bool:
    return ("meta.attribute" in table and "meta.group" in table
            and bool((table["meta.attribute"].eq(attribute) & table["meta.group"].notna()).any()))


class IntersectionalParity(Parity):
    """Parity over the joint groups of two label columns, e.g. race x gender ->
    `parity_l2[race*gender]`.

    Neutral prompts only, as Parity; an image counts when both labels exist (`no_face_rate`
    is then the share without both). Groups are named 'White/male', ... (`stats.joint_groups`).
    """

    def __init__(self, label_columns: Sequence[str], groups: Sequence[Sequence[str]],
                 attributes: Sequence[str],
                 confusions: Sequence[np.ndarray | None] = (None, None), **kw: object) -> None:
        if not (len(label_columns) == len(groups) == len(attributes) == 2):
            raise ValueError("IntersectionalParity: give two label columns, two group lists and "
                             f"two attributes (got {list(label_columns)}, {list(attributes)})")
        self.label_columns = list(label_columns)
        self.parts = [list(g) for g in groups]
        confusion = None
        if all(c is not None for c in confusions):
            confusion = stats.joint_confusion(
                *(stats.check_confusion(c, len(g)) for c, g in zip(confusions, self.parts)))
        super().__init__(label_columns[0], stats.joint_groups(*self.parts),
                         "*".join(attributes), confusion=confusion, **kw)  # type: ignore[arg-type]
        self.requires = tuple(dict.fromkeys(c.split(".")[0] for c in self.label_columns))

    def applies(self, table: pd.DataFrame) -> bool:
        return all(c in table for c in self.label_columns) and super().applies(table)

    def _neutral(self, table: pd.DataFrame) -> pd.DataFrame:
        df = self._prepare(table, self.label_columns)
        df = df[neutral_rows(df)]
        return df.assign(_code=self.codes(df))

    def codes(self, df: pd.DataFrame) -> np.ndarray:
        codes = []
        for col, groups in zip(self.label_columns, self.parts):
            try:
                codes.append(stats.encode_labels([None if pd.isna(x) else x for x in df[col]],
                                                 groups))
            except ValueError as e:
                raise ValueError(f"Parity({self.attribute}) column '{col}': {e}") from None
        return stats.cross_codes(codes[0], codes[1], len(self.parts[1]))


class OverrideRate(_Bootstrapped):
    """Over-correction: `override_rate[<attribute>]` per method other than the baseline.

    On prompts that fix the group (meta.attribute, meta.group), images pair with the baseline's
    on (prompt_id, seed, sample); the rate is (pairs where the baseline shows the requested group
    and the method another) / (pairs where the baseline shows it and the method has a label).
    The CI resamples prompts, then pairs within a prompt (`stats.bootstrap`).
    """

    def __init__(self, label_column: str, attribute: str, baseline: str = BASELINE,
                 **boot: object) -> None:
        super().__init__(**boot)  # type: ignore[arg-type]
        self.label_column, self.attribute, self.baseline = label_column, attribute, baseline
        self.requires = (label_column.split(".")[0],)
        self.infos = (MetricInfo(
            self.name, "", False,
            f"share of images of {attribute}-fixed prompts that show another group where the "
            f"baseline's image (same prompt and seed) shows the requested one"),)

    @property
    def name(self) -> str:
        return f"override_rate[{self.attribute}]"

    def applies(self, table: pd.DataFrame) -> bool:
        """The label column is there and some prompt fixes a group of this attribute."""
        return self.label_column in table and _fixes(table, self.attribute)

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = group_specified(self._prepare(table, [self.label_column, "meta.attribute",
                                                   "meta.group"]), self.attribute)
        df = df.assign(_hit=requested_hits(df, self.label_column))
        base = df[df["method"] == self.baseline]
        if df.empty or base.empty:
            return Aggregate({}, [f"{self.name}: " + (
                "no prompt fixing the group in this prompt set" if df.empty
                else f"no '{self.baseline}' images to pair with")])
        keys = [c for c in PAIR_KEYS if c in df.columns]
        result: dict[str, dict[str, Cell]] = {}
        notes: list[str] = []
        for method, g in df[df["method"] != self.baseline].groupby("method", sort=False):
            pairs = g.merge(base, on=keys, suffixes=("", "_b"))
            values, mask = stats.pad_by_prompt(pairs["prompt_id"],
                                               pairs[["_hit", "_hit_b"]].to_numpy(float))
            asked = int(((pairs["_hit_b"] == 1) & pairs["_hit"].notna()).sum())
            est = self._boot(values, mask, stats.override_rate, str(method), "override")[0]
            result[str(method)] = {self.name: _cell(est, asked)}
            if len(pairs) < len(g):
                notes.append(f"{self.name} {method}: {len(g) - len(pairs)} of {len(g)} images "
                             f"have no baseline image with the same {'/'.join(keys)}; left out")
        return Aggregate(result, notes)


class RequestedGroupQuality(_Bootstrapped):
    """A per-image score per requested group: `<name>[<attribute>=<group>]` and the largest gap
    `<name>_gap[<attribute>]` (max - min of the group means), over group-specified prompts.

    CIs resample images within each group (the groups' sizes are fixed by the prompt set); the
    notes name each method's lowest and highest group.
    """

    def __init__(self, column: str, info: MetricInfo, attribute: str, groups: Sequence[str],
                 **boot: object) -> None:
        super().__init__(**boot)  # type: ignore[arg-type]
        if len(groups) < 2:
            raise ValueError(f"RequestedGroupQuality({info.name}, {attribute}): need at least 2 "
                             f"groups, got {list(groups)}")
        self.column, self.info, self.attribute, self.groups = column, info, attribute, list(groups)
        self.requires = (column.split(".")[0],)
        a, u, hb = attribute, info.unit, info.higher_is_better
        self.infos = (
            *(MetricInfo(f"{info.name}[{a}={g}]", u, hb,
                         f"{info.name} over images of prompts requesting {a} {g}")
              for g in self.groups),
            MetricInfo(f"{info.name}_gap[{a}]", u, False,
                       f"largest difference between the per-requested-{a} means of {info.name} "
                       "(max - min; CI: bootstrap over images within groups)"))

    def applies(self, table: pd.DataFrame) -> bool:
        """The score column is there and some prompt requests a group of this attribute."""
        return self.column in table and _fixes(table, self.attribute)

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = group_specified(self._prepare(table, [self.column, "meta.attribute", "meta.group"]),
                             self.attribute)
        name, a, k = self.info.name, self.attribute, len(self.groups)
        notes = [f"{name}_gap[{a}]: no prompt requesting a {a} group here"] if df.empty else []
        result: dict[str, dict[str, Cell]] = {}
        for method, g in df.groupby("method", sort=False):
            try:
                codes = stats.encode_labels(list(g["meta.group"]), self.groups)
            except ValueError as e:
                raise ValueError(f"{name}_gap[{a}] meta.group: {e}") from None
            x = _floats(g[self.column])
            means, gap = stats.group_means_and_gap(x, codes, k, self._rng(str(method), name, a),
                                                   self.n_boot)
            ns = [int((np.isfinite(x) & (codes == i)).sum()) for i in range(k)]
            cells = {f"{name}[{a}={grp}]": _cell(e, n) for grp, e, n in zip(self.groups, means, ns)}
            cells[f"{name}_gap[{a}]"] = _cell(gap, sum(ns))
            result[str(method)] = cells
            if np.isfinite(gap.value):
                v = [e.value if np.isfinite(e.value) else np.nan for e in means]
                notes.append(f"{name}_gap[{a}] {method}: lowest {self.groups[np.nanargmin(v)]}"
                             f", highest {self.groups[np.nanargmax(v)]}")
        return Aggregate(result, notes)
