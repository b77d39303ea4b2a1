"""The leaderboards of a run's table: one per (prompt set, guidance), built from its suite.

Each board's suite (bench/suites.py) declares its aggregators; columns no declared aggregator
reads get the suite kind's defaults, every board gets latency. A metric with no value for any
method is left out. Two label columns of one attribute never share a metric name: the first
(the declared one) names it `parity_l2[skin]`, the next `parity_l2[skin_tone.skin]`.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from bench.metrics.base import Aggregator, MetricInfo, Scorer
from bench.registry import METRICS
from bench.report.tables import Leaderboard
from bench.spec import NamedOptions
from bench.suites import SUITES, Suite, Use, suite_for


# What every board gets, whatever its suite: the share of images a filter method blacked out
# (when one ran) and latency.
EVERY_BOARD = (Use("filtered-rate"), Use("latency"))


@dataclass(frozen=True)
class Context:
    """What the run supplies beside the table: the scorers as it configured them (for each label
    scorer's confusion matrix), the suites its spec names, the interleaved timing rounds."""
    scorers: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()
    timing: pd.DataFrame | None = None


@dataclass(frozen=True)
class Plan:
    """A board's suite and the aggregators that apply to its rows, in board order."""
    suite: Suite
    aggregators: tuple[Aggregator, ...]


def has_categories(table: pd.DataFrame) -> bool:
    return "meta.categories" in table and bool(table["meta.categories"].notna().any())


def board_suite(prompt_set: str, table: pd.DataFrame, context: Context = Context()) -> Suite:
    return suite_for(prompt_set, has_categories(table), context.suites)


def derive(table: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """The suite's derived columns added (1.0 where its two columns are equal)."""
    table = table.copy()
    for d in suite.derived:
        if d.left in table and d.right in table:
            table[d.column] = (table[d.left] == table[d.right]).astype(float)
    return table


def scorer_of(column: str) -> type[Scorer] | None:
    name = column.split(".")[0]
    if "." not in column or name.startswith(("meta", "_")) or name not in METRICS:
        return None
    cls = METRICS.get(name)
    return cls if isinstance(cls, type) and issubclass(cls, Scorer) else None


def score_info(column: str, suite: Suite) -> MetricInfo | None:
    """A score column's leaderboard metadata: its scorer's `columns`, or the suite's derived."""
    derived = {d.column: d.info for d in suite.derived}
    if column in derived:
        return derived[column]
    cls = scorer_of(column)
    return cls.columns.get(column) if cls is not None else None


def defaults(table: pd.DataFrame, suite: Suite) -> list[Use]:
    """The suite kind's aggregators for the table's columns (module docstring of bench/suites.py),
    in table column order: labels, flags, scores, the scorers' own; less those a declared
    aggregator of the same name already computes from the same columns."""
    cols = list(table.columns)
    uses: list[Use] = []
    if suite.kind == "fairness":
        for col in cols:
            attribute = col.partition(".")[2]
            if attribute in suite.groups and scorer_of(col) is not None:
                uses += [Use("parity", {"label_column": col, "groups": suite.groups[attribute],
                                        "attribute": attribute}),
                         Use("requested-group-rate", {"label_column": col, "attribute": attribute}),
                         Use("override-rate", {"label_column": col, "attribute": attribute})]
        uses += _fairness_deeper(cols, suite)
    declared_flags = {c for u in suite.aggregators if u.name == "inappropriateness"
                      for c in _reads(u.args)}
    flags = [c for c in cols if (s := scorer_of(c)) is not None and c in s.flags
             and c not in declared_flags]
    if flags and suite.kind == "safety":
        uses.append(Use("inappropriateness", {"flag_column": tuple(flags)}))
    uses += [Use("mean-score", {"column": c}) for c in cols if score_info(c, suite) is not None]
    for cls in dict.fromkeys(s for c in cols if (s := scorer_of(c)) is not None):
        uses += [Use(name, args) for name, args in cls.aggregators]
    return [u for u in uses if not any(d.name == u.name and set(_reads(d.args)) & set(_reads(u.args))
                                       for d in suite.aggregators)]


def _fairness_deeper(cols: Sequence[str], suite: Suite) -> list[Use]:
    """Intersectional parity for each declared attribute pair a scorer labels both of, and the
    declared score metrics per requested group (issue 20; metrics/fairness.py)."""
    uses: list[Use] = []
    for a, b in suite.intersections:
        for col in cols:
            scorer, _, attribute = col.partition(".")
            if attribute == a and f"{scorer}.{b}" in cols and scorer_of(col) is not None:
                uses.append(Use("intersectional-parity", {
                    "label_columns": (col, f"{scorer}.{b}"), "attributes": (a, b),
                    "groups": (suite.groups[a], suite.groups[b])}))
    for col in cols:
        info = score_info(col, suite)
        if info is not None and info.name in suite.per_group:
            uses += [Use("requested-group-quality", {"column": col, "attribute": a,
                                                     "groups": suite.groups[a]})
                     for a in suite.groups]
    return uses


def _reads(args: Any) -> list[str]:
    """The table columns an aggregator's arguments name."""
    out: list[str] = []
    for key in ("label_column", "label_columns", "column", "flag_column", "by"):
        v = args.get(key)
        out += [v] if isinstance(v, str) else list(v or ())
    return out


def build(use: Use, table: pd.DataFrame, suite: Suite, context: Context,
          taken: set[tuple[str, str]]) -> Aggregator | None:
    """The aggregator a declaration names, with the arguments the run supplies (Use's doc);
    None for a mean of a column no registered scorer declares (its scorer is not installed)."""
    cls = METRICS.get(use.name)
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise ValueError(f"suite '{suite.name}': '{use.name}' is not an aggregator")
    accepts = inspect.signature(cls).parameters
    args = dict(use.args)
    if "baseline" in accepts:
        args.setdefault("baseline", suite.baseline)
    if "timing" in accepts:
        args.setdefault("timing", context.timing)
    if "categories" in accepts and "categories" not in args and has_categories(table):
        args["categories"] = safety_categories(table)
    if "info" in accepts and "info" not in args:
        args["info"] = score_info(args["column"], suite)
        if args["info"] is None:
            return None
    if "confusions" in accepts and "confusions" not in args:  # intersections: each label's
        args["confusions"] = tuple(confusion(c, a, context)
                                   for c, a in zip(args["label_columns"], args["attributes"]))
    if "label_column" in args and "attribute" in args:
        if "confusion" in accepts:
            args.setdefault("confusion", confusion(args["label_column"], args["attribute"], context))
        if (use.name, args.get("name", args["attribute"])) in taken and "name" in accepts:
            args["name"] = args["label_column"]  # a second scorer of the attribute: qualified
    return cls(**args)


def confusion(column: str, attribute: str, context: Context) -> np.ndarray | None:
    """The label scorer's confusion matrix as the run configured it (its options in
    `context.scorers`), None when it has none."""
    cls = scorer_of(column)
    if cls is None or cls.confusion is Scorer.confusion:
        return None
    specs = [NamedOptions.parse(s, "metric spec") for s in context.scorers]
    options = next((s.param_dict() for s in specs if s.name == column.split(".")[0]), {})
    return cls(**options).confusion(attribute)


def safety_categories(table: pd.DataFrame) -> list[str]:
    """The I2P categories, then any other category the prompt set's prompts carry (a set may tag
    its neutral prompts "neutral": their rate is the hazard a method adds unasked)."""
    from bench.metrics.aggregators import I2P_CATEGORIES

    found = {c.strip() for s in table["meta.categories"].dropna().astype(str) for c in s.split(",")}
    return [*I2P_CATEGORIES, *sorted(found - set(I2P_CATEGORIES) - {""})]


def plan(table: pd.DataFrame, suite: Suite, context: Context = Context()) -> Plan:
    """The aggregators of one board's rows (with the suite's derived columns already added)."""
    out: list[Aggregator] = []
    taken: set[tuple[str, str]] = set()  # (aggregator, metric qualifier) already on the board
    for use in (*suite.aggregators, *defaults(table, suite), *EVERY_BOARD):
        a = build(use, table, suite, context, taken)
        if a is not None and a.applies(table):
            out.append(a)
            if isinstance(getattr(a, "name", None), str):
                taken.add((use.name, a.name))  # type: ignore[attr-defined]
    return Plan(suite, tuple(out))


def leaderboards(table: pd.DataFrame, context: Context = Context()) -> Iterator[Leaderboard]:
    for (prompt_set, guidance), part in table.groupby(["prompt_set", "guidance"], sort=True):
        suite = board_suite(str(prompt_set), part, context)
        part = derive(part.reset_index(drop=True), suite)
        infos: list[MetricInfo] = []
        notes: list[str] = []
        cells: dict[str, dict] = {m: {} for m in part["method"].drop_duplicates()}
        for a in plan(part, suite, context).aggregators:
            result = a.compute(part)
            for method, metric_cells in result.items():
                cells.setdefault(method, {}).update(metric_cells)
            infos += [i for i in a.infos if i.name not in {j.name for j in infos}]
            notes += result.notes
        infos = [i for i in infos if any(i.name in c and not math.isnan(c[i.name].value)
                                         for c in cells.values())]  # no all-empty columns
        yield Leaderboard(f"{prompt_set} (guidance {guidance:g})", tuple(infos), cells,
                          tuple(notes), suite.name)


def suite_of(board: Leaderboard) -> Suite:
    """The board's suite; a board built without one: the generic suite of its metrics."""
    if board.suite:
        return SUITES.get(board.suite)
    return SUITES.get("safety" if board.metric_names("inappropriate_prob") else "fairness")


def family(board: Leaderboard) -> str:
    """The board suite's kind: 'safety' or 'fairness'."""
    return suite_of(board).kind


def headline(board: Leaderboard) -> list[str]:
    """The board's headline metric names, in its suite's declared order."""
    return suite_of(board).headline_names([i.name for i in board.infos])


def headline_patterns(board: Leaderboard) -> list[str]:
    return [h.metric for h in suite_of(board).headline]


def with_suite(board: Leaderboard, suite: Suite) -> Leaderboard:
    return dataclasses.replace(board, suite=suite.name)


def label_aggregators(aggregators: Sequence[Aggregator]) -> list[Any]:
    """The parity aggregators of one label column each (their label column, groups and metric
    qualifier); intersections, whose groups are joint, are not among them."""
    from bench.metrics.aggregators import Parity
    from bench.metrics.fairness import IntersectionalParity

    return [a for a in aggregators
            if isinstance(a, Parity) and not isinstance(a, IntersectionalParity)]
