"""Each method's latency as a ratio to the baseline, measured in one process, interleaved.

    python benchmarks/bench_methods.py [--model world] [--batch 8] [--steps 25] [--repeats 5]

Methods that cannot run on the model (no checkpoint) are listed as skipped. Expect SLD <= 1.6x
(three UNet branches instead of two) and embedding methods (Fair Mapping, debias-vl) <= 1.05x.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.models import load_pipeline, native_size
from bench.registry import METHODS
from bench.planning import build_adapters
from bench.spec import MethodChain
from bench.sampler import Batch, sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device")
    a = ap.parse_args()
    pipe = load_pipeline(a.model, a.device)
    size = native_size(pipe)
    names = METHODS.names() if a.methods == "all" else a.methods.split(",")
    adapters, skipped = {}, {}
    for name in names:
        ads = build_adapters(MethodChain.parse(name))
        reason = next((r for x in ads if (r := x.skip_reason(pipe))), None)
        if reason:
            skipped[name] = reason
        else:
            for x in ads:
                x.prepare(pipe)
            adapters[name] = ads
    batch = Batch([f"a photo of a doctor, take {i}" for i in range(a.batch)], list(range(a.batch)),
                  [{} for _ in range(a.batch)], guidance=7.5)
    times: dict[str, list[float]] = {n: [] for n in adapters}
    for n, ads in adapters.items():  # warm-up
        sample(pipe, ads, batch, steps=a.steps, height=size, width=size)
    for _ in range(a.repeats):
        for n, ads in adapters.items():
            t = time.perf_counter()
            sample(pipe, ads, batch, steps=a.steps, height=size, width=size)
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times["baseline"])
    print(f"model={a.model} batch={a.batch} steps={a.steps} size={size} "
          f"threads={torch.get_num_threads()} repeats={a.repeats}")
    print("| method | median s/batch | ratio to baseline |\n|---|---|---|")
    for n in adapters:
        med = statistics.median(times[n])
        print(f"| {n} | {med:.3f} | {med / base:.2f} |")
    for n, r in skipped.items():
        print(f"| {n} | skipped: {r} | |")


if __name__ == "__main__":
    main()
