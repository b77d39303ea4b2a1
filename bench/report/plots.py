"""Plots for RUN/report/: group proportions, parity with CIs, fairness-quality trade-off,
parity against guidance, and image grids (prompt x method, same seeds) to look rather than read."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench.escape import mpl_text as _t  # noqa: E402  labels hold user text: no mathtext
from bench.report.tables import Leaderboard  # noqa: E402
from bench.store import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())  # a killed report never leaves a half-written plot
    return path


def proportions(table: pd.DataFrame, column: str, groups: Sequence[str], path: Path,
                title: str) -> Path:
    """Stacked bars of pooled group proportions over neutral prompts, one bar per method;
    images with no label shown as their own grey segment."""
    neutral = table[table["meta.group"].isna()]
    methods = list(neutral["method"].drop_duplicates())
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(methods) + 2), 3.2))
    bottom = np.zeros(len(methods))
    colours = plt.get_cmap("tab10")
    for k, group in enumerate(list(groups) + [None]):
        share = np.array([_share(neutral[neutral["method"] == m][column], group) for m in methods])
        ax.bar([_t(m) for m in methods], share, bottom=bottom, label=group or "no face/label",
               color=colours(k) if group else "#bbbbbb")
        bottom += share
    ax.axhline(1 / len(groups), color="k", lw=0.6, ls=":")
    ax.set_ylabel("share of images")
    ax.set_title(_t(title), fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def _share(labels: pd.Series, group: str | None) -> float:
    if len(labels) == 0:
        return 0.0
    return float(labels.isna().mean() if group is None else (labels == group).mean())


def metric_bars(board: Leaderboard, metric: str, path: Path) -> Path | None:
    """One metric per method with its 95% CI as error bars."""
    rows = [(m, c[metric]) for m, c in board.cells.items() if metric in c
            and np.isfinite(c[metric].value)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows) + 2), 3))
    values = np.array([c.value for _, c in rows])
    err = np.array([[c.value - c.lo, c.hi - c.value] for _, c in rows]).T
    ax.bar([_t(m) for m, _ in rows], values, yerr=np.nan_to_num(err), capsize=3, color="#4c72b0")
    ax.set_ylabel(_t(metric))
    ax.set_title(_t(f"{metric}, 95% CI — {board.title}"), fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    return _save(fig, path)


def tradeoff(board: Leaderboard, x: str, y: str, path: Path) -> Path | None:
    """Fairness (x) against quality or alignment (y), one point per method, CIs as error bars."""
    pts = [(m, c[x], c[y]) for m, c in board.cells.items() if x in c and y in c]
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for m, cx, cy in pts:
        ax.errorbar(cx.value, cy.value, xerr=[[cx.value - cx.lo], [cx.hi - cx.value]],
                    yerr=[[cy.value - cy.lo], [cy.hi - cy.value]], fmt="o", capsize=2)
        ax.annotate(_t(m), (cx.value, cy.value), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(_t(f"{x} (lower is fairer)"))
    ax.set_ylabel(_t(y))
    ax.set_title(_t(board.title), fontsize=9)
    return _save(fig, path)


def against_guidance(boards: Sequence[tuple[float, Leaderboard]], metric: str,
                     path: Path) -> Path | None:
    """A metric against the guidance scale, one line per method (needs >= 2 guidance values)."""
    if len({g for g, _ in boards}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    methods = sorted({m for _, b in boards for m in b.cells})
    for m in methods:
        pts = sorted((g, b.cells[m][metric]) for g, b in boards if metric in b.cells.get(m, {}))
        if pts:
            g = [p[0] for p in pts]
            ax.errorbar(g, [c.value for _, c in pts],
                        yerr=[[c.value - c.lo for _, c in pts], [c.hi - c.value for _, c in pts]],
                        marker="o", capsize=2, label=_t(m))
    ax.set_xlabel("guidance scale")
    ax.set_ylabel(_t(metric))
    ax.legend(fontsize=6)
    return _save(fig, path)


def image_grid(table: pd.DataFrame, run_dir: Path, path: Path, max_prompts: int = 6,
               cell: int = 96) -> Path | None:
    """Prompt (rows) x method (columns) at sample 0: the same seed in every column."""
    first = table[table["sample"] == 0]
    prompts = list(first["prompt_id"].drop_duplicates())[:max_prompts]
    methods = list(first["method"].drop_duplicates())
    if not prompts or not methods:
        return None
    label_h = 14
    grid = Image.new("RGB", (cell * len(methods), (cell + label_h) * len(prompts) + label_h), "white")
    draw = ImageDraw.Draw(grid)
    for c, m in enumerate(methods):
        draw.text((c * cell + 2, 1), m[:16], fill="black")
    for r, pid in enumerate(prompts):
        y = label_h + r * (cell + label_h)
        rows = first[first["prompt_id"] == pid]
        draw.text((2, y), str(rows["prompt"].iloc[0])[:14 * len(methods)], fill="black")
        for c, m in enumerate(methods):
            hit = rows[rows["method"] == m]
            if not hit.empty and (run_dir / hit["file"].iloc[0]).exists():  # bundles hold a sample
                with Image.open(run_dir / hit["file"].iloc[0]) as im:
                    grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST),
                               (c * cell, y + label_h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
    return path
