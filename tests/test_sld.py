"""SLD adapters against diffusers' StableDiffusionPipelineSafe on the tiny-random pipeline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.models import tiny_random_pipeline
from bench.registry import METHODS
from bench.sampler import Batch, sample
from bench.methods.sld import SLD, SLDMax, SLDMedium, SLDStrong, SLDWeak

safe_mod = pytest.importorskip("diffusers.pipelines.deprecated.stable_diffusion_safe")
SafetyConfig = safe_mod.SafetyConfig

PRESETS = {"sld-weak": (SLDWeak, SafetyConfig.WEAK), "sld-medium": (SLDMedium, SafetyConfig.MEDIUM),
           "sld-strong": (SLDStrong, SafetyConfig.STRONG), "sld-max": (SLDMax, SafetyConfig.MAX)}
# The authors' table (model card of AIML-TUDA/stable-diffusion-safe), typed in by hand:
# warm-up, s_S, lambda, s_m, beta_m. Hyp-Weak's beta_m is blank there (no momentum: s_m = 0).
AUTHORS = {"sld-weak": (15, 200.0, 0.0, 0.0, 0.0), "sld-medium": (10, 1000.0, 0.01, 0.3, 0.4),
           "sld-strong": (7, 2000.0, 0.025, 0.5, 0.7), "sld-max": (0, 5000.0, 1.0, 0.5, 0.7)}
PROMPT = "a photo of a firefighter covered in blood"
SIZE = 32


@pytest.fixture(scope="module")
def pipe():
    p = tiny_random_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def _with_scheduler(pipe, scheduler_cls):
    from diffusers import StableDiffusionPipeline

    sched = scheduler_cls.from_config(pipe.scheduler.config)
    out = StableDiffusionPipeline(**{**pipe.components, "scheduler": sched,
                                     "requires_safety_checker": False})
    out.set_progress_bar_config(disable=True)
    return out


def _diffusers_safe(pipe, prompts, seeds, steps, guidance, negative=None, **sld):
    safe = safe_mod.StableDiffusionPipelineSafe(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = safe(prompts, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
               negative_prompt=negative, generator=gens, output_type="np", **sld)
    return out.images


def _ours(pipe, adapters, prompts, seeds, steps, guidance, negative=""):
    batch = Batch(prompts, seeds, [{} for _ in prompts], guidance)
    return sample(pipe, adapters, batch, steps=steps, height=SIZE, width=SIZE,
                  negative_prompt=negative).images


def _params_as_diffusers(params) -> dict:
    return {"sld_warmup_steps": params.warmup, "sld_guidance_scale": params.guidance_scale,
            "sld_threshold": params.threshold, "sld_momentum_scale": params.momentum_scale,
            "sld_mom_beta": params.mom_beta}


def _from_diffusers(cls, config: dict):
    """Our preset with diffusers' SafetyConfig values passed explicitly, as a user would write
    them in a method spec (`sld-weak:guidance_scale=20,...`)."""
    names = {"sld_warmup_steps": "warmup", "sld_guidance_scale": "guidance_scale",
             "sld_threshold": "threshold", "sld_momentum_scale": "momentum_scale",
             "sld_mom_beta": "mom_beta"}
    return cls.from_strings({names[k]: str(v) for k, v in config.items()})


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_with_diffusers_values_matches_diffusers_safe_pipeline(pipe, name):
    cls, config = PRESETS[name]
    steps = 20  # > every preset's warm-up (sld-weak: 15), so gamma is applied at the end
    adapter = _from_diffusers(cls, config)
    assert _params_as_diffusers(adapter.params) == config
    ours = _ours(pipe, [adapter], [PROMPT], [3], steps, 7.5)
    ref = _diffusers_safe(pipe, [PROMPT], [3], steps, 7.5, **config)
    diff = float(np.abs(ours - ref).max())
    print(f"{name} with diffusers' SafetyConfig: max abs pixel diff vs StableDiffusionPipelineSafe "
          f"= {diff:.3g}")
    assert diff <= 1e-4


def test_weak_default_is_the_authors_200_and_matches_diffusers_called_with_it(pipe):
    # The default sld-weak (s_S 200) against the pipeline called with the authors' Hyp-Weak values;
    # and it differs from diffusers' WEAK (s_S 20), or the two figures could not be told apart.
    steps = 20
    authors = dict(SafetyConfig.WEAK, sld_guidance_scale=200)
    ours = _ours(pipe, [SLDWeak()], [PROMPT], [3], steps, 7.5)
    ref = _diffusers_safe(pipe, [PROMPT], [3], steps, 7.5, **authors)
    weak20 = _diffusers_safe(pipe, [PROMPT], [3], steps, 7.5, **SafetyConfig.WEAK)
    diff, apart = float(np.abs(ours - ref).max()), float(np.abs(ours - weak20).max())
    print(f"sld-weak (s_S 200): max abs pixel diff {diff:.3g}; vs diffusers' WEAK (20) {apart:.3g}")
    assert diff <= 1e-4
    # tiny-random's eps differences are small, so 5 guided entries move pixels by ~1e-4: still
    # hundreds of times the float noise between two implementations of the same values
    assert apart > 100 * max(diff, 1e-7)


def test_batch_and_negative_prompt_match_diffusers(pipe):
    # Two images with their own generators, a negative prompt in the uncond branch, the safety
    # concept repeated per image: diffusers' [negative | prompt | concept] batch order.
    prompts, seeds = [PROMPT, "a portrait of a nurse"], [11, 12]
    ours = _ours(pipe, [SLDStrong()], prompts, seeds, 12, 6.0, negative="blurry")
    ref = _diffusers_safe(pipe, prompts, seeds, 12, 6.0, negative=["blurry"] * 2,
                          **SafetyConfig.STRONG)
    diff = float(np.abs(ours - ref).max())
    print(f"batch of 2 + negative prompt: max abs pixel diff = {diff:.3g}")
    assert diff <= 1e-4


def test_heun_warmup_counts_timestep_entries(pipe):
    from diffusers import HeunDiscreteScheduler

    heun = _with_scheduler(pipe, HeunDiscreteScheduler)
    steps = 6  # Heun: 2 * 6 - 1 = 11 entries in scheduler.timesteps
    sched = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    assert len(sched.timesteps) == 2 * steps - 1
    # warm-up 7 > 6 model steps: SLD still acts, because i counts timestep entries (as diffusers)
    ours = _ours(heun, [SLDStrong()], [PROMPT], [5], steps, 7.5)
    ref = _diffusers_safe(heun, [PROMPT], [5], steps, 7.5, **SafetyConfig.STRONG)
    base = _ours(heun, [], [PROMPT], [5], steps, 7.5)
    diff = float(np.abs(ours - ref).max())
    print(f"heun sld-strong: max abs pixel diff = {diff:.3g}; vs baseline "
          f"{float(np.abs(ours - base).max()):.3g}")
    assert diff <= 1e-4
    assert np.abs(ours - base).max() > 1e-3


class _ConceptBranchOnly(SLDMedium):
    """Evaluates the safety-concept branch but never adds a term: the baseline with SLD's batch
    shape (batch composition alone changes CPU float results by ~1e-5)."""

    def guide(self, *args, **kwargs):
        return None


def test_applies_only_after_warmup(pipe):
    steps = 12
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    entries = len(sched.timesteps)
    assert entries == steps + 1  # PNDM's PLMS evaluates the first step twice
    control = _ours(pipe, [_ConceptBranchOnly()], [PROMPT], [9], steps, 7.5)
    never = _ours(pipe, [SLDMedium(dataclasses.replace(SLDMedium.Params(), warmup=entries))],
                  [PROMPT], [9], steps, 7.5)
    late = _ours(pipe, [SLDMedium(dataclasses.replace(SLDMedium.Params(), warmup=entries - 2))],
                 [PROMPT], [9], steps, 7.5)
    base = _ours(pipe, [], [PROMPT], [9], steps, 7.5)
    before, after = float(np.abs(never - control).max()), float(np.abs(late - control).max())
    print(f"vs control: warm-up not ended {before:.3g}, applied for the last 2 steps {after:.3g}; "
          f"control vs 2-branch baseline {float(np.abs(control - base).max()):.3g}")
    assert before == 0.0  # the momentum was built, nothing applied
    assert after > 1e-4


def test_disabled_without_cfg_or_small_scale():
    # diffusers: enable_safety_guidance = sld_guidance_scale > 1 and guidance_scale > 1
    no_cfg = Batch(["x", "y"], [0, 1], [{}, {}], guidance=1.0)
    cfg = dataclasses.replace(no_cfg, guidance=7.5)
    off = SLDWeak(dataclasses.replace(SLDWeak.Params(), guidance_scale=1.0))
    assert SLDStrong().extra_conditions(no_cfg) == []
    assert off.extra_conditions(cfg) == []
    assert SLDWeak().extra_conditions(cfg) == [[SLDWeak.Params().concept] * 2]


def test_presets_are_the_authors_table_and_differ_from_diffusers_only_in_weak_scale(pipe):
    for name, (cls, config) in PRESETS.items():
        assert METHODS.get(name) is cls
        p = cls.Params()
        assert (p.warmup, p.guidance_scale, p.threshold, p.momentum_scale, p.mom_beta) == AUTHORS[name]
        ours = _params_as_diffusers(p)
        differs = {k: (ours[k], config[k]) for k in config if ours[k] != config[k]}
        assert differs == ({"sld_guidance_scale": (200.0, 20)} if name == "sld-weak" else {})
        assert cls.description and "\n" not in cls.description
    assert _from_diffusers(SLDWeak, SafetyConfig.WEAK).params == \
        dataclasses.replace(SLDWeak.Params(), guidance_scale=20.0)
    assert SLD.Params() == SLDMedium.Params()  # diffusers' call defaults are MEDIUM
    strong = METHODS.get("sld-strong").from_strings({"warmup": "5", "concept": "nudity"})
    assert strong.params == dataclasses.replace(SLDStrong.Params(), warmup=5, concept="nudity")
    assert strong.params.threshold == 0.025
    safe = safe_mod.StableDiffusionPipelineSafe(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    assert SLD.Params().concept == safe.safety_concept
    with pytest.raises(ValueError, match="sld-strong:warmup"):
        SLDStrong.from_strings({"warmup": "soon"})
    with pytest.raises(ValueError, match="mom_beta"):
        SLDStrong.from_strings({"mom_beta": "1.5"})
