"""Does the harness keep a GPU busy? End-to-end `bench run` against generation alone.

The model is `simulated-gpu` (bench/world/simulated.py): world portraits at 512 px after GIL-free
sleeps in its UNet and VAE that add up to `seconds_per_image` at 50 steps with CFG (the default
--steps here), standing in for a GPU. For each (seconds_per_image, batch size):

  end-to-end   runner.execute: grid, warm-up, batches, PNGs, records, images.parquet, report
               (no scorers; one method, so no timing phase)
  alone        the same batches through the sampler into a null store (no PNG, no file)

interleaved in one process, repeated; the figure is median(end-to-end) / median(alone). The
sleeps' sum is printed too. Start-up: a `bench run` process against a script that loads the
stand-in and generates the same one batch (interleaved, repeated), less the same batch's
in-process end-to-end - alone difference (counted already): what bench's imports and planning
add per run, then added to the end-to-end median for the ratio with start-up. Then the harness's
CPU cost per 512 px image by stage (PNG encode at each compress_level, record JSON, the fsyncs,
the table rebuild), timed on one thread.

    python benchmarks/bench_pipeline.py [--images 256] [--batch 8 --batch 16]
        [--seconds 0.25 --seconds 0.1] [--repeats 3] [--steps 50] [--stages-only]

The machine's load average is printed with every figure: on a loaded machine the figures are
pessimistic (the harness's threads compete with other processes; the sleeps do not).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import planning, runner
from bench.executor import pending, to_batch
from bench.sampler import sample, to_uint8
from bench.spec import RunSpec, SamplerSpec
from bench.store import RunStore, atomic_write

PROMPT_SET = "world-occupations"


def load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def plan(seconds: float, batch: int, images: int, steps: int = 50) -> planning.RunPlan:
    probe = planning.load_prompt_sets(RunSpec(prompt_sets=(PROMPT_SET,)))[0]
    samples = -(-images // len(probe.prompts))
    spec = RunSpec(model=f"simulated-gpu:seconds_per_image={seconds}", prompt_sets=(PROMPT_SET,),
                   samples=samples, samples_by_kind=(), batch_size=batch, metrics=("none",),
                   sampler=SamplerSpec(steps=steps))
    p = planning.plan(spec)
    p.items = p.grid = p.items[:images]  # the grid too: the report covers every image
    return p


def end_to_end(p: planning.RunPlan, root: Path) -> float:
    out = root / f"run-{time.monotonic_ns()}"
    q = dataclasses.replace(p, spec=dataclasses.replace(p.spec, out=str(out)))
    start = time.perf_counter()
    runner.execute(q, quiet=True)
    took = time.perf_counter() - start
    shutil.rmtree(out)
    return took


def alone(p: planning.RunPlan, root: Path) -> float:
    """The same batches, sampled and converted to uint8, stored nowhere."""
    store = RunStore(root / "null")  # empty: every batch is pending
    chunks = pending(p.items, store, p.spec.batch_size)
    start = time.perf_counter()
    for chunk in chunks:
        result = sample(p.pipe, [], to_batch(chunk), steps=p.spec.sampler.steps, height=p.height,
                        width=p.width, negative_prompt="")
        to_uint8(result.images)
    return time.perf_counter() - start


def ratios(args: argparse.Namespace, root: Path) -> None:
    plans = {(s, b): plan(s, b, args.images, args.steps) for s in args.seconds for b in args.batch}
    times: dict[tuple[float, int], dict[str, list[float]]] = {
        k: {"bench": [], "alone": []} for k in plans}
    loads: list[str] = []
    for r in range(args.repeats):
        for key, p in plans.items():
            times[key]["bench"].append(end_to_end(p, root))
            times[key]["alone"].append(alone(p, root))
            loads.append(load())
            print(f"repeat {r} s/img={key[0]} batch={key[1]}: bench {times[key]['bench'][-1]:.2f} s, "
                  f"alone {times[key]['alone'][-1]:.2f} s ({loads[-1]})", flush=True)
    extra = {key: startup(plans[key], args, root) for key in plans}
    print(f"\nimages={args.images} steps={args.steps} 512 px, repeats={args.repeats}, {load()}")
    print("| s/image | batch | sleeps s | alone s (median) | bench run s (median) | ratio | "
          "start-up s | ratio with start-up |")
    print("|---|---|---|---|---|---|---|---|")
    for (s, b), t in times.items():
        a, e = statistics.median(t["alone"]), statistics.median(t["bench"])
        print(f"| {s} | {b} | {s * args.images * args.steps / 50:.1f} | {a:.2f} | {e:.2f} | "
              f"{e / a:.3f} | {extra[(s, b)]:.2f} | {(e + extra[(s, b)]) / a:.3f} |")


ALONE_SCRIPT = """
import sys
from bench.models import load_pipeline
from bench.sampler import Batch, sample, to_uint8
pipe = load_pipeline(sys.argv[1], "cpu")
b = int(sys.argv[2])
to_uint8(sample(pipe, [], Batch(prompts=[sys.argv[4]] * b, seeds=list(range(b)), guidance=7.5),
                steps=int(sys.argv[3]), height=512, width=512).images)
"""


def startup(p: planning.RunPlan, args: argparse.Namespace, root: Path) -> float:
    """Seconds a `bench run` process adds beyond generating in an already running process: one
    batch as a process (CLI) against a script that loads the stand-in and makes the same batch,
    less the in-process end-to-end - alone difference of that batch (counted in the ratio)."""
    one = dataclasses.replace(p, items=p.items[:p.spec.batch_size], grid=p.items[:p.spec.batch_size])
    b, steps, model = len(one.items), p.spec.sampler.steps, p.spec.model
    cli = [sys.executable, "-m", "bench.cli", "run", "--model", model, "--prompt-set", PROMPT_SET,
           "--limit", "1", "--samples", str(b), "--samples-by-kind", "none", "--batch-size", str(b),
           "--steps", str(steps), "--metrics", "none", "--quiet"]
    script = [sys.executable, "-c", ALONE_SCRIPT, model, str(b), str(steps), one.items[0].prompt.text]
    diffs = []
    for _ in range(args.repeats):
        out = root / f"cli-{time.monotonic_ns()}"
        cli_s = _wall(cli + ["--out", str(out)])
        shutil.rmtree(out, ignore_errors=True)
        diffs.append(cli_s - _wall(script) - (end_to_end(one, root) - alone(one, root)))
    print(f"start-up s/img={p.spec.model.split('=')[-1]} batch={b}: "
          f"{', '.join(f'{d:.2f}' for d in diffs)} s ({load()})", flush=True)
    return statistics.median(diffs)


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return time.perf_counter() - start


def stages(root: Path, repeats: int = 20) -> None:
    """Per-image CPU cost by stage, on one thread, at 512 px."""
    from bench.world.simulated import portraits

    images = portraits(512, 512, count=8)
    print(f"\nper-image harness CPU cost at 512 px (median of {repeats}), {load()}")
    print("| stage | ms/image | bytes |\n|---|---|---|")
    for level in (0, 1, 3, 6, 9):
        ms, size = _median_ms(lambda i: _png(images[i % 8], level), repeats)
        print(f"| PNG encode compress_level={level}{' (PIL default)' if level == 6 else ''} | "
              f"{ms:.1f} | {size} |")
    data = _png_bytes(images[0], 6)
    rec = {"key": "0" * 24, "method": "baseline", "seed": 1, "guidance": 7.5, "steps": 25,
           "png_sha256": "f" * 64, "seconds": 0.25, "step_seconds": 0.01}
    ms, _ = _median_ms(lambda i: len(json.dumps(rec).encode()), repeats)
    print(f"| record JSON (dumps) | {ms:.3f} | |")
    folder = root / "stage"
    ms_sync, _ = _median_ms(lambda i: atomic_write(folder / f"{i}.png", data) or 0, repeats)
    ms_nosync, _ = _median_ms(lambda i: _write_nosync(folder / f"n{i}.png", data), repeats)
    print(f"| PNG write + fsync + rename | {ms_sync:.2f} | |")
    print(f"| of which fsync (vs. the same write without) | {ms_sync - ms_nosync:.2f} | |")
    ms, _ = _median_ms(lambda i: atomic_write(folder / f"{i}.json", json.dumps(rec).encode()) or 0,
                       repeats)
    print(f"| record write + fsync + rename | {ms:.2f} | |")
    _table_cost(root)


def _table_cost(root: Path) -> None:
    """images.parquet rebuilt once at the end of a run: its cost divided over the images."""
    p = plan(0.0, 8, 64)
    out = root / "table"
    q = dataclasses.replace(p, spec=dataclasses.replace(p.spec, out=str(out)))
    runner.execute(q, quiet=True)
    store = RunStore(out)
    start = time.perf_counter()
    store.consolidate()
    took = time.perf_counter() - start
    print(f"| images.parquet rebuild (once per run; 64 images) | {1000 * took / 64:.2f} | |")


def _png(image: np.ndarray, level: int) -> int:
    return len(_png_bytes(image, level))


def _png_bytes(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _write_nosync(path: Path, data: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return 0


def _median_ms(fn, repeats: int) -> tuple[float, int]:
    times, out = [], 0
    for i in range(repeats):
        start = time.perf_counter()
        out = fn(i)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--seconds", type=float, action="append")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50,
                    help="50 (default): the stand-in's seconds_per_image hold per image")
    ap.add_argument("--stages-only", action="store_true")
    ap.add_argument("--dir", help="where runs are written (default: a temporary directory)")
    a = ap.parse_args()
    a.batch, a.seconds = a.batch or [8, 16], a.seconds or [0.25, 0.1]
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        if not a.stages_only:
            ratios(a, root)
        stages(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
