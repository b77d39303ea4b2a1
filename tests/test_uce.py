"""UCE: the edit against an independent numpy float64 closed form, the checkpoint round trip,
bit-exact restore, and the debias loop's alpha update."""
import hashlib
import json

import numpy as np
import pytest
import torch

from bench.sampler import Batch, sample
from bench.methods.checkpoints import CheckpointError
from bench.methods.uce import UCE, UCEParams, projections
from bench.methods.uce_train import debias_edit, erase_edit, main as train_main


def numpy_embeddings(pipe, texts):
    """Last word token of each text, computed with numpy indexing from the tokenizer's ids."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="np").input_ids
    eos = pipe.tokenizer.eos_token_id
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.as_tensor(ids))[0].double().numpy()
    out = []
    for row, h in zip(ids, hidden):
        end = int(np.argmax(row == eos))  # first end token; the word before it is the concept's last
        out.append(h[end - 1])
    return np.stack(out)


def numpy_uce(w_old, c_edit, v_target, c_keep, lam):
    """W = (sum v c^T + lam W_old + sum W_old c_j c_j^T)(sum c c^T + lam I + sum c_j c_j^T)^-1."""
    m1 = lam * w_old + sum(np.outer(v, c) for v, c in zip(v_target, c_edit))
    m2 = lam * np.eye(w_old.shape[1]) + sum(np.outer(c, c) for c in c_edit)
    for c in c_keep:
        m1 = m1 + np.outer(w_old @ c, c)
        m2 = m2 + np.outer(c, c)
    return m1 @ np.linalg.inv(m2)


def test_erase_equals_numpy_closed_form(tiny_pipe):
    concepts, guides = ["a cat", "nudity"], ["a dog", ""]
    keep = ["a photo of a doctor", "a tree"]
    deltas = erase_edit(tiny_pipe, concepts, guides, keep, lam=0.5)
    c, g, k = (numpy_embeddings(tiny_pipe, t) for t in (concepts, guides, keep))
    mods = projections(tiny_pipe.unet)
    assert len(mods) == len(deltas) > 0 and all("attn2" in n for n in mods)
    for name, m in mods.items():
        w_old = m.weight.detach().double().numpy()
        ref = numpy_uce(w_old, c, g @ w_old.T, k, 0.5)
        ours = w_old + deltas[f"{name}.weight"].double().numpy()
        assert np.abs(ours - ref).max() <= 1e-5
        assert np.abs(ref - w_old).max() > 1e-3  # a real edit
        # the defining property: the edited concept now answers like its guide
        assert np.abs(ref @ c[0] - w_old @ g[0]).max() < np.abs(w_old @ c[0] - w_old @ g[0]).max()


def test_debias_target_equals_numpy(tiny_pipe):
    concepts = ["a photo of a doctor", "a photo of a nurse"]
    groups = [["a photo of a male doctor", "a photo of a female doctor"],
              ["a photo of a male nurse", "a photo of a female nurse"]]
    alpha = np.array([[0.3, -0.1], [0.0, 0.25]])
    deltas = debias_edit(tiny_pipe, concepts, groups, alpha, ["a tree"], lam=0.5)
    c = numpy_embeddings(tiny_pipe, concepts)
    cg = numpy_embeddings(tiny_pipe, [t for r in groups for t in r]).reshape(2, 2, -1)
    k = numpy_embeddings(tiny_pipe, ["a tree"])
    for name, m in projections(tiny_pipe.unet).items():
        w = m.weight.detach().double().numpy()
        v = np.stack([w @ c[i] + sum(alpha[i, j] * (w @ cg[i, j]) for j in range(2)) for i in range(2)])
        ref = numpy_uce(w, c, v, k, 0.5)
        assert np.abs(w + deltas[f"{name}.weight"].double().numpy() - ref).max() <= 1e-5


def checksums(module):
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
            for k, v in module.state_dict().items()}


def test_checkpoint_applies_and_restores_bit_exactly(tiny_pipe, tmp_path, monkeypatch):
    import bench.models

    monkeypatch.setattr(bench.models, "load_pipeline", lambda *a, **k: tiny_pipe)
    out = tmp_path / "uce"
    assert train_main(["--mode", "erase", "--model", "tiny-random", "--concepts", "a cat;nudity",
                       "--preserve", "a photo of a doctor", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["method"] == "uce" and card["model_fingerprint"]
    before = checksums(tiny_pipe.unet)
    batch = Batch(["a cat"], [3])
    plain = sample(tiny_pipe, [], batch, steps=4, height=32, width=32).images
    ad = UCE(UCEParams(checkpoint=str(out)))
    assert ad.skip_reason(tiny_pipe) is None
    ad.prepare(tiny_pipe)
    edited = sample(tiny_pipe, [ad], batch, steps=4, height=32, width=32).images
    ad.release(tiny_pipe)
    assert np.abs(edited - plain).max() > 1e-3
    assert checksums(tiny_pipe.unet) == before
    assert UCE().skip_reason(tiny_pipe).startswith("the model ships no uce checkpoint")


def test_bad_checkpoint_fails_at_planning(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "card.json").write_text(json.dumps({"method": "uce"}))
    save_file({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(1, 1)},
              tmp_path / "delta.safetensors")
    with pytest.raises(CheckpointError, match="another model"):
        UCE(UCEParams(checkpoint=str(tmp_path))).skip_reason(tiny_pipe)
    with pytest.raises(ValueError, match="uce:scale"):
        UCE.from_strings({"scale": "-1"})


def test_world_ships_its_hazard_checkpoint_for_this_world():
    """`--methods all` on the world runs uce: the shipped uce-hazard/ edits this world's UNet
    (rebuilding the world without retraining it would be a fingerprint warning, caught here)."""
    from bench.models import fingerprint, load_pipeline

    pipe = load_pipeline("world", "cpu")
    ad = UCE()
    assert ad.skip_reason(pipe) is None
    path, card = ad.load_card(pipe)
    assert path.name == "uce-hazard" and card["model_fingerprint"] == fingerprint(pipe)
    assert (path / "delta.safetensors").stat().st_size < 200_000  # deltas of 14 projections only
    assert ad.warnings(pipe, fingerprint(pipe), [7.5], 25) == []


def test_debias_loop_accumulates_the_share_gaps(tiny_pipe, monkeypatch):
    """alpha += step * (desired - generated) per occupation, an occupation within max_diff
    keeping its alpha, stopping once all are balanced (the official loop)."""
    import bench.methods.uce_train as ut

    draws = iter([np.array([[0.9, 0.1], [0.52, 0.48]]), np.array([[0.7, 0.3], [0.5, 0.5]]),
                  np.array([[0.5, 0.5], [0.5, 0.5]])])
    monkeypatch.setattr(ut, "generated_shares", lambda *a, **k: next(draws))
    _, info = ut.debias(tiny_pipe, ["doctor", "nurse"], "gender", lambda x: [], iterations=10,
                        images=2, steps=2, guidance=7.5, max_diff=0.05, lam=0.5, seed=0,
                        preserve=[], step_size=0.5)
    assert len(info["history"]) == 3
    np.testing.assert_allclose(info["alpha"], [[-0.2 - 0.1, 0.2 + 0.1], [0.0, 0.0]])
