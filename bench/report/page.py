"""A self-contained HTML report: every leaderboard, every plot inlined, and what was skipped.

Prompts, set names, method specs, categories and warnings are untrusted text (I2P holds arbitrary
strings): everything written into the page goes through `bench.escape.html_text`; images are
inlined as base64 data URIs so the page travels alone.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

from bench.escape import html_text
from bench.report.tables import Leaderboard, html_table

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}caption{text-align:left;font-weight:600}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}td:first-child{text-align:left}
img{max-width:100%;margin:4px 0}code{background:#f4f4f4;padding:1px 3px}"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html_text(path.name)}" src="data:image/png;base64,{data}">'


def render(manifest: dict[str, Any], boards: Sequence[Leaderboard], plots: Sequence[Path],
           skipped_methods: dict[str, str], skipped_metrics: dict[str, str],
           example_prompts: Sequence[str],
           warnings: dict[str, list[str]] | None = None) -> str:
    esc = html_text
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bench report</title>"
             f"<style>{STYLE}</style></head><body><h1>bench report</h1>"]
    model = manifest.get("model", {})
    parts.append(f"<p>model <code>{esc(str(model.get('name')))}</code> (fingerprint "
                 f"<code>{esc(str(model.get('fingerprint')))}</code>), created "
                 f"{esc(str(manifest.get('created')))}, device {esc(str(manifest.get('device')))}, "
                 f"commit <code>{esc(str(manifest.get('git_commit')))}</code>. "
                 "Cells are mean ± half-width of the 95% bootstrap CI; bold marks the best.</p>")
    found = [w for ws in (warnings or {}).values() for w in ws]
    if found:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{esc(w)}</li>" for w in found) + "</ul>")
    for board in boards:
        parts.append(html_table(board))
    if skipped_methods or skipped_metrics:
        parts.append("<h2>Skipped</h2><ul>")
        for kind, items in (("method", skipped_methods), ("metric", skipped_metrics)):
            parts += [f"<li>{kind} <code>{esc(k)}</code>: {esc(v)}</li>" for k, v in items.items()]
        parts.append("</ul>")
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(_img(p) for p in plots))
    if example_prompts:
        parts.append("<h2>Prompts (up to 20 of each set)</h2><ul>")
        parts += [f"<li>{esc(p)}</li>" for p in example_prompts]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
