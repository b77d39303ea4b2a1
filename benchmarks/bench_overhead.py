"""Harness overhead against calling diffusers' StableDiffusionPipeline directly.

Same tiny pipeline, same prompts, seeds, steps, guidance and size, batch 8, alternating the two
in one process so both see the same machine state. Reports the median time per batch of each and
their ratio. Target: <= 1.05 at batch 8.

    python benchmarks/bench_overhead.py [--model tiny-random] [--batch 8] [--steps 25] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.models import load_pipeline, native_size
from bench.sampler import Batch, sample, to_uint8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device")
    a = ap.parse_args()
    pipe = load_pipeline(a.model, a.device)
    size = native_size(pipe)
    prompts = [f"a photo of a person, variant {i}" for i in range(a.batch)]
    seeds = list(range(a.batch))

    def direct() -> None:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        pipe(prompts, num_inference_steps=a.steps, guidance_scale=7.5, height=size, width=size,
             generator=gens, output_type="pil")

    def harness() -> None:
        r = sample(pipe, [], Batch(prompts, seeds, guidance=7.5), steps=a.steps, height=size,
                   width=size)
        to_uint8(r.images)  # the same final conversion diffusers' "pil" output does

    times: dict[str, list[float]] = {"diffusers": [], "bench": []}
    direct(), harness()  # warm-up
    for _ in range(a.repeats):
        for name, fn in (("diffusers", direct), ("bench", harness)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    d, b = statistics.median(times["diffusers"]), statistics.median(times["bench"])
    print(f"model={a.model} batch={a.batch} steps={a.steps} size={size} threads={torch.get_num_threads()}")
    print(f"| runner | median s/batch |\n|---|---|\n| diffusers | {d:.4f} |\n| bench | {b:.4f} |")
    print(f"overhead ratio bench/diffusers = {b / d:.3f}")


if __name__ == "__main__":
    main()
