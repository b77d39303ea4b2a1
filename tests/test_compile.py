"""--compile (issue 21): torch.compile of the UNet, in the cache key and spec id only when on,
recorded in the manifest; compiled images equal uncompiled ones within a documented tolerance,
for a plain method, one that edits the UNet's weights (uce) and one with an autograd step hook
(rs-corrector)."""
import hashlib
import json

import numpy as np
import pytest
import torch

from bench import planning, provenance
from bench.grid import cache_key
from bench.models import apply_options, load_pipeline
from bench.rundir import spec_id
from bench.adapter import Adapter, Batch
from bench.sampler import sample, to_uint8
from bench.spec import RunSpec, SamplerSpec, SpecError

# Compiled vs uncompiled on the world at 64 px, 4 steps (inductor on CPU, float32): the fused
# kernels reorder float sums, so latents differ at ~1e-6 and a pixel that sits on a rounding
# boundary can move by one 8-bit level. Measured: see test_compiled_world_matches_uncompiled.
MAX_LEVELS = 1  # largest allowed |compiled - uncompiled| in 8-bit levels
MAX_FLOAT = 1e-3  # largest allowed difference of the [0, 1] float images


def test_spec_without_compile_keeps_its_ids_and_keys():
    # Spec ids computed on main before --compile existed (then RunSpec() named model "world").
    assert spec_id(RunSpec(model="world")) == "8cd988d82461"
    assert spec_id(RunSpec(model="tiny-random", methods=("baseline", "uce"),
                           dtype="float16")) == "028e7b0afe5c"
    assert "compile" not in RunSpec().to_dict()
    on = RunSpec(compile=True)
    assert on.to_dict()["compile"] is True and spec_id(on) != spec_id(RunSpec())
    assert RunSpec.from_dict(on.to_dict()) == on
    # The cache key formula before: SHA-256 of [fp, method, text, seed, settings].
    before = hashlib.sha256(json.dumps(
        ["fp", "baseline", "a cat", 3, [25, 7.5, 64, 64, None, ""]], sort_keys=True).encode()
    ).hexdigest()[:24]
    sampler = SamplerSpec()
    assert cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64) == before
    assert cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64,
                     options=RunSpec().pixel_options()) == before
    assert cache_key("fp", "baseline", "a cat", 3, 7.5, sampler, 64, 64,
                     options=on.pixel_options()) != before


def test_compile_must_be_a_boolean():
    with pytest.raises(SpecError, match=r"^compile='yes': must be true or false$"):
        RunSpec.from_dict({"compile": "yes"})


def test_plan_records_compile_and_keys_it(tmp_path, prompt_file):
    sets = (str(prompt_file(["a cat"])),)
    plain = planning.plan(RunSpec(model="tiny-random", prompt_sets=sets, metrics=("none",),
                                out=str(tmp_path / "a")))
    compiled = planning.plan(RunSpec(model="tiny-random", prompt_sets=sets, metrics=("none",),
                                   out=str(tmp_path / "b"), compile=True))
    try:
        assert not hasattr(plain.pipe.unet, "_compiled_call_impl") or \
            plain.pipe.unet._compiled_call_impl is None
        assert compiled.pipe.unet._compiled_call_impl is not None  # compiled in place
        assert type(compiled.pipe.unet).__name__ == "UNet2DConditionModel"
        assert provenance.manifest(compiled).to_dict()["spec"]["compile"] is True
        assert "compile" not in provenance.manifest(plain).to_dict()["spec"]
        assert {w.key for w in plain.grid}.isdisjoint(w.key for w in compiled.grid)
    finally:
        torch._dynamo.reset()


class SkipProbe(Adapter):
    name = "skip-probe"

    def skip_features(self, features, skip, step, state):
        return features * 1.5


def test_skip_feature_methods_refuse_compile_in_one_line():
    spec = RunSpec(compile=True)
    with pytest.raises(SpecError, match=r"^compile: skip-probe edits the UNet's skip connections"):
        planning.check_compile(spec, {"skip-probe": [SkipProbe()]})
    planning.check_compile(RunSpec(), {"skip-probe": [SkipProbe()]})  # uncompiled: fine


def test_compile_flag_and_config_key_reach_the_spec(tmp_path):
    from bench.cli import parser, spec_from_args

    assert spec_from_args(parser().parse_args(["run", "--compile"])).compile is True
    assert spec_from_args(parser().parse_args(["run"])).compile is False
    config = tmp_path / "spec.yaml"
    config.write_text("compile: true\n")
    assert spec_from_args(parser().parse_args(["run", "--config", str(config)])).compile is True


def _images(pipe, chain: str, batch: Batch) -> np.ndarray:
    adapters = planning.build_adapters(planning.MethodChain.parse(chain)) if chain != "baseline" else []
    for a in adapters:
        a.prepare(pipe)
    try:
        return sample(pipe, adapters, batch, steps=4, height=64, width=64).images
    finally:
        for a in reversed(adapters):
            a.release(pipe)


def test_compiled_world_matches_uncompiled():
    """The world (not tiny-random), inductor on CPU. One compilation serves all three methods:
    uce edits the UNet's weights in place (parameters are graph inputs, so the compiled UNet
    sees the edit) and restores them; rs-corrector's autograd step runs on its classifier,
    outside the (no_grad) UNet."""
    batch = Batch(["a photo of a doctor", "a photo of a nurse"], [100, 101])
    pipe = load_pipeline("world", "cpu")
    methods = ("baseline", "uce", "rs-corrector", "baseline")
    plain = {m: _images(pipe, m, batch) for m in methods[:3]}
    assert np.abs(plain["uce"] - plain["baseline"]).max() > 1e-2  # the methods change images
    assert np.abs(plain["rs-corrector"] - plain["baseline"]).max() > 1e-2
    apply_options(pipe, ("compile",))
    try:
        for m in methods:  # baseline again last: uce's release restored the compiled UNet's weights
            got = _images(pipe, m, batch)
            assert np.abs(got - plain[m]).max() <= MAX_FLOAT, m
            levels = np.abs(to_uint8(got).astype(int) - to_uint8(plain[m]).astype(int))
            assert levels.max() <= MAX_LEVELS, m
    finally:
        torch._dynamo.reset()


# --- VAE memory options ------------------------------------------------------------------------

def _world_images(options: tuple[str, ...]) -> np.ndarray:
    pipe = load_pipeline("world", "cpu")
    apply_options(pipe, options)
    batch = Batch(["a photo of a doctor", "a photo of a nurse", "a photo of a chef"], [7, 8, 9])
    return sample(pipe, [], batch, steps=4, height=64, width=64).images


def test_vae_slicing_gives_the_same_pixels_and_tiling_other_ones():
    plain = _world_images(())
    sliced = _world_images(("vae_slicing",))
    # One image at a time through the decoder: floats within 1.7e-6 (measured), so 8-bit pixels
    # equal but where a value sits on a rounding boundary (4 of 36,864 here): one level, as
    # another batch size gives. Hence in the spec id (one run decodes alike), not the cache key.
    assert np.abs(sliced - plain).max() < 1e-5
    levels = np.abs(to_uint8(sliced).astype(int) - to_uint8(plain).astype(int))
    assert levels.max() <= 1 and (levels > 0).mean() < 1e-3
    # The world's VAE tiles latents above 8x8 (sample_size 32 / 4): 64 px blends tile seams.
    tiled = _world_images(("vae_tiling",))
    assert np.abs(to_uint8(tiled).astype(int) - to_uint8(plain).astype(int)).max() > 1


def test_vae_options_in_spec_keys_and_manifest(tmp_path, prompt_file):
    sets = (str(prompt_file(["a cat"])),)
    base = dict(model="tiny-random", prompt_sets=sets, metrics=("none",))
    plans = {name: planning.plan(RunSpec(**base, out=str(tmp_path / name), **opts))
             for name, opts in [("plain", {}), ("sliced", {"vae_slicing": True}),
                                ("tiled", {"vae_tiling": True})]}
    keys = {name: [w.key for w in p.grid] for name, p in plans.items()}
    assert keys["sliced"] == keys["plain"] and set(keys["tiled"]).isdisjoint(keys["plain"])
    assert plans["sliced"].pipe.vae.use_slicing and plans["tiled"].pipe.vae.use_tiling
    assert not plans["plain"].pipe.vae.use_slicing and not plans["plain"].pipe.vae.use_tiling
    specs = {name: provenance.manifest(p).to_dict()["spec"] for name, p in plans.items()}
    assert specs["sliced"]["vae_slicing"] is True and specs["tiled"]["vae_tiling"] is True
    assert not {"vae_slicing", "vae_tiling"} & set(specs["plain"])
    # Off: the ids from before the options existed; on: another run directory.
    assert spec_id(RunSpec(model="world", vae_slicing=False, vae_tiling=False)) == "8cd988d82461"
    assert len({spec_id(RunSpec()), spec_id(RunSpec(vae_slicing=True)),
                spec_id(RunSpec(vae_tiling=True))}) == 3


def test_vae_option_on_a_vae_without_it_is_one_line():
    from types import SimpleNamespace

    from bench.models import ModelError

    with pytest.raises(ModelError, match=r"^vae_tiling: this model's VAE \(Module\) has no tiling"):
        apply_options(SimpleNamespace(vae=torch.nn.Module()), ("vae_tiling",))


def test_vae_flags_reach_the_spec():
    from bench.cli import parser, spec_from_args

    spec = spec_from_args(parser().parse_args(["run", "--vae-slicing", "--vae-tiling"]))
    assert spec.vae_slicing and spec.vae_tiling and not spec.compile
    assert spec.gpu_options() == ("vae_tiling", "vae_slicing")
    assert spec.pixel_options() == ("vae_tiling",)
