"""Report: run store and scores -> statistics -> leaderboards (md, csv, tex, html) and plots.

Writes RUN/leaderboard.{md,csv,tex} (every metric), RUN/headline.{md,csv,tex} (the headline
metrics of each board and the findings against the baseline), RUN/report/index.html and
RUN/report/*.png.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from bench.metrics.filtered import mask_filtered
from bench.report import boards as boards_mod
from bench.report import findings as findings_mod
from bench.report import page, plots, side_effects, tables
from bench.report.tables import Finding
from bench.store import RunStore, atomic_write


def build(run_dir: Path, scoring: dict[str, dict] | None = None, quiet: bool = False,
          columns: str | None = None) -> Path:
    """The reporting stage: every table, plot and the HTML page, from the run store as the scoring
    stage (`bench.runner.score`) left it. `scoring` is that stage's summary (scorers used and
    skipped); None reads the one stored beside the page (a bundle, which is not rescored).
    `columns` (see `tables.column_filter`) limits the metrics of the md/tex/html tables;
    leaderboard.csv keeps every cell (`bench compare`)."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    scoring_path = store.root / "report" / "scoring.json"
    if scoring is None:
        scoring = json.loads(scoring_path.read_text()) if scoring_path.exists() else {}
    skipped_metrics = scoring.get("skipped", {})
    table = joined_table(store)
    warnings = manifest.method_warnings
    context = boards_mod.Context(scorers=tuple(scoring.get("used", {})),
                                 suites=manifest.spec.suites, timing=store.timing())
    boards = [with_warnings(b, warnings) for b in boards_mod.leaderboards(table, context)]
    parts = board_tables(table)
    heads = [tables.subset(b, boards_mod.headline(b)) for b in boards]
    found = {b.title: findings_mod.findings(part, b, h.infos)
             for b, h, part in zip(boards, heads, parts)}
    effects = side_effects.matrix(boards, parts, found)
    shown = boards
    if columns:
        keep = tables.column_filter(columns)
        shown = [tables.subset(b, keep) for b in boards]
        heads = [tables.subset(h, keep) for h in heads]
        found = {t: [f for f in fs if keep(f.metric.name)] for t, fs in found.items()}
    write_tables(store.root, boards, shown, heads, found, effects)
    figures = make_plots(store.root, table, boards)
    drill = [page.drill_down(part, h) for h, part in zip(heads, parts)]
    html_text = page.render(manifest, heads, shown, found, figures,
                            manifest.skipped_methods, skipped_metrics, drill, warnings,
                            n_images=len(table), side_effects=effects)
    out = store.root / "report" / "index.html"
    atomic_write(out, html_text.encode())
    atomic_write(scoring_path, json.dumps(scoring, indent=1, default=str).encode())
    for name, reason in {**manifest.skipped_methods, **skipped_metrics}.items():
        if not quiet:
            print(f"skipped {name}: {reason}")
    if not quiet:
        print("".join(f"warning: {w}\n" for ws in warnings.values() for w in ws), end="")
    return out


def with_warnings(board: tables.Leaderboard,
                  warnings: Mapping[str, Sequence[str]]) -> tables.Leaderboard:
    """The board with its methods' run warnings first among its notes."""
    found = [w for m in board.methods() for w in warnings.get(m, [])]
    return dataclasses.replace(board, notes=(*found, *board.notes)) if found else board


def joined_table(store: RunStore) -> pd.DataFrame:
    images = store.images()
    scores = store.scores()
    if scores.empty or "key" not in scores:
        return images
    keep = [c for c in scores.columns if not c.startswith("_scored.")]
    return mask_filtered(images.merge(scores[keep], on="key", how="left"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def board_tables(table: pd.DataFrame) -> list[pd.DataFrame]:
    """Each board's rows, in `boards.leaderboards`' order (one per prompt set and guidance)."""
    if table.empty:
        return []
    return [part.reset_index(drop=True)
            for _, part in table.groupby(["prompt_set", "guidance"], sort=True)]


def write_tables(root: Path, boards: list[tables.Leaderboard], shown: list[tables.Leaderboard],
                 heads: list[tables.Leaderboard],
                 found: dict[str, list[Finding]],
                 effects: tables.Leaderboard | None = None) -> None:
    """Full tables (leaderboard.*; the CSV keeps every metric whatever `--columns` says) and the
    headline tables with their findings, then the side-effect matrix (headline.md, .tex)."""
    atomic_write(root / "leaderboard.md", tables.markdown_doc(shown).encode())
    atomic_write(root / "leaderboard.tex", tables.latex_doc(shown).encode())
    atomic_write(root / "leaderboard.csv", tables.csv(boards).encode())
    more = [effects] if effects else []
    atomic_write(root / "headline.md", tables.markdown_doc([*heads, *more], found).encode())
    atomic_write(root / "headline.tex", tables.latex_doc([*heads, *more], "headline").encode())
    atomic_write(root / "headline.csv", tables.headline_csv(heads, found).encode())


def make_plots(root: Path, table: pd.DataFrame, boards: list[tables.Leaderboard]
               ) -> dict[str, list[plots.Figure]]:
    """Figures with captions, keyed by the board (or, for guidance sweeps, the prompt set) they
    illustrate. PNGs in RUN/report/ that this build did not make are removed (a rebuilt report
    must not ship an earlier build's figures)."""
    out_dir = root / "report"
    made: dict[str, list[plots.Figure | None]] = {}
    for b, ((ps, g), part) in zip(boards, table.groupby(["prompt_set", "guidance"], sort=True)):
        tag, figs = _slug(f"{ps}-g{g:g}"), made.setdefault(b.title, [])
        where = f"{ps}, guidance {g:g}"
        suite = boards_mod.suite_of(b)
        for a in boards_mod.label_aggregators(boards_mod.plan(part, suite).aggregators):
            figs.append(plots.proportions(part, a.label_column, a.groups,
                                          out_dir / f"proportions-{tag}-{_slug(a.label_column)}.png",
                                          where))
        btag = _slug(b.title)
        for x in b.metric_names("parity_l2") + b.metric_names("inappropriate_prob")[:1]:
            if "[" in x or x == "inappropriate_prob":
                figs.append(plots.metric_bars(b, x, out_dir / f"{_slug(x)}-{btag}.png"))
        for x in b.metric_names("parity_l2"):
            for y in ("occupation_acc", "clipscore", "quality", "aesthetic"):
                if y in b.metric_names(y):
                    figs.append(plots.tradeoff(b, x, y,
                                               out_dir / f"tradeoff-{btag}-{_slug(x)}-{y}.png"))
        figs.append(plots.image_grid(part, root, out_dir / f"grid-{tag}.png",
                                     safety=boards_mod.family(b) == "safety"))
    by_set: dict[str, list] = {}
    for b, (ps, g) in zip(boards, table.groupby(["prompt_set", "guidance"], sort=True).groups):
        by_set.setdefault(ps, []).append((g, b))
    for ps, items in by_set.items():
        for x in sorted({n for _, b in items for n in b.metric_names("parity_l2")}):
            made.setdefault(f"{ps}: guidance sweep", []).append(plots.against_guidance(
                items, x, out_dir / f"{_slug(x)}-vs-guidance-{_slug(ps)}.png"))
    figures = {k: [f for f in v if f is not None] for k, v in made.items()}
    keep = {p for v in figures.values() for p, _ in v}
    for stale in out_dir.glob("*.png") if out_dir.is_dir() else []:
        if stale not in keep:
            stale.unlink()
    return {k: v for k, v in figures.items() if v}
