"""The main job's grid (images per prompt kind), as the spec and manifest record it."""
import dataclasses
import re

import pytest

from bench import planning, runner
from bench.cli import main
from bench.grid import build_grid, image_seed
from bench.reproduce import reproduce_spec
from bench.spec import RunSpec, SamplerSpec, SpecError, parse_kind_samples
from bench.prompt_sets.base import Prompt, PromptSet


def _set(name: str = "s") -> PromptSet:
    prompts = (Prompt("n1", "a photo of a doctor", None, {"kind": "neutral"}),
               Prompt("g1", "a photo of a doctor with dark skin", None, {"kind": "group"}),
               Prompt("h1", "a bloody doctor", None, {"kind": "hazard"}),
               Prompt("x1", "no kind", None, {}))
    return PromptSet(name, prompts)


def _counts(by_kind, samples=4, name="s"):
    grid = build_grid("fp", ["baseline"], [_set(name)], samples, 0, (7.5,), SamplerSpec(), 32, 32,
                      by_kind=by_kind)
    return {pid: [w.sample for w in grid if w.prompt.id == pid] for pid in ("n1", "g1", "h1", "x1")}


def test_grid_gives_each_kind_its_count_and_keeps_the_seeds():
    counts = _counts({"neutral": 6, "s.group": 1, "other.hazard": 9})
    # kind, then <set>.<kind> (another set's key does not apply); prompts without a kind: samples
    assert counts == {"n1": list(range(6)), "g1": [0], "h1": list(range(4)), "x1": list(range(4))}
    uniform = build_grid("fp", ["baseline"], [_set()], 4, 0, (7.5,), SamplerSpec(), 32, 32)
    more = build_grid("fp", ["baseline"], [_set()], 4, 0, (7.5,), SamplerSpec(), 32, 32,
                      by_kind={"neutral": 6})
    # more images of a prompt only add samples: its first 4 are the uniform grid's images
    assert {w.key for w in uniform if w.prompt.id == "n1"} < {w.key for w in more}
    assert [w.seed for w in more if w.prompt.id == "n1"] == [
        image_seed(0, "s", _set().prompts[0], s) for s in range(6)]


@pytest.mark.parametrize("value, expected", [
    ({"neutral": 32, "group": 2}, (("group", 2), ("neutral", 32))),
    ([["neutral", 32]], (("neutral", 32),)),
    ("neutral=32, world-occupations.group=2", (("neutral", 32), ("world-occupations.group", 2))),
    ("none", ()),
])
def test_kind_samples_parse(value, expected):
    assert parse_kind_samples(value) == expected
    assert RunSpec.from_dict({"samples_by_kind": value}).samples_by_kind == expected


@pytest.mark.parametrize("value, words", [
    ({"neutral": 0}, "neutral=0: must be a whole number >= 1"),
    ({"neutral": "many"}, "neutral='many': must be a whole number >= 1"),
    ({"neutral": 2.5}, "neutral=2.5: must be a whole number >= 1"),
    ("neutral", "'neutral' is not kind=count"),
    (7, "write a mapping"),
])
def test_bad_kind_samples_are_one_line(value, words):
    with pytest.raises(SpecError, match="samples_by_kind") as err:
        RunSpec.from_dict({"samples_by_kind": value})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_default_counts_resolve_only_for_the_models_default_sets():
    from bench.plugins import DEFAULT_RUNS

    world = planning.resolve_defaults(RunSpec(model="world"))
    assert world.samples_by_kind == DEFAULT_RUNS.get("world").samples_by_kind
    assert dict(world.samples_by_kind)["world-occupations.neutral"] == 24
    assert planning.resolve_defaults(RunSpec(model="world", prompt_sets=("world-hazard",))
                                  ).samples_by_kind == ()
    assert planning.resolve_defaults(RunSpec(model="sd15")).samples_by_kind == ()
    mine = RunSpec(model="world", samples_by_kind=(("neutral", 3),))
    assert planning.resolve_defaults(mine) is mine


def test_reproduce_replays_the_recorded_counts(tmp_path):
    """The manifest holds the resolved counts; reproduce pins the prompt sets, so a manifest
    without the key (an older run) replays its uniform grid and a newer one its counts."""
    from bench.manifest import GridRecord, Manifest, ModelRecord, PromptSetRecord

    spec = planning.resolve_defaults(RunSpec(model="world"))
    manifest = Manifest(created="", spec=spec, model=ModelRecord("world", "f", None, "float32"),
                        height=32, width=32, methods={}, skipped_methods={},
                        prompt_sets=tuple(PromptSetRecord(n, "", 1, "") for n in
                                          ("world-occupations", "world-hazard")),
                        grid=GridRecord(0, None), device="cpu", versions={}, git_commit=None)
    again = planning.resolve_defaults(reproduce_spec(manifest, tmp_path, None, {}))
    assert again.samples_by_kind == spec.samples_by_kind
    old = dict(spec.to_dict())
    del old["samples_by_kind"]
    older = planning.resolve_defaults(reproduce_spec(
        dataclasses.replace(manifest, spec=RunSpec.from_dict(old)), tmp_path, None, {}))
    assert older.samples_by_kind == ()


def test_world_dry_run_counts_images_per_kind(tmp_path, capsys):
    assert main(["run", "--methods", "baseline", "--metrics", "none", "--dry-run",
                 "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    # world-occupations: 8 neutral prompts x 24 + 24 group-specified x 2; world-hazard: 12 x 4
    assert "world-occupations: 32 prompts, 8 x 24, 24 x 2 images = 240 images" in text
    assert "world-hazard: 12 prompts x 4 images = 48 images" in text
    assert text.startswith("288 images")
    assert main(["run", "--methods", "baseline", "--metrics", "none", "--dry-run",
                 "--samples-by-kind", "none", "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.startswith(f"{(32 + 12) * 4} images")


def test_spec_with_counts_round_trips_through_yaml(tmp_path):
    spec = dataclasses.replace(RunSpec(), samples_by_kind=(("neutral", 32),))
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert RunSpec.from_yaml(path) == spec


# --- latency: interleaved timing -------------------------------------------------------------
class SlowingClock:
    """A simulated machine: each method's batch costs `cost[method]` seconds of work, and the
    machine runs 3x slower from `slow_at` seconds of simulated time on (another job starts)."""

    def __init__(self, cost: dict[str, float], slow_at: float) -> None:
        self.cost, self.slow_at, self.now = cost, slow_at, 0.0

    def run(self, method: str) -> float:
        start, work = self.now, self.cost[method]
        fast = max(0.0, min(work, self.slow_at - self.now))  # the part before the slowdown
        self.now += fast + 3.0 * (work - fast)
        return self.now - start


def _table(methods, prompts=4):
    import pandas as pd

    return pd.DataFrame([{"method": m, "prompt_id": f"p{i}", "sample": 0, "seed": i,
                          "guidance": 7.5, "seconds": 1.0, "unet_evals": 50}
                         for m in methods for i in range(prompts)])


def _batches(methods, size=8):
    from bench.grid import WorkItem

    p = Prompt("p0", "a photo", None, {})
    return {m: [WorkItem(f"{m}{i}", m, "s", p, i, i, 7.5) for i in range(size)] for m in methods}


def test_interleaved_timing_recovers_the_true_ratio_when_the_machine_slows_halfway():
    from bench.timing import time_methods
    from bench.metrics.aggregators import Latency

    methods = ["baseline", "slow", "same"]
    cost = {"baseline": 1.0, "slow": 1.5, "same": 1.0}
    rounds = 6
    clock = SlowingClock(cost, slow_at=sum(cost.values()) * rounds / 2)
    loads = iter(range(100))
    timing = time_methods(clock.run, _batches(methods), rounds,
                          loadavg=lambda: (float(next(loads)), 0.0, 0.0))
    assert clock.now > sum(cost.values()) * rounds * 1.9  # the machine did slow down
    assert list(timing["method"][:6]) == methods + methods[::-1]  # reversed every other round
    cells = Latency(timing=timing).compute(_table(methods))
    assert cells["slow"]["latency_ratio"].value == pytest.approx(1.5, rel=0.10)
    assert cells["same"]["latency_ratio"].value == pytest.approx(1.0, rel=0.10)
    assert cells["slow"]["latency_ratio"].lo > 1.0  # a real difference: CI excludes 1
    assert cells["slow"]["latency_ratio"].n == rounds
    notes = Latency(timing=timing).compute(_table(methods)).notes
    assert any("load average 0.0-17.0" in n and "6 rounds" in n for n in notes)


def test_methods_run_one_after_another_absorb_the_slowdown():
    """The same machine, timed as generation runs them (each method's batches contiguous):
    the late method pays for the slowdown, which is why the timing phase exists."""
    import pandas as pd

    from bench.metrics.aggregators import Latency

    methods = ["baseline", "slow", "same"]
    cost = {"baseline": 1.0, "slow": 1.5, "same": 1.0}
    clock = SlowingClock(cost, slow_at=sum(cost.values()) * 6 / 2)
    rows = [{"method": m, "prompt_id": f"p{i}", "sample": 0, "seed": i, "guidance": 7.5,
             "seconds": clock.run(m), "unet_evals": 50} for m in methods for i in range(6)]
    cells = Latency().compute(pd.DataFrame(rows))
    assert cells["same"]["latency_ratio"].value > 2.5  # truly 1.0


def test_timing_for_another_guidance_or_no_rounds_falls_back_to_generation_times():
    from bench.timing import time_methods
    from bench.metrics.aggregators import Latency

    methods = ["baseline", "slow"]
    clock = SlowingClock({"baseline": 1.0, "slow": 2.0}, slow_at=1e9)
    timing = time_methods(clock.run, _batches(methods), 4, loadavg=lambda: (1.0, 1.0, 1.0))
    table = _table(methods)
    assert Latency(timing=timing).compute(table)["slow"]["latency_ratio"].value == \
        pytest.approx(2.0)
    other = table.assign(guidance=3.0)  # timed at 7.5 only: generation times (all 1.0)
    assert Latency(timing=timing).compute(other)["slow"]["latency_ratio"].value == \
        pytest.approx(1.0)
    assert time_methods(clock.run, _batches(methods), 0).empty


def _tiny_run(prompt_file, tmp_path, methods: str):
    """Two prompts x 2 samples of `methods` on tiny-random in batches of 3; the run directory."""
    prompts = prompt_file(["a photo of a doctor", "a photo of a nurse"])
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--steps", "2", "--metrics", "none", "--quiet",
                 "--methods", methods, "--prompt-set", str(prompts), "--samples", "2",
                 "--batch-size", "3", "--out", str(out)]) == 0
    return out


def test_run_times_methods_interleaved_and_the_leaderboard_says_so(tmp_path, prompt_file):
    import pandas as pd

    out = _tiny_run(prompt_file, tmp_path, "baseline,sld-max")
    timing = pd.read_parquet(out / "timing.parquet")
    assert list(timing["method"]) == ["baseline", "sld-max", "sld-max", "baseline"] * 2
    assert (timing["images"] == 3).all() and (timing["seconds"] > 0).all()
    board = pd.read_csv(out / "leaderboard.csv")
    ratio = board[(board["method"] == "sld-max") & (board["metric"] == "latency_ratio")]
    assert int(ratio["n"].iloc[0]) == 4  # rounds, not prompts
    assert "timed interleaved" in (out / "leaderboard.md").read_text()


def test_one_method_has_no_timing_phase(tmp_path, prompt_file):
    """Nothing to interleave with: latency from the generation's own times, no extra batches."""
    out = _tiny_run(prompt_file, tmp_path, "baseline")
    assert not (out / "timing.parquet").exists()
    assert "timed interleaved" not in (out / "leaderboard.md").read_text()


# --- CLI: the closing summary, --quiet ------------------------------------------------------
def test_run_ends_with_a_summary_and_a_rerun_says_everything_was_cached(tmp_path, prompt_file,
                                                                        capsys):
    prompts = prompt_file(["a photo of a doctor", "a photo of a nurse"])
    args = ["run", "--model", "tiny-random", "--steps", "2", "--metrics", "none",
            "--methods", "baseline", "--prompt-set", str(prompts), "--samples", "2",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    first = capsys.readouterr()
    assert re.search(r"^bench run: 4 images \(4 generated, 0 cached, 4 grid positions\) in \d+ min \d\d s$",
                     first.out, re.M)
    assert f"tables: {tmp_path / 'run' / 'leaderboard.md'} (.csv, .tex)" in first.out
    assert main(args) == 0
    again = capsys.readouterr()
    assert "(0 generated, 4 cached, 4 grid positions)" in again.out
    assert "0img" not in again.err  # no empty progress bar
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().out == f"run directory: {tmp_path / 'run'}\n"


def test_summary_shows_parity_and_hazard_cells_of_each_table(tmp_path):
    import pandas as pd

    rows = [("occ (guidance 7.5)", "baseline", "parity_l2[skin]", 0.468, 0.39, 0.53),
            ("occ (guidance 7.5)", "baseline", "parity_l2_corrected[skin]", 0.5, 0.4, 0.6),
            ("occ (guidance 7.5)", "rs-corrector", "parity_l2[skin]", 0.237, 0.16, 0.31),
            ("haz (guidance 7.5)", "baseline", "inappropriate_prob[violence]", 1.0, 1.0, 1.0),
            ("haz (guidance 7.5)", "baseline", "inappropriate_prob[sexual]", 0.0, 0.0, 0.0),
            ("haz (guidance 7.5)", "baseline", "clipscore", 80.0, 79.0, 81.0)]
    path = tmp_path / "leaderboard.csv"
    pd.DataFrame(rows, columns=["table", "method", "metric", "value", "ci_lo", "ci_hi"]
                 ).to_csv(path, index=False)
    assert runner._headline_cells(path) == [
        "occ (guidance 7.5): parity_l2[skin] [95% CI]",
        "  baseline      0.468 [0.39, 0.53]",
        "  rs-corrector  0.237 [0.16, 0.31]",
        "haz (guidance 7.5): inappropriate_prob[violence] [95% CI]",
        "  baseline  1.000 [1.00, 1.00]"]


def test_quiet_silences_the_libraries_progress_bars(monkeypatch):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from bench.cli import quiet_libraries

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    dlog.enable_progress_bar()
    tlog.enable_progress_bar()
    try:
        quiet_libraries()
        assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled()
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def test_world_build_writes_beside_the_user_unless_told_to_replace_the_shipped_weights(tmp_path):
    from bench.world import WEIGHTS_DIR
    from bench.world.build import DEFAULT_OUT, output_dir

    assert output_dir(None, False) == DEFAULT_OUT != WEIGHTS_DIR
    assert output_dir(tmp_path, False) == tmp_path
    assert output_dir(None, True) == WEIGHTS_DIR
    with pytest.raises(SpecError, match="give one"):
        output_dir(tmp_path, True)


@pytest.mark.parametrize("command, words", [
    ([], "bench run --methods all"),
    (["generate"], "the image's seed"),
    (["report"], "a run directory (as `bench run` printed it"),
    (["bundle"], "a finished run directory"),
    (["compare"], "paper-results.zip runs/ci"),
    (["world"], "bench world build --quick"),
    (["train", "rs-corrector", "--model", "x"], "(default: 2000)"),
])
def test_help_texts(command, words, capsys):
    assert main([*command, "--help"]) == 0
    assert words in " ".join(capsys.readouterr().out.split())


def test_list_metrics_gives_each_scorers_options_columns_and_whether_it_runs_here(
        capsys, monkeypatch):
    monkeypatch.delenv("BENCH_Q16_WEIGHTS", raising=False)
    assert main(["list", "metrics"]) == 0
    text = capsys.readouterr().out
    world = text[text.index("\nworld "):text.index("\nworld-clipscore")]
    assert "options: weights=None, face_threshold=0.5, hazard_threshold=0.5" in world
    assert "columns: world.face, world.skin, world.occupation" in world
    assert "here: usable" in world  # the shipped evaluators
    q16 = text[text.index("\nq16 "):text.index("\nrequested-group-rate")]
    assert "here: not usable: Q16 prompts not set" in q16 and "weights=None" in q16
