"""`bench run --dry-run` cost projection: one timed batch, scaled to the whole grid per method.

The calibration batch is the run's first batch (first method), timed after the warm-up, on the
run's model, device, size, steps and batch size. Its seconds per UNet evaluation per image times
each method's UNet evaluations (`RunPlan.cost`, which counts SLD's and Fair Diffusion's extra
branches) gives the method's generation time. Writes are not counted: they run beside generation
(bench/executor.py Writer). GPU-hours are device-hours on one device; shards over N devices
divide the wall time by about N, not the GPU-hours.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from bench.executor import GenerationSettings, swap, to_batch, warm_up
from bench.grid import batches
from bench.sampler import sample


def calibrate(p: Any, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per UNet evaluation of one image, from one timed batch."""
    chunk = batches(p.items, p.spec.batch_size)[0]
    method = chunk[0].method
    settings = GenerationSettings(p.spec.model, p.spec.sampler, p.height, p.width,
                                  p.spec.batch_size)
    warm_up(p.pipe, chunk, settings)
    adapters = p.adapters[method]
    swap(p.pipe, [], adapters)
    try:
        start = clock()
        sample(p.pipe, adapters, to_batch(chunk), steps=p.spec.sampler.steps, height=p.height,
               width=p.width, negative_prompt=p.spec.sampler.negative_prompt)
        took = clock() - start
    finally:
        swap(p.pipe, adapters, [])
    return took / (len(chunk) * p.cost[method])


def project(p: Any, seconds_per_eval: float) -> dict[str, float]:
    """Projected generation seconds per method for the images this run generates."""
    out = {m: 0.0 for m in p.adapters}
    for w in p.items:
        out[w.method] += p.cost[w.method] * seconds_per_eval
    return out


def projection_lines(p: Any, seconds_per_eval: float) -> list[str]:
    per_method = project(p, seconds_per_eval)
    total = sum(per_method.values())
    lines = [f"projected from one timed batch of {p.spec.batch_size} on {p.pipe.device}: "
             f"{_duration(total)} wall, {total / 3600:.2f} GPU-hours on one device "
             f"({1000 * seconds_per_eval:.2f} ms per UNet evaluation per image)"]
    lines += [f"  {m}: {_duration(s)}, {s / 3600:.2f} GPU-hours" for m, s in per_method.items()]
    return lines


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
