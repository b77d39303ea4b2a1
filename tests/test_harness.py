"""`bench run` end to end on tiny-random: store layout, cache, resume after SIGKILL, sharding,
errors, plugins and the HTML report."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import runner
from bench.cli import main
from bench.executor import GenerationSettings, generate
from bench.spec import MethodChain, RunSpec, SamplerSpec, split_method_list
from bench.store import RunStore

FAST = ["--model", "tiny-random", "--steps", "3", "--metrics", "none", "--quiet"]


def run_cli(args, capsys=None):
    code = main(args)
    return code


@pytest.fixture
def prompts(prompt_file):
    return prompt_file(["a photo of a doctor", "a photo of a nurse", "a photo of a chef"])


def test_run_writes_store_manifest_tables(tmp_path, prompts):
    out = tmp_path / "run"
    assert main(["run", *FAST, "--methods", "baseline,sld-max", "--prompt-set", str(prompts),
                 "--samples", "2", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "images.parquet")
    assert len(table) == 2 * 3 * 2
    assert set(table["method"]) == {"baseline", "sld-max"}
    for col in ("key", "prompt_id", "seed", "sample", "seconds", "unet_evals", "step_seconds",
                "peak_memory_mb", "file", "guidance"):
        assert col in table
    assert table["key"].is_unique
    row = table.iloc[0]
    with Image.open(out / row["file"]) as im:
        # The prompt is stored once, in prompts.parquet; the PNG names it by its hash.
        assert im.text["bench.prompt_sha256"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
        assert "bench.prompt" not in im.text
        assert im.text["bench.seed"] == str(row["seed"])
        assert im.text["bench.method"] == row["method"]
    manifest = json.loads((out / "manifest.json").read_text())
    from bench.prompt_sets.resolve import load_prompt_set
    assert manifest["prompt_sets"][0]["sha256"] == load_prompt_set(str(prompts)).content_hash()
    assert manifest["versions"]["torch"] and manifest["versions"]["diffusers"]
    assert manifest["model"]["fingerprint"]
    assert (out / "leaderboard.md").read_text().count("| sld-max") == 1
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / row["file"], out / "leaderboard.md", out / "images.parquet"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # not mkstemp's 0600
    # SLD adds the safety branch: 3 branches instead of 2.
    evals = table.groupby("method")["unet_evals"].first()
    assert evals["sld-max"] * 2 == evals["baseline"] * 3


def test_rerun_generates_nothing_and_images_match_bench_generate(tmp_path, prompts, tiny_pipe):
    spec = RunSpec(model="tiny-random", methods=("baseline",), prompt_sets=(str(prompts),),
                   samples=2, sampler=SamplerSpec(steps=3), metrics=("none",),
                   out=str(tmp_path / "r"))
    runner.run(spec, quiet=True)
    p = runner.plan(spec)
    settings = GenerationSettings("tiny-random", spec.sampler, p.height, p.width, 4)
    assert generate(p.pipe, p.items, p.adapters, RunStore(spec.out), settings, quiet=True) == 0
    item = p.items[1]
    png = tmp_path / "one.png"
    main(["generate", "--model", "tiny-random", "--steps", "3", "--prompt", item.prompt.text,
          "--seed", str(item.seed), "--out", str(png)])
    stored = np.asarray(Image.open(Path(spec.out) / "images" / f"{item.key}.png"))
    assert np.array_equal(np.asarray(Image.open(png)), stored)


def test_shards_together_equal_one_run(tmp_path, prompts):
    common = [*FAST, "--methods", "baseline,sld-weak", "--prompt-set", str(prompts), "--samples", "2"]
    main(["run", *common, "--out", str(tmp_path / "whole")])
    for i in range(3):
        main(["run", *common, "--shard", f"{i}/3", "--out", str(tmp_path / "sharded")])
    main(["report", str(tmp_path / "sharded"), "--quiet"])
    whole = sorted((tmp_path / "whole" / "images").glob("*.png"))
    sharded = sorted((tmp_path / "sharded" / "images").glob("*.png"))
    assert [p.name for p in whole] == [p.name for p in sharded]
    for a, b in zip(whole, sharded):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    keep = ["key", "method", "prompt_id", "seed", "batch_size"]  # the same batches, too
    assert pd.read_parquet(tmp_path / "whole" / "images.parquet")[keep].equals(
        pd.read_parquet(tmp_path / "sharded" / "images.parquet")[keep])


def test_shards_are_disjoint_and_balanced_by_cost():
    from bench.grid import WorkItem, shard
    from bench.prompt_sets.base import Prompt

    items = [WorkItem(f"k{i:03d}", "sld" if i % 2 else "base", "s", Prompt(str(i), "t"), 0, i, 7.5)
             for i in range(60)]
    cost = {"sld": 3, "base": 2}
    parts = [shard(items, i, 3, cost) for i in range(3)]
    keys = [w.key for part in parts for w in part]
    assert sorted(keys) == sorted(w.key for w in items)
    loads = [sum(cost[w.method] for w in part) for part in parts]
    assert max(loads) - min(loads) <= 3


def test_shards_hold_whole_batches_of_the_full_grid():
    """An image's floats depend (at ~1e-6) on its batch-mates, so a shard never splits a batch."""
    from bench.grid import WorkItem, batches, shard
    from bench.prompt_sets.base import Prompt

    items = [WorkItem(f"k{i:03d}", "sld" if i >= 30 else "base", "s", Prompt(str(i), "t"), 0, i,
                      7.5) for i in range(50)]
    whole = {tuple(w.key for w in b) for b in batches(items, 4)}
    parts = [shard(items, i, 3, {"sld": 3, "base": 2}, batch_size=4) for i in range(3)]
    assert all(parts)
    mine = [tuple(w.key for w in b) for part in parts for b in batches(part, 4)]
    assert sorted(mine) == sorted(whole)  # each full-grid batch in exactly one shard, intact


def test_a_partly_written_batch_is_regenerated_whole(tmp_path, prompts):
    """A kill between two writes of one batch: the resume recomputes the whole batch (same
    company, so bit-equal floats) and writes only the missing image."""
    spec = RunSpec(model="tiny-random", methods=("baseline",), prompt_sets=(str(prompts),),
                   samples=2, sampler=SamplerSpec(steps=3), batch_size=3, metrics=("none",))
    p = runner.plan(spec)
    settings = GenerationSettings("tiny-random", spec.sampler, p.height, p.width, 3)
    store = RunStore(tmp_path / "r")
    assert generate(p.pipe, p.items, p.adapters, store, settings, quiet=True) == 6
    lost = p.items[4]  # the middle of the second batch
    before = np.asarray(Image.open(store.root / "images" / f"{lost.key}.png"))
    mtimes = {w.key: store.record_path(w.key).stat().st_mtime_ns for w in p.items if w != lost}
    store.record_path(lost.key).unlink()
    (store.root / "images" / f"{lost.key}.png").unlink()
    assert generate(p.pipe, p.items, p.adapters, store, settings, quiet=True) == 1
    assert np.array_equal(np.asarray(Image.open(store.root / "images" / f"{lost.key}.png")), before)
    assert json.loads(store.record_path(lost.key).read_text())["batch_size"] == 3
    for key, mtime in mtimes.items():  # its batch-mates were recomputed, not rewritten
        assert store.record_path(key).stat().st_mtime_ns == mtime


def test_kill_and_resume_loses_nothing(tmp_path, prompt_file):
    prompts = prompt_file([f"a photo of person number {i}" for i in range(12)])
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "bench.cli", "run", *FAST, "--steps", "20", "--batch-size", "1",
            "--prompt-set", str(prompts), "--samples", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in (out / "records").glob("*.json")}
    assert 4 <= len(done_before) < 24, "the kill must land mid-run"
    for key in done_before:  # every counted image is a complete PNG
        Image.open(out / "images" / f"{key}.png").load()
    mtimes = {k: (out / "images" / f"{k}.png").stat().st_mtime_ns for k in done_before}
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    table = pd.read_parquet(out / "images.parquet")
    assert len(table) == 24 and table["key"].is_unique
    for k in done_before:  # finished images were not regenerated
        assert (out / "images" / f"{k}.png").stat().st_mtime_ns == mtimes[k]
    assert not list(out.rglob("*.tmp"))
    # The resumed run equals an uninterrupted one.
    clean = tmp_path / "clean"
    subprocess.run([*args[:-1], str(clean)], env=env, check=True, capture_output=True)
    for png in (clean / "images").glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)),
                              np.asarray(Image.open(out / "images" / png.name)))


def test_dry_run_counts_and_generates_nothing(tmp_path, prompts, capsys):
    out = tmp_path / "dry"
    assert main(["run", *FAST, "--methods", "baseline,sld-strong", "--prompt-set", str(prompts),
                 "--samples", "2", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # PNDM at 3 steps = 4 timesteps; baseline 2 branches, SLD 3: 6 images each.
    assert "12 images" in text and f"{6 * 4 * 2 + 6 * 4 * 3} UNet evaluations" in text
    assert not out.exists()


def test_unknown_method_suggests_close_names(tmp_path, prompts, capsys):
    code = main(["run", *FAST, "--methods", "sld-strnog", "--prompt-set", str(prompts),
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "sld-strong" in err and len(err.strip().splitlines()) == 1


def test_bad_prompt_file_stops_before_generation(tmp_path, prompt_file, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,id\nhello,1\n")
    code = main(["run", *FAST, "--prompt-set", str(bad), "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.csv" in err and "prompt" in err
    assert not (tmp_path / "y").exists()


def test_bad_method_param_is_one_line(tmp_path, prompts, capsys):
    code = main(["run", *FAST, "--methods", "sld-strong:warmup=abc", "--prompt-set", str(prompts),
                 "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert code == 2 and "warmup" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("metric, expected", [
    ("clipscor", "Did you mean: clipscore"),
    ("clipscore:bogus=2", "options: ['batch_size', 'model', 'pretrained', 'quickgelu']"),
    ("clip-attributes:template=x", "no {group} placeholder"),
    ("parity", "aggregator, not a per-image scorer"),
])
def test_bad_metric_stops_before_generation(tmp_path, prompts, capsys, metric, expected):
    # Scoring runs last: a typo found there would cost the whole generation.
    args = [a for a in FAST if a not in ("--metrics", "none")]
    code = main(["run", *args, "--metrics", metric, "--prompt-set", str(prompts),
                 "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--samples", "0"], "samples=0: must be a whole number >= 1"),
    (["--steps", "-1"], "steps=-1: must be a whole number >= 1"),
    (["--guidance", "-2"], "guidance=[-2.0]"),
])
def test_bad_numbers_are_one_line(tmp_path, prompts, capsys, flags, expected):
    code = main(["run", *FAST, *flags, "--prompt-set", str(prompts), "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_config_unknown_sampler_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sampler: {stpes: 3}\n")
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 2
    assert "unknown sampler key(s) ['stpes']" in capsys.readouterr().err


def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: tiny-random\nsamples: 3\nsampler:\n  steps: 7\nmethods: [baseline]\n")
    from bench.cli import parser, spec_from_args

    spec = spec_from_args(parser().parse_args(["run", "--config", str(cfg), "--samples", "5"]))
    assert spec.samples == 5 and spec.sampler.steps == 7 and spec.model == "tiny-random"
    assert RunSpec.from_yaml(cfg).samples == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: x\n")
    with pytest.raises(Exception, match="modle"):
        RunSpec.from_yaml(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(Exception):
        RunSpec.from_yaml(evil)


def test_method_list_parsing():
    assert split_method_list("baseline,sld-strong:warmup=5,threshold=0.1,debias-vl") == [
        "baseline", "sld-strong:warmup=5,threshold=0.1", "debias-vl"]
    assert str(MethodChain.parse("a:z=1,b=2 + c")) == "a:b=2,z=1+c"
    # A comma inside a value (SLD's concept) is escaped as \, and survives the round trip.
    specs = split_method_list(r"sld-strong:concept=blood\, gore,warmup=3,baseline")
    assert specs[1] == "baseline"
    from bench.spec import NamedOptions
    parsed = NamedOptions.parse(specs[0])
    assert parsed.param_dict() == {"concept": "blood, gore", "warmup": "3"}
    assert NamedOptions.parse(str(parsed)) == parsed


def test_html_report_escapes_prompts(tmp_path, prompt_file):
    prompts = prompt_file(["a photo of a <script>alert('x')</script> doctor"])
    out = tmp_path / "html"
    main(["run", *FAST, "--prompt-set", str(prompts), "--samples", "1", "--out", str(out)])
    page = (out / "report" / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_plugin_method_through_entry_point(tmp_path, prompts, install_plugin):
    from bench.registry import METHODS

    install_plugin(
        "my_plugin",
        "from bench.adapter import Adapter\n"
        "class Darken(Adapter):\n"
        "    name = 'darken'\n"
        "    description = 'test plugin: scales the conditional embedding'\n"
        "    def encode(self, cond, batch):\n"
        "        return cond * 0.5\n",
        "[bench.methods]\ndarken = my_plugin:Darken\n", METHODS)
    out = tmp_path / "plug"
    assert main(["run", *FAST, "--methods", "baseline,darken", "--prompt-set", str(prompts),
                 "--samples", "1", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "images.parquet")
    assert set(table["method"]) == {"baseline", "darken"}
    a, b = (np.asarray(Image.open(out / table[table.method == m].iloc[0]["file"]))
            for m in ("baseline", "darken"))
    assert not np.array_equal(a, b)


def test_list_shows_every_method_with_description_and_params(capsys):
    from bench.registry import METHODS

    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in METHODS.names():
        line = next(l for l in lines if l.split()[0] == name)
        assert len(line.split(None, 1)[1]) > 10  # a one-line description
    assert any("warmup=7" in l for l in lines if l.startswith("sld-strong"))
    # the SLD authors' Hyp-Weak (diffusers' SafetyConfig.WEAK has 20)
    assert any("guidance_scale=200.0," in l for l in lines if l.startswith("sld-weak "))


@pytest.mark.parametrize("what", ["metrics", "prompt-sets"])
def test_list_describes_every_metric_and_prompt_set(what, capsys):
    from bench.registry import METRICS, PROMPT_SETS

    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in {"metrics": METRICS, "prompt-sets": PROMPT_SETS}[what].names():
        line = next(l for l in lines if l.split()[0] == name)
        assert len(line.split(None, 1)[1]) > 10, line  # a one-line description


@pytest.mark.parametrize("command", ["run", "list", "generate", "report", "train", "world",
                                     "reproduce", "compare", "bundle"])
def test_every_command_has_help_with_examples(command, capsys):
    assert main([command, "--help"]) == 0
    assert "example" in capsys.readouterr().out


def test_shard_with_another_spec_is_refused(tmp_path, prompts, capsys):
    common = [*FAST, "--methods", "baseline", "--prompt-set", str(prompts), "--out", str(tmp_path / "s")]
    assert main(["run", *common, "--samples", "1", "--shard", "0/2"]) == 0
    assert main(["run", *common, "--samples", "2", "--shard", "1/2"]) == 2
    assert "samples" in capsys.readouterr().err


@pytest.mark.parametrize("trainer, flag, value", [("fair-mapping", "--steps", "0"),
                                                  ("fair-mapping", "--lam", "-1"),
                                                  ("rs-corrector", "--samples", "0"),
                                                  ("rs-corrector", "--guidance", "nan")])
def test_trainer_refuses_bad_numbers_before_loading_anything(tmp_path, capsys, trainer, flag, value):
    # A zero-step run used to write a NaN checkpoint; a negative --steps raised an IndexError.
    assert main(["train", trainer, "--model", "tiny-random", "--attribute", "gender",
                 "--out", str(tmp_path / "ckpt"), flag, value]) == 2
    assert f"argument {flag}: '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_config_keeps_every_key_no_flag_overrides(tmp_path):
    """A config's value reaches the run unless a flag overrides it (timing_rounds was dropped)."""
    from bench.cli import parser, spec_from_args

    spec = RunSpec(model="tiny-random", methods=("baseline,sld-max",), prompt_sets=("p.txt",),
                   samples=3, samples_by_kind=(("neutral", 2),), seed=5, guidance=(3.0,),
                   sampler=SamplerSpec(steps=7, scheduler="ddim"), batch_size=3, device="cpu",
                   metrics=("none",), limit=2, out=str(tmp_path / "o"), shard="0/2",
                   dtype="float32", timing_rounds=0, suites=("fairness",), compile=True,
                   vae_slicing=True, vae_tiling=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(spec.to_yaml())
    assert spec_from_args(parser().parse_args(["run", "--config", str(cfg)])) == spec
