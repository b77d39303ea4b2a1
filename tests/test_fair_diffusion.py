"""Fair Diffusion against diffusers' SemanticStableDiffusionPipeline (SEGA) on tiny-random."""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from bench.models import tiny_random_pipeline
from bench.registry import METHODS
from bench.sampler import Batch, sample
from bench.methods.fair_diffusion import FairDiffusion, draw_group

sega_mod = pytest.importorskip("diffusers.pipelines.deprecated.semantic_stable_diffusion")
PROMPT = "a photo of the face of a firefighter"
SIZE, STEPS = 32, 10  # PNDM: 11 timestep entries, the edit acts from entry 5 on


@pytest.fixture(scope="module")
def pipe():
    p = tiny_random_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def _sega(pipe, seed, editing_prompt, reverse, p):
    sega = sega_mod.SemanticStableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sega.set_progress_bar_config(disable=True)
    out = sega(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.0,
               generator=torch.Generator().manual_seed(seed), output_type="np",
               editing_prompt=editing_prompt, reverse_editing_direction=reverse,
               edit_guidance_scale=p.edit_guidance_scale, edit_warmup_steps=p.warmup,
               edit_threshold=p.threshold, edit_momentum_scale=p.momentum_scale,
               edit_mom_beta=p.mom_beta)
    return out.images


def _ours(pipe, adapters, prompts, seeds, guidance=7.0):
    batch = Batch(prompts, seeds, [{} for _ in prompts], guidance)
    return sample(pipe, adapters, batch, steps=STEPS, height=SIZE, width=SIZE).images


CASES = {  # our params -> the official call (generate_images.py: edit1/edit2 with [True, False])
    "toward-female": ({"target": "female person"}, ["male person", "female person"], [True, False]),
    "toward-male": ({"target": "male person"}, ["female person", "male person"], [True, False]),
    "three-groups": ({"groups": "a|b|c", "target": "b"}, ["a", "c", "b"], [True, True, False]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_direction_matches_diffusers_sega(pipe, case):
    overrides, editing_prompt, reverse = CASES[case]
    adapter = FairDiffusion(dataclasses.replace(FairDiffusion.Params(), **overrides))
    ours = _ours(pipe, [adapter], [PROMPT], [4])
    ref = _sega(pipe, 4, editing_prompt, reverse, adapter.params)
    base = _ours(pipe, [], [PROMPT], [4])
    diff = float(np.abs(ours - ref).max())
    print(f"{case}: max abs pixel diff vs SemanticStableDiffusionPipeline = {diff:.3g}; "
          f"edit effect vs baseline {float(np.abs(ours - base).max()):.3g}")
    assert diff <= 1e-4
    assert np.abs(ours - base).max() > 1e-4  # the edit acts (beyond the reference tolerance)


def test_per_image_direction_is_batch_independent(pipe):
    fd = FairDiffusion()
    seeds = [3, 17, 42, 1000]
    batch = Batch([PROMPT] * 4, seeds, [{}] * 4, 7.0)
    targets = fd.targets(batch)
    assert targets == [fd.targets(Batch([PROMPT], [s], [{}], 7.0))[0] for s in seeds]
    assert targets[1] != targets[2]  # images 17 and 42 are edited in opposite directions
    together = _ours(pipe, [fd], [PROMPT] * 2, seeds[1:3])
    for k, s in enumerate(seeds[1:3]):
        fixed = FairDiffusion(dataclasses.replace(fd.params, target=targets[k + 1]))
        alone = _ours(pipe, [fixed], [PROMPT], [s])
        print(f"seed {s}: batch vs alone max abs diff {np.abs(together[k] - alone[0]).max():.3g}")
        assert np.abs(together[k] - alone[0]).max() <= 1e-4


def test_draws_balance_groups():
    for k in (2, 3, 7):
        counts = Counter(draw_group(s, k) for s in range(6000))
        assert set(counts) == set(range(k))
        # binomial sd of a share at n=6000 is <= 0.0065: 0.03 is > 4.5 sd
        assert max(abs(c / 6000 - 1 / k) for c in counts.values()) < 0.03
    assert [draw_group(s, 2) for s in range(8)] == [draw_group(s, 2) for s in range(8)]


def test_branches_params_and_errors():
    fd = METHODS.get("fair-diffusion")()
    assert type(fd) is FairDiffusion and "\n" not in FairDiffusion.description
    p = fd.params
    assert (p.edit_guidance_scale, p.warmup, p.threshold, p.momentum_scale, p.mom_beta) == \
        (4.0, 5, 0.95, 0.5, 0.6)
    three = FairDiffusion.from_strings({"groups": "a|b|c", "target": "c"})
    assert three.extra_conditions(Batch(["x", "y"], [0, 1], [{}, {}], 7.5)) == \
        [["a", "a"], ["b", "b"], ["c", "c"]]
    assert three.extra_conditions(Batch(["x"], [0], [{}], 1.0)) == []  # no CFG, no edit
    with pytest.raises(ValueError, match="groups"):
        FairDiffusion.from_strings({"groups": "only one"})
    with pytest.raises(ValueError, match="target"):
        FairDiffusion.from_strings({"target": "robot"})
    with pytest.raises(ValueError, match="threshold"):
        FairDiffusion.from_strings({"threshold": "95"})
