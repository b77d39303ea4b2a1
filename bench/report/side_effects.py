"""The side-effect matrix (issue 19): every method's effect against the baseline on every axis.

Rows are the methods other than the baseline; columns are the axes each board's suite declares,
like its headline (`Suite.side_effects`, bench/suites.py): hazard on safety suites, parity, the
requested-group and override rates on fairness suites, quality and CLIPScore everywhere, then
latency. A cell is the method's paired difference
from the baseline on the same prompts and seeds with its 95% bootstrap CI over prompts (the
findings' statistic, `findings.compare`); metrics that are already measured against the baseline
(`override_rate`, `latency_ratio`) show the board's own cell. It answers "what does erasing a
hazard do to the demographic mix?" and "what does debiasing do to the hazard rate?".
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import pandas as pd

from bench.metrics.aggregators import BASELINE
from bench.metrics.base import Cell, MetricInfo
from bench.report import boards as boards_mod
from bench.report import findings as findings_mod
from bench.report.tables import Finding, Leaderboard

TITLE = "Side effects against the baseline"
# Already a comparison with the baseline: the matrix shows the board's cell as it is.
AS_IS = ("override_rate", "latency_ratio", "fid_baseline")
LATENCY = "latency_ratio"  # one column for the run, from the first board that has it
INTERVAL = "effect"  # prints [lo, hi] like a CI, never bold (tables.Leaderboard.best)


def axes(board: Leaderboard) -> list[MetricInfo]:
    """The board's metrics on its suite's side-effect axes, in declared order."""
    by_name = {i.name: i for i in board.infos}
    return [by_name[n] for n in boards_mod.suite_of(board).side_effect_names(list(by_name))]


def _column(info: MetricInfo, where: str, effect: bool) -> MetricInfo:
    what = ("difference from the baseline (same prompts and seeds) of " if effect else "") + \
        f"{info.name} on {where}: {info.description}"
    return dataclasses.replace(info, name=f"{info.name} @ {where}", description=what,
                               interval=INTERVAL)


def matrix(boards: Sequence[Leaderboard], parts: Sequence[pd.DataFrame],
           found: dict[str, list[Finding]] | None = None,
           baseline: str = BASELINE) -> Leaderboard | None:
    """The matrix over a run's boards (with each board's rows); `found` reuses the headline
    findings already computed. None when no board has the baseline and another method."""
    found = found or {}
    methods = list(dict.fromkeys(m for b in boards for m in b.methods() if m != baseline))
    infos: list[MetricInfo] = []
    cells: dict[str, dict[str, Cell]] = {m: {} for m in methods}
    sets = [b.title.rsplit(" (guidance ", 1)[0] for b in boards]
    for board, part, where in zip(boards, parts, sets):
        if baseline not in board.cells:
            continue
        where = where if sets.count(where) == 1 else board.title  # the guidance when several
        known = {(f.method, f.metric.name): f for f in found.get(board.title, ())}
        wanted = axes(board)
        todo = [i for i in wanted if i.name.split("[")[0] not in AS_IS
                and any((m, i.name) not in known for m in board.methods() if m != baseline)]
        known.update({(f.method, f.metric.name): f
                      for f in findings_mod.findings(part, board, todo, baseline)})
        for info in wanted:
            as_is = info.name.split("[")[0] in AS_IS
            col = _column(info, where, not as_is)
            for method in board.methods():
                if method == baseline:
                    continue
                if as_is:
                    cell = board.cells[method].get(info.name)
                elif (f := known.get((method, info.name))) is not None:
                    cell = Cell(f.diff, f.lo, f.hi, f.n_prompts)
                else:
                    cell = None
                if cell is not None:
                    cells[method][col.name] = cell
            infos.append(col)
    latency = next((b for b in boards if b.metric_names(LATENCY) and baseline in b.cells), None)
    if latency is not None:
        info = next(i for i in latency.infos if i.name == LATENCY)
        infos.append(dataclasses.replace(info, interval=INTERVAL))
        for method in methods:
            if LATENCY in latency.cells.get(method, {}):
                cells[method][LATENCY] = latency.cells[method][LATENCY]
    if not methods or not infos:
        return None
    notes = ("Each cell: the method minus the baseline on the same prompts and seeds (paired "
             "bootstrap over prompts, 95% CI); override_rate, fid_baseline and latency_ratio are "
             "measured against the baseline already and show their own cell (latency_ratio: "
             f"timed on {latency.title if latency else '-'}). Columns name the prompt set (and the "
             "guidance when a set ran at several).",)
    return Leaderboard(TITLE, tuple(infos), cells, notes)
