"""`bench run` and `bench report`: the run's stages in order.

generation (an `Executor`: this process or Ray) -> run store -> scoring (`score`, incremental,
through the same executor) -> reporting (`bench.report.build`). Planning and the dry run are in
`bench.planning`, what the run records in `bench.provenance`; `bench report RUN` re-enters at
the run store (`report_run`).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

from bench import rundir
from bench.executor import Executor, GenerationSettings, LocalExecutor
from bench.grid import grid_tables
from bench.models import dtype_name
from bench.planning import RunPlan, plan
from bench.provenance import manifest
from bench.scoring import check_scorers, merge_scores, plan_scoring, scorer_names
from bench.spec import RunSpec, split_method_list
from bench.store import RunStore, sweep_temp


def run(spec: RunSpec, quiet: bool = False) -> Path:
    return execute(plan(spec), quiet)


def open_store(spec: RunSpec) -> RunStore:
    """The spec's run directory, checked to hold this spec's run (or none), stale temporary
    files of killed writers swept."""
    store = RunStore(rundir.out_dir(spec))
    theirs = store.manifest().spec.to_dict() if store.manifest_path.exists() else None
    rundir.check_same_run(store.root, spec, theirs)
    sweep_temp(store.root)
    return store


def executor_for(spec: RunSpec, quiet: bool = False) -> Executor:
    if spec.executor == "ray":
        from bench.executor_ray import RayExecutor  # Ray is an optional extra

        return RayExecutor(spec.workers, spec.device, quiet)
    return LocalExecutor(spec.device, quiet)


def execute(p: RunPlan, quiet: bool = False, columns: str | None = None) -> Path:
    """Generate, score and report a planned run (`bench reproduce` plans first to check drift).
    `columns` limits the leaderboards' metrics (`bench run --columns`)."""
    spec = p.spec
    executor = executor_for(spec, quiet)  # without Ray: the one-line install hint, before any output
    store = open_store(spec)
    store.write_manifest(manifest(p))
    store.write_grid(*grid_tables(p.grid, p.prompt_sets))
    if not spec.out:
        note = rundir.point_latest(store.root)
        if note and not quiet:
            print(f"bench: note: {note}", file=sys.stderr)
    settings = GenerationSettings(spec.model, spec.sampler, p.height, p.width, spec.batch_size,
                                  dtype_name(p.pipe), spec.gpu_options(), spec.vae)
    with executor:
        p.written = executor.generate(p, store, settings)
        if not spec.shard and not (store.root / "timing.parquet").exists():
            executor.time(p, store, settings)
        store.consolidate()
        if spec.shard:  # a shard's table is partial: `bench report RUN` once every shard is done
            return store.root
        scoring = score(store, (), spec.device, executor)
    from bench import report

    report.build(store.root, scoring, quiet=quiet, columns=columns)
    return store.root


def report_run(run_dir: Path, metrics: str | None = None, device: str | None = None,
               quiet: bool = False, columns: str | None = None, rescore: bool = True) -> Path:
    """`bench report RUN`: the scoring stage (only what is not scored yet), then the reporting
    stage. A bundle holds only a sample of the images: it is reported from the scores it holds
    (`rescore=False`)."""
    from bench import report

    store = RunStore(run_dir)
    if not rescore:
        collect(store)
        return report.build(store.root, quiet=quiet, columns=columns)
    with LocalExecutor(device, quiet) as executor:
        scoring = score(store, split_method_list(metrics) if metrics else (), device, executor)
    return report.build(store.root, scoring, quiet=quiet, columns=columns)


def score(store: RunStore, requested: Sequence[str], device: str | None, executor: Executor,
          batch_size: int = 32) -> dict[str, dict]:
    """The scoring stage: every image not yet scored by each requested scorer (none requested:
    the run's own), scored through `executor`, scores.parquet written after each scorer (a
    killed run keeps the finished ones). Returns {"used": {scorer: manifest}, "skipped":
    {scorer: reason}}."""
    recorded = store.manifest()
    names = scorer_names(recorded.model.name, list(requested) or list(recorded.spec.metrics),
                         [s.name for s in recorded.prompt_sets], recorded.spec.suites)
    check_scorers(names, device)  # a misspelt scorer: refused before the run directory changes
    collect(store)
    todo = plan_scoring(store, names, device)
    scores = store.scores()
    for part in executor.score(todo.jobs, store, batch_size):
        scores = merge_scores(scores, part)
        store.write_scores(scores)
    return todo.summary()


def collect(store: RunStore) -> None:
    """The run store made ready to read: killed writers' temporary files swept, images.parquet
    rebuilt from what is done (which completes the manifest of a finished sharded run), and one
    line when images are still missing."""
    sweep_temp(store.root)
    done, planned = len(store.consolidate()), store.manifest().grid.images
    if planned and done < planned:  # shards still running, or a run was killed
        print(f"bench: warning: {planned - done} of the run's {planned} images are not generated "
              f"yet (a shard still to run?); the tables cover the other {done}", file=sys.stderr)


# The cells `bench run` closes with: the fairness and hazard headline of each table.
SUMMARY_METRICS = re.compile(r"parity_l2\[[^]]+\]|inappropriate_prob(\[(violence|neutral)\])?")


def run_summary(p: RunPlan, root: Path, seconds: float) -> str:
    """Images generated and cached, the wall time, the headline cells and where the files are."""
    done = len(p.items)
    made = "" if p.written is None else (f"{p.written} generated, {done - p.written} cached, ")
    minutes, secs = divmod(round(seconds), 60)
    lines = [f"bench run: {done} images ({made}{len(p.grid)} grid positions) in "
             f"{minutes} min {secs:02d} s"]
    lines += _headline_cells(root / "leaderboard.csv")
    lines.append(f"tables: {root / 'leaderboard.md'} (.csv, .tex); page: "
                 f"{root / 'report' / 'index.html'}")
    return "\n".join(lines)


def _headline_cells(path: Path) -> list[str]:
    import pandas as pd

    if not path.exists():
        return []
    board = pd.read_csv(path)
    board = board[board["metric"].astype(str).str.fullmatch(SUMMARY_METRICS)]
    lines: list[str] = []
    for table, part in board.groupby("table", sort=False):
        metrics = list(dict.fromkeys(part["metric"]))
        width = max(len(str(m)) for m in part["method"]) + 2
        lines.append(f"{table}: " + " | ".join(metrics) + " [95% CI]")
        for method, rows in part.groupby("method", sort=False):
            cells = {r.metric: f"{r.value:.3f} [{r.ci_lo:.2f}, {r.ci_hi:.2f}]"
                     for r in rows.itertuples()}
            lines.append(f"  {str(method):<{width}}" + " | ".join(cells.get(m, "-") for m in metrics))
    return lines
