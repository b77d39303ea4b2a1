"""Bad input: every case gives exit code 2 and exactly one stderr line naming the offending file,
line, key or value, with no traceback, and changes no file of an existing run directory.

Cases known before generation must fail before the model loads (`load_pipeline` is replaced by
a tripwire for them); the few that need the model (the VAE's scale factor, a method checkpoint)
use tiny-random. `CASES` is the tally quoted in docs/architecture.md.
"""
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bench import planning
from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "tiny-random", "--steps", "2", "--metrics", "none", "--quiet", "--samples", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad input files, named by case, and one good prompt file."""
    d = tmp_path_factory.mktemp("inputs")
    raw = {
        "good.txt": b"a photo of a doctor\na photo of a nurse\n",
        "empty.txt": b"\n# only a comment\n",
        "latin1.txt": b"a photo of a doctor\nun caf\xe9\n",
        "dup.csv": b"id,prompt\na,a photo of a doctor\na,a photo of a nurse\n",
        "noprompt.csv": b"text,id\nhello,1\n",
        "unclosed.csv": b'id,prompt\n1,"a photo of a doctor\n2,a photo of a nurse\n3,a chef\n',
        "badjson.jsonl": b'{"prompt": "a doctor"}\n{"prompt": "a nurse",}\n',
        "metalist.jsonl": b'{"prompt": "a doctor"}\n{"prompt": "a nurse", "group": [1, 2]}\n',
        "metaobj.jsonl": b'{"prompt": "a nurse", "metadata": {"group": {"a": 1}}}\n',
        "metaint.jsonl": b'{"prompt": "a nurse", "n": 123456789012345678901234567890}\n',
        "metamixed.jsonl": b'{"prompt": "a doctor", "batch": "a"}\n{"prompt": "a nurse", "batch": 1}\n',
        "metagroup.jsonl": b'{"prompt": "a doctor", "group": "a"}\n{"prompt": "a nurse", "group": 1}\n',
        "surrogate.jsonl": b'{"prompt": "a doctor"}\n{"prompt": "a doc\\ud800tor"}\n',
        "badseed.csv": b"prompt,seed\na photo of a doctor,-3\n",
        "prompts.xlsx": b"PK\x03\x04",
        "afile": b"not a directory\n",
    }
    for name, data in raw.items():
        (d / name).write_bytes(data)
    yaml = {
        "seed_abc": "seed: abc\n", "seed_float": "seed: 1.5\n", "guidance_bool": "guidance: [true]\n",
        "sampler_str": "sampler: fast\n", "model_list": "model: [a, b]\n", "methods_int": "methods: 5\n",
        "metrics_map": "metrics: {a: 1}\n", "unknown_key": "modle: x\n",
        "unknown_sampler_key": "sampler: {stpes: 3}\n", "executor": "executor: slurm\n",
        "tag": "model: !!python/object/apply:os.system ['echo hacked']\n",
        "syntax": "model: [a\n", "height": "sampler: {height: 7.5}\n",
    }
    for name, text in yaml.items():
        (d / f"{name}.yaml").write_text("model: tiny-random\n" + text if "model" not in text else text)
    (d / "latin1.yaml").write_bytes(b"model: tiny-random\nnegative: caf\xe9\n")
    ckpt = d / "ckpt-garbage"  # a card, and weights that are not safetensors
    ckpt.mkdir()
    (ckpt / "card.json").write_text(json.dumps({"method": "rs-corrector"}))
    (ckpt / "preference.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    trunc = d / "ckpt-truncated"
    trunc.mkdir()
    (trunc / "card.json").write_text(json.dumps({"method": "fair-mapping"}))
    save_file({"weight": torch.zeros(32, 32), "bias": torch.zeros(32)}, str(trunc / "full.st"))
    (trunc / "mapping.safetensors").write_bytes((trunc / "full.st").read_bytes()[:-64])
    (d / "ckpt-nocard").mkdir()
    return d


@pytest.fixture(scope="module")
def existing_run(files):
    """A finished run every bad case points --out at (where --out is not the bad input)."""
    out = files / "existing"
    assert main(["run", *FAST, "--prompt-set", str(files / "good.txt"), "--out", str(out)]) == 0
    return out


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# (case id, argv after `run` with {d} = the inputs directory, a substring the line must hold,
#  whether the model may load first). --out is the existing run unless the argv gives one.
P = ["--prompt-set", "{d}/good.txt"]
CASES = [
    # method parameters: non-finite anywhere, and each method's own ranges
    ("debias-vl lam=nan", [*P, "--methods", "debias-vl:lam=nan"], "debias-vl:lam=nan", False),
    ("debias-vl lam<0", [*P, "--methods", "debias-vl:lam=-1"], "lam=-1.0", False),
    ("rs-corrector eta=nan", [*P, "--methods", "rs-corrector:eta=nan"], "rs-corrector:eta=nan", False),
    ("rs-corrector eta<0", [*P, "--methods", "rs-corrector:eta=-0.5"], "eta=-0.5", False),
    ("sld guidance_scale=nan", [*P, "--methods", "sld-strong:guidance_scale=nan"],
     "sld-strong:guidance_scale=nan", False),
    ("sld guidance_scale=inf", [*P, "--methods", "baseline,sld-strong:guidance_scale=inf"],
     "sld-strong:guidance_scale=inf", False),
    ("sld composed nan", [*P, "--methods", "fair-diffusion+sld-max:threshold=-nan"],
     "sld-max:threshold=nan", False),
    ("fair-diffusion nan", [*P, "--methods", "fair-diffusion:edit_guidance_scale=nan"],
     "fair-diffusion:edit_guidance_scale=nan", False),
    ("fair-diffusion <0", [*P, "--methods", "fair-diffusion:edit_guidance_scale=-4"],
     "edit_guidance_scale=-4.0", False),
    ("not a number", [*P, "--methods", "sld-strong:warmup=abc"], "sld-strong:warmup", False),
    ("unknown parameter", [*P, "--methods", "sld-strong:warmpu=3"], "no parameter 'warmpu'", False),
    ("unknown method", [*P, "--methods", "sld-strnog"], "sld-strong", False),
    ("no method", [*P, "--methods", ",,"], "--methods: ',,' names nothing", False),
    ("unknown metric", [*P, "--metrics", "clipscor"], "clipscore", False),
    ("no metric", [*P, "--metrics", ",,"], "--metrics: ',,' names nothing", False),
    ("workers without ray", [*P, "--workers", "2"], "--workers 2: only --executor ray", False),
    # numbers on the command line
    ("steps 0", [*P, "--steps", "0"], "steps=0", False),
    ("resolution 0", [*P, "--resolution", "0"], "height=0", False),
    ("resolution -8", [*P, "--resolution", "-8"], "height=-8", False),
    ("resolution 7", [*P, "--resolution", "7"], "resolution 7x7: must be a multiple of 2", True),
    ("samples 0", [*P, "--samples", "0"], "samples=0", False),
    ("guidance -2", [*P, "--guidance", "-2"], "guidance=[-2.0]", False),
    ("guidance nan", [*P, "--guidance", "nan"], "guidance=[nan]", False),
    ("shard 3/2", [*P, "--shard", "3/2"], "--shard '3/2'", False),
    ("shard x", [*P, "--shard", "x"], "--shard 'x'", False),
    # config files
    *((f"config {name}", ["--config", f"{{d}}/{name}.yaml", *P], expected, False)
      for name, expected in [
          ("seed_abc", "seed='abc'"), ("seed_float", "seed=1.5"), ("guidance_bool", "guidance=[True]"),
          ("sampler_str", "sampler='fast'"), ("model_list", "model=['a', 'b']"),
          ("methods_int", "methods=(5,)"), ("metrics_map", "metrics=({'a': 1},)"),
          ("unknown_key", "['modle']"), ("unknown_sampler_key", "['stpes']"),
          ("executor", "executor='slurm'"), ("height", "height=7.5"),
          ("tag", "tag.yaml:1:8: could not determine a constructor"),
          ("syntax", "syntax.yaml:2:1"), ("latin1", "latin1.yaml:2"), ("missing", "missing.yaml")]),
    # prompt files
    ("empty file", ["--prompt-set", "{d}/empty.txt"], "empty.txt:1: empty prompt file", False),
    ("undecodable", ["--prompt-set", "{d}/latin1.txt"], "latin1.txt:2: byte 0xe9", False),
    ("duplicate ids", ["--prompt-set", "{d}/dup.csv"], "dup.csv:3: duplicate id 'a'", False),
    ("no prompt column", ["--prompt-set", "{d}/noprompt.csv"], "noprompt.csv:1: missing column", False),
    ("unclosed CSV quote", ["--prompt-set", "{d}/unclosed.csv"], "unclosed.csv:2: a quote", False),
    ("malformed JSON", ["--prompt-set", "{d}/badjson.jsonl"], "badjson.jsonl:2: malformed JSON", False),
    ("JSONL metadata list", ["--prompt-set", "{d}/metalist.jsonl"],
     "metalist.jsonl:2: metadata 'group' is a JSON array", False),
    ("JSONL metadata object", ["--prompt-set", "{d}/metaobj.jsonl"],
     "metaobj.jsonl:1: metadata 'group' is a JSON object", False),
    ("JSONL metadata > int64", ["--prompt-set", "{d}/metaint.jsonl"], "metaint.jsonl:1: metadata 'n'", False),
    ("JSONL metadata mixed types", ["--prompt-set", "{d}/metamixed.jsonl"],
     "prompt 'line-2' has metadata 'batch'=1, a number", False),
    ("JSONL known metadata key not text", ["--prompt-set", "{d}/metagroup.jsonl"],
     "metagroup.jsonl:2: metadata 'group'=1 is a number, but 'group' holds text", False),
    ("lone surrogate", ["--prompt-set", "{d}/surrogate.jsonl"], "surrogate.jsonl:2: prompt holds '\\ud800'", False),
    ("negative seed", ["--prompt-set", "{d}/badseed.csv"], "badseed.csv:2: seed '-3'", False),
    ("unsupported file type", ["--prompt-set", "{d}/prompts.xlsx"], "unsupported prompt file type", False),
    ("missing prompt file", ["--prompt-set", "{d}/missing.txt"], "missing.txt", False),
    ("unknown prompt set", ["--prompt-set", "occupatons"], "occupations", False),
    ("empty prompt-set name", ["--prompt-set", ""], "--prompt-set ''", False),
    ("unknown prompt-set option", ["--prompt-set", "occupations:lmit=3"], "no option lmit", False),
    # the run directory
    ("--out is a file", [*P, "--out", "{d}/afile"], "afile is a file", False),
    ("--out under a file", [*P, "--out", "{d}/afile/run"], "afile is a file", False),
    ("--out empty", [*P, "--out", ""], "out=''", False),  # would write into the current directory
    # method checkpoints: found in the plan, before any method generates
    ("checkpoint not safetensors", [*P, "--methods", "baseline,rs-corrector:checkpoint={d}/ckpt-garbage"],
     "ckpt-garbage/preference.safetensors: not a readable safetensors file", False),
    ("checkpoint truncated", [*P, "--methods", "baseline,fair-mapping:checkpoint={d}/ckpt-truncated"],
     "ckpt-truncated/mapping.safetensors: not a readable safetensors file", False),
    ("checkpoint without card", [*P, "--methods", "fair-mapping:checkpoint={d}/ckpt-nocard"],
     "checkpoint={d}/ckpt-nocard has no card.json", False),
]


def _argv(args: list[str], d: Path, out: Path) -> list[str]:
    argv = ["run", *FAST, *(a.replace("{d}", str(d)) for a in args)]
    return argv if "--out" in args else [*argv, "--out", str(out)]


def _tripwire(*args, **kwargs):
    raise AssertionError("the model loaded before the bad input was found")


@pytest.mark.parametrize("case, args, expected, needs_model", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, args, expected, needs_model, files, existing_run,
                                      capsys, monkeypatch):
    before = snapshot(existing_run)
    capsys.readouterr()
    if not needs_model:
        monkeypatch.setattr(planning, "load_pipeline", _tripwire)
    code = main(_argv(args, files, existing_run))  # a traceback would raise here
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("bench: error: "), err
    assert expected.replace("{d}", str(files)) in err, err
    assert snapshot(existing_run) == before


GENERATE = [  # bench generate: one image, checked like bench run
    ("steps 0", ["--steps", "0"], "steps=0", False),
    ("resolution 7", ["--resolution", "7"], "resolution 7x7", True),
    ("nan parameter", ["--method", "sld-max:guidance_scale=nan"], "sld-max:guidance_scale=nan", False),
    ("argv not UTF-8", ["--prompt", "a caf\udce9"], "--prompt 'a caf\\udce9': not UTF-8", False),
    ("out not a PNG", ["--out", "{d}"], "write a .png file path", False),
]


@pytest.mark.parametrize("case, args, expected, needs_model", GENERATE, ids=[c[0] for c in GENERATE])
def test_bad_generate_input_is_one_line(case, args, expected, needs_model, files, capsys,
                                        monkeypatch):
    from bench import debug

    if not needs_model:
        monkeypatch.setattr(debug, "load_pipeline", _tripwire)
    defaults = {"--prompt": "a photo of a doctor", "--out": str(files / "one.png"), "--steps": "2"}
    given = dict(zip(args[::2], (a.replace("{d}", str(files)) for a in args[1::2])))
    argv = ["generate", "--model", "tiny-random", *(x for kv in {**defaults, **given}.items() for x in kv)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (files / "one.png").exists()


OTHER = [  # the other commands' own inputs, against the existing run ({run})
    ("report unknown metric", ["report", "{run}", "--metrics", "clipscor"], "clipscore"),
    ("compare --out a directory", ["compare", "{run}", "{run}", "--out", "{d}"], "is a directory"),
    ("compare tolerance nan", ["compare", "{run}", "{run}", "--tolerance", "nan"], "'nan'"),
    ("bundle --out not .zip", ["bundle", "{run}", "--out", "{d}/b.tar"], "write a .zip file path"),
    ("bundle --out under a file", ["bundle", "{run}", "--out", "{d}/afile/b.zip"], "afile is a file"),
    ("bundle --images -1", ["bundle", "{run}", "--out", "{d}/b.zip", "--images", "-1"], "'-1'"),
    ("reproduce missing source", ["reproduce", "{d}/nope"], "nope: no such run directory"),
    ("report --metrics names nothing", ["report", "{run}", "--metrics", ",,"], "',,' names nothing"),
    ("report --columns empty", ["report", "{run}", "--columns", ""], "--columns: '' names nothing"),
    ("run --methods empty", ["run", "--methods", " , "], "--methods: ' , ' names nothing"),
    ("unknown flag", ["run", "--sampels", "3"], "unrecognized arguments: --sampels"),
]


@pytest.mark.parametrize("case, args, expected", OTHER, ids=[c[0] for c in OTHER])
def test_bad_input_to_other_commands(case, args, expected, files, existing_run, capsys):
    before = snapshot(existing_run)
    code = main([a.replace("{d}", str(files)).replace("{run}", str(existing_run)) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert snapshot(existing_run) == before
    assert not (files / "b.zip").exists() and not (files / "b.tar").exists()


def test_read_only_out_is_refused_before_the_model_loads(files, existing_run, capsys, monkeypatch):
    locked = files / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: say what access(2) would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real(p, m))
    monkeypatch.setattr(planning, "load_pipeline", _tripwire)
    try:
        code = main(_argv([*P, "--out", str(locked / "run")], files, existing_run))
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and f"{locked} is not writable" in err, err
    assert not (locked / "run").exists()


def test_full_disk_stops_in_one_line_and_the_rerun_completes(files, existing_run, capsys,
                                                             monkeypatch, tmp_path):
    """ENOSPC on the 7th file write (manifest, prompts, grid, then images): the run stops in one
    line; what was written is whole (every record's PNG decodes, no temp file is left), and
    rerunning the command finishes the grid."""
    before = snapshot(existing_run)
    out = tmp_path / "full"
    args = _argv([*P, "--methods", "baseline,sld-max", "--samples", "2", "--batch-size", "1"],
                 files, out)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(args)
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert not list(out.rglob("*.tmp"))
    records = sorted((out / "records").glob("*.json"))
    assert 0 < len(records) < 8
    for r in records:
        with Image.open(out / "images" / f"{r.stem}.png") as im:
            im.load()  # decodes: the PNG is whole
    assert main(args) == 0
    assert len(list((out / "records").glob("*.json"))) == 8  # 2 methods x 2 prompts x 2 samples
    assert snapshot(existing_run) == before


def test_a_damaged_checkpoint_stops_before_earlier_methods_generate(files, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(_argv([*P, "--methods", f"baseline,rs-corrector:checkpoint={files}/ckpt-garbage"],
                      files, out))
    assert code == 2 and "preference.safetensors" in capsys.readouterr().err
    assert not out.exists()  # baseline's turn never came


# End to end in a fresh interpreter: the exit status, stderr as the user sees it, no traceback.
SUBPROCESS = ["sld guidance_scale=nan", "config sampler_str", "lone surrogate", "--out is a file",
              "shard 3/2"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_end_to_end(case, files, existing_run):
    _, args, expected, _ = next(c for c in CASES if c[0] == case)
    before = snapshot(existing_run)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *_argv(args, files, existing_run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and expected in proc.stderr, proc.stderr
    assert snapshot(existing_run) == before
