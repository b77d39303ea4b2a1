"""Leaderboard tables: methods as rows, metrics as columns, an arrow for the better direction.

Cells print in one notation everywhere: `0.47 [0.39, 0.53]` is a value and its 95% CI;
`0.98 ± 0.01 sd` is a mean and one standard deviation (not a CI); a bare value has no interval
(p-values, n = 1, a zero-width interval). Bold marks only what is significantly best: the methods
holding the best value (all of them when tied) when their 95% CIs are disjoint from every other
method's; never a p-value or an sd cell. Markdown, CSV (long, one row per cell), LaTeX (booktabs,
caption and label) and HTML fragments. Method specs, metric names, titles and notes carry user
text (prompt-set names, categories, method parameters): each goes through `bench.escape`."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from bench.escape import csv_cell, html_text, md_text, tex_comment, tex_text
from bench.metrics.base import Cell, MetricInfo

NOTATION = ("Cells: value [95% CI] (percentile bootstrap over prompts); value ± sd where marked "
            "sd (one standard deviation, not a CI); a bare value has no interval (p-values, "
            "n = 1, zero-width intervals). Bold: the best value (every method holding it when "
            "tied) whose 95% CI is disjoint from every other method's; p-values and sd cells are "
            "never bold.")


# A finding is significant when its Holm-adjusted p-value is below this (bench/report/findings.py).
ALPHA = 0.05


@dataclass(frozen=True)
class Finding:
    method: str
    metric: MetricInfo
    diff: float  # metric(method) - metric(baseline) on the paired images
    lo: float  # 95% paired-bootstrap CI of diff
    hi: float
    p: float  # permutation p-value, unadjusted
    p_holm: float  # Holm-adjusted across the methods, per headline metric
    n_prompts: int

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA

    @property
    def better(self) -> bool:
        """Significant and in the metric's better direction."""
        return self.significant and (self.diff > 0) == self.metric.higher_is_better

    def verdict(self) -> str:
        """The finding in a few words: 'lowers it by 0.23 (better)', 'no significant difference'."""
        if not self.significant:
            return "no significant difference"
        verb = "raises" if self.diff > 0 else "lowers"
        return f"{verb} it by {fmt_num(abs(self.diff))} ({'better' if self.better else 'worse'})"

    def sentence(self) -> str:
        """'rs-corrector lowers parity_l2[skin] by 0.23 [0.15, 0.31], p_holm < 0.001, 16 prompts
        (better)': the size of a significant change and its CI as positive numbers."""
        name = self.metric.name
        p = f"p_holm {fmt_p(self.p_holm)}, {self.n_prompts} prompts"
        if not self.significant:
            return (f"{self.method}: no significant difference in {name} (difference "
                    f"{fmt_num(self.diff)} [{fmt_num(self.lo)}, {fmt_num(self.hi)}], {p})")
        verb, lo, hi = (("raises", self.lo, self.hi) if self.diff > 0
                        else ("lowers", -self.hi, -self.lo))
        judgement = "better" if self.better else "worse"
        return (f"{self.method} {verb} {name} by {fmt_num(abs(self.diff))} "
                f"[{fmt_num(lo)}, {fmt_num(hi)}], {p} ({judgement})")


def fmt_num(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}".replace("-", "−")


def fmt_p(p: float) -> str:
    """`< 0.001` or `= 0.012`; p-values print bare, never with an interval."""
    if not math.isfinite(p):
        return "= –"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}" if p < 0.1 else f"= {p:.2f}"


@dataclass(frozen=True)
class Leaderboard:
    title: str  # e.g. "occupations (guidance 7.5)"
    infos: tuple[MetricInfo, ...]
    cells: dict[str, dict[str, Cell]]  # method -> metric name -> cell
    notes: tuple[str, ...] = ()  # why a cell is empty, what was excluded
    suite: str = ""  # the suite it was built from (bench/suites.py): its headline, its kind

    def metric_names(self, prefix: str) -> list[str]:
        """Metrics named `prefix` or `prefix[qualifier]`, e.g. parity_l2[skin]."""
        return [i.name for i in self.infos if i.name == prefix or i.name.startswith(prefix + "[")]

    def methods(self) -> list[str]:
        return list(self.cells)

    def best(self, metric: MetricInfo) -> set[str]:
        """The methods to bold in this metric's column (see the module docstring)."""
        if metric.interval != "ci":
            return set()
        cells = {m: c[metric.name] for m, c in self.cells.items()
                 if metric.name in c and not math.isnan(c[metric.name].value)}
        if len(cells) < 2:
            return set()
        sign = 1 if metric.higher_is_better else -1
        top = max(sign * c.value for c in cells.values())
        tied = {m for m, c in cells.items() if math.isclose(sign * c.value, top, rel_tol=1e-9,
                                                              abs_tol=1e-12)}
        rest = [c for m, c in cells.items() if m not in tied]
        if not rest or any(math.isnan(cells[m].lo) for m in tied):
            return set()  # everyone ties: nobody is best
        worst_tied = min(min(sign * cells[m].lo, sign * cells[m].hi) for m in tied)
        best_rest = max(max(sign * c.lo, sign * c.hi) if not math.isnan(c.lo) else sign * c.value
                        for c in rest)
        return tied if worst_tied > best_rest else set()


def arrow(info: MetricInfo) -> str:
    return "↑" if info.higher_is_better else "↓"


# The name readers know a metric by from other papers, printed after ours in table headers:
# parity_l2 is the fairness discrepancy (FD) of ITI-GEN and its successors (docs/metrics.md).
ALIASES = {"parity_l2": "FD"}


def heading(name: str) -> str:
    """'parity_l2[skin] (FD)'; other names unchanged. Cells and the CSV keep the bare name."""
    alias = ALIASES.get(name.partition("[")[0])
    return f"{name} ({alias})" if alias else name


def _num(x: float) -> str:
    return f"{x:.3g}"


def parts(cell: Cell | None, info: MetricInfo) -> tuple[str, str]:
    """(value, interval) texts of a cell; the interval is '' when it prints bare."""
    if cell is None or math.isnan(cell.value):
        return "–", ""
    if info.interval == "none":
        return ("<0.001" if 0 <= cell.value < 0.001 else _num(cell.value)), ""
    if cell.n <= 1 or math.isnan(cell.lo) or math.isnan(cell.hi) or cell.lo == cell.hi:
        return _num(cell.value), ""
    if info.interval == "sd":
        return _num(cell.value), f"± {(cell.hi - cell.lo) / 2:.2g} sd"
    return _num(cell.value), f"[{_num(cell.lo)}, {_num(cell.hi)}]"


def fmt(cell: Cell | None, info: MetricInfo) -> str:
    value, interval = parts(cell, info)
    return f"{value} {interval}" if interval else value


def _rows(board: Leaderboard, render: Callable[[str, str, bool], str]) -> list[list[str]]:
    """Rows of [method, rendered cells...]; render(value, interval, bold)."""
    best = {i.name: board.best(i) for i in board.infos}
    return [[method] + [render(*parts(cells.get(i.name), i), method in best[i.name])
                        for i in board.infos]
            for method, cells in board.cells.items()]


# ------------------------------------------------------------------------- column choice


def column_filter(spec: str) -> Callable[[str], bool]:
    """`--columns`: comma list of metric names, prefixes (`parity_l2` takes `parity_l2[skin]`) or
    globs with * and ? (brackets literal)."""
    pats = [p.strip() for p in spec.split(",") if p.strip()]
    res = [re.compile(re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") + r"(\[.*\])?")
           for p in pats]
    return lambda name: any(r.fullmatch(name) for r in res)


def subset(board: Leaderboard, keep: Callable[[str], bool] | Sequence[str]) -> Leaderboard:
    """The board with only the kept metrics (in their order when a list is given)."""
    if callable(keep):
        infos = tuple(i for i in board.infos if keep(i.name))
    else:
        by_name = {i.name: i for i in board.infos}
        infos = tuple(by_name[n] for n in keep if n in by_name)
    return dataclasses.replace(board, infos=infos)


# ------------------------------------------------------------------------------- markdown


def markdown(board: Leaderboard, findings: Sequence[Finding] = ()) -> str:
    """The board as a GFM table, then findings and notes as list items (no heading)."""
    head = ["method"] + [f"{md_text(heading(i.name))} {arrow(i)}" for i in board.infos]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def render(value: str, interval: str, bold: bool) -> str:
        v = f"**{value}**" if bold else value
        return f"{v} {interval}" if interval else v

    for row in _rows(board, render):
        lines.append("| " + " | ".join([md_text(row[0]), *row[1:]]) + " |")
    if findings:
        lines += ["\nFindings against the baseline (paired difference, 95% bootstrap CI over "
                  "prompts, permutation p Holm-adjusted across the methods of each metric):\n"]
        lines += [f"- {md_text(f.sentence())}" for f in findings]
    lines += [f"\n- {md_text(n)}" for n in board.notes]
    return "\n".join(lines) + "\n"


def markdown_doc(boards: Sequence[Leaderboard], findings: dict[str, list[Finding]] | None = None
                 ) -> str:
    """RUN/leaderboard.md (full) or RUN/headline.md (with findings): a `## title` per board."""
    found = findings or {}
    return "".join(f"## {md_text(b.title)}\n\n{markdown(b, found.get(b.title, ()))}\n"
                   for b in boards)


# ------------------------------------------------------------------------------------ CSV


def long_frame(board: Leaderboard) -> pd.DataFrame:
    rows = []
    for method, cells in board.cells.items():
        for info in board.infos:
            c = cells.get(info.name)
            if c is not None:
                rows.append({"table": board.title, "method": method, "metric": info.name,
                             "value": c.value, "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n,
                             "higher_is_better": info.higher_is_better, "unit": info.unit})
    return pd.DataFrame(rows)


STRING_COLUMNS = ("table", "method", "metric", "unit", "interval", "finding")  # user text


def _csv_text(table: pd.DataFrame) -> str:
    for col in STRING_COLUMNS:
        if col in table:
            table[col] = table[col].map(csv_cell)
    return table.to_csv(index=False)


def csv(boards: Sequence[Leaderboard]) -> str:
    """RUN/leaderboard.csv: every board's long frame, string cells made formula-inert. `bench
    compare` reads this shape: keep its columns."""
    frames = [long_frame(b) for b in boards]
    return _csv_text(pd.concat(frames)) if frames else ""


def headline_csv(boards: Sequence[Leaderboard], findings: dict[str, list[Finding]]) -> str:
    """RUN/headline.csv: the headline cells, what their interval is, and each method's paired
    difference to the baseline with its CI, permutation p and Holm p."""
    frames = []
    for b in boards:
        frame = long_frame(b)
        if frame.empty:
            continue
        kinds = {i.name: i.interval for i in b.infos}
        best = {i.name: b.best(i) for i in b.infos}
        frame["interval"] = frame["metric"].map(kinds)
        frame["bold"] = [m in best[x] for m, x in zip(frame["method"], frame["metric"])]
        by = {(f.method, f.metric.name): f for f in findings.get(b.title, ())}
        for col, get in (("diff", lambda f: f.diff), ("diff_lo", lambda f: f.lo),
                         ("diff_hi", lambda f: f.hi), ("p", lambda f: f.p),
                         ("p_holm", lambda f: f.p_holm), ("finding", lambda f: f.sentence())):
            frame[col] = [get(by[k]) if k in by else None
                          for k in zip(frame["method"], frame["metric"])]
        frames.append(frame)
    return _csv_text(pd.concat(frames)) if frames else ""


# ---------------------------------------------------------------------------------- LaTeX


def _tex_render(value: str, interval: str, bold: bool) -> str:
    v = (r"\textbf{" + value + "}" if bold else value).replace("–", "--").replace("<", r"$<$")
    if not interval:
        return v
    return v + r" {\scriptsize" + interval.replace("±", r"$\pm$") + "}"


def _label(title: str, kind: str) -> str:
    return f"tab:{kind}-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "table")


def latex(board: Leaderboard, kind: str = "full", caption: str = "") -> str:
    """A `table` float: booktabs tabular scaled down to \\textwidth when wider, caption, label.
    Needs \\usepackage{booktabs,graphicx}."""
    arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
    head = ["method"] + [f"{tex_text(heading(i.name))} {arrows[i.higher_is_better]}"
                         for i in board.infos]
    lines = [r"\begin{table}[htbp]", r"\centering",
             r"\caption{" + tex_text(board.title) + (". " + caption if caption else "") + "}",
             r"\label{" + _label(board.title, kind) + "}",
             r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
             r"\begin{tabular}{l" + "r" * len(board.infos) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for row in _rows(board, _tex_render):
        lines.append(" & ".join([tex_text(row[0]), *row[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


TEX_CAPTION = ("Cells: value {\\scriptsize[95\\% CI]}; {\\scriptsize$\\pm$ sd} marks one standard "
               "deviation (not a CI); bare values have no interval. Bold: best, with a 95\\% CI "
               "disjoint from every other method's.")


def latex_doc(boards: Sequence[Leaderboard], kind: str = "full") -> str:
    """RUN/leaderboard.tex (kind full) or RUN/headline.tex: one table float per board."""
    head = (r"% bench leaderboards; needs \usepackage{booktabs,graphicx}" + "\n")
    return head + "".join(f"% {tex_comment(b.title)}\n{latex(b, kind, TEX_CAPTION)}\n"
                          for b in boards)


# ----------------------------------------------------------------------------------- HTML


def _html_render(value: str, interval: str, bold: bool) -> str:
    v = f"<strong>{html_text(value)}</strong>" if bold else html_text(value)
    return v + (f" <span class='ci'>{html_text(interval)}</span>" if interval else "")


def _breakable(name: str) -> str:
    """Line-break opportunities after '_' and before '[' so headers wrap at word parts."""
    return name.replace("_", "_<wbr>").replace("[", "<wbr>[")


def html_table(board: Leaderboard, caption: str | None = None) -> str:
    """A table whose method column stays in view when it scrolls sideways (page.STYLE)."""
    esc = html_text
    head = "".join(f"<th>{_breakable(esc(heading(i.name)))}&nbsp;{arrow(i)}</th>"
                   for i in board.infos)
    rows = ["<tr><th scope='row'>" + esc(row[0]) + "</th>"
            + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
            for row in _rows(board, _html_render)]
    return (f"<div class='scroll'><table><caption>{esc(caption or board.title)}</caption>"
            f"<thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></div>")


def html_notes(board: Leaderboard) -> str:
    notes = "".join(f"<li>{html_text(n)}</li>" for n in board.notes)
    return f"<ul class='notes'>{notes}</ul>" if notes else ""
