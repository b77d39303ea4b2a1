"""Every method on SDXL (tiny-random-xl): guidance terms over complete SDXL branches against an
independent loop of diffusers calls, the text-side methods against StableDiffusionXLPipeline with
the transformed embeddings, the trainers on an SDXL model, and the skips."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from bench.adapter import Batch
from bench.models import fingerprint, load_pipeline
from bench.registry import METHODS
from bench.sampler import encode_condition, encode_text, sample
from bench.methods.checkpoints import CheckpointError
from bench.methods.debias_vl import DebiasVL
from bench.methods.fair_diffusion import FairDiffusion, FairDiffusionParams, draw_group
from bench.methods.sld import SLDMedium

SIZE, STEPS = 32, 6
PROMPT = "a photo of a firefighter covered in blood"


@pytest.fixture(scope="module")
def xl():
    return load_pipeline("tiny-random-xl", "cpu")


def ours(pipe, adapters, prompts, seeds, guidance=7.5, steps=STEPS, negative=""):
    batch = Batch(list(prompts), list(seeds), [{} for _ in prompts], guidance)
    for a in adapters:
        a.prepare(pipe)
    try:
        return sample(pipe, adapters, batch, steps=steps, height=SIZE, width=SIZE,
                      negative_prompt=negative).images
    finally:
        for a in reversed(adapters):
            a.release(pipe)


# ---- an independent SDXL loop: one diffusers UNet call per branch --------------------------------

def _branch(pipe, text):
    """(hidden states, pooled) of one text as StableDiffusionXLPipeline.encode_prompt gives them;
    None: the unconditional branch of an empty negative prompt (zeros, force_zeros_for_empty_prompt)."""
    hidden, negative, pooled, negative_pooled = pipe.encode_prompt(
        text or "x", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    return (negative, negative_pooled) if text is None else (hidden, pooled)


@torch.no_grad()
def reference(pipe, prompt, seed, guidance, extras, term, steps=STEPS):
    """diffusers' SDXL denoising loop (the model's scheduler, its add_time_ids) with
    eps = eps_u + s_g (eps_c - eps_u) + term(eps_u, eps_c, [eps_extra...], i), every branch its
    own UNet call with its own hidden states, pooled embedding and time ids."""
    branches = [_branch(pipe, None), _branch(pipe, prompt)] + [_branch(pipe, e) for e in extras]
    time_ids = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    side = SIZE // pipe.vae_scale_factor
    latents = torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(seed))
    latents = latents * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        x = sched.scale_model_input(latents, t)
        eps = [pipe.unet(x, t, encoder_hidden_states=h,
                         added_cond_kwargs={"text_embeds": p, "time_ids": time_ids}).sample
               for h, p in branches]
        eps_u, eps_c = eps[0], eps[1]
        pred = eps_u + guidance * (eps_c - eps_u)
        add = term(eps_u, eps_c, eps[2:], i)
        latents = sched.step(pred if add is None else pred + add, t, latents).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def sld_term(p, guidance):
    """diffusers' StableDiffusionPipelineSafe safety guidance, transcribed."""
    mom = {}

    def term(eps_u, eps_c, extras, i):
        eps_s = extras[0]
        mom.setdefault("v", torch.zeros_like(eps_u))
        scale = torch.clamp(torch.abs(eps_c - eps_s) * p.guidance_scale, max=1.0)
        scale = torch.where(eps_c - eps_s >= p.threshold, torch.zeros_like(scale), scale)
        gamma = (eps_s - eps_u) * scale + p.momentum_scale * mom["v"]
        mom["v"] = p.mom_beta * mom["v"] + (1 - p.mom_beta) * gamma
        return -guidance * gamma if i >= p.warmup else None
    return term


def sega_term(p, n_edits):
    """diffusers' SemanticStableDiffusionPipeline edit term, transcribed: the first n-1 concepts
    reversed, the last toward; per (image, channel) quantile threshold; momentum; warm-up."""
    mom = {}

    def term(eps_u, eps_c, extras, i):
        edit = torch.zeros_like(eps_u)
        for c, e in enumerate(extras):
            d = (e - eps_u) * (1.0 if c == n_edits - 1 else -1.0) * p.edit_guidance_scale
            cut = torch.quantile(d.abs().flatten(start_dim=2), p.threshold, dim=2)
            edit = edit + torch.where(d.abs() >= cut[:, :, None, None], d, torch.zeros_like(d))
        mom.setdefault("v", torch.zeros_like(eps_u))
        edit = edit + p.momentum_scale * mom["v"]
        mom["v"] = p.mom_beta * mom["v"] + (1 - p.mom_beta) * edit
        return edit if i >= p.warmup else None
    return term


def test_baseline_loop_is_the_reference(xl):
    # the reference loop itself against our sampler with no method (the sampler's own test
    # checks it against StableDiffusionXLPipeline): the comparisons below rest on it
    diff = np.abs(ours(xl, [], [PROMPT], [3]) - reference(xl, PROMPT, 3, 7.5, [], lambda *a: None))
    assert diff.max() <= 1e-4


def test_sld_warmup_covering_all_steps_equals_baseline_and_sld_equals_diffusers_math(xl):
    base = ours(xl, [], [PROMPT, "a nurse"], [3, 4])
    idle = ours(xl, [SLDMedium.from_strings({"warmup": str(STEPS)})], [PROMPT, "a nurse"], [3, 4])
    print(f"SLD warm-up {STEPS} of {STEPS} steps vs baseline: {np.abs(idle - base).max():.3g}")
    assert np.abs(idle - base).max() <= 1e-5
    sld = SLDMedium.from_strings({"warmup": "1"})
    got = ours(xl, [sld], [PROMPT], [3])
    ref = reference(xl, PROMPT, 3, 7.5, [sld.params.concept], sld_term(sld.params, 7.5))
    print(f"SLD (warm-up 1) vs independent SDXL loop: {np.abs(got - ref).max():.3g}; "
          f"vs baseline {np.abs(got - base[:1]).max():.3g}")
    assert np.abs(got - ref).max() <= 1e-4 and np.abs(got - base[:1]).max() > 1e-3


def test_fair_diffusion_equals_sega_math_on_sdxl_branches(xl):
    params = FairDiffusionParams(warmup=2)
    prompts, seeds = ["a photo of a doctor", "a photo of a nurse"], [5, 3]  # one of each group
    got = ours(xl, [FairDiffusion(params)], prompts, seeds)
    groups = params.groups.split("|")
    for n, (prompt, seed) in enumerate(zip(prompts, seeds)):
        target = groups[draw_group(seed, len(groups))]
        edits = [g for g in groups if g != target] + [target]
        ref = reference(xl, prompt, seed, 7.5, edits, sega_term(params, len(edits)))
        print(f"image {n} ({target}): ours vs SEGA on SDXL branches {np.abs(got[n] - ref[0]).max():.3g}")
        assert np.abs(got[n] - ref[0]).max() <= 1e-4
    assert np.abs(got - ours(xl, [], prompts, seeds)).max() > 1e-3


def test_negative_prompt_equals_the_sdxl_pipeline(xl):
    text = "blood, weapons"
    got = ours(xl, [METHODS.get("negative-prompt").from_strings({"text": text})], [PROMPT], [2])
    ref = xl(PROMPT, negative_prompt=text, height=SIZE, width=SIZE, num_inference_steps=STEPS,
             guidance_scale=7.5, generator=torch.Generator().manual_seed(2), output_type="np").images
    assert np.abs(got - ref).max() <= 1e-4


# ---- debias-vl ------------------------------------------------------------------------------------

def _calibration(z_a, z_b, lam):
    z_a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
    z_b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
    m = sum(np.outer(a - b, a - b) for a, b in zip(z_a, z_b)) / len(z_a)
    return np.linalg.inv(lam * m + np.eye(m.shape[0]))


def test_debias_vl_projects_each_encoder_and_the_pooled_embedding(xl):
    adapter = DebiasVL.from_strings({"occupations": "doctor|nurse|pilot"})
    adapter.prepare(xl)
    a, b = (list(x) for x in zip(*adapter.pairs))
    # independently: the pipeline's own encode_prompt, each encoder's part at the EOS token
    ids = xl.tokenizer(a + b, padding="max_length", max_length=77, return_tensors="np").input_ids
    eos = np.argmax(ids == xl.tokenizer.eos_token_id, axis=1)
    with torch.no_grad():
        hidden, _, pooled, _ = xl.encode_prompt(a + b, device="cpu", do_classifier_free_guidance=False)
    z = hidden.double().numpy()[np.arange(len(ids)), eos]
    n, w1 = len(a), xl.text_encoder.config.hidden_size
    p1 = _calibration(z[:n, :w1], z[n:, :w1], 500.0)
    p2 = _calibration(z[:n, w1:], z[n:, w1:], 500.0)
    pp = _calibration(pooled.double().numpy()[:n], pooled.double().numpy()[n:], 500.0)
    full = np.block([[p1, np.zeros((w1, p2.shape[0]))], [np.zeros((p2.shape[0], w1)), p2]])
    assert np.abs(adapter.projection.numpy() - full).max() <= 1e-8
    assert np.abs(adapter.pooled_projection.numpy() - pp).max() <= 1e-8

    got = ours(xl, [adapter], [PROMPT], [1])
    with torch.no_grad():
        e, _, p, _ = xl.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    ref = xl(prompt_embeds=(e.double() @ torch.from_numpy(full).T).float(),
             pooled_prompt_embeds=(p.double() @ torch.from_numpy(pp).T).float(), height=SIZE,
             width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(1), output_type="np").images
    print(f"debias-vl on SDXL vs StableDiffusionXLPipeline(P e, P_pool p): {np.abs(got - ref).max():.3g}")
    assert np.abs(got - ref).max() <= 1e-4
    keep = DebiasVL.from_strings({"occupations": "doctor|nurse|pilot", "project_pooled": "false"})
    assert np.abs(ours(xl, [keep], [PROMPT], [1]) - got).max() > 1e-4  # the pooled part matters


# ---- SAFREE -----------------------------------------------------------------------------------

def test_safree_with_nothing_flagged_equals_baseline_and_filters_only_the_second_encoder(xl):
    from bench.methods import safree as sf

    prompts = [PROMPT, "a photo of a nurse"]
    quiet = sf.SAFREE(sf.SAFREEParams(alpha=10.0))
    quiet.prepare(xl)
    state = quiet.init_state(Batch(prompts, [0, 1]))
    quiet.release(xl)
    assert not any(f.triggers.any() for f in state.prompts)
    base = ours(xl, [], prompts, [0, 1])
    assert np.abs(ours(xl, [sf.SAFREE(sf.SAFREEParams(alpha=10.0))], prompts, [0, 1]) - base).max() <= 1e-5

    adapter = sf.SAFREE(sf.SAFREEParams(alpha=0.0, svf=False, lra=False))
    adapter.prepare(xl)
    state = adapter.init_state(Batch(prompts, [0, 1]))
    cond = encode_text(xl, prompts)
    from bench.adapter import Step
    new = adapter.conditioning(cond, Step(None, 0, torch.tensor(1), 7.5, STEPS), state)
    adapter.release(xl)
    w1 = xl.text_encoder.config.hidden_size
    assert any(f.triggers.any() for f in state.prompts) and new is not None
    assert torch.equal(new[..., :w1], cond[..., :w1])  # the first encoder's part as it is
    assert (new[..., w1:] - cond[..., w1:]).abs().max() > 1e-3
    # the subspaces live in text_encoder_2's width (its pooled output before the projection)
    assert adapter_dims(xl) == xl.text_encoder_2.config.hidden_size
    images = ours(xl, [sf.SAFREE(sf.SAFREEParams(alpha=0.0))], prompts, [0, 1])
    assert np.isfinite(images).all() and np.abs(images - base).max() > 1e-4


def test_safree_on_sdxl_equals_the_official_equations_on_the_second_encoder(xl):
    """The official SDXL recipe in numpy: tokenizer_2 ids, token i masked with id 0, the second
    encoder's EOS output (ours: its final-layer-norm state, before the projection), the projection
    applied to the second encoder's part of the prompt embeddings."""
    from bench.methods import safree as sf
    from test_safree import np_f_beta, np_projection_and_orthogonal, np_projection_matrix, \
        np_safree_projection, np_svf

    tok = lambda texts: xl.tokenizer_2(texts, padding="max_length", max_length=77,  # noqa: E731
                                       truncation=True, return_tensors="np").input_ids

    def np_pooled(ids):
        with torch.no_grad():
            last = xl.text_encoder_2(torch.as_tensor(ids)).last_hidden_state.double().numpy()
        return last[np.arange(len(ids)), np.argmax(ids == xl.tokenizer_2.eos_token_id, axis=1)]

    params = sf.SAFREEParams(alpha=0.0)
    ids = tok([PROMPT])[0]
    n = int(np.argmax(ids == xl.tokenizer_2.eos_token_id)) - 1
    masked_ids = np.repeat(ids[None], n, axis=0)
    masked_ids[np.arange(n), np.arange(n) + 1] = 0
    cs = np_projection_matrix(np_pooled(tok(list(params.keywords()))).T)
    masked = np_pooled(masked_ids)
    ms = np_projection_matrix(masked.T)
    text_e = encode_text(xl, [PROMPT])[0, :, xl.text_encoder.config.hidden_size:].double().numpy()
    ref, keep = np_safree_projection(text_e, masked, ms, cs, params.alpha)
    beta = np_svf(text_e, np_projection_and_orthogonal(text_e, ms, cs), n + 2)

    ours = sf.filter_prompt(xl, torch.as_tensor(ids), torch.from_numpy(text_e),
                            sf.concept_projector(xl, params.keywords()), params.alpha, params.up_t)
    assert np.array_equal(ours.triggers.numpy(), keep == 0) and ours.triggers.any()
    assert abs(ours.beta - beta) < 1e-9 and ours.steps == np_f_beta(beta, params.up_t)
    assert np.abs(ours.apply(torch.from_numpy(text_e)).numpy() - ref).max() < 1e-9


def adapter_dims(pipe):
    from bench.methods import safree as sf

    return sf.concept_projector(pipe, ["blood", "weapons"]).shape[0]


# ---- skips ---------------------------------------------------------------------------------------

def test_safety_checker_and_weight_presets_are_skipped_on_sdxl_with_their_reason(xl, tiny_pipe):
    from bench.catalog import listing
    from bench.methods.safety_checker import SafetyChecker
    from bench.methods.weights import Weights, WeightsParams

    reason = SafetyChecker().skip_reason(xl)
    assert reason.startswith("SDXL ships no safety checker") and "\n" not in reason
    assert "SDXL" not in SafetyChecker().skip_reason(tiny_pipe)
    preset = Weights(WeightsParams(preset="esd-u-nudity")).skip_reason(xl)
    assert "SD 1.x" in preset and "\n" not in preset
    shown = {line.split()[0]: line for line in listing("methods").splitlines()}
    assert "SDXL: SDXL ships no safety checker" in shown["sd-safety-checker"]
    assert "SDXL: presets are SD 1.x releases" in shown["weights"]


def test_sdxl_lora_with_both_encoders_equals_diffusers_load_lora_weights(xl, tiny_pipe, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from bench.methods.weights import Weights, WeightsParams
    from test_weights import lora_layers

    gen = torch.Generator().manual_seed(0)
    layers = {"unet_lora_layers": lora_layers(xl.unet, ("to_k", "to_v"), 4, gen),
              "text_encoder_lora_layers": lora_layers(xl.text_encoder, ("q_proj", "v_proj"), 2, gen),
              "text_encoder_2_lora_layers": lora_layers(xl.text_encoder_2, ("q_proj", "v_proj"), 2, gen)}
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, **layers)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    ref_pipe = load_pipeline("tiny-random-xl", "cpu")
    ref_pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    ref = ours(ref_pipe, [], [PROMPT], [2])
    before = {k: v.clone() for k, v in xl.text_encoder_2.state_dict().items()}
    got = ours(xl, [Weights(WeightsParams(lora=str(path)))], [PROMPT], [2])
    print(f"SDXL LoRA (unet, text_encoder, text_encoder_2) vs diffusers: {np.abs(got - ref).max():.3g}")
    assert np.abs(got - ref).max() <= 1e-5 and np.abs(got - ours(xl, [], [PROMPT], [2])).max() > 1e-3
    assert all(torch.equal(v, xl.text_encoder_2.state_dict()[k]) for k, v in before.items())
    with pytest.raises(CheckpointError, match="another model's LoRA"):  # SDXL's UNet widths
        Weights(WeightsParams(lora=str(path))).skip_reason(tiny_pipe)
    only = tmp_path / "te2"
    StableDiffusionXLPipeline.save_lora_weights(
        only, text_encoder_2_lora_layers=layers["text_encoder_2_lora_layers"])
    with pytest.raises(CheckpointError, match="text_encoder_2 LoRA layers but this model has no"):
        Weights(WeightsParams(lora=str(only / path.name))).skip_reason(tiny_pipe)


# ---- trainers and checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, xl):
    """Fair Mapping, RS-Corrector, UCE and ESD checkpoints made on tiny-random-xl (tiny settings),
    and a Fair Mapping and RS-Corrector checkpoint made on SD's tiny-random."""
    from bench.methods import esd_train, fair_mapping_train, rs_corrector_train, uce_train

    root = tmp_path_factory.mktemp("xl")
    (root / "occ.txt").write_text("doctor\nnurse\n")
    occ = ["--occupations", str(root / "occ.txt"), "--device", "cpu"]
    out = {}
    for model in ("tiny-random-xl", "tiny-random"):
        out[f"fair-mapping@{model}"] = root / f"fm-{model}"
        assert fair_mapping_train.main(["--model", model, "--attribute", "gender", "--out",
                                        str(out[f"fair-mapping@{model}"]), "--steps", "30", *occ]) == 0
        out[f"rs-corrector@{model}"] = root / f"rs-{model}"
        assert rs_corrector_train.main(["--model", model, "--attribute", "skin", "--out",
                                        str(out[f"rs-corrector@{model}"]), "--steps", "5",
                                        "--samples", "1", "--sample-steps", "3", "--width", "8",
                                        *occ]) == 0
    out["uce"] = root / "uce"
    assert uce_train.main(["--mode", "erase", "--model", "tiny-random-xl", "--concepts", "blood",
                           "--preserve", "a doctor", "--out", str(out["uce"])]) == 0
    out["esd"] = root / "esd"
    assert esd_train.main(["--model", "tiny-random-xl", "--concept", "blood", "--out", str(out["esd"]),
                           "--iterations", "2", "--ddim-steps", "4", "--lr", "1e-3"]) == 0
    return out


def card(path):
    return json.loads((path / "card.json").read_text())


def test_checkpoints_made_on_sdxl_carry_its_fingerprint(xl, trained):
    from bench.methods.fair_mapping import text_fingerprint
    from bench.models import text_encoder_fingerprint

    fm = card(trained["fair-mapping@tiny-random-xl"])
    assert fm["architecture"] == "sdxl" and fm["dim"] == 32 + 64
    assert fm["text_encoder_fingerprint"] == text_fingerprint(xl) == \
        f"{text_encoder_fingerprint(xl.text_encoder)}+{text_encoder_fingerprint(xl.text_encoder_2)}"
    assert fm["loss_fair"][-1] < fm["loss_fair"][0]
    for name in ("rs-corrector@tiny-random-xl", "uce", "esd"):
        c = card(trained[name])
        assert c["architecture"] == "sdxl" and c["model_fingerprint"] == fingerprint(xl), name


@pytest.mark.parametrize("method", ["fair-mapping", "rs-corrector"])
def test_sd_checkpoint_refuses_sdxl_in_one_line(xl, tiny_pipe, trained, method):
    sd = METHODS.get(method).from_strings({"checkpoint": str(trained[f"{method}@tiny-random"])})
    assert sd.skip_reason(tiny_pipe) is None
    with pytest.raises(CheckpointError) as err:
        sd.skip_reason(xl)
    msg = str(err.value)
    assert "\n" not in msg and "Stable Diffusion 1.x/2.x" in msg and "this model is SDXL" in msg
    xl_made = METHODS.get(method).from_strings({"checkpoint": str(trained[f"{method}@tiny-random-xl"])})
    assert xl_made.skip_reason(xl) is None
    with pytest.raises(CheckpointError, match="made on SDXL, this model is Stable Diffusion"):
        xl_made.skip_reason(tiny_pipe)


def test_uce_edits_the_concatenated_width_with_the_official_embeddings(xl, trained):
    from safetensors.torch import load_file

    from bench.methods.uce import concept_embeddings, projections

    deltas = load_file(str(trained["uce"] / "delta.safetensors"))
    names = {f"{n}.weight" for n in projections(xl.unet)}
    assert set(deltas) == names and all(d.shape[1] == 32 + 64 for d in deltas.values())
    # the official recipe: encode_prompt's (concatenated) embeddings at the last word token
    with torch.no_grad():
        e = xl.encode_prompt("a red fox", device="cpu", do_classifier_free_guidance=False)[0]
    last = int(xl.tokenizer("a red fox", return_tensors="pt").attention_mask.sum()) - 2
    assert torch.allclose(concept_embeddings(xl, ["a red fox"])[0].float(), e[0, last], atol=1e-6)


def test_uce_erase_on_sdxl_equals_numpy_closed_form_and_debias_samples_sdxl(xl):
    from bench.methods.uce import projections
    from bench.methods.uce_train import debias, erase_edit
    from test_uce import numpy_uce

    def official(texts):  # encode_prompt's embeddings at the last word token (uce_sd_erase.py)
        with torch.no_grad():
            e = xl.encode_prompt(texts, device="cpu", do_classifier_free_guidance=False)[0]
        last = xl.tokenizer(texts, padding="max_length", max_length=77,
                            return_tensors="pt").attention_mask.sum(1) - 2
        return e.double().numpy()[np.arange(len(texts)), last.numpy()]

    concepts, guides, keep = ["a cat", "blood"], ["a dog", ""], ["a photo of a doctor"]
    deltas = erase_edit(xl, concepts, guides, keep, lam=0.5)
    c, g, k = official(concepts), official(guides), official(keep)
    assert c.shape[1] == 32 + 64  # both encoders' concatenated width
    for name, m in projections(xl.unet).items():
        w = m.weight.detach().double().numpy()
        assert np.abs(w + deltas[f"{name}.weight"].double().numpy() - numpy_uce(w, c, g @ w.T, k, 0.5)).max() <= 1e-5
    # the debias loop generates SDXL images through the sampler (classifier: the brighter half)
    classify = lambda images: ["male" if im.mean() > 0.5 else "female" for im in images]  # noqa: E731
    deltas, info = debias(xl, ["doctor"], "gender", classify, iterations=1, images=2, steps=2,
                          guidance=7.5, max_diff=0.05, lam=0.5, seed=0, preserve=[])
    shares = np.array(info["history"][0]["shares"])
    assert shares.shape == (1, 2) and shares.sum() == pytest.approx(1.0)
    assert np.allclose(info["alpha"], 0.5 - shares) or np.allclose(info["alpha"], 0.0)


def test_esd_on_sdxl_trains_cross_attention_with_pooled_and_time_ids(xl, trained):
    from safetensors.torch import load_file

    from bench.methods.esd import trainable
    from bench.methods.esd_train import conditions, esd_loss

    deltas = load_file(str(trained["esd"] / "delta.safetensors"))
    assert set(deltas) == set(trainable(xl.unet, "x")) and all("attn2" in k for k in deltas)
    assert any(float(d.abs().max()) > 0 for d in deltas.values())
    u = set(trainable(xl.unet, "u"))  # the official esd_sdxl.py's esd-u
    assert u and not any("attn2" in k or "emb" in k or "norm" in k for k in u)
    assert not any(k.startswith(("conv_in", "conv_out", "add_embedding")) for k in u)
    # the loss's UNet calls carry the pooled embedding and add_time_ids (independently: encode_prompt)
    cond, empty, _ = conditions(xl, "blood", SIZE)
    x_t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(401)
    with torch.no_grad():
        e_c, e_u, p_c, p_u = xl.encode_prompt("blood", device="cpu", negative_prompt="",
                                              do_classifier_free_guidance=True)
    ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)

    def unet(h, p):
        with torch.no_grad():
            return xl.unet(x_t, t, encoder_hidden_states=h,
                           added_cond_kwargs={"text_embeds": p, "time_ids": ids}).sample
    loss, target = esd_loss(xl.unet, xl.unet, x_t, t, cond, empty, 1.0)
    ref = unet(e_u, p_u) - (unet(e_c, p_c) - unet(e_u, p_u))
    assert (target - ref).abs().max() <= 1e-5
    assert loss.item() == pytest.approx(float(((unet(e_c, p_c) - ref) ** 2).mean()), rel=1e-5)


# ---- every method in float32 and float16 --------------------------------------------------------

RUNS = ["baseline", "sld-weak", "sld-medium", "sld-strong", "sld-max", "fair-diffusion",
        "debias-vl", "negative-prompt", "safree", "fair-mapping", "rs-corrector", "uce", "esd"]


def build(name, trained):
    given = {"fair-mapping": "fair-mapping@tiny-random-xl", "rs-corrector": "rs-corrector@tiny-random-xl",
             "uce": "uce", "esd": "esd"}
    values = {"checkpoint": str(trained[given[name]])} if name in given else {}
    if name == "debias-vl":
        values = {"occupations": "doctor|nurse|pilot"}
    return METHODS.get(name).from_strings(values)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_method_runs_on_sdxl_with_finite_images(trained, dtype):
    pipe = load_pipeline("tiny-random-xl", "cpu", dtype)
    prompt = "a photo of the face of a doctor covered in blood"  # human-related: Fair Mapping maps it
    base = ours(pipe, [], [prompt], [0], steps=4)
    changed = []
    for name in RUNS:
        adapter = build(name, trained)
        assert adapter.skip_reason(pipe) is None, name
        images = ours(pipe, [adapter], [prompt], [0], steps=4)
        assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all(), name
        changed.append(name) if np.abs(images - base).max() > 1e-3 else None
    print(f"{dtype}: methods that change the baseline's image: {changed}")
    # every method but the baseline (and the warm-up-bound SLD presets at 4 steps) acts
    assert {"fair-mapping", "rs-corrector", "uce", "debias-vl", "negative-prompt", "sld-max"} <= set(changed)


def test_the_run_shows_the_sdxl_skip(tmp_path, prompt_file, capsys):
    from bench.cli import main

    args = ["run", "--model", "tiny-random-xl", "--methods", "baseline,sd-safety-checker",
            "--prompt-set", str(prompt_file(["a photo of a doctor"])), "--samples", "1",
            "--steps", "2", "--dry-run", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "skipped sd-safety-checker: SDXL ships no safety checker" in capsys.readouterr().out


@pytest.mark.parametrize("trainer", ["fair-mapping", "rs-corrector", "uce", "esd"])
def test_trainers_on_sdxl_in_float16_write_finite_checkpoints(trainer, tmp_path):
    from safetensors.torch import load_file

    from bench.cli import main
    from test_train_dtype import WEIGHTS, argv

    (tmp_path / "occ.txt").write_text("doctor\nnurse\n")
    args = argv(trainer, tmp_path / "occ.txt", tmp_path / "ckpt", "--dtype", "float16")
    args[args.index("tiny-random")] = "tiny-random-xl"
    assert main(args) == 0
    tensors = load_file(str(tmp_path / "ckpt" / WEIGHTS[trainer]))
    assert tensors and all(torch.isfinite(t).all() and t.dtype == torch.float32 for t in tensors.values())
    assert card(tmp_path / "ckpt")["architecture"] == "sdxl"


def test_missing_checkpoint_hints_name_each_trainers_flags(xl):
    for method, flags in (("uce", "--mode erase --concepts C"), ("esd", "--concept C"),
                          ("fair-mapping", "--attribute A"), ("rs-corrector", "--attribute A")):
        reason = METHODS.get(method)().skip_reason(xl)
        assert f"`bench train {method} --model M {flags} --out DIR`" in reason, reason
