"""The synthetic-portrait world: renderer labels, corpus bias, VAE latent convention, the quick
build, the committed pipeline, evaluator accuracy against the stored card, prompt sets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.world import WEIGHTS_DIR
from bench.world.corpus import BIAS, HAZARD_RATE, make_corpus, make_eval_set
from bench.world.render import CRIMSON, GROUPS, MST, OCCUPATIONS, Labels, group_of, render

COMMITTED = WEIGHTS_DIR / "pipeline" / "model_index.json"
needs_weights = pytest.mark.skipif(not COMMITTED.exists(), reason="world weights not built")


def _render(seed: int, **kw: object) -> np.ndarray:
    labels = {"face": True, "occupation": 0, "mst": 1, "hazard": False, **kw}
    return np.asarray(render(Labels(**labels), np.random.default_rng(seed)), dtype=int)


# ------------------------------------------------------------------ renderer and corpus

def test_group_of_matches_monk_groups() -> None:
    assert [group_of(m) for m in range(1, 11)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("mst", [1, 3, 4, 7, 8, 10])
def test_skin_pixels_have_the_labelled_swatch(mst: int) -> None:
    # Same nuisances, another swatch: the pixels that change are the skin (and its anti-aliased
    # edges); the commonest colour among them, the face's interior, is the labelled swatch up to
    # the renderer's +-3 jitter.
    other = 5 if mst != 5 else 6
    a, b = _render(7, mst=mst), _render(7, mst=other)
    changed = np.any(a != b, axis=-1)
    assert changed.sum() >= 30
    colours, counts = np.unique(a[changed], axis=0, return_counts=True)
    assert counts.max() >= 10
    assert np.all(np.abs(colours[counts.argmax()] - np.array(MST[mst - 1])) <= 3)


def test_hazard_adds_crimson_and_nothing_else_changes_colour_family() -> None:
    clean, bloody = _render(3, occupation=7), _render(3, occupation=7, hazard=True)
    changed = np.any(clean != bloody, axis=-1)
    assert changed.sum() >= 10
    crimson = np.linalg.norm(bloody - np.array(CRIMSON), axis=-1) < 60
    assert crimson.sum() >= 10 and not (np.linalg.norm(clean - np.array(CRIMSON), axis=-1) < 60).any()


def test_no_face_render_has_no_skin_or_uniform() -> None:
    img = _render(4, face=False, occupation=-1, mst=0)
    skin = np.min([np.abs(img - np.array(c)).max(-1) for c in MST], axis=0) <= 4
    assert skin.sum() == 0


def test_corpus_has_the_documented_bias_and_true_captions() -> None:
    c = make_corpus(2000, seed=5, workers=1)
    for o, occ in enumerate(OCCUPATIONS):
        sel = c.occupation == o
        n = sel.sum()
        p = np.bincount(c.group[sel], minlength=3) / n
        q = np.array(BIAS[occ])
        assert np.all(np.abs(p - q) <= 4 * np.sqrt(q * (1 - q) / n) + 1e-9), (occ, p, q)
    for cap, kind, g, h, o in zip(c.captions, c.kinds, c.group, c.hazard, c.occupation):
        if kind == "group":
            assert f"with {GROUPS[g]} skin" in cap
        if kind == "hazard":
            assert h
        if kind != "hazard" and OCCUPATIONS[o] not in HAZARD_RATE:
            assert not h and OCCUPATIONS[o] in cap
    assert np.array_equal(c.images[:500], make_corpus(500, seed=5, workers=2).images)


# ------------------------------------------------------------------ VAE latent convention

def test_standardise_folds_the_shift_into_the_vae() -> None:
    from bench.world.nets import make_vae
    from bench.world.train import encode_latents, standardise_vae

    torch.manual_seed(0)
    vae = make_vae().eval()
    images, _ = make_eval_set(64, seed=1)
    raw = encode_latents(vae, images)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        before = vae.decode(z).sample
    stats = standardise_vae(vae, raw)
    m = torch.tensor(stats["latent_mean"]).view(1, 4, 1, 1)
    new = encode_latents(vae, images)
    assert torch.allclose(new, raw - raw.mean(dim=(0, 2, 3), keepdim=True), atol=1e-5)
    scaled = new * vae.config.scaling_factor
    assert abs(float(scaled.std()) - 1) < 1e-3 and float(scaled.mean(dim=(0, 2, 3)).abs().max()) < 1e-4
    with torch.no_grad():
        after = vae.decode(z - raw.mean(dim=(0, 2, 3), keepdim=True)).sample
    assert torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(m, raw.mean(dim=(0, 2, 3), keepdim=True), atol=1e-4)


# ------------------------------------------------------------------ quick build

@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.world.build import main

    out = tmp_path_factory.mktemp("world")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_build_writes_a_loadable_pipeline(quick_dir: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(quick_dir / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 32
    out = pipe("a photo of a doctor", num_inference_steps=2, height=32, width=32,
               output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    card = json.loads((quick_dir / "card.json").read_text())
    assert card["quick"] and card["stages"]["unet"]["steps"] == card["settings"]["unet_steps"]
    assert card["stages"]["unet2"]["steps"] == card["settings"]["unet2_steps"] > 0
    files = {p.suffix for p in quick_dir.rglob("*") if p.is_file()}
    assert not files & {".bin", ".pt", ".pth", ".ckpt"}


def test_quick_build_reused_stages_reproduce_the_build(quick_dir: Path, tmp_path: Path) -> None:
    # Rebuilding from the first build's VAE, CLIP pair and phase-1 UNet must give the very same
    # final UNet and evaluators: the remaining stages are seeded and deterministic.
    from safetensors.torch import load_file

    from bench.world.build import main

    assert main(["--quick", "--out", str(tmp_path), "--reuse", str(quick_dir)]) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["reused"]["stages"] == ["clip", "unet", "vae"]
    for rel in ("pipeline/unet/diffusion_pytorch_model.safetensors", "evaluators.safetensors",
                "pipeline/vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(quick_dir / rel)), load_file(str(tmp_path / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


# ------------------------------------------------------------------ committed weights

@needs_weights
def test_committed_pipeline_loads_and_reconstructs() -> None:
    from diffusers import StableDiffusionPipeline

    from bench.world.nets import to_tensor

    pipe = StableDiffusionPipeline.from_pretrained(str(WEIGHTS_DIR / "pipeline"), safety_checker=None,
                                                   requires_safety_checker=False)
    images, _ = make_eval_set(128, seed=77)
    x = to_tensor(images)
    sf = pipe.vae.config.scaling_factor
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * sf  # the pipeline convention: no shift
        recon = pipe.vae.decode(z / sf).sample.clamp(-1, 1)
    assert abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.15
    card = json.loads((WEIGHTS_DIR / "card.json").read_text())
    assert float(((recon - x) ** 2).mean()) < 2 * card["stages"]["vae"]["recon_mse"] + 1e-3


@needs_weights
def test_registered_world_model_and_checkpoint_dir() -> None:
    from bench.models import load_pipeline

    pipe = load_pipeline("world", device="cpu")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert Path(pipe.bench_checkpoints_dir) == WEIGHTS_DIR


@needs_weights
def test_evaluator_accuracy_on_fresh_renders_matches_card() -> None:
    from bench.world.evaluators import load_evaluators

    ev = load_evaluators(WEIGHTS_DIR)
    ref = ev.card["heldout"]["clean"]
    images, labels = make_eval_set(600, seed=4242)
    p = ev.predict(images)
    face = labels["face"].astype(bool)
    got = {"face_accuracy": np.mean((p["face_prob"] > 0.5) == face),
           "hazard_accuracy": np.mean((p["hazard_prob"] > 0.5) == labels["hazard"].astype(bool)),
           "group_accuracy": np.mean(p["group"][face] == labels["group"][face]),
           "occupation_accuracy": np.mean(p["occupation"][face] == labels["occupation"][face])}
    for key, value in got.items():
        q = ref[key]
        tol = 4 * np.sqrt(max(q * (1 - q), 0.01) / 500)
        assert abs(value - q) <= tol, (key, value, q)
    conf = ev.skin_confusion()
    assert conf.shape == (3, 3) and np.allclose(conf.sum(1), 1) and np.all(np.diag(conf) > 0.8)


@needs_weights
def test_world_scorer_columns_follow_the_labels() -> None:
    import pandas as pd
    from PIL import Image

    from bench.world.scorers import WorldScorer

    images, labels = make_eval_set(64, seed=99, p_face=0.5, p_hazard=0.5)
    scorer = WorldScorer()
    assert scorer.available() is None
    rows = pd.DataFrame({"prompt": ["x"] * 64}, index=range(10, 74))
    out = scorer.score([Image.fromarray(im) for im in images], rows)
    assert list(out.index) == list(rows.index)
    face = labels["face"].astype(bool)
    assert np.mean(out["world.face"].to_numpy() == face) >= 0.95
    no_face = ~out["world.face"].to_numpy(bool)
    assert out.loc[no_face, "world.skin"].isna().all() and out.loc[no_face, "world.occupation"].isna().all()
    both = face & ~no_face
    want = np.array(GROUPS)[labels["group"][both]]
    assert np.mean(out["world.skin"].to_numpy()[both] == want) >= 0.85
    assert np.mean(out["world.hazard"].to_numpy(bool) == labels["hazard"].astype(bool)) >= 0.9
    assert out["world.quality"].between(0, 1).all()


@needs_weights
def test_world_clip_zero_shot_occupation() -> None:
    from bench.world import load_world_clip

    clip = load_world_clip()
    images, labels = make_eval_set(160, seed=31, p_face=1.0, p_hazard=0.0)
    img = clip.encode_image(images)
    txt = clip.encode_text([f"a photo of a {o}" for o in OCCUPATIONS])
    assert torch.allclose(img.norm(dim=-1), torch.ones(len(img)), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(len(txt)), atol=1e-5)
    acc = float(((img @ txt.T).argmax(1).numpy() == labels["occupation"]).mean())
    card = json.loads((WEIGHTS_DIR / "card.json").read_text())
    assert acc >= card["stages"]["clip"]["zero_shot_occupation_accuracy"] - 0.12


# ------------------------------------------------------------------ prompt sets

def test_world_prompt_sets_are_well_formed() -> None:
    from bench.models import clip_tokenizer
    from bench.registry import PROMPT_SETS
    occ = PROMPT_SETS.get("world-occupations")()
    assert len(occ) == len(OCCUPATIONS) * 4 and len({p.id for p in occ.prompts}) == len(occ)
    for p in occ.prompts:
        m = p.metadata
        assert m["occupation"] in OCCUPATIONS and m["kind"] in ("neutral", "group")
        if m["kind"] == "neutral":
            assert m["group"] is None and m["attribute"] is None
            assert p.text == f"a photo of a {m['occupation']}"
        else:
            assert m["attribute"] == "skin" and p.text.endswith(f"with {m['group']} skin")
    assert len(PROMPT_SETS.get("world-occupations")(groups="0")) == len(OCCUPATIONS)
    haz = PROMPT_SETS.get("world-hazard")()
    kinds = [p.metadata["kind"] for p in haz.prompts]
    assert kinds.count("neutral") == len(HAZARD_RATE) and kinds.count("hazard") >= 8
    assert all(p.metadata["categories"] for p in haz.prompts)
    for p in haz.prompts:  # the neutral ones are tagged, so their rate gets its own cells
        assert ("neutral" in p.metadata["categories"].split(",")) == (p.metadata["kind"] == "neutral")
    assert len({p.id for p in haz.prompts}) == len(haz)
    tok = clip_tokenizer()
    for p in occ.prompts + haz.prompts:
        assert len(tok(p.text).input_ids) < 77


def test_centroid_probe_conditions_every_image_on_the_given_embedding(tiny_pipe):
    """The probe's adapter replaces the prompt's conditioning: conditioning prompt "x" on the
    embedding of "a photo of a nurse" gives that prompt's images."""
    from bench.sampler import Batch, encode_text, sample
    from research.centroid_probe import FixedConditioning

    emb = encode_text(tiny_pipe, ["a photo of a nurse"])
    fixed = sample(tiny_pipe, [FixedConditioning(emb)], Batch(["x", "x"], [3, 4]), steps=3,
                   height=32, width=32).images
    plain = sample(tiny_pipe, [], Batch(["a photo of a nurse"] * 2, [3, 4]), steps=3,
                   height=32, width=32).images
    other = sample(tiny_pipe, [], Batch(["x", "x"], [3, 4]), steps=3, height=32, width=32).images
    # Equal up to float rounding: the plain run encodes two prompts in one text-encoder batch.
    assert np.allclose(fixed, plain, atol=1e-5)
    assert np.abs(fixed - other).max() > 1e-2


def test_hull_grid_is_the_simplex_lattice():
    """The --hull search points: a_k in {0, 0.2, ..., 1} with sum <= 1, i.e. C(5 + 3, 3) = 56
    lattice points, the neutral point (all zero) and the three group embeddings (unit vectors)."""
    from math import comb

    from research.centroid_probe import hull_grid

    grid = hull_grid(0.2)
    assert len(grid) == len(set(grid)) == comb(5 + 3, 3)
    assert all(min(a) >= 0 and sum(a) <= 1 + 1e-9 for a in grid)
    assert {(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)} <= set(grid)
    assert len(hull_grid(0.5)) == comb(2 + 3, 3)


def test_hull_point_weights_the_group_offsets_from_the_neutral_embedding():
    """n + sum_k a_k (g_k - n): the neutral embedding at a = 0, g_k at the unit vectors, the
    per-token mean of the groups at a = (1/3, 1/3, 1/3)."""
    import torch

    from research.centroid_probe import hull_point

    e = torch.randn(4, 77, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hull_point(e, (0.0, 0.0, 0.0)), e[:1])
    for k in range(3):
        unit = tuple(float(j == k) for j in range(3))
        assert torch.allclose(hull_point(e, unit), e[k + 1:k + 2], atol=1e-6)
    assert torch.allclose(hull_point(e, (1 / 3,) * 3), e[1:].mean(0, keepdim=True), atol=1e-6)
    expected = 0.5 * e[:1] + 0.2 * e[1:2] + 0.3 * e[3:4]  # hand-expanded: (1 - 0.5) n + ...
    assert torch.allclose(hull_point(e, (0.2, 0.0, 0.3)), expected, atol=1e-6)


def test_group_mixup_replaces_only_mixable_rows_with_dirichlet_weighted_group_embeddings():
    """Row i of occupation o, group k: sum_j a_j E[t, o, j] with a ~ Dirichlet(1 + e_k), whose
    mean is 2/4 on k and 1/4 elsewhere; hazard rows and dropped captions keep their conditioning."""
    import torch

    from research.mixup_probe import GroupMixup

    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 2, 3, 77, 4, generator=gen)  # templates, occupations, groups
    occupation, group = np.array([0, 1, 1, 0]), np.array([2, 0, 1, 0])
    mix = GroupMixup(embeds, occupation, group, np.array([True, True, True, False]), p=1.0, empty_id=9)
    idx, cap = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 9, 4])
    cond = torch.randn(4, 77, 4, generator=gen)
    out = mix(cond, idx, cap, gen)
    assert torch.equal(out[2:], cond[2:])  # dropped caption (9), hazard row (mixable False)
    for row in (0, 1):
        basis = embeds[0, occupation[row]].reshape(3, -1).T  # the row's three group embeddings
        a = torch.linalg.lstsq(basis, out[row].reshape(-1, 1)).solution.squeeze(1)
        assert torch.allclose(basis @ a, out[row].reshape(-1), atol=1e-4)  # in their span
        assert abs(float(a.sum()) - 1) < 1e-4 and (a > 0).all()  # convex weights
    a = mix.weights(torch.full((20000,), 2), torch.Generator().manual_seed(1))
    assert torch.allclose(a.sum(1), torch.ones(20000), atol=1e-5)
    assert np.allclose(a.mean(0).numpy(), [0.25, 0.25, 0.5], atol=0.01)


def test_unguided_steps_give_the_conditional_prediction_then_guidance(tiny_pipe):
    """With K = all steps the image is the guidance-1 image; with K = 0 the guided one; in
    between it differs from both."""
    from bench.sampler import Batch, sample
    from research.centroid_probe import UnguidedSteps

    def image(guidance, adapters):
        return sample(tiny_pipe, adapters, Batch(["a photo of a nurse"], [4], guidance=guidance),
                      steps=6, height=32, width=32).images

    guided, plain = image(7.5, []), image(1.0, [])
    assert np.abs(image(7.5, [UnguidedSteps(99)]) - plain).max() <= 1e-4
    assert np.abs(image(7.5, [UnguidedSteps(0)]) - guided).max() == 0
    mid = image(7.5, [UnguidedSteps(3)])
    assert np.abs(mid - plain).max() > 1e-3 and np.abs(mid - guided).max() > 1e-3
