"""The timing phase: methods timed interleaved, so a shared machine's load drift cancels.

Generation runs methods one after another, so a machine that slows down during the run bills the
slowdown to whichever methods ran late (one run gave sld-medium 0.40x the baseline). Here each
round times one batch of every method, the same prompts and seeds for all, in an order reversed
every other round (a linear drift within a round then cancels over two rounds); a method's ratio
to the baseline is the ratio of its summed batch times to the baseline's over the same rounds,
with a bootstrap CI over rounds. Each round records the 1-minute load average.

RUN/timing.parquet: one row per (round, method): seconds, images, load1 (os.getloadavg).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import pandas as pd

from bench.grid import WorkItem

TIMING_FILE = "timing.parquet"
COLUMNS = ("round", "method", "guidance", "seconds", "images", "load1", "cpus")


def timing_batches(grid: Sequence[WorkItem], methods: Sequence[str], size: int
                   ) -> dict[str, list[WorkItem]]:
    """Per method its first `size` grid items at the first guidance: the same (prompt, seed)
    for every method, since the grid repeats one inner order per method."""
    first = grid[0].guidance if grid else None
    out: dict[str, list[WorkItem]] = {}
    for m in methods:
        out[m] = [w for w in grid if w.method == m and w.guidance == first][:size]
    return out


def round_order(methods: Sequence[str], r: int) -> list[str]:
    return list(methods) if r % 2 == 0 else list(reversed(methods))


def time_methods(run_batch: Callable[[str], float], batches: dict[str, list[WorkItem]],
                 rounds: int, loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg
                 ) -> pd.DataFrame:
    """`rounds` rounds of one batch per method (run_batch(method) -> its seconds)."""
    rows: list[dict[str, Any]] = []
    methods = [m for m, b in batches.items() if b]
    for r in range(rounds):
        for m in round_order(methods, r):
            load = loadavg()[0]
            seconds = run_batch(m)
            rows.append({"round": r, "method": m, "guidance": float(batches[m][0].guidance),
                         "seconds": float(seconds), "images": len(batches[m]), "load1": load,
                         "cpus": os.cpu_count() or 1})
    return pd.DataFrame(rows, columns=list(COLUMNS))
