"""Report: run store -> scores -> statistics -> leaderboards (md, csv, tex, html) and plots.

Writes RUN/leaderboard.{md,csv,tex}, RUN/report/index.html and RUN/report/*.png.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import METRICS
from bench.report import boards as boards_mod
from bench.report import page, plots, tables
from bench.scoring import check_scorers, score_run, scorer_names
from bench.spec import split_method_list
from bench.store import RunStore, atomic_write, sweep_temp


def build(run_dir: Path, metrics: str | None = None, device: str | None = None,
          quiet: bool = False, score: bool = True) -> Path:
    """Score (unless `score` is False: a bundle has scores but only a sample of images) and
    rebuild every table, plot and the HTML page."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    if score:  # a misspelt scorer is refused before anything in the run directory is rewritten
        requested = split_method_list(metrics) if metrics else manifest["spec"].get("metrics", ["all"])
        names = scorer_names(manifest["model"]["name"], requested)
        check_scorers(names, device)
    sweep_temp(store.root)
    done, planned = len(store.consolidate()), manifest.get("grid", {}).get("images")
    manifest = store.manifest()  # consolidating the last shard's images completes it
    if planned and done < planned:  # shards still running, or a run was killed
        print(f"bench: warning: {planned - done} of the run's {planned} images are not generated "
              f"yet (a shard still to run?); the tables cover the other {done}", file=sys.stderr)
    scoring_path = store.root / "report" / "scoring.json"
    if score:
        scoring = score_run(store, names, device=device, quiet=quiet)
    else:
        scoring = json.loads(scoring_path.read_text()) if scoring_path.exists() else {}
    skipped_metrics = scoring.get("skipped", {})
    table = joined_table(store)
    warnings: dict[str, list[str]] = manifest.get("method_warnings", {})
    boards = [with_warnings(b, warnings)
              for b in boards_mod.leaderboards(table, confusions(table))]
    write_tables(store.root, boards)
    figures = make_plots(store.root, table, boards)
    examples = [] if table.empty else list(
        table.drop_duplicates("prompt_id").groupby("prompt_set").head(20)["prompt"])
    html_text = page.render(manifest, boards, figures, manifest.get("skipped_methods", {}),
                            skipped_metrics, examples, warnings)
    out = store.root / "report" / "index.html"
    atomic_write(out, html_text.encode())
    atomic_write(scoring_path, json.dumps(scoring, indent=1, default=str).encode())
    for name, reason in {**manifest.get("skipped_methods", {}), **skipped_metrics}.items():
        if not quiet:
            print(f"skipped {name}: {reason}")
    if not quiet:
        print("".join(f"warning: {w}\n" for ws in warnings.values() for w in ws), end="")
    return out


def with_warnings(board: tables.Leaderboard, warnings: dict[str, list[str]]) -> tables.Leaderboard:
    """The board with its methods' run warnings first among its notes."""
    found = [w for m in board.methods() for w in warnings.get(m, [])]
    return dataclasses.replace(board, notes=(*found, *board.notes)) if found else board


def joined_table(store: RunStore) -> pd.DataFrame:
    images = store.images()
    scores = store.scores()
    if scores.empty or "key" not in scores:
        return images
    keep = [c for c in scores.columns if not c.startswith("_scored.")]
    return images.merge(scores[keep], on="key", how="left")


def confusions(table: pd.DataFrame) -> dict[str, Any]:
    """Confusion matrices (rows true, cols predicted) for label columns whose scorer has one."""
    out: dict[str, Any] = {}
    for col, attribute in boards_mod.label_columns(table):
        scorer = col.split(".")[0]
        if scorer in METRICS:
            getter = getattr(METRICS.get(scorer), "confusion_matrix", None)
            matrix = getter(attribute) if getter else None
            if matrix is not None:
                out[col] = matrix
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def write_tables(root: Path, boards: list[tables.Leaderboard]) -> None:
    atomic_write(root / "leaderboard.md", tables.markdown_doc(boards).encode())
    atomic_write(root / "leaderboard.tex", tables.latex_doc(boards).encode())
    atomic_write(root / "leaderboard.csv", tables.csv(boards).encode())


def make_plots(root: Path, table: pd.DataFrame, boards: list[tables.Leaderboard]) -> list[Path]:
    out_dir = root / "report"
    made: list[Path | None] = []
    if table.empty:
        return []
    for (ps, g), part in table.groupby(["prompt_set", "guidance"]):
        tag = _slug(f"{ps}-g{g:g}")
        for col, attribute in boards_mod.fairness_columns(part):
            if "meta.group" in part and part["meta.group"].isna().any():
                made.append(plots.proportions(part, col, boards_mod.GROUPS[attribute],
                                              out_dir / f"proportions-{tag}-{_slug(col)}.png",
                                              f"{col} on neutral prompts — {ps}, guidance {g:g}"))
        made.append(plots.image_grid(part, root, out_dir / f"grid-{tag}.png"))
    for b in boards:
        tag = _slug(b.title)
        for x in b.metric_names("parity_l2"):
            made.append(plots.metric_bars(b, x, out_dir / f"{_slug(x)}-{tag}.png"))
            for y in ("occupation_acc", "clipscore", "quality", "aesthetic"):
                if y in b.metric_names(y):
                    made.append(plots.tradeoff(b, x, y, out_dir / f"tradeoff-{tag}-{_slug(x)}-{y}.png"))
    by_set: dict[str, list] = {}
    for b, (ps, g) in zip(boards, table.groupby(["prompt_set", "guidance"]).groups):
        by_set.setdefault(ps, []).append((g, b))
    for ps, items in by_set.items():
        for x in {n for _, b in items for n in b.metric_names("parity_l2")}:
            made.append(plots.against_guidance(items, x, out_dir / f"{_slug(x)}-vs-guidance-{_slug(ps)}.png"))
    return [p for p in made if p is not None]
