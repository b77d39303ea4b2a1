"""Leaderboard tables: methods as rows, metrics as columns, `value ± CI half-width`, an arrow for
the better direction, the best value marked. Markdown, CSV (long, one row per cell), LaTeX
(booktabs) and HTML fragments. Method specs, metric names, titles and notes carry user text
(prompt-set names, categories, method parameters): each goes through `bench.escape`."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.escape import csv_cell, html_text, md_text, tex_comment, tex_text
from metrics.base import Cell, MetricInfo


@dataclass(frozen=True)
class Leaderboard:
    title: str  # e.g. "world-occupations (guidance 7.5)"
    infos: tuple[MetricInfo, ...]
    cells: dict[str, dict[str, Cell]]  # method -> metric name -> cell
    notes: tuple[str, ...] = ()  # why a cell is empty, what was excluded

    def metric_names(self, prefix: str) -> list[str]:
        """Metrics named `prefix` or `prefix[qualifier]`, e.g. parity_l2[skin]."""
        return [i.name for i in self.infos if i.name == prefix or i.name.startswith(prefix + "[")]

    def methods(self) -> list[str]:
        return list(self.cells)

    def best(self, metric: MetricInfo) -> str | None:
        values = {m: c[metric.name].value for m, c in self.cells.items()
                  if metric.name in c and not math.isnan(c[metric.name].value)}
        if len(values) < 2:
            return None
        pick = max if metric.higher_is_better else min
        return pick(values, key=values.get)


def arrow(info: MetricInfo) -> str:
    return "↑" if info.higher_is_better else "↓"


def fmt(cell: Cell | None) -> str:
    if cell is None or math.isnan(cell.value):
        return "–"
    if math.isnan(cell.lo) or math.isnan(cell.hi):
        return f"{cell.value:.3g}"
    return f"{cell.value:.3g} ± {(cell.hi - cell.lo) / 2:.2g}"


def _rows(board: Leaderboard, mark: callable) -> list[list[str]]:
    best = {i.name: board.best(i) for i in board.infos}
    rows = []
    for method, cells in board.cells.items():
        row = [method]
        for info in board.infos:
            text = fmt(cells.get(info.name))
            row.append(mark(text) if best[info.name] == method else text)
        rows.append(row)
    return rows


def markdown(board: Leaderboard) -> str:
    """The board as a GFM table and its notes as list items (no heading: see `markdown_doc`)."""
    head = ["method"] + [f"{md_text(i.name)} {arrow(i)}" for i in board.infos]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _rows(board, lambda t: f"**{t}**"):
        lines.append("| " + " | ".join([md_text(row[0]), *row[1:]]) + " |")
    lines += [f"\n- {md_text(n)}" for n in board.notes]
    return "\n".join(lines) + "\n"


def markdown_doc(boards: list[Leaderboard]) -> str:
    """RUN/leaderboard.md: one `## title` section per board."""
    return "".join(f"## {md_text(b.title)}\n\n{markdown(b)}\n" for b in boards)


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


STRING_COLUMNS = ("table", "method", "metric", "unit")  # user text; the others are numbers


def csv(boards: list[Leaderboard]) -> str:
    """RUN/leaderboard.csv: every board's long frame, string cells made formula-inert."""
    frames = [long_frame(b) for b in boards]
    if not frames:
        return ""
    table = pd.concat(frames)
    for col in STRING_COLUMNS:
        if col in table:
            table[col] = table[col].map(csv_cell)
    return table.to_csv(index=False)


def latex(board: Leaderboard) -> str:
    arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
    head = ["method"] + [f"{tex_text(i.name)} {arrows[i.higher_is_better]}" for i in board.infos]
    body = _rows(board, lambda t: r"\textbf{" + t + "}")
    lines = [r"\begin{tabular}{l" + "r" * len(board.infos) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for row in body:
        cells = [tex_text(row[0])] + [c.replace("±", r"$\pm$").replace("–", "--") for c in row[1:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_doc(boards: list[Leaderboard]) -> str:
    """RUN/leaderboard.tex: each board's tabular after a `% title` comment line."""
    return "".join(f"% {tex_comment(b.title)}\n{latex(b)}\n" for b in boards)


def html_table(board: Leaderboard) -> str:
    esc = html_text
    head = "".join(f"<th title=\"{esc(i.description)}\">{esc(i.name)} {arrow(i)}</th>"
                   for i in board.infos)
    rows = []
    for row in _rows(board, lambda t: "\0" + t):
        tds = [f"<td>{esc(row[0])}</td>"]
        for c in row[1:]:
            tds.append(f"<td><strong>{esc(c[1:])}</strong></td>" if c.startswith("\0")
                       else f"<td>{esc(c)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in board.notes)
    return (f"<table><caption>{esc(board.title)}</caption><thead><tr><th>method</th>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else ""))
