"""A self-contained HTML report a reviewer can read on screen and print.

Per board (prompt set and guidance): the headline table, the findings against the baseline in
words, definitions and n of its metrics, captioned figures, the image grid and a per-prompt
drill-down; then every board's full table. On screen a wide table scrolls inside its own box with
the method column held in place; in print (A4 landscape) the same tables are split into column
groups so nothing is cut. Definitions are written out, not hidden in tooltips.

Prompts, set names, method specs, categories and warnings are untrusted text (I2P holds arbitrary
strings): everything written into the page goes through `bench.escape.html_text`; images are
inlined as base64 data URIs so the page travels alone.
"""
from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from bench.escape import html_text
from bench.manifest import Manifest
from bench.report import boards as boards_mod
from bench.report import findings as findings_mod
from bench.report.plots import Figure
from bench.report.tables import (NOTATION, Finding, Leaderboard, fmt_num, fmt_p, html_notes,
                                 html_table)
from bench.metrics import stats
from bench.spec import RunSpec

esc = html_text
PRINT_COLUMNS = 6  # metric columns per table in print
DRILL_PROMPTS = 40  # prompts per drill-down table

STYLE = """
@page{size:A4 landscape;margin:12mm}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:14px;line-height:1.45;
 margin:1.5em auto;max-width:1300px;padding:0 1em;color:#111}
h1{font-size:1.6em}h2{border-bottom:2px solid #333;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
caption{text-align:left;font-weight:600;padding:2px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap;
 vertical-align:top}
thead th{white-space:normal;min-width:6em;max-width:11em;text-align:right}
table.findings td.prompt{min-width:10em;max-width:40em}
th[scope=row],thead th:first-child{text-align:left;position:sticky;left:0;background:#fff;
 z-index:1;white-space:nowrap;border-right:1px solid #ccc;min-width:0;max-width:none}
.ci{color:#444;font-size:.88em}
.scroll{overflow-x:auto;max-width:100%}
.tall{max-height:28em;overflow-y:auto}
.settings td,.settings th{text-align:left;white-space:normal}
figure{margin:1em 0;break-inside:avoid}figure img{max-width:100%;height:auto;display:block}
figure.plot img{width:860px}
figcaption{font-size:13px;color:#222;max-width:860px}
dl.defs{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px}
dl.defs dt{font-family:ui-monospace,monospace;font-weight:600}dl.defs dd{margin:0}
ul.findings li{margin:2px 0}.sig{font-weight:600}
td.prompt,th.prompt{text-align:left;white-space:normal;min-width:16em;max-width:24em}
code{background:#f4f4f4;padding:1px 3px}
.print-only{display:none}
@media print{body{font-size:11px;max-width:none;margin:0;padding:0}
 .screen-only{display:none}.print-only{display:block}
 .scroll,.tall{overflow:visible;max-height:none}
 table{font-size:10px;break-inside:auto}tr{break-inside:avoid}
 thead{display:table-header-group}figure.plot img{width:560px}
 h2{break-before:page}h2.first{break-before:auto}}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{esc(path.name)}" src="data:image/png;base64,{data}">'


def figure(fig: Figure, kind: str = "plot") -> str:
    path, caption = fig
    return f"<figure class='{kind}'>{_img(path)}<figcaption>{esc(caption)}</figcaption></figure>"


def images_per_prompt(spec: RunSpec) -> str | int:
    """'24 for occupations.neutral, 2 for ...; 4 otherwise' when the grid is sized by
    prompt kind, else the uniform count."""
    if not spec.samples_by_kind:
        return spec.samples
    kinds = "; ".join(f"{n} for {kind}" for kind, n in spec.samples_by_kind)
    return f"{kinds}; {spec.samples} otherwise"


def settings(manifest: Manifest, n_images: int | None = None) -> str:
    """The run's settings as a two-column table (only what the manifest records)."""
    spec, model = manifest.spec, manifest.model
    rows = [
        ("model", f"{model.name} (fingerprint {model.fingerprint})"),
        ("scheduler", model.scheduler or spec.sampler.scheduler),
        ("dtype", model.dtype or spec.dtype),
        ("images per prompt", images_per_prompt(spec)),
        ("steps", spec.sampler.steps),
        ("guidance", ", ".join(f"{g:g}" for g in spec.guidance) or None),
        ("seed", spec.seed),
        ("resolution", f"{manifest.width}x{manifest.height}" if manifest.width else None),
        ("protocol", manifest.protocol.name if manifest.protocol else spec.protocol),
        ("images in the run", n_images),
        ("device", manifest.device),
        ("created", manifest.created),
        ("code commit", manifest.git_commit),
    ]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
                   for k, v in rows if v not in (None, ""))
    return f"<table class='settings'><caption>Run settings</caption>{body}</table>"


def chunks(board: Leaderboard, width: int) -> list[Leaderboard]:
    infos = board.infos
    return [dataclasses.replace(board, infos=infos[i:i + width])
            for i in range(0, max(len(infos), 1), width)]


def table_block(board: Leaderboard, caption: str) -> str:
    """On screen one scrolling table; in print column groups of PRINT_COLUMNS metrics."""
    parts = chunks(board, PRINT_COLUMNS)
    printed = "".join(html_table(b, f"{caption} (columns {i * PRINT_COLUMNS + 1}–"
                                    f"{i * PRINT_COLUMNS + len(b.infos)} of {len(board.infos)})"
                                 if len(parts) > 1 else caption)
                      for i, b in enumerate(parts))
    return (f"<div class='screen-only'>{html_table(board, caption)}</div>"
            f"<div class='print-only'>{printed}</div>")


def definitions(board: Leaderboard) -> str:
    """Each metric's definition, direction, interval kind and n, written out."""
    kinds = {"ci": "95% CI", "sd": "± 1 sd over draws (not a CI)", "none": "no interval",
             "effect": "95% CI of the effect against the baseline"}
    items = []
    for info in board.infos:
        ns = sorted({c[info.name].n for c in board.cells.values() if info.name in c})
        n = (f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}") if ns else "n = –"
        better = "higher is better" if info.higher_is_better else "lower is better"
        unit = f", unit {info.unit}" if info.unit else ""
        items.append(f"<dt>{esc(info.name)}</dt><dd>{esc(info.description)} ({better}{unit}; "
                     f"{kinds.get(info.interval, info.interval)}; {n})</dd>")
    return ("<dl class='defs'>" + "".join(items) + "</dl>"
            "<p class='ci'>n: the images (or prompts, for per-prompt statistics and paired "
            "differences) behind each cell.</p>")


def findings_list(found: Sequence[Finding]) -> str:
    """One row per method and headline metric; only the verdict of a significant finding is
    bold (never a p-value)."""
    if not found:
        return "<p>No findings: this board has no baseline or no headline metric to compare.</p>"
    rows = []
    for f in found:
        verdict = esc(f.verdict())
        rows.append(f"<tr><td class='prompt'>{esc(f.metric.name)}</td><th scope='row'>"
                    f"{esc(f.method)}</th><td>{esc(fmt_num(f.diff))} <span "
                    f"class='ci'>[{esc(fmt_num(f.lo))}, "
                    f"{esc(fmt_num(f.hi))}]</span></td>"
                    f"<td>{esc(fmt_p(f.p)[2:])}</td>"
                    f"<td>{esc(fmt_p(f.p_holm)[2:])}</td><td>{f.n_prompts}</td>"
                    f"<td class='prompt'>{f'<strong>{verdict}</strong>' if f.significant else verdict}"
                    "</td></tr>")
    return ("<div class='scroll'><table class='findings'><caption>Findings against the baseline: "
            "paired difference (method − baseline) with its 95% bootstrap CI over prompts; "
            "p from a paired permutation test over prompts, Holm-adjusted across the methods of each metric; "
            "bold: significant (p_holm &lt; 0.05)</caption><thead><tr><th class='prompt'>metric"
            "</th><th>method</th><th>difference [95% CI]</th><th>p</th><th>p_holm</th>"
            "<th>prompts</th><th class='prompt'>finding</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def drill_down(part: pd.DataFrame, head: Leaderboard) -> str:
    """Per prompt, each method's value of each headline metric (the statistic of that prompt's
    images alone), the first DRILL_PROMPTS prompts in file order."""
    table, aggregators = findings_mod.board_aggregators(part, head)
    out = []
    for info in head.infos:
        got = findings_mod.metric_values(table, info.name, aggregators)
        if got is None:
            continue
        rows, statistic = got
        prompts = list(rows["prompt_id"].drop_duplicates())
        texts = rows.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
        values: dict[str, dict[str, float]] = {}
        for method, g in rows.groupby("method", sort=False):
            v, m = stats.pad_by_prompt(g["prompt_id"], g["_v"].to_numpy())
            per = np.asarray(statistic(v[:, None], m[:, None]), dtype=float).reshape(-1)
            values[str(method)] = dict(zip(g["prompt_id"].drop_duplicates(), per))
        methods = list(values)
        shown = prompts[:DRILL_PROMPTS]
        head_row = "".join(f"<th>{esc(m)}</th>" for m in methods)
        body = "".join(
            f"<tr><td class='prompt'>{esc(str(texts[p]))}</td>"
            + "".join(f"<td>{_cell(values[m].get(p))}</td>" for m in methods) + "</tr>"
            for p in shown)
        out.append(f"<div class='scroll tall'><table><caption>{esc(info.name)} per prompt "
                   f"({len(shown)} of {len(prompts)} prompts, file order)</caption><thead><tr>"
                   f"<th class='prompt'>prompt</th>{head_row}</tr></thead><tbody>{body}"
                   "</tbody></table></div>")
    if not out and "prompt" in part:  # no headline metric scored: at least say what was asked
        prompts = list(part["prompt"].drop_duplicates())
        out.append(f"<p>Prompts ({min(len(prompts), DRILL_PROMPTS)} of {len(prompts)}, file "
                   "order):</p><ul>" + "".join(f"<li>{esc(str(p))}</li>"
                                               for p in prompts[:DRILL_PROMPTS]) + "</ul>")
    return "".join(out)


def _cell(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3g}"


def render(manifest: Manifest, heads: Sequence[Leaderboard], boards: Sequence[Leaderboard],
           found: dict[str, list[Finding]],
           figures: dict[str, list[Figure]], skipped_methods: dict[str, str],
           skipped_metrics: dict[str, str], drill: Sequence[str],
           warnings: Mapping[str, Sequence[str]] | None = None, n_images: int | None = None,
           side_effects: Leaderboard | None = None) -> str:
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width'><title>bench report</title>"
             f"<style>{STYLE}</style></head><body><h1>bench report</h1>",
             settings(manifest, n_images), f"<p>{esc(NOTATION)}</p>"]
    parts.append("<p>Contents: " + ", ".join(
        f"<a href='#board-{i}'>{esc(b.title)}</a>" for i, b in enumerate(heads))
        + (", <a href='#side-effects'>side effects</a>" if side_effects else "")
        + ", <a href='#full'>full tables</a>.</p>")
    found_w = [w for ws in (warnings or {}).values() for w in ws]
    if found_w:
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{esc(w)}</li>" for w in found_w)
                     + "</ul>")
    for i, (head, drill_html) in enumerate(zip(heads, drill)):
        cls = " class='first'" if i == 0 else ""
        parts.append(f"<h2 id='board-{i}'{cls}>{esc(head.title)}</h2>")
        family = boards_mod.family(head)
        parts.append(f"<p>Headline metrics of a {family} prompt set "
                     f"({', '.join(boards_mod.headline_patterns(head))}); every metric is in the full "
                     "table below.</p>")
        parts.append(table_block(head, f"Headline: {head.title}"))
        parts.append(findings_list(found.get(head.title, [])))
        parts.append("<h3>Definitions</h3>" + definitions(head))
        figs = figures.get(head.title, [])
        if figs:
            parts.append("<h3>Figures</h3>" + "".join(
                figure(f, "grid" if f[0].name.startswith("grid-") else "plot") for f in figs))
        if drill_html:
            parts.append("<h3>Per prompt</h3>" + drill_html)
    sweeps = {k: v for k, v in figures.items() if k not in {h.title for h in heads}}
    for key, figs in sweeps.items():
        parts.append(f"<h3>{esc(key)}</h3>" + "".join(figure(f) for f in figs))
    if side_effects:
        parts.append(f"<h2 id='side-effects'>{esc(side_effects.title)}</h2>"
                     + table_block(side_effects, side_effects.title) + html_notes(side_effects)
                     + "<details class='screen-only'><summary>Definitions</summary>"
                     + definitions(side_effects) + "</details>")
    parts.append("<h2 id='full'>Full tables</h2>")
    for board in boards:
        parts.append(table_block(board, board.title) + html_notes(board))
        parts.append("<details class='screen-only'><summary>Definitions</summary>"
                     f"{definitions(board)}</details><div class='print-only'>"
                     f"{definitions(board)}</div>")
    if skipped_methods or skipped_metrics:
        parts.append("<h3>Skipped</h3><ul>")
        for kind, items in (("method", skipped_methods), ("metric", skipped_metrics)):
            parts += [f"<li>{kind} <code>{esc(k)}</code>: {esc(v)}</li>" for k, v in items.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
