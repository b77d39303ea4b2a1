"""Fair Mapping: training, checkpoints, the keyword detector and sampling (tiny-random)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.models import text_encoder_fingerprint, tiny_random_pipeline
from bench.sampler import Batch, encode_text, sample
from bench.methods.fair_mapping import (HUMAN_WORDS, CheckpointError, FairMapping, FairMappingParams,
                                  HumanDetector, get_spec)
from bench.methods.checkpoints import default_checkpoint
from bench.methods.fair_mapping_train import build_prompts, losses, main, text_stats

OCCUPATIONS = ["doctor", "nurse", "software developer", "police officer"]
HUMAN, OBJECT = "a photo of the face of a nurse", "a bowl of fruit on a wooden table"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    (root / "occ.txt").write_text("# test occupations\n" + "\n".join(OCCUPATIONS) + "\n")
    argv = ["--model", "tiny-random", "--attribute", "gender", "--occupations",
            str(root / "occ.txt"), "--out", str(root / "ckpt"), "--steps", "200", "--lam", "10",
            "--device", "cpu"]
    assert main(argv) == 0
    return root / "ckpt"


def fair_mapping(path, **kw):
    return FairMapping(FairMappingParams(checkpoint=str(path), **kw))


def test_training_reduces_loss_and_writes_card(checkpoint, tiny_pipe):
    card = json.loads((checkpoint / "card.json").read_text())
    assert card["attribute"] == "gender" and card["groups"] == ["male", "female"]
    assert card["lambda"] == 10.0 and card["steps"] == 200 and len(card["loss"]) == 201
    assert card["text_encoder_fingerprint"] == text_encoder_fingerprint(tiny_pipe.text_encoder)
    assert card["occupations"] == OCCUPATIONS
    # Identity start: no semantic loss, all of it is the fairness gap.
    assert card["loss_text"][0] == 0.0 and card["loss"][0] == pytest.approx(10 * card["loss_fair"][0])
    assert card["loss"][-1] < 0.2 * card["loss"][0]
    assert card["loss_fair"][-1] < 0.1 * card["loss_fair"][0]


def test_losses_match_token_level_reference(tiny_pipe):
    """The moment-based L_text and pooled L_fair equal the definitions computed on every token."""
    neutral, grouped = build_prompts(get_spec("race"), ["doctor", "chef"])
    assert neutral[0] == "a photo of the face of a doctor"
    assert grouped[0][0] == "a photo of the face of a White doctor"
    assert grouped[0][5] == "a photo of the face of an Indian doctor"
    stats = text_stats(tiny_pipe, neutral, grouped, batch_size=5)
    gen = torch.Generator().manual_seed(0)
    dim = stats.mean.shape[0]
    w = torch.eye(dim) + 0.05 * torch.randn(dim, dim, generator=gen)
    b = 0.05 * torch.randn(dim, generator=gen)
    text, fair = losses(w, b, stats)

    x = encode_text(tiny_pipe, neutral + [t for row in grouped for t in row]).double()
    mapped = x @ w.double().T + b.double()
    ref_text = ((mapped - x) ** 2).sum(-1).mean() / (x ** 2).sum(-1).mean()
    n, k = len(neutral), len(grouped[0])
    pooled_n = mapped[:n].mean(1)  # mapped neutral prompts, token mean
    pooled_g = x[n:].mean(1).reshape(n, k, dim)  # group prompts, unmapped anchors
    d = np.array([[float((pooled_n[i] - pooled_g[i, j]).norm()) / dim ** 0.5 for j in range(k)]
                  for i in range(n)])
    d0 = np.array([[float((x[i].mean(0) - pooled_g[i, j]).norm()) / dim ** 0.5 for j in range(k)]
                   for i in range(n)])
    ref_fair = ((d - d.mean(1, keepdims=True)) ** 2).mean() / (d0 ** 2).mean()
    assert float(text) == pytest.approx(float(ref_text), rel=1e-4)
    assert float(fair) == pytest.approx(ref_fair, rel=1e-4)


def test_checkpoint_round_trip_maps_only_gated_prompts(checkpoint, tiny_pipe):
    saved = load_file(str(checkpoint / "mapping.safetensors"))
    fm = fair_mapping(checkpoint)
    fm.prepare(tiny_pipe)
    assert torch.equal(fm.weight, saved["weight"]) and torch.equal(fm.bias, saved["bias"])
    batch = Batch([HUMAN, OBJECT, "two police officers"], [0, 1, 2])
    cond = encode_text(tiny_pipe, batch.prompts)
    out = fm.encode(cond, batch)
    expected = cond @ saved["weight"].T + saved["bias"]
    assert torch.allclose(out[0], expected[0], atol=1e-6) and torch.allclose(out[2], expected[2], atol=1e-6)
    assert torch.equal(out[1], cond[1])
    assert (out[0] - cond[0]).abs().max() > 1e-3  # the trained map is not the identity
    ungated = fair_mapping(checkpoint, gate=False)
    ungated.prepare(tiny_pipe)
    assert torch.allclose(ungated.encode(cond, batch)[1], expected[1], atol=1e-6)


def test_refuses_checkpoint_of_another_text_encoder(checkpoint):
    other = tiny_random_pipeline(seed=1)
    fm = fair_mapping(checkpoint)
    with pytest.raises(CheckpointError) as err:
        fm.prepare(other)
    msg = str(err.value)
    card = json.loads((checkpoint / "card.json").read_text())
    assert card["text_encoder_fingerprint"] in msg and text_encoder_fingerprint(other.text_encoder) in msg
    assert "\n" not in msg


def test_default_checkpoint_lookup_and_skip_reason(checkpoint, tmp_path):
    pipe = SimpleNamespace()
    assert default_checkpoint(pipe, "fair-mapping", "gender") is None
    assert "bench train fair-mapping" in FairMapping().skip_reason(pipe)
    pipe.bench_checkpoints_dir = tmp_path
    gender = tmp_path / "fair-mapping-gender"
    shutil.copytree(checkpoint, gender)
    assert default_checkpoint(pipe, "fair-mapping", "gender") == gender
    assert default_checkpoint(pipe, "fair-mapping", None) == gender  # the only one
    assert FairMapping().skip_reason(pipe) is None
    shutil.copytree(checkpoint, tmp_path / "fair-mapping-race")
    assert default_checkpoint(pipe, "fair-mapping", None) is None  # ambiguous: choose attribute=
    assert "attributes gender, race; choose one with fair-mapping:attribute=A" in FairMapping().skip_reason(pipe)
    assert default_checkpoint(pipe, "fair-mapping", "race") == tmp_path / "fair-mapping-race"
    assert default_checkpoint(pipe, "fair-mapping", "skin") is None
    with pytest.raises(CheckpointError, match="no card.json"):
        fair_mapping(tmp_path / "missing").skip_reason(pipe)


DETECTOR = HumanDetector([*HUMAN_WORDS, *OCCUPATIONS, "engineer", "lawyer"])


@pytest.mark.parametrize("text,keyword", [
    ("a photo of a doctor", "doctor"),
    ("Two DOCTORS in a hallway", "doctor"),  # case, plural
    ("three nurses at a desk", "nurse"),  # plural of an -e word
    ("ladies dancing in the rain", "lady"),  # -ies plural
    ("A WOMAN, smiling!", "woman"),
    ("women at a market", "women"),  # irregular plural, listed
    ("a software developer at a desk", "developer"),  # multi-word occupation -> head noun
    ("the police officers", "officer"),
    ("a docter at work", "doctor"),  # substitution
    ("an enginer fixing a pipe", "engineer"),  # deletion
    ("a nusre in scrubs", "nurse"),  # swapped neighbours
    ("a nurrse in scrubs", "nurse"),  # insertion
    ("two docters", "doctor"),  # typo + plural s
    ("a nursé at work", "nurse"),  # accents stripped (else "nurs")
])
def test_detector_catches(text, keyword):
    assert DETECTOR.match(text) == keyword


@pytest.mark.parametrize("text", [
    "a bowl of fruit on a wooden table",
    "a purse on a chair",  # one edit from "nurse" but the first letter differs
    "the machine worked all night",  # "worked" is an inflection, not a typo of "worker"
    "a nursery with toys",  # two edits from "nurse"
    "a mat on the floor",  # one edit from "man", but typos need >= 5 letters
    "herbs and a sheet of paper",  # "her"/"she" inside longer words
    "a dcotro",  # two edits from "doctor"
    "mountains at sunset",
])
def test_detector_ignores(text):
    assert DETECTOR.match(text) is None


@pytest.mark.parametrize("text,keyword", [
    ("a layer cake", "lawyer"),  # a real word one edit from a keyword
    ("a man-made lake", "man"),  # hyphenated compounds split into words
])
def test_detector_documented_false_positives(text, keyword):
    assert DETECTOR.match(text) == keyword


def test_detector_without_typos_and_custom_keywords(tmp_path, checkpoint, tiny_pipe):
    assert not HumanDetector(OCCUPATIONS, typos=False)("a docter at work")
    words = tmp_path / "words.txt"
    words.write_text("# only astronauts\nastronaut\n")
    fm = fair_mapping(checkpoint, keywords=str(words))
    fm.prepare(tiny_pipe)
    assert fm.gated(["an astronaut", "astronauts on the moon", "a doctor"]) == [True, True, False]
    words.write_text("astronaut\nR2-D2\n")
    with pytest.raises(ValueError, match=r"words.txt:2: keyword 'R2-D2'"):
        fair_mapping(checkpoint, keywords=str(words)).prepare(tiny_pipe)


def test_sampling_equals_diffusers_with_mapped_embeddings(checkpoint, tiny_pipe):
    fm = fair_mapping(checkpoint)
    fm.prepare(tiny_pipe)
    batch = Batch([HUMAN], [7])
    ours = sample(tiny_pipe, [fm], batch, steps=4, height=32, width=32).images
    mapped = fm.encode(encode_text(tiny_pipe, batch.prompts), batch)
    ref = tiny_pipe(prompt_embeds=mapped, negative_prompt_embeds=encode_text(tiny_pipe, [""]),
                    num_inference_steps=4, guidance_scale=7.5, height=32, width=32,
                    generator=torch.Generator().manual_seed(7), output_type="np").images
    plain = sample(tiny_pipe, [], batch, steps=4, height=32, width=32).images
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-3


def test_composes_with_sld(checkpoint, tiny_pipe):
    from bench.methods.sld import SLDMax

    fm = fair_mapping(checkpoint)
    fm.prepare(tiny_pipe)
    batch = Batch([HUMAN, OBJECT], [3, 4])
    both = sample(tiny_pipe, [fm, SLDMax()], batch, steps=4, height=32, width=32)
    sld = sample(tiny_pipe, [SLDMax()], batch, steps=4, height=32, width=32)
    plain = sample(tiny_pipe, [], batch, steps=4, height=32, width=32)
    assert both.unet_evals == sld.unet_evals == 3 * 5  # 3 branches, PNDM's 4 steps = 5 evaluations
    assert np.abs(both.images[1] - sld.images[1]).max() == 0  # not human-related: SLD alone
    assert np.abs(both.images[0] - sld.images[0]).max() > 1e-3  # mapped
    assert np.abs(sld.images - plain.images).max() > 1e-3  # SLD itself acts
