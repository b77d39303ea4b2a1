"""SAFREE: the token projection, trigger detection and step selection against a numpy float64
transcription of the official code's equations (jaehong31/SAFREE, models/
modified_stable_diffusion_pipeline.py: projection_matrix, safree_projection,
projection_and_orthogonal, f_beta), the latent re-attention against numpy's FFT, and the
sampler: with no trigger token the images equal the baseline's."""
import math

import numpy as np
import pytest
import torch

from bench.methods import safree as sf


# ---- numpy transcriptions of the official equations ---------------------------------------------

def np_projection_matrix(E):  # E [D, K], columns = embeddings
    return E @ np.linalg.pinv(E.T @ E) @ E.T


def np_safree_projection(text_e, p_emb, ms, cs, alpha):
    """text_e [L, D] (one prompt), p_emb [n, D] masked pooled embeddings; returns the merged
    embeddings and the keep vector (1 safe, 0 trigger) as the official loop computes them."""
    n_t, dim = p_emb.shape
    i_m_cs = np.eye(dim) - cs
    dist = np.linalg.norm(i_m_cs @ p_emb.T, axis=0)
    mean_dist = np.array([np.mean(np.concatenate([dist[:i], dist[i + 1:]])) for i in range(n_t)])
    rm_vector = (dist < (1.0 + alpha) * mean_dist).astype(float)
    ones = np.ones(text_e.shape[0])
    ones[1:n_t + 1] = rm_vector
    new_text_e = (i_m_cs @ ms @ text_e.T).T
    return np.where(ones[:, None].astype(bool), text_e, new_text_e), rm_vector


def np_projection_and_orthogonal(text_e, ms, cs):
    return ((np.eye(ms.shape[0]) - cs) @ ms @ text_e.T).T


def np_f_beta(z, upperbound_timestep=10):
    t, k = 5.333, 2.5
    value = 1.0 / (1.0 + np.exp(-(2.0 * k * (10 * z - t))))
    return int(round(upperbound_timestep * value))


def np_svf(text_e, proj, active):
    a, b = proj[:active], text_e[:active]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 1.0 - cos.mean()


def fixed_input(seed=0, d=24, k=4, n=6, length=12):
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(k, d))
    masked = rng.normal(size=(n, d))
    masked[2] *= 3.0  # masking token 2 moves the prompt far from the concept: the trigger
    tokens = rng.normal(size=(length, d))
    return concept, masked, tokens


def test_projection_and_triggers_equal_official_equations():
    concept, masked, tokens = fixed_input()
    alpha = 0.01
    cs, ms = np_projection_matrix(concept.T), np_projection_matrix(masked.T)
    ref, keep = np_safree_projection(tokens, masked, ms, cs, alpha)

    t = lambda a: torch.from_numpy(a)  # noqa: E731
    p_c, p_i = sf.projector(t(concept)), sf.projector(t(masked))
    assert np.abs(p_c.numpy() - cs).max() < 1e-10 and np.abs(p_i.numpy() - ms).max() < 1e-10
    triggers = sf.trigger_tokens(t(masked), p_c, alpha)
    assert np.array_equal(triggers.numpy(), keep == 0)
    assert triggers[2] and 0 < int(triggers.sum()) < len(triggers)  # a real, partial detection
    matrix = (torch.eye(24, dtype=torch.float64) - p_c) @ p_i
    ours = sf.Filtered(matrix, triggers, 0.0, 0).apply(t(tokens))
    assert np.abs(ours.numpy() - ref).max() < 1e-10
    changed = np.abs(ref - tokens).max(axis=1) > 1e-6
    assert np.array_equal(changed[1:1 + len(keep)], keep == 0) and not changed[0]
    # the projected tokens are orthogonal to the concept subspace
    assert np.abs(ours.numpy()[1:1 + len(keep)][keep == 0] @ concept.T).max() < 1e-8


def test_step_selection_equals_official_f_beta():
    concept, masked, tokens = fixed_input(seed=1)
    cs, ms = np_projection_matrix(concept.T), np_projection_matrix(masked.T)
    proj = np_projection_and_orthogonal(tokens, ms, cs)
    active = masked.shape[0] + 2
    beta_ref = np_svf(tokens, proj, active)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    beta = sf.filter_strength(t(tokens), t(proj), active)
    assert abs(beta - beta_ref) < 1e-12
    for z in (beta_ref, 0.0, 0.3, 0.5, 0.5333, 0.6, 0.75, 1.0, 1.7):
        for up_t in (10, 25):
            assert sf.filtered_steps(z, up_t) == np_f_beta(z, up_t), (z, up_t)
    # hand-computed: the midpoint gives half the bound, far below none, far above all
    assert sf.filtered_steps(0.5333, 10) == 5
    assert sf.filtered_steps(0.0, 10) == 0 and sf.filtered_steps(1.0, 10) == 10


def test_one_token_prompt_is_never_flagged():
    p_c = sf.projector(torch.eye(4, dtype=torch.float64)[:2])
    assert not sf.trigger_tokens(torch.ones(1, 4, dtype=torch.float64), p_c, 0.01).any()


def test_reweight_low_equals_numpy_fft():
    rng = np.random.default_rng(2)
    filt, orig = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))
    f = np.fft.fftshift(np.fft.fft2(filt), axes=(-2, -1))
    o = np.fft.fftshift(np.fft.fft2(orig), axes=(-2, -1))
    window = np.zeros((8, 8), bool)
    window[3:5, 3:5] = True  # threshold 1 around the centre (4, 4)
    hit = window & (np.abs(f) > np.abs(o))
    ref = np.fft.ifft2(np.fft.ifftshift(np.where(hit, f * 0.2, f), axes=(-2, -1))).real
    ours = sf.reweight_low(torch.from_numpy(filt).float(), torch.from_numpy(orig).float(), 0.2)
    assert np.abs(ours.numpy() - ref).max() < 1e-5
    assert hit.any() and (~hit & window).any()  # some components attenuated, some kept
    same = sf.reweight_low(torch.from_numpy(filt).float(), torch.from_numpy(filt).float(), 0.2)
    assert torch.equal(same, torch.from_numpy(filt).float())  # no re-attention without filtering


def test_params_checked():
    with pytest.raises(ValueError, match="alpha"):
        sf.SAFREEParams(alpha=-1.0)
    with pytest.raises(ValueError, match="concept"):
        sf.SAFREEParams(concept=" | ")
    assert sf.SAFREEParams(concept="blood| gore").keywords() == ("blood", "gore")
    assert len(sf.SAFREEParams(concept="nudity").keywords()) == 17
    assert "violence" in sf.SAFREEParams().keywords()


# ---- on the world's text encoder and UNet ----------------------------------------------------

from bench.adapter import Adapter, Batch  # noqa: E402
from bench.sampler import encode_text, sample  # noqa: E402

HAZARD = "a photo of a doctor covered in blood"


@pytest.fixture(scope="module")
def world():
    from bench.models import load_pipeline

    return load_pipeline("world", "cpu")


def run(pipe, adapters, prompts, steps=8):
    batch = Batch(list(prompts), list(range(len(prompts))), [{}] * len(prompts), 7.5)
    for a in adapters:
        a.prepare(pipe)
    try:
        return sample(pipe, adapters, batch, steps=steps, height=32, width=32).images
    finally:
        for a in reversed(adapters):
            a.release(pipe)


def np_pooled(pipe, ids):
    """The end token's final-layer-norm hidden state, located with numpy (the pooled output)."""
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.as_tensor(ids))[0].double().numpy()
    ends = np.argmax(ids == pipe.tokenizer.eos_token_id, axis=1)
    return hidden[np.arange(len(ids)), ends]


def test_world_prompt_filtering_equals_official_equations(world):
    params = sf.SAFREEParams()
    tok = lambda texts: world.tokenizer(texts, padding="max_length", max_length=77,  # noqa: E731
                                        truncation=True, return_tensors="np").input_ids
    concept = np_pooled(world, tok(list(params.keywords())))
    ids = tok([HAZARD])[0]
    n = int(np.argmax(ids == world.tokenizer.eos_token_id)) - 1
    masked_ids = np.repeat(ids[None], n, axis=0)
    for i in range(n):
        masked_ids[i, i + 1] = 0  # the official masking id
    masked = np_pooled(world, masked_ids)
    text_e = encode_text(world, [HAZARD])[0].double().numpy()
    cs, ms = np_projection_matrix(concept.T), np_projection_matrix(masked.T)
    ref, keep = np_safree_projection(text_e, masked, ms, cs, params.alpha)
    beta = np_svf(text_e, np_projection_and_orthogonal(text_e, ms, cs), n + 2)

    p_c = sf.concept_projector(world, params.keywords())
    ours = sf.filter_prompt(world, torch.as_tensor(ids), torch.from_numpy(text_e), p_c,
                            params.alpha, params.up_t)
    assert np.array_equal(ours.triggers.numpy(), keep == 0) and ours.triggers.any()
    assert abs(ours.beta - beta) < 1e-9 and ours.steps == np_f_beta(beta, params.up_t)
    assert np.abs(ours.apply(torch.from_numpy(text_e)).numpy() - ref).max() < 1e-9


def test_no_trigger_token_images_equal_baseline(world):
    # alpha so large that no token's masked distance stands out: nothing is flagged, and the
    # projection, the filtered steps and the re-attention leave the images as the baseline's
    prompts = [HAZARD, "a photo of a nurse"]
    adapter = sf.SAFREE(sf.SAFREEParams(alpha=10.0))
    adapter.prepare(world)
    state = adapter.init_state(Batch(prompts, [0, 1]))
    adapter.release(world)
    assert not any(f.triggers.any() for f in state.prompts)
    assert all(f.steps >= 1 for f in state.prompts)  # the filter would be in use if anything were flagged
    ours = run(world, [sf.SAFREE(sf.SAFREEParams(alpha=10.0))], prompts)
    base = run(world, [], prompts)
    assert np.abs(ours - base).max() < 1e-6
    assert not np.array_equal(run(world, [sf.SAFREE()], prompts), base)  # the default filters


class EncodeAs(Adapter):
    name = "encode-as"

    def __init__(self, cond):
        super().__init__()
        self.cond = cond

    def encode(self, cond, batch):
        return self.cond.to(cond.dtype)


def test_filtered_conditioning_at_every_step_equals_encoding_it(world):
    # svf=0, lra=0: the filtered embeddings at every step, which is what `encode` would give
    prompts = [HAZARD, "a photo of a violent farmer with a weapon"]
    adapter = sf.SAFREE(sf.SAFREEParams(svf=False, lra=False))
    adapter.prepare(world)
    state = adapter.init_state(Batch(prompts, [0, 1]))
    cond = encode_text(world, prompts)
    filtered = torch.stack([f.apply(c) for f, c in zip(state.prompts, cond)])
    adapter.release(world)
    ours = run(world, [sf.SAFREE(sf.SAFREEParams(svf=False, lra=False))], prompts)
    ref = run(world, [EncodeAs(filtered)], prompts)
    assert np.abs(ours - ref).max() < 1e-6
    # with the self-validating filter the late steps see the original prompt: another image
    svf = run(world, [sf.SAFREE(sf.SAFREEParams(lra=False, up_t=2))], prompts)
    assert np.abs(svf - ours).max() > 1e-3


class Recorder(Adapter):
    name = "recorder"

    def __init__(self, zero=False):
        super().__init__()
        self.seen, self.zero = [], zero

    def extra_conditions(self, batch):
        return [list(batch.prompts)]

    def skip_features(self, features, skip, step, state):
        if step.i == 0:
            same = torch.equal(features[skip.cond], features[skip.extras[0]])
            self.seen.append((skip.block, skip.layer, skip.stage, same, features.shape[0]))
        return torch.zeros_like(features) if self.zero else None


def test_skip_hook_sees_each_skip_with_its_stage_and_rows(world):
    rec = Recorder()
    base = run(world, [rec], ["a photo of a chef"])
    # world decoder (block_out_channels 32, 64): three skips join 64-wide features, one 32-wide;
    # the cond and the identical extra branch hold identical features; 3 branches x 1 image
    assert rec.seen == [(0, 0, 0, True, 3), (0, 1, 0, True, 3), (1, 0, 0, True, 3), (1, 1, 1, True, 3)]
    assert not np.array_equal(run(world, [Recorder(zero=True)], ["a photo of a chef"]), base)
    # and hooks are removed after the call: a plain run equals one with a passive recorder
    assert np.abs(run(world, [], ["a photo of a chef"]) - base).max() < 1e-6


def test_latent_reattention_changes_filtered_images(world):
    prompts = [HAZARD]
    with_lra = run(world, [sf.SAFREE()], prompts)
    without = run(world, [sf.SAFREE(sf.SAFREEParams(lra=False))], prompts)
    assert np.abs(with_lra - without).max() > 1e-4
