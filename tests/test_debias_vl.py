"""debias-vl against a hand-computed numpy projection and diffusers' pipeline with prompt_embeds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.models import tiny_random_pipeline
from bench.registry import METHODS
from bench.sampler import Batch, encode_text, sample
from bench.methods.debias_vl import DebiasVL, pair_prompts

SIZE = 32
SMALL = {"occupations": "doctor|nurse|pilot"}


@pytest.fixture(scope="module")
def pipe():
    p = tiny_random_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def small(pipe):
    adapter = DebiasVL.from_strings(SMALL)
    adapter.prepare(pipe)
    return adapter


def _numpy_eos(pipe, texts):
    """The official recipe, independently: hidden state at argmax(input_ids), L2-normalised."""
    tok = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(tok.input_ids)[0].numpy().astype(np.float64)
    z = hidden[np.arange(len(texts)), tok.input_ids.numpy().argmax(-1)]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _numpy_projection(pipe, pairs, lam):
    z_i, z_j = _numpy_eos(pipe, [a for a, _ in pairs]), _numpy_eos(pipe, [b for _, b in pairs])
    m = sum(np.outer(a - b, a - b) for a, b in zip(z_i, z_j)) / len(pairs)
    return np.linalg.inv(lam * m + np.eye(m.shape[0])), z_i, z_j


def test_pairs_follow_official_prompts():
    assert pair_prompts(DebiasVL.Params(**SMALL)) == [
        ("A photo of a male doctor.", "A photo of a female doctor."),
        ("A photo of a male nurse.", "A photo of a female nurse."),
        ("A photo of a male pilot.", "A photo of a female pilot.")]
    default = pair_prompts(DebiasVL.Params())
    from bench.prompt_sets.occupations import occupations
    training = occupations()[::2]  # every other occupation of the project's list
    assert len(default) == len(training) >= 80
    assert default[3] == (f"A photo of a male {training[3]}.", f"A photo of a female {training[3]}.")
    race = pair_prompts(DebiasVL.Params(groups="Black|White|Asian", occupations="judge"))
    assert len(race) == 3 and ("A photo of a Black judge.", "A photo of a Asian judge.") in race


def test_projection_matches_numpy(pipe, small):
    expected, _, _ = _numpy_projection(pipe, small.pairs, 500.0)
    diff = float(np.abs(small.projection.numpy() - expected).max())
    print(f"P vs numpy: max abs diff {diff:.3g}")
    assert diff <= 1e-8
    cond = encode_text(pipe, ["a photo of a doctor", "a photo of a ceo"])
    ours = small.encode(cond, Batch(["a photo of a doctor", "a photo of a ceo"], [0, 1]))
    ref = cond.numpy().astype(np.float64) @ expected.T  # every token, as the official code
    assert ours.shape == cond.shape and ours.dtype == cond.dtype
    assert float(np.abs(ours.numpy() - ref).max()) <= 1e-5


def test_paired_prompts_become_equal_along_biased_directions(pipe, small):
    lam = 500.0
    # One pair: M = d d^T, so P d = d / (1 + lam |d|^2) exactly.
    one, z_a, z_b = _numpy_projection(pipe, small.pairs[:1], lam)
    d1 = (z_a - z_b)[0]
    assert np.allclose(one @ d1, d1 / (1 + lam * d1 @ d1), atol=1e-12)
    # Three pairs: each gap shrinks at least by 1 + lam * (smallest non-zero eigenvalue of M).
    p, z_i, z_j = _numpy_projection(pipe, small.pairs, lam)
    d = z_i - z_j
    sigma = np.linalg.eigvalsh(d.T @ d / len(d))[-len(d):]
    gaps_before = np.linalg.norm(d, axis=1)
    gaps_after = np.linalg.norm(z_i @ p.T - z_j @ p.T, axis=1)
    ratios = gaps_after / gaps_before
    # directions outside span(d) are untouched: P v = v for v orthogonal to every pair difference
    basis = np.linalg.svd(d, full_matrices=True)[2]
    v = basis[len(d):].T @ np.random.default_rng(0).normal(size=basis.shape[0] - len(d))
    print(f"one pair: gap ratio {1 / (1 + lam * d1 @ d1):.4f}; three pairs: {np.round(ratios, 4)}"
          f" (bound {1 / (1 + lam * sigma.min()):.4f}); |Pv - v| off the span "
          f"{np.linalg.norm(p @ v - v):.2g}")
    assert 1 / (1 + lam * d1 @ d1) < 0.1
    assert ratios.max() <= 1 / (1 + lam * sigma.min()) + 1e-12 and ratios.max() < 0.2
    assert np.linalg.norm(p @ v - v) < 1e-9 * np.linalg.norm(v)


def test_sampler_equals_diffusers_with_projected_prompt_embeds(pipe, small):
    prompts, seeds, steps = ["a photo of a doctor"], [6], 8
    ours = sample(pipe, [small], Batch(prompts, seeds, [{}], 7.5), steps=steps, height=SIZE,
                  width=SIZE).images
    embeds = encode_text(pipe, prompts) @ small.projection.T.float()
    ref = pipe(prompt_embeds=embeds, negative_prompt_embeds=encode_text(pipe, [""]),
               height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(seeds[0]), output_type="np").images
    base = sample(pipe, [], Batch(prompts, seeds, [{}], 7.5), steps=steps, height=SIZE,
                  width=SIZE).images
    diff = float(np.abs(ours - ref).max())
    print(f"debias-vl vs StableDiffusionPipeline(prompt_embeds=P e): max abs pixel diff {diff:.3g};"
          f" vs baseline {float(np.abs(ours - base).max()):.3g}")
    assert diff <= 1e-4
    assert np.abs(ours - base).max() > 1e-4


def test_default_registry_params_and_errors(pipe):
    adapter = METHODS.get("debias-vl")()
    assert adapter.params.lam == 500.0 and "\n" not in DebiasVL.description
    adapter.prepare(pipe)
    eig = np.linalg.eigvalsh(adapter.projection.numpy())
    assert np.allclose(adapter.projection.numpy(), adapter.projection.numpy().T)
    assert eig.min() > 0 and eig.max() <= 1 + 1e-12  # P shrinks, never amplifies
    with pytest.raises(RuntimeError, match="prepare"):
        DebiasVL().encode(torch.zeros(1, 77, 32), Batch(["x"], [0]))
    with pytest.raises(ValueError, match="groups"):
        DebiasVL.from_strings({"groups": "male"})
    with pytest.raises(ValueError, match="template"):
        DebiasVL.from_strings({"template": "A photo of a doctor."})
    lam0 = DebiasVL(dataclasses.replace(DebiasVL.Params(), lam=0.0, **SMALL))
    lam0.prepare(pipe)
    assert torch.equal(lam0.projection, torch.eye(32, dtype=torch.float64))
