"""`bench bundle`, `bench reproduce` and `bench compare` end to end on tiny-random.

A test scorer (mean pixel value) gives a deterministic leaderboard metric that moves when a
method's images move; wall-clock latency cells are noise and compare leaves them out by default.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.registry import METRICS
from bench.metrics.base import MetricInfo, Scorer

FAST = ["--model", "tiny-random", "--steps", "3", "--quiet", "--samples", "1"]
SCORER = "test-brightness"


class Brightness(Scorer):
    name = SCORER
    description = "mean pixel value / 255 (test scorer)"
    columns = {f"{SCORER}.mean": MetricInfo("brightness", "", True, "mean pixel value / 255")}

    def __init__(self, device: str | None = None) -> None:
        pass

    def score(self, images, rows):
        return pd.DataFrame({f"{SCORER}.mean": [np.asarray(im, dtype=float).mean() / 255
                                                for im in images]})


@pytest.fixture(scope="module")
def brightness():
    METRICS.names()  # load the built-ins first: the test entry is then ours to remove
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METRICS._entries, SCORER, Brightness)
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, brightness):
    """Run A (baseline, sld-strong) and run B (baseline, sld-strong:warmup=1): one prompt, one
    sample, so each cell's bootstrap CI is a point and any change separates them."""
    root = tmp_path_factory.mktemp("runs")
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a doctor\n")
    common = [*FAST, "--prompt-set", str(prompts), "--metrics", SCORER]
    assert main(["run", *common, "--methods", "baseline,sld-strong", "--out", str(root / "A")]) == 0
    assert main(["run", *common, "--methods", "baseline,sld-strong:warmup=1",
                 "--out", str(root / "B")]) == 0
    return root


def compare_json(tmp_path, a, b, *flags):
    out = tmp_path / "cmp.json"
    code = main(["compare", str(a), str(b), "--format", "json", "--out", str(out), *flags])
    return code, json.loads(out.read_text())


def test_reproduce_from_bundle_matches_on_this_machine(runs, tmp_path, capsys):
    bundle = tmp_path / "a.zip"
    assert main(["bundle", str(runs / "A"), "--out", str(bundle)]) == 0
    prompts = runs / "prompts.txt"
    prompts.rename(runs / "away.txt")  # the bundle's own copy must be what reproduce uses
    try:
        assert main(["reproduce", str(bundle), "--out", str(tmp_path / "R"), "--quiet"]) == 0
    finally:
        (runs / "away.txt").rename(prompts)
    code, cmp = compare_json(tmp_path, runs / "A", tmp_path / "R")
    assert code == 0 and cmp["agree"]
    assert cmp["images"]["compared"] == 2 and cmp["images"]["identical"] == 2
    assert cmp["images"]["max_diff"] == 0
    assert {(c["method"], c["metric"]) for c in cmp["cells"]} == {
        (m, x) for m in ("baseline", "sld-strong") for x in ("brightness", "unet_evals_per_image")}
    assert all(c["status"] == "identical" and c["diff"] == 0 for c in cmp["cells"])
    assert cmp["verdict"].startswith("tables agree within CIs")
    # The cell is the test scorer's value: the mean of the stored image / 255.
    table = pd.read_parquet(runs / "A" / "images.parquet")
    row = table[table["method"] == "baseline"].iloc[0]
    expected = np.asarray(Image.open(runs / "A" / row["file"]), dtype=float).mean() / 255
    cell = next(c for c in cmp["cells"] if (c["method"], c["metric"]) == ("baseline", "brightness"))
    assert cell["a"]["value"] == pytest.approx(expected, abs=1e-12)
    # The reproduced spec points at the bundled copy and records the original.
    manifest = json.loads((tmp_path / "R" / "manifest.json").read_text())
    copy = str((tmp_path / "R" / "prompts" / "0" / "prompts.txt").resolve())
    assert manifest["spec"]["prompt_sets"] == [copy]
    assert manifest["reproduces"]["prompt_sets"] == {copy: str(prompts)}
    # A bundle with a one-image sample: only that image is compared, tables still agree.
    small = tmp_path / "small.zip"
    assert main(["bundle", str(runs / "A"), "--out", str(small), "--images", "1"]) == 0
    code, cmp = compare_json(tmp_path, small, tmp_path / "R")
    assert code == 0 and cmp["images"]["compared"] == 1 and cmp["images"]["not_compared"] == 1


def test_compare_names_the_cells_a_parameter_moved(runs, tmp_path, capsys):
    code, cmp = compare_json(tmp_path, runs / "A", runs / "B")
    assert code == 1 and not cmp["agree"]
    assert cmp["paired_methods"] == {"sld-strong": "sld-strong:warmup=1"}
    bad = [(c["method"], c["metric"]) for c in cmp["cells"] if c["status"] == "outside CI"]
    assert bad == [("sld-strong", "brightness")]
    same = {(c["method"], c["metric"]) for c in cmp["cells"] if c["status"] == "identical"}
    assert same == {("baseline", "brightness"), ("baseline", "unet_evals_per_image"),
                    ("sld-strong", "unet_evals_per_image")}
    assert cmp["timing_cells_skipped"] == 4  # seconds_per_image, latency_ratio x 2 methods
    # Baseline images share keys and are identical; SLD's keys differ with the spec.
    assert (cmp["images"]["compared"], cmp["images"]["identical"]) == (1, 1)
    assert cmp["images"]["only_in_a"] == cmp["images"]["only_in_b"] == 1
    assert main(["compare", str(runs / "A"), str(runs / "B")]) == 1
    text = capsys.readouterr().out
    assert ("tables disagree in 1 of 4 cells: prompts (guidance 7.5) / sld-strong / brightness"
            in text)
    _, with_latency = compare_json(tmp_path, runs / "A", runs / "B", "--include-latency")
    assert with_latency["timing_cells_skipped"] == 0
    assert {"seconds_per_image", "latency_ratio"} <= {c["metric"] for c in with_latency["cells"]}


def test_reproduce_refuses_a_changed_prompt_file(tmp_path, prompt_file, capsys):
    prompts = prompt_file(["a photo of a doctor", "a photo of a nurse"])
    run = tmp_path / "run"
    assert main(["run", *FAST, "--metrics", "none", "--prompt-set", str(prompts),
                 "--out", str(run)]) == 0
    prompts.write_text("a photo of a doctor\na photo of a pilot\n")
    capsys.readouterr()
    assert main(["reproduce", str(run), "--out", str(tmp_path / "r")]) == 2
    # Warnings (a run made from a dirty working tree) may come between; the errors are two lines.
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("bench: warning")]
    assert len(err) == 2 and "prompt set 'prompts' changed" in err[0] and "--allow-drift" in err[1]
    assert not (tmp_path / "r").exists()
    assert main(["bundle", str(run), "--out", str(tmp_path / "x.zip")]) == 2  # would carry others
    assert "changed since the run" in capsys.readouterr().err
    assert main(["reproduce", str(run), "--out", str(tmp_path / "r"), "--allow-drift",
                 "--quiet"]) == 0
    assert "bench: warning: prompt set 'prompts' changed" in capsys.readouterr().err
    drifted = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert "prompt set 'prompts' changed" in drifted["reproduces"]["differences"][0]
    # The nurse image is gone, a pilot image is new: tables agree, --strict catches the images.
    code, cmp = compare_json(tmp_path, run, tmp_path / "r")
    assert code == 0 and cmp["images"]["only_in_a"] == cmp["images"]["only_in_b"] == 1
    code, cmp = compare_json(tmp_path, run, tmp_path / "r", "--strict")
    assert code == 1 and cmp["verdict"].endswith("images differ: 0 of 1 beyond the tolerance, "
                                                 "2 in one run only; specs differ in prompt_sets")
    from bench.prompt_sets.resolve import load_prompt_set
    now = load_prompt_set(str(prompts)).content_hash()[:12]
    assert len(cmp["specs"]) == 1 and cmp["specs"][0].startswith("prompt_sets: [\"prompts (sha256 ")
    assert cmp["specs"][0].endswith(f'(B)') and f"prompts (sha256 {now})" in cmp["specs"][0]


def test_reproduce_lists_model_method_and_version_drift(runs, tmp_path, capsys):
    manifest = json.loads((runs / "A" / "manifest.json").read_text())
    manifest["model"]["fingerprint"] = "0" * 16
    manifest["methods"]["sld-strong"][0]["params"]["warmup"] = 5
    manifest["versions"]["torch"] = "1.0.0"
    manifest["git_dirty"] = True
    edited = tmp_path / "edited" / "manifest.json"
    edited.parent.mkdir()
    edited.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["reproduce", str(edited), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bench: error: model 'tiny-random': fingerprint 0000000000000000 in the manifest" in err
    assert ("bench: error: method 'sld-strong' resolves to other parameters here: warmup 5 -> 7"
            in err)
    assert "bench: warning: torch 1.0.0 in the manifest" in err
    assert ("bench: warning: the run was made from uncommitted changes on top of bench git commit"
            in err)
    assert "2 difference(s) above" in err
    assert not (tmp_path / "edited-reproduced").exists()


def test_manifest_git_state_counts_tracked_changes_only(tmp_path):
    """git_dirty: a modified tracked file is dirty; an untracked file (a run directory) is not."""
    import subprocess

    from bench.provenance import git_commit, git_dirty

    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None  # not a repository
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head and git_dirty(tmp_path) is False
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "manifest.json").write_text("{}")
    assert git_dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True


def test_bundle_is_byte_identical_and_reports(runs, tmp_path, capsys):
    first, second = tmp_path / "one.zip", tmp_path / "two.zip"
    assert main(["bundle", str(runs / "A"), "--out", str(first)]) == 0
    for path in (runs / "A").rglob("*"):  # file times must not leak into the bundle
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert main(["bundle", str(runs / "A"), "--out", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as z:
        names = z.namelist()
        assert names == sorted(names)
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {"manifest.json", "images.parquet", "scores.parquet", "leaderboard.csv",
                "leaderboard.md", "leaderboard.tex", "report/index.html",
                "prompts/0/prompts.txt"} <= set(names)
        assert z.read("manifest.json") == (runs / "A" / "manifest.json").read_bytes()
    # `bench report BUNDLE.zip` rebuilds the tables from the stored scores, beside the bundle.
    assert main(["report", str(first), "--quiet"]) == 0
    assert (tmp_path / "one" / "leaderboard.csv").read_text() == \
        (runs / "A" / "leaderboard.csv").read_text()  # same stored scores and timings, same cells
    assert main(["report", str(first), "--metrics", SCORER]) == 2
    assert "cannot be rescored" in capsys.readouterr().err


@pytest.mark.parametrize("entry", ["../evil.txt", "/tmp/evil-abs.txt", "prompts/../../evil.txt"])
def test_zip_slip_is_rejected(tmp_path, capsys, entry):
    evil = tmp_path / "bundles" / "evil.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("bundle.json", json.dumps({"bench_bundle": 1, "prompt_files": []}))
        z.writestr("manifest.json", "{}")
        z.writestr(entry, "pwned")
    for args in (["report", str(evil)], ["reproduce", str(evil), "--out", str(tmp_path / "o")],
                 ["compare", str(evil), str(evil)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"entry '{entry}' points outside the bundle" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "bundles" / "evil").exists()


def test_bundle_json_cannot_point_prompts_elsewhere(tmp_path, capsys):
    evil = tmp_path / "evil.zip"
    info = {"bench_bundle": 1, "prompt_files": [{"entry": "p.txt", "file": "../../etc/passwd",
                                                  "options": ""}]}
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("bundle.json", json.dumps(info))
        z.writestr("manifest.json", "{}")
    assert main(["reproduce", str(evil), "--out", str(tmp_path / "o")]) == 2
    assert "names prompt file '../../etc/passwd'" in capsys.readouterr().err
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert main(["compare", str(tmp_path / "junk.zip"), str(evil)]) == 2
    assert "not a readable zip bundle" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _fake_run(root: Path, cells: list[tuple]) -> Path:
    from bench.manifest import GridRecord, Manifest, ModelRecord
    from bench.spec import RunSpec

    root.mkdir()
    manifest = Manifest(created="", spec=RunSpec(), model=ModelRecord("m", "f"), height=8, width=8,
                        methods={}, skipped_methods={}, prompt_sets=(), grid=GridRecord(0, None),
                        device="cpu", versions={}, git_commit=None)
    (root / "manifest.json").write_bytes(manifest.to_json())
    pd.DataFrame({"key": [], "method": [], "prompt_id": [], "seed": []}).to_parquet(
        root / "images.parquet")
    pd.DataFrame(cells, columns=["table", "method", "metric", "value", "ci_lo", "ci_hi", "n",
                                 "higher_is_better", "unit"]).to_csv(root / "leaderboard.csv",
                                                                     index=False)
    return root


def test_cell_verdicts_follow_ci_overlap(tmp_path):
    from bench.compare import compare

    nan = float("nan")
    a = _fake_run(tmp_path / "a", [
        ("t", "m", "same", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "overlap", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "apart", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "touch", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "lost", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "both-nan", nan, nan, nan, 0, True, ""),
        ("t", "m", "a-only", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "seconds_per_image", 1.0, 0.9, 1.1, 10, False, "s/image")])
    b = _fake_run(tmp_path / "b", [
        ("t", "m", "same", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "overlap", 1.15, 1.05, 1.25, 10, True, ""),
        ("t", "m", "apart", 1.3, 1.2, 1.4, 10, True, ""),
        ("t", "m", "touch", 1.2, 1.1, 1.3, 10, True, ""),
        ("t", "m", "lost", nan, nan, nan, 0, True, ""),
        ("t", "m", "both-nan", nan, nan, nan, 0, True, ""),
        ("t", "m", "b-only", 1.0, 0.9, 1.1, 10, True, ""),
        ("t", "m", "seconds_per_image", 9.0, 8.9, 9.1, 10, False, "s/image")])
    c = compare(a, b)
    status = {r["metric"]: r["status"] for r in c.cells}
    assert status == {"same": "identical", "overlap": "within CI", "apart": "outside CI",
                      "touch": "within CI", "lost": "one is NaN", "both-nan": "identical",
                      "a-only": "only in A", "b-only": "only in B"}
    diff = {r["metric"]: r["diff"] for r in c.cells}
    assert diff["overlap"] == pytest.approx(0.15) and diff["apart"] == pytest.approx(0.3)
    assert c.timing_cells_skipped == 1
    assert sorted(r["metric"] for r in c.disagreeing()) == ["a-only", "apart", "b-only", "lost"]
    assert "seconds_per_image" in {r["metric"] for r in compare(a, b, include_latency=True).cells}


def test_tolerance_counts_images_within_it(tmp_path):
    from bench.compare import compare, parse_tolerance

    assert parse_tolerance("1/255") == pytest.approx(1 / 255)
    runs = []
    for name, delta in (("a", 0), ("b", 1)):
        root = _fake_run(tmp_path / name, [])
        pd.DataFrame({"key": ["k0", "k1"], "method": ["m", "m"], "prompt_id": ["0", "1"],
                      "seed": [0, 1]}).to_parquet(root / "images.parquet")
        (root / "images").mkdir()
        base = np.full((4, 4, 3), 100, dtype=np.uint8)
        Image.fromarray(base).save(root / "images" / "k0.png")
        shifted = base.copy()
        shifted[0, 0, 0] += 3 * delta  # one channel value off by 3 levels in run b
        Image.fromarray(shifted).save(root / "images" / "k1.png")
        runs.append(root)
    strict = compare(*runs, tolerance=1 / 255).images
    assert (strict.compared, strict.identical, strict.within_tolerance) == (2, 1, 1)
    assert strict.max_diff == 3 and strict.mean_diff == pytest.approx(3 / 48 / 2)
    assert strict.worst[0]["key"] == "k1" and strict.worst[0]["max_diff"] == 3
    assert compare(*runs, tolerance=3 / 255).images.within_tolerance == 2


def test_compare_lists_scorer_setups_that_differ(tmp_path):
    """Same cells, different evaluator weights: the verdict says so, and --strict fails on it; a
    field only one run recorded (an older run) is not flagged."""
    import json

    from bench.compare import compare, markdown

    cell = [("t", "m", "x", 1.0, 0.9, 1.1, 10, True, "")]
    used = {"a": {"world": {"evaluators.safetensors": "aaaa", "face_threshold": "0.5"}},
            "b": {"world": {"evaluators.safetensors": "bbbb", "face_threshold": "0.5"},
                  "world-clipscore": {"clip_head.safetensors": "cccc"}},
            "old": {"world": {}}}
    runs = {}
    for name, scorers in used.items():
        runs[name] = _fake_run(tmp_path / name, cell)
        (runs[name] / "report").mkdir()
        (runs[name] / "report" / "scoring.json").write_text(json.dumps({"used": scorers}))
    c = compare(runs["a"], runs["b"])
    assert c.scorers == ["world evaluators.safetensors: aaaa (A) vs bbbb (B)"]
    assert c.agrees() and not c.agrees(strict=True)
    assert "scored differently: world evaluators.safetensors" in c.verdict()
    assert "aaaa (A) vs bbbb (B)" in markdown(c)
    assert compare(runs["old"], runs["b"]).scorers == []


def test_world_scorers_record_their_weight_hashes():
    import hashlib

    from bench.world import WEIGHTS_DIR
    from bench.world.scorers import WorldCLIPScore, WorldScorer

    digest = hashlib.sha256((WEIGHTS_DIR / "evaluators.safetensors").read_bytes()).hexdigest()[:16]
    assert WorldScorer().manifest()["evaluators.safetensors"] == digest
    assert set(WorldCLIPScore().manifest()) == {"clip_head.safetensors", "text_encoder"}
