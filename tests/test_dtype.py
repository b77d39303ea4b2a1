"""--dtype: fingerprints independent of the dtype, dtype in the cache key and the manifest,
gradient hooks in float32, and non-finite images as errors (never black PNGs)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.grid import cache_key
from bench.models import ModelError, fingerprint, load_pipeline, text_encoder_fingerprint
from bench.registry import METHODS
from bench.adapter import Adapter, Batch
from bench.sampler import NonFiniteError, sample, to_uint8
from bench.spec import SamplerSpec
from bench.world import WEIGHTS_DIR

DTYPES = ["float32", "float16", "bfloat16"]
FAST = ["--model", "tiny-random", "--steps", "3", "--quiet", "--samples", "1", "--metrics", "none"]


def world_cards() -> dict[str, dict]:
    return {d.name: json.loads((d / "card.json").read_text()) for d in WEIGHTS_DIR.iterdir()
            if (d / "card.json").is_file()}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_world_has_its_float32_fingerprints_in_every_dtype(dtype):
    cards = world_cards()
    pipe = load_pipeline("world", "cpu", dtype)
    assert str(pipe.unet.dtype) == f"torch.{dtype}"
    # The committed checkpoints' cards (and results/world/bundle.zip) record these, hashed in
    # float32 before dtypes existed.
    assert fingerprint(pipe) == cards["rs-corrector-skin"]["model_fingerprint"] == "26f98c29afa961c4"
    assert text_encoder_fingerprint(pipe.text_encoder) == \
        cards["fair-mapping-skin"]["text_encoder_fingerprint"]
    # The half weights themselves hash to something else: what the recorded value protects.
    with pytest.raises(ModelError, match="load_pipeline"):
        fingerprint(type(pipe)(**pipe.components))
    del pipe.text_encoder.bench_fingerprint
    with pytest.raises(ModelError, match="load_pipeline"):
        text_encoder_fingerprint(pipe.text_encoder)


def test_float32_fingerprint_is_the_hash_of_the_weights(tiny_pipe):
    from bench.models import tiny_random_pipeline

    fresh = tiny_random_pipeline()  # not through load_pipeline: hashed on demand
    assert fingerprint(fresh) == fingerprint(tiny_pipe) == fingerprint(load_pipeline("tiny-random", "cpu", "float16"))
    with torch.no_grad():
        next(fresh.text_encoder.parameters()).add_(1e-3)
    assert text_encoder_fingerprint(fresh.text_encoder) != text_encoder_fingerprint(tiny_pipe.text_encoder)


def test_cache_key_of_float32_is_unchanged_and_other_dtypes_differ():
    sampler = SamplerSpec()
    # The formula before dtypes existed: SHA-256 of [fp, method, text, seed, settings].
    before = hashlib.sha256(json.dumps(
        ["fp", "baseline", "a cat", 3, [25, 7.5, 64, 64, None, ""]], sort_keys=True).encode()
    ).hexdigest()[:24]
    assert cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64) == before
    assert cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64, "float32") == before
    keys = {cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64, d) for d in DTYPES}
    assert len(keys) == 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_run_records_dtype_and_generates_in_it(dtype, tmp_path, prompt_file):
    out = tmp_path / dtype
    assert main(["run", *FAST, "--dtype", dtype, "--methods", "baseline,sld-strong",
                 "--prompt-set", str(prompt_file(["a cat"])), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["dtype"] == dtype and manifest["model"]["dtype"] == dtype
    assert manifest["model"]["fingerprint"] == fingerprint(load_pipeline("tiny-random", "cpu"))
    assert len(list((out / "images").glob("*.png"))) == 2


@pytest.mark.parametrize("command", ["run", "generate"])
def test_unknown_dtype_is_one_line(command, tmp_path, prompt_file, capsys):
    args = (["run", *FAST, "--prompt-set", str(prompt_file(["a cat"])), "--out", str(tmp_path / "r")]
            if command == "run" else
            ["generate", "--model", "tiny-random", "--prompt", "a cat", "--out", str(tmp_path / "x.png")])
    assert main([*args, "--dtype", "float8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "float8" in err and "bfloat16" in err


@pytest.mark.parametrize("dtype", DTYPES)
def test_generate_in_dtype_equals_the_sampler(dtype, tmp_path):
    from PIL import Image

    out = tmp_path / "x.png"
    assert main(["generate", "--model", "tiny-random", "--dtype", dtype, "--scheduler", "euler-a",
                 "--prompt", "a cat", "--seed", "4", "--steps", "4", "--out", str(out)]) == 0
    pipe = load_pipeline("tiny-random", "cpu", dtype, "euler-a")
    expected = to_uint8(sample(pipe, [], Batch(["a cat"], [4]), steps=4, height=32, width=32).images)
    assert np.array_equal(np.asarray(Image.open(out)), expected[0])


class DtypeProbe(Adapter):
    """Records the dtype on_step sees and moves the latents by a fixed amount."""
    name = "dtype-probe"

    def __init__(self, params=None):
        super().__init__(params)
        self.seen: list[torch.dtype] = []

    def on_step(self, latents, step, state):
        self.seen.append(latents.dtype)
        return latents + 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_on_step_runs_in_float32_and_is_cast_back(dtype):
    pipe = load_pipeline("tiny-random", "cpu", dtype)
    probe = DtypeProbe()
    result = sample(pipe, [probe], Batch(["a cat"], [1]), steps=3, height=32, width=32)
    assert probe.seen and set(probe.seen) == {torch.float32}
    base = sample(pipe, [], Batch(["a cat"], [1]), steps=3, height=32, width=32)
    assert np.abs(result.images - base.images).max() > 0  # the step was applied


def test_rs_corrector_in_half_precision_gives_finite_images():
    from bench.planning import build_adapters
    from bench.spec import MethodChain

    # In float16 its normalised gradient step divided 0 by 0 (pow(2) underflows) and the
    # images came out black; the hook now runs in float32. 4 images, the corrected steps 0-5.
    for dtype in ("float16", "bfloat16"):
        pipe = load_pipeline("world", "cpu", dtype)
        adapters = build_adapters(MethodChain.parse("rs-corrector"))
        for a in adapters:
            a.prepare(pipe)
        prompts = ["a photo of a doctor", "a photo of a nurse", "a photo of a chef", "a photo of a pilot"]
        images = sample(pipe, adapters, Batch(prompts, [100, 101, 102, 103]), steps=8, height=64,
                        width=64).images
        assert np.isfinite(images).all()
        assert images.reshape(4, -1).max(axis=1).min() > 0.2  # no black image


class NanStep(Adapter):
    """A broken gradient hook: NaN latents from step 1 on for images whose prompt has "dog"."""
    name = "nan-step"

    def init_state(self, batch):
        return [n for n, text in enumerate(batch.prompts) if "dog" in text]

    def on_step(self, latents, step, state):
        if step.i >= 1 and state:
            latents = latents.clone()
            latents[state] = float("nan")
        return latents


@pytest.fixture
def nan_method(monkeypatch):
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # undone after the test
    METHODS.register("nan-step", NanStep)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_batch_is_one_line_and_nothing_is_stored(dtype, nan_method, tmp_path,
                                                            prompt_file, capsys):
    from bench.grid import image_seed
    from bench.prompt_sets.resolve import load_prompt_set

    out = tmp_path / "run"
    prompts = prompt_file(["a cat", "a dog", "a bird"])
    code = main(["run", *FAST, "--dtype", dtype, "--methods", "baseline,nan-step",
                 "--batch-size", "2", "--prompt-set", str(prompts), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    ps = load_prompt_set(str(prompts))
    dog = ps.prompts[1]
    assert (f"method nan-step: non-finite values (NaN/inf) in the latents after nan-step's "
            f"on_step at step 1 for prompt {dog.id} seed {image_seed(0, ps.name, dog, 0)} "
            f"({dtype}); nothing of this batch was written") in err
    # nan-step's first batch (cat, dog) failed: neither image nor record of it exists.
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted((r["method"], r["seed"]) for r in records) == sorted(
        ("baseline", image_seed(0, ps.name, p, 0)) for p in ps.prompts)
    assert len(list((out / "images").glob("*.png"))) == 3


def test_nan_from_the_decoder_and_to_uint8_are_errors(tiny_pipe):
    from bench.sampler import decode

    nan = np.full((2, 4, 4, 3), 0.5)
    nan[1, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError) as err:
        to_uint8(nan)
    assert err.value.images == [1]
    assert to_uint8(np.full((1, 2, 2, 3), 0.5)).max() == 128  # finite input: diffusers' rounding
    latents = torch.zeros(2, 4, 4, 4)
    latents[0] = float("inf")
    with pytest.raises(NonFiniteError, match="decoded images") as err:
        decode(tiny_pipe, latents)
    assert err.value.images == [0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_generate_names_method_prompt_and_seed_of_a_nan(dtype, nan_method, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = main(["generate", "--model", "tiny-random", "--method", "baseline+nan-step",
                 "--dtype", dtype, "--prompt", "a dog", "--seed", "5", "--steps", "3",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "method baseline+nan-step: non-finite values" in err and "prompt 'a dog' seed 5" in err
    assert not out.exists()


def test_reproduce_in_another_dtype_is_allowed_drift(tmp_path, prompt_file, capsys):
    src = tmp_path / "A"
    assert main(["run", *FAST, "--prompt-set", str(prompt_file(["a cat"])), "--out", str(src)]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(src), "--out", str(tmp_path / "B"), "--dtype", "bfloat16",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "bench: warning: dtype float32 in the manifest, bfloat16 here" in err
    assert "error" not in err
    again = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert again["model"]["dtype"] == "bfloat16"
    assert again["model"]["fingerprint"] == json.loads((src / "manifest.json").read_text())["model"]["fingerprint"]
    # Without --dtype the manifest's dtype is reproduced (the same cache keys: nothing differs).
    assert main(["reproduce", str(src), "--out", str(tmp_path / "C"), "--quiet"]) == 0
    assert "dtype" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "C" / "images").iterdir()) == \
        sorted(p.name for p in (src / "images").iterdir())


def _manifest(device: str, dtype: str | None):
    from bench.manifest import GridRecord, Manifest, ModelRecord
    from bench.spec import RunSpec

    return Manifest(created="", spec=RunSpec(), model=ModelRecord("m", "f", None, dtype),
                    height=8, width=8, methods={}, skipped_methods={}, prompt_sets=(),
                    grid=GridRecord(0, None), device=device, versions={}, git_commit=None)


def test_manifests_without_dtype_ran_half_on_cuda():
    assert _manifest("cuda:0", None).dtype == "float16"
    assert _manifest("cpu", None).dtype == "float32"
    assert _manifest("cuda", "bfloat16").dtype == "bfloat16"


def test_reproduce_pins_the_recorded_dtype_only_where_this_device_defaults_otherwise():
    from bench.reproduce import reproduced_dtype

    cpu_run = _manifest("cpu", "float32")
    assert reproduced_dtype(cpu_run, None, "cpu") is None  # the spec stays as it was written
    gpu_run = _manifest("cuda:0", "float16")
    assert reproduced_dtype(gpu_run, None, "cpu") == "float16"  # on the CPU, pinned
    assert reproduced_dtype(gpu_run, "bfloat16", "cpu") == "bfloat16"  # the spec's own
