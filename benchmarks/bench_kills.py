"""Crash safety of a run directory: SIGKILL a `bench run` at every rename (after a file's
temporary copy is written and synced, before it takes its name) and at random times, rerun the
same command each time, and check that the rerun leaves no temporary file and gives the images,
images.parquet and leaderboards an uninterrupted run gives (timing columns aside).

    OMP_NUM_THREADS=1 python benchmarks/bench_kills.py [--prompts 3] [--samples 2] [--random 10]

Prints one line per kill and a summary: kills survived / kills made.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

KILLER = """
import os, signal, sys
import bench.store
real, calls, at = os.replace, [0], int(os.environ["KILL_AT_RENAME"])
def replace(src, dst):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
bench.store.os.replace = replace
import atexit
atexit.register(lambda: print("renames", calls[0], file=sys.stderr))
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""
TIMING = ["seconds", "step_seconds", "peak_memory_mb"]


def run(args: list[str], out: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_RENAME": str(kill_at)}
    return subprocess.run([sys.executable, "-c", KILLER, "run", *args, "--out", str(out)],
                          env=env, capture_output=True, text=True)


def snapshot(out: Path) -> tuple[dict[str, bytes], pd.DataFrame, str]:
    images = {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}
    table = pd.read_parquet(out / "images.parquet").drop(columns=TIMING)
    board = pd.read_csv(out / "leaderboard.csv")
    board = board[~board["metric"].isin(["seconds_per_image", "latency_ratio"])]
    return images, table, board.to_csv(index=False)


def survived(out: Path, args: list[str], clean: tuple) -> str | None:
    """None when the rerun restored everything, else what differs."""
    rerun = run(args, out)
    if rerun.returncode != 0:
        return f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[-300:]}"
    if list(out.rglob("*.tmp")):
        return f"temporary files left: {[p.name for p in out.rglob('*.tmp')]}"
    images, table, board = snapshot(out)
    if images != clean[0]:
        return "images differ"
    if not table.equals(clean[1]):
        return "images.parquet differs"
    return None if board == clean[2] else "leaderboard differs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--random", type=int, default=6, help="kills at random times")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-kills-"))
    prompts = work / "prompts.txt"
    prompts.write_text("".join(f"a photo of person number {i}\n" for i in range(a.prompts)))
    args = ["--model", "tiny-random", "--steps", "3", "--metrics", "none", "--quiet",
            "--methods", "baseline,sld-max", "--prompt-set", str(prompts),
            "--samples", str(a.samples), "--batch-size", "2"]
    first = run(args, work / "clean")
    if first.returncode != 0:
        raise SystemExit(first.stderr)
    renames = int(first.stderr.strip().splitlines()[-1].split()[1])
    clean = snapshot(work / "clean")
    made = ok = 0
    # Every third rename first, so a partial run already covers generation, tables and report.
    order = [at for start in (1, 2, 3) for at in range(start, renames + 1, 3)]
    for at in order:
        out = work / f"rename-{at}"
        killed = run(args, out, kill_at=at)
        made += 1
        problem = survived(out, args, clean) if killed.returncode == -9 else "not killed"
        ok += problem is None
        print(f"kill before rename {at}/{renames}: {problem or 'survived'}", flush=True)
        shutil.rmtree(out)
    rng = random.Random(0)
    for n in range(a.random):
        out = work / f"random-{n}"
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.5, 12.0)  # model load, generation, tables, report
        time.sleep(delay)
        if proc.poll() is not None:
            print(f"random kill at {delay:.1f} s: the run had finished; not counted", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            continue
        proc.kill()
        proc.wait()
        made += 1
        problem = survived(out, args, clean) if out.exists() else None
        ok += problem is None
        print(f"random kill at {delay:.1f} s: {problem or 'survived'}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work)
    print(f"survived {ok} of {made} kills ({renames} before a rename, {a.random} at random times)")


if __name__ == "__main__":
    main()
