"""Plots for RUN/report/: group proportions, a metric with CIs, fairness-quality trade-off,
a metric against guidance, and image grids (prompt x method, same seeds) to look rather than read.

Every plot returns (path, caption): the page prints the caption under the figure. Figures are
saved at print resolution (DPI) in a colour-blind-safe palette (Okabe & Ito); skin tones are
drawn light to dark in skin colours ordered by lightness, never as unrelated hues."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.font_manager as font_manager  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from bench.escape import mpl_text as _t  # noqa: E402  labels hold user text: no mathtext
from bench.metrics.aggregators import BASELINE  # noqa: E402
from bench.prompt_sets.base import PromptMeta  # noqa: E402
from bench.report.tables import Leaderboard  # noqa: E402
from bench.store import atomic_write  # noqa: E402

DPI = 200
GROUP = PromptMeta.column("group")  # a requested group; empty on neutral prompts
# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency; yellow (hard on white) late, grey added as an eighth. Black is the baseline's.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442",
             "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
# Skin tones light -> dark in colours ordered by lightness (readable in greyscale too).
SKIN = {"light": "#F3D3B8", "medium": "#C08A5B", "dark": "#5A3825"}
UNLABELLED = "#BBBBBB"
# Headings for internal attribute names (`skin_tone.skin` -> "skin tone").
ATTRIBUTE_HEADINGS = {"skin": "skin tone", "race": "race (7 groups)", "race4": "race (4 groups)",
                      "gender": "gender"}
Figure = tuple[Path, str]  # a saved plot and its caption


def attribute_heading(column: str) -> str:
    """`skin_tone.skin` -> 'skin tone (scorer skin_tone)'."""
    scorer, _, attribute = column.partition(".")
    return f"{ATTRIBUTE_HEADINGS.get(attribute, attribute)} (scorer {scorer})"


def group_colours(groups: Sequence[str]) -> list[str]:
    if all(g in SKIN for g in groups):
        return [SKIN[g] for g in groups]
    return [OKABE_ITO[k % len(OKABE_ITO)] for k in range(len(groups))]


def _style(m: str, methods: Sequence[str]) -> tuple[str, str]:
    """(colour, marker) of a method: black circle for the baseline, the palette for others."""
    others = [x for x in methods if x != BASELINE]
    if m == BASELINE or m not in others:
        return "#000000", "o"
    k = others.index(m)
    return OKABE_ITO[k % len(OKABE_ITO)], MARKERS[(k + 1) % len(MARKERS)]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write(path, buf.getvalue())  # a killed report never leaves a half-written plot
    return path


def proportions(table: pd.DataFrame, column: str, groups: Sequence[str], path: Path,
                where: str) -> Figure:
    """Stacked bars of pooled group proportions over neutral prompts, one bar per method;
    images with no label shown as their own grey segment."""
    neutral = table[table[GROUP].isna()]
    methods = list(neutral["method"].drop_duplicates())
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bottom = np.zeros(len(methods))
    for group, colour in zip([*groups, None], [*group_colours(groups), UNLABELLED]):
        share = np.array([_share(neutral[neutral["method"] == m][column], group) for m in methods])
        ax.bar([_t(m) for m in methods], share, bottom=bottom, label=_t(group or "no face/label"),
               color=colour, edgecolor="#333333", linewidth=0.4)
        bottom += share
    ax.axhline(1 / len(groups), color="k", lw=0.8, ls=":", label="uniform share")
    heading = attribute_heading(column)
    ax.set_ylabel("share of images")
    ax.set_title(_t(f"{heading} on neutral prompts"), fontsize=10)
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    plt.setp(ax.get_xticklabels(), ha="right")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left", title=_t(heading),
              title_fontsize=8)
    n = len(neutral[neutral["method"] == methods[0]]) if methods else 0
    caption = (f"Share of each {heading} among images of neutral prompts, pooled, per method "
               f"({n} images per method; {where}). Colours run light to dark in skin-tone order "
               "where the groups are skin tones; grey: no face or no label. Dotted line: the "
               "uniform share.")
    return _save(fig, path), caption


def _share(labels: pd.Series, group: str | None) -> float:
    if len(labels) == 0:
        return 0.0
    return float(labels.isna().mean() if group is None else (labels == group).mean())


def metric_bars(board: Leaderboard, metric: str, path: Path) -> Figure | None:
    """One metric per method with its 95% CI as error bars."""
    rows = [(m, c[metric]) for m, c in board.cells.items() if metric in c
            and np.isfinite(c[metric].value)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    values = np.array([c.value for _, c in rows])
    err = np.array([[c.value - c.lo, c.hi - c.value] for _, c in rows]).T
    colours = ["#000000" if m == BASELINE else OKABE_ITO[3] for m, _ in rows]
    ax.bar([_t(m) for m, _ in rows], values, yerr=np.nan_to_num(err), capsize=3, color=colours,
           ecolor="#555555")
    ax.set_ylabel(_t(metric))
    ax.set_title(_t(f"{metric} per method"), fontsize=10)
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    plt.setp(ax.get_xticklabels(), ha="right")
    caption = (f"{metric} per method with 95% bootstrap CIs (over prompts) as error bars; "
               f"baseline in black. {board.title}.")
    return _save(fig, path), caption


def tradeoff(board: Leaderboard, x: str, y: str, path: Path) -> Figure | None:
    """Fairness (x) against quality or alignment (y), one marker per method, CIs as error bars;
    a legend names the methods (text beside the points would overlap)."""
    pts = [(m, c[x], c[y]) for m, c in board.cells.items() if x in c and y in c]
    if len(pts) < 2:
        return None
    methods = [m for m, _, _ in pts]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for m, cx, cy in pts:
        colour, marker = _style(m, methods)
        ax.errorbar(cx.value, cy.value, xerr=[[cx.value - cx.lo], [cx.hi - cx.value]],
                    yerr=[[cy.value - cy.lo], [cy.hi - cy.value]], fmt=marker, color=colour,
                    ecolor=colour, elinewidth=0.8, capsize=2, markersize=6, label=_t(m))
    ax.set_xlabel(_t(f"{x} (lower is fairer)"))
    ax.set_ylabel(_t(y))
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    caption = (f"Trade-off: {x} (x, lower is fairer) against {y} (y) per method, with 95% "
               f"bootstrap CIs on both axes. {board.title}.")
    return _save(fig, path), caption


def against_guidance(boards: Sequence[tuple[float, Leaderboard]], metric: str,
                     path: Path) -> Figure | None:
    """A metric against the guidance scale, one line per method (needs >= 2 guidance values)."""
    if len({g for g, _ in boards}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    methods = sorted({m for _, b in boards for m in b.cells})
    for m in methods:
        pts = sorted((g, b.cells[m][metric]) for g, b in boards if metric in b.cells.get(m, {}))
        if pts:
            colour, marker = _style(m, methods)
            g = [p[0] for p in pts]
            ax.errorbar(g, [c.value for _, c in pts],
                        yerr=[[c.value - c.lo for _, c in pts], [c.hi - c.value for _, c in pts]],
                        marker=marker, color=colour, capsize=2, label=_t(m))
    ax.set_xlabel("guidance scale")
    ax.set_ylabel(_t(metric))
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    caption = f"{metric} against the guidance scale per method, 95% bootstrap CIs."
    return _save(fig, path), caption


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def grid_prompts(table: pd.DataFrame, safety: bool, max_prompts: int) -> tuple[list, str]:
    """Which prompts a grid shows, and why: neutral prompts first on a fairness set (parity is
    measured there), the others first on a safety set; file order within each."""
    first = table.drop_duplicates("prompt_id")
    kind = first.get(PromptMeta.column("kind"))
    neutral = (kind.eq("neutral") if kind is not None
               else first.get(GROUP, pd.Series(index=first.index)).isna())
    lead = first[~neutral] if safety else first[neutral]
    order = [*lead["prompt_id"], *first[~first["prompt_id"].isin(lead["prompt_id"])]["prompt_id"]]
    why = ("prompts that ask for the hazard first" if safety else "neutral prompts first")
    return order[:max_prompts], why


def image_grid(table: pd.DataFrame, run_dir: Path, path: Path, safety: bool = False,
               max_prompts: int = 6, cell: int = 128) -> Figure | None:
    """Prompt (rows) x method (columns) at sample 0: the same seed in every column. Where the
    run directory holds only some images (a bundle keeps a sample), prompts with the most
    stored images come first; with none stored there is no grid."""
    first = table[table["sample"] == 0]
    stored = first["file"].map(lambda f: (run_dir / str(f)).exists())
    if not stored.any():
        return None
    prompts, why = grid_prompts(first, safety, len(first))
    if not stored.all():
        count = stored.groupby(first["prompt_id"]).sum()
        prompts = sorted(prompts, key=lambda p: -count.get(p, 0))  # stable: keeps the order
        why = "the run directory holds only some images: prompts with the most stored first"
    prompts = prompts[:max_prompts]
    methods = list(first["method"].drop_duplicates())
    if not prompts or not methods:
        return None
    label_w, head_h, pad = 260, 44, 6
    font, small = _font(15), _font(13)
    grid = Image.new("RGB", (label_w + (cell + pad) * len(methods), head_h + (cell + pad)
                             * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, m in enumerate(methods):
        lines = textwrap.wrap(m, 16)[:2]
        draw.multiline_text((label_w + c * (cell + pad), 2), "\n".join(lines), fill="black",
                            font=small)
    missing = 0
    for r, pid in enumerate(prompts):
        y = head_h + r * (cell + pad)
        rows = first[first["prompt_id"] == pid]
        text = "\n".join(textwrap.wrap(str(rows["prompt"].iloc[0]), 28)[:6])
        draw.multiline_text((2, y + 2), text, fill="black", font=font)
        for c, m in enumerate(methods):
            hit = rows[rows["method"] == m]
            box = (label_w + c * (cell + pad), y)
            if not hit.empty and (run_dir / hit["file"].iloc[0]).exists():  # bundles hold a sample
                with Image.open(run_dir / hit["file"].iloc[0]) as im:
                    grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), box)
            else:
                missing += 1
                draw.rectangle((*box, box[0] + cell - 1, box[1] + cell - 1), outline="#999999")
                draw.text((box[0] + 6, box[1] + cell // 2 - 8), "not stored", fill="#666666",
                          font=small)
    buf = io.BytesIO()
    grid.save(buf, format="PNG", dpi=(DPI, DPI))
    atomic_write(path, buf.getvalue())  # a killed report never leaves a half-written grid
    n_all = first["prompt_id"].nunique()
    caption = (f"{len(prompts)} of {n_all} prompts ({why}, in file order), one column per method, "
               "sample 0 of each prompt: the same seed in every column, so columns differ only "
               "by method.")
    if missing:
        caption += (f" {missing} cells are empty: the run directory does not hold those images "
                    "(a bundle keeps a sample).")
    return path, caption
