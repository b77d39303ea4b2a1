"""Run-directory integrity (issue 16): one spec per directory, one row per grid position with its
current metadata, damaged files detected and regenerated, no temporary file outliving a kill."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.store import RunStore, atomic_write, stale_temp, sweep_temp
from bench.metrics.base import Scorer

FAST = ["--model", "tiny-random", "--steps", "3", "--metrics", "none", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "images").glob("*.png")}


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompts(prompt_file):
    return prompt_file(["a photo of a doctor", "a photo of a nurse"])


def test_another_spec_gets_its_own_directory_and_leaves_the_first_alone(tmp_path, prompts,
                                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = [*FAST, "--prompt-set", str(prompts)]
    assert main(["run", *spec, "--samples", "1"]) == 0
    first = (tmp_path / "runs" / "latest").resolve()
    before = files(first)
    assert main(["run", *spec, "--samples", "2"]) == 0
    second = (tmp_path / "runs" / "latest").resolve()
    assert second != first and second.parent == first.parent
    assert files(first) == before  # the first run's leaderboard, tables and images untouched
    assert len(pd.read_parquet(first / "images.parquet")) == 2
    assert len(pd.read_parquet(second / "images.parquet")) == 4
    # The same command again resumes its own directory: nothing regenerated, latest moves back.
    stamps = mtimes(first)
    assert main(["run", *spec, "--samples", "1"]) == 0
    assert (tmp_path / "runs" / "latest").resolve() == first and mtimes(first) == stamps
    capsys.readouterr()
    assert main(["report", "runs/latest", "--quiet"]) == 0
    page = capsys.readouterr().out.strip().removeprefix("report: ")
    assert Path(page).resolve() == first / "report" / "index.html"
    # bench compare names the spec keys that differ, and only those.
    assert main(["compare", str(first), str(second)]) in (0, 1)
    out = capsys.readouterr().out
    specs = out.split("## Specs")[1].split("##")[0]
    assert specs.strip() == "- samples: 1 (A) vs 2 (B)"


def test_explicit_out_with_another_spec_is_refused_in_one_line(tmp_path, prompts, capsys):
    out = tmp_path / "run"
    spec = [*FAST, "--prompt-set", str(prompts), "--out", str(out)]
    assert main(["run", *spec, "--samples", "1"]) == 0
    before = files(out)
    capsys.readouterr()
    assert main(["run", *spec, "--samples", "2", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"bench: error: {out} holds a run of another spec (sampler.steps, "
                          "samples differ)") and "drop --out" in err
    assert files(out) == before
    # Keys that may differ between reruns of one run (device, executor, shard) are accepted.
    assert main(["run", *spec, "--samples", "1", "--device", "cpu"]) == 0


def test_pointer_file_where_symlinks_fail(tmp_path, prompts, monkeypatch, capsys):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    assert main(["run", *FAST, "--prompt-set", str(prompts), "--samples", "1"]) == 0
    latest = tmp_path / "runs" / "latest"
    assert latest.is_file() and not latest.is_symlink()
    target = tmp_path / "runs" / latest.read_text().strip()
    assert (target / "leaderboard.md").is_file()
    capsys.readouterr()
    assert main(["report", "runs/latest", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {Path('runs') / target.name}/report/index.html"


def test_edited_metadata_updates_the_table_without_regenerating(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "a photo of a nurse", "group": "x"},
                                        {"id": "b", "prompt": "a photo of a chef", "group": "y"}])
    out = tmp_path / "run"
    args = ["run", *FAST, "--prompt-set", str(path), "--samples", "2", "--out", str(out)]
    assert main(args) == 0
    stamps = mtimes(out)
    jsonl(path, [{"id": "a", "prompt": "a photo of a nurse", "group": "x2"},
                 {"id": "b", "prompt": "a photo of a chef", "group": "y"}])
    assert main(args) == 0
    table = pd.read_parquet(out / "images.parquet")
    assert dict(zip(table["prompt_id"], table["meta.group"])) == {"a": "x2", "b": "y"}
    assert mtimes(out) == stamps  # no image regenerated
    from bench.prompt_sets.resolve import load_prompt_set
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompt_sets"][0]["sha256"] == load_prompt_set(str(path)).content_hash()


def test_two_sets_sharing_text_and_seed_keep_every_row(tmp_path):
    one = jsonl(tmp_path / "one.jsonl", [{"id": "1", "prompt": "a photo of a nurse", "seed": 5},
                                         {"id": "2", "prompt": "a photo of a chef", "seed": 6}])
    two = jsonl(tmp_path / "two.jsonl", [{"id": "9", "prompt": "a photo of a nurse", "seed": 5,
                                          "group": "g"},
                                         {"id": "8", "prompt": "a photo of a cook", "seed": 7}])
    out = tmp_path / "run"
    assert main(["run", *FAST, "--prompt-set", str(one), "--prompt-set", str(two), "--samples", "1",
                 "--out", str(out)]) == 0
    table = pd.read_parquet(out / "images.parquet")
    assert len(table) == 4  # the grid's 4 positions, though 3 images
    assert sorted(zip(table["prompt_set"], table["prompt_id"])) == [
        ("one", "1"), ("one", "2"), ("two", "8"), ("two", "9")]
    shared = table[table["prompt"] == "a photo of a nurse"]
    assert shared["key"].nunique() == 1 and list(shared["meta.group"].fillna("-")) == ["-", "g"]
    assert len(list((out / "images").glob("*.png"))) == 3
    assert json.loads((out / "manifest.json").read_text())["grid"]["images"] == 4


def test_a_prompt_is_stored_once(tmp_path):
    text = "a photo of a nurse " + "x" * 200_000
    path = jsonl(tmp_path / "long.jsonl", [{"id": "long", "prompt": text}])
    out = tmp_path / "run"
    assert main(["run", *FAST, "--prompt-set", str(path), "--samples", "3", "--out", str(out)]) == 0
    for file in [*(out / "images").glob("*.png"), *(out / "records").glob("*.json")]:
        assert file.stat().st_size < 10_000, file  # hashes, not the 200 kB text
    assert list(pd.read_parquet(out / "prompts.parquet")["prompt"]) == [text]
    assert set(pd.read_parquet(out / "images.parquet")["prompt"]) == {text}


def test_damaged_png_and_record_are_regenerated_saying_so(tmp_path, prompts, capsys):
    out = tmp_path / "run"
    args = ["run", *FAST, "--prompt-set", str(prompts), "--samples", "2", "--out", str(out)]
    assert main(args) == 0
    pngs = sorted((out / "images").glob("*.png"))
    pixels = {p.name: np.asarray(Image.open(p)) for p in pngs}
    data = pngs[0].read_bytes()
    pngs[0].write_bytes(data[: len(data) // 2])  # truncated
    record = out / "records" / f"{pngs[1].stem}.json"
    record.write_bytes(record.read_bytes()[:20])
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench: warning: 2 damaged image(s) in {out} "
                                               "regenerated: ")
    assert f"images/{pngs[0].name} is damaged ({len(data) // 2} bytes, {len(data)} when written)" \
        in err[0]
    for p in pngs:  # regenerated bit-equal
        assert np.array_equal(np.asarray(Image.open(p)), pixels[p.name])
    assert len(pd.read_parquet(out / "images.parquet")) == 4


class Red(Scorer):
    name = "red"

    def __init__(self, device=None):
        pass

    def score(self, images, rows):
        return pd.DataFrame({"red.mean": [float(np.asarray(im)[..., 0].mean()) for im in images]},
                            index=rows.index)


def test_damaged_tables_and_manifest_are_one_line(tmp_path, prompts, capsys, monkeypatch):
    from bench.registry import METRICS

    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))
    METRICS.register("red", Red)
    out = tmp_path / "run"
    args = ["run", *FAST, "--metrics", "red", "--prompt-set", str(prompts), "--samples", "1",
            "--out", str(out)]
    assert main(args) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    board = (out / "leaderboard.csv").read_bytes()
    (out / "scores.parquet").write_bytes(b"PAR1 truncated")
    capsys.readouterr()
    assert main(["report", str(out), "--quiet"]) == 0  # scores are recomputable
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"bench: warning: {out / 'scores.parquet'} is damaged (") and "Parquet" in err[0]
    assert err[0].endswith("); every image is rescored")
    assert (out / "leaderboard.csv").read_bytes() == board
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), scores)
    manifest = (out / "manifest.json").read_bytes()
    (out / "manifest.json").write_bytes(manifest[:40])
    for command in (["report", str(out)], [*args, "--shard", "0/2"], args):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"bench: error: {out / 'manifest.json'} is damaged ("), err


KILLER = """
import os, signal, sys
import bench.store
real, calls, at = os.replace, [0], int(os.environ["KILL_AT_RENAME"])
def replace(src, dst):
    calls[0] += 1
    if calls[0] == at:  # the temporary file is written and synced; the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
bench.store.os.replace = replace
import atexit
atexit.register(lambda: print("renames", calls[0], file=sys.stderr))
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_before_a_rename_leaves_no_temporary_file_after_the_rerun(tmp_path, prompts):
    """Kills forced between a file's write and its rename: during generation, when the tables
    are written and while the report writes its plots. The rerun sweeps the killed writer's
    temporary file and ends with the table an uninterrupted run gives."""
    args = [*FAST, "--prompt-set", str(prompts), "--samples", "2", "--metrics", "none"]
    clean = tmp_path / "clean"
    done = subprocess.run([sys.executable, "-c", KILLER, "run", *args, "--out", str(clean)],
                          env={**ENV, "KILL_AT_RENAME": "0"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    total = int(done.stderr.strip().splitlines()[-1].split()[1])
    for at in (4, 12, total - 1):  # an image, images.parquet, the last plot or page
        out = tmp_path / f"killed-{at}"
        killed = subprocess.run([sys.executable, "-c", KILLER, "run", *args, "--out", str(out)],
                                env={**ENV, "KILL_AT_RENAME": str(at)}, capture_output=True)
        assert killed.returncode == -9
        assert list(out.rglob(".*.tmp"))  # the killed writes (the Writer has 2 threads in flight)
        assert main(["run", *args, "--out", str(out)]) == 0
        assert not list(out.rglob("*.tmp"))
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "images.parquet").drop(columns=["seconds", "step_seconds"]),
            pd.read_parquet(clean / "images.parquet").drop(columns=["seconds", "step_seconds"]))


def test_stale_temporary_files_are_those_whose_writer_is_gone(tmp_path):
    import socket

    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    now = time.time()
    mine = tmp_path / f".a.png.{host}.{os.getpid()}.abc123.tmp"  # a live writer: this process
    gone = tmp_path / f".b.png.{host}.{dead}.abc123.tmp"
    remote = tmp_path / f".c.png.otherhost.{os.getpid()}.abc123.tmp"
    old_remote = tmp_path / f".d.png.otherhost.1.abc123.tmp"
    for p in (mine, gone, remote, old_remote):
        p.write_bytes(b"x")
    os.utime(old_remote, (now - 7200, now - 7200))
    assert [stale_temp(p, now) for p in (mine, gone, remote, old_remote)] == [False, True, False,
                                                                              True]
    assert sweep_temp(tmp_path) == 2 and mine.exists() and remote.exists()
    atomic_write(tmp_path / "x.txt", b"ok")  # the names atomic_write uses are recognised
    assert not list(tmp_path.glob(".x.txt*"))


def test_shards_leave_a_manifest_of_the_whole_run(tmp_path, prompts):
    args = ["run", *FAST, "--prompt-set", str(prompts), "--samples", "3", "--out", str(tmp_path / "s")]
    for i in range(3):
        assert main([*args, "--shard", f"{i}/3"]) == 0
        manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
        assert manifest["grid"]["images"] == 6
    assert manifest["spec"]["shard"] is None and manifest["grid"]["done"] == 6
    assert manifest["grid"]["shard"] is None
    assert len(RunStore(tmp_path / "s").images()) == 6
