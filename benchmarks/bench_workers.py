"""Generation throughput of `--executor ray` with 1 and 2 workers, against the local executor.

One private Ray instance on 127.0.0.1 (`num_cpus` = the largest worker count). For each worker
count a fresh pool is started and warmed up (pipelines loaded) before the clock starts, then the
same work items are generated into a fresh run directory; worker start-up is reported apart. The
local executor runs the same items in this process. On CPU every Ray worker gets one core (Ray sets
OMP_NUM_THREADS=1 in actors); run this with OMP_NUM_THREADS=1 so the local row uses one too.

    OMP_NUM_THREADS=1 python benchmarks/bench_workers.py [--model world|tiny-random]
        [--prompts 48] [--steps 10] [--batch 4] [--workers 1 2] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before Ray

from bench import executor_ray, planning  # noqa: E402
from bench.executor import GenerationSettings, generate  # noqa: E402
from bench.grid import batches  # noqa: E402
from bench.spec import RunSpec, SamplerSpec  # noqa: E402
from bench.store import RunStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="world")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per row (best kept)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    prompts = tmp / "prompts.txt"
    prompts.write_text("".join(f"a photo of person number {i}\n" for i in range(a.prompts)))
    spec = RunSpec(model=a.model, prompt_sets=(str(prompts),), samples=1, metrics=("none",),
                   sampler=SamplerSpec(steps=a.steps), batch_size=a.batch, device="cpu")
    p = planning.plan(spec)
    settings = GenerationSettings(a.model, spec.sampler, p.height, p.width, a.batch)
    n = len(p.items)
    rows: list[tuple[str, float, float]] = []  # (executor, start-up s, images/s)

    best = float("inf")
    for r in range(a.repeats):
        t = time.perf_counter()
        generate(p.pipe, p.items, p.adapters, RunStore(tmp / f"local{r}"), settings, quiet=True)
        best = min(best, time.perf_counter() - t)
    rows.append(("local (1 process)", 0.0, n / best))

    ray = executor_ray.import_ray()
    ray.init(address="local", num_cpus=max(a.workers), include_dashboard=False,
             log_to_driver=False)
    try:
        for w in a.workers:
            root = tmp / f"ray{w}"
            with executor_ray.actor_pool(ray, executor_ray.GenerationWorker, w, "cpu", str(root),
                                         settings, p.model_fp, p.chains) as pool:
                t = time.perf_counter()
                ray.get([actor.ready.remote() for actor in pool])  # pipelines loaded
                startup, best = time.perf_counter() - t, float("inf")
                for _ in range(a.repeats):
                    shutil.rmtree(root, ignore_errors=True)  # workers skip what is stored
                    t = time.perf_counter()
                    executor_ray.dispatch(ray, pool, "generate", batches(p.items, a.batch),
                                          lambda job: None)
                    best = min(best, time.perf_counter() - t)
            rows.append((f"ray, {w} worker{'s' if w > 1 else ''}", startup, n / best))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp)

    print(f"model={a.model} images={n} steps={a.steps} size={p.height} batch={a.batch} "
          f"cpus={os.cpu_count()} load-average={os.getloadavg()[0]:.1f}")
    print("| executor | worker start-up s | images/s |\n|---|---|---|")
    for name, startup, ips in rows:
        print(f"| {name} | {startup:.1f} | {ips:.2f} |")
    ray_rows = {name: ips for name, _, ips in rows if name.startswith("ray")}
    if len(ray_rows) >= 2:
        (n1, t1), (n2, t2) = list(ray_rows.items())[0], list(ray_rows.items())[-1]
        print(f"speed-up {n2} / {n1} = {t2 / t1:.2f}x")


if __name__ == "__main__":
    main()
