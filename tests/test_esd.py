"""ESD: the loss and target against the paper's formula on a fixed batch, x_t against diffusers'
own DDIM generation stopped at step k, the official parameter selection, the checkpoint round
trip with a bit-exact restore, and the world's shipped checkpoint."""
import copy
import hashlib
import json

import numpy as np
import pytest
import torch

from bench.methods.checkpoints import CheckpointError
from bench.methods.esd import ESD, ESDParams, trainable
from bench.methods.esd_train import ESDConfig, ddim, esd_loss, main as train_main, partial_latents, train
from bench.sampler import Batch, encode_text, sample


def unet_eps(unet, x, t, embeds):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=embeds).sample.double().numpy()


def test_loss_and_target_equal_the_papers_formula(tiny_pipe):
    """eps* = eps(x_t, t) - eta [eps(x_t, c, t) - eps(x_t, t)] from the frozen UNet, the loss the
    mean squared error of the trained UNet's eps(x_t, c, t) to it (numpy, float64)."""
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    t = torch.tensor(501)
    cond, uncond = encode_text(tiny_pipe, ["nudity"]), encode_text(tiny_pipe, [""])
    trained = copy.deepcopy(tiny_pipe.unet)
    with torch.no_grad():  # a model that differs from the frozen one, as during training
        for p in trainable(trained, "x").values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    eta = 1.7
    loss, target = esd_loss(trained, tiny_pipe.unet, x_t, t, cond, uncond, eta)

    e_c, e_u = unet_eps(tiny_pipe.unet, x_t, t, cond), unet_eps(tiny_pipe.unet, x_t, t, uncond)
    ref_target = e_u - eta * (e_c - e_u)
    ref_loss = np.mean((unet_eps(trained, x_t, t, cond) - ref_target) ** 2)
    assert np.abs(target.double().numpy() - ref_target).max() < 1e-5
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert ref_loss > 1e-4  # a real difference between the models
    assert loss.requires_grad  # gradients reach the trained UNet only
    loss.backward()
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())


def test_partial_generation_equals_diffusers_ddim_stopped_at_step_k(tiny_pipe):
    """x_t: the concept generated with CFG for the first k DDIM steps, as the official code's
    pipeline call with run_till_timestep=k; here diffusers' own pipeline, read after step k."""
    from diffusers import StableDiffusionPipeline

    steps, k, guidance = 10, 4, 3.0
    sched = ddim(tiny_pipe, steps)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    cond, uncond = encode_text(tiny_pipe, ["nudity"]), encode_text(tiny_pipe, [""])
    ours = partial_latents(tiny_pipe.unet, sched, k, cond, uncond, guidance, noise)

    seen = {}

    def grab(pipe, i, t, kw):
        seen[i] = kw["latents"].clone()
        return kw

    pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "scheduler": ddim(tiny_pipe, steps)})
    pipe.set_progress_bar_config(disable=True)
    pipe("nudity", num_inference_steps=steps, guidance_scale=guidance, latents=noise.clone(),
         height=32, width=32, output_type="latent", callback_on_step_end=grab)
    assert torch.abs(ours - seen[k - 1]).max() < 1e-5
    assert torch.equal(partial_latents(tiny_pipe.unet, sched, 0, cond, uncond, guidance, noise), noise)


def test_parameter_selection_is_the_official_rule(tiny_pipe):
    names = [n for n, _ in tiny_pipe.unet.named_parameters()]
    x, u = set(trainable(tiny_pipe.unet, "x")), set(trainable(tiny_pipe.unet, "u"))
    assert x == {n for n in names if ".attn2." in n}
    assert {n.split(".attn2.")[1] for n in x} == {"to_q.weight", "to_k.weight", "to_v.weight",
                                                  "to_out.0.weight", "to_out.0.bias"}
    left = set(names) - x - u  # ESD-u leaves cross-attention, time embedding and output layers
    assert left - x == {n for n in names if n.split(".")[0] in ("time_embedding", "conv_norm_out",
                                                                  "conv_out")}
    assert "conv_in.weight" in u and any(".attn1." in n for n in u) and not x & u
    with pytest.raises(ValueError, match="choose x"):
        trainable(tiny_pipe.unet, "a")


def checksums(module):
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
            for k, v in module.state_dict().items()}


def test_one_adam_step_moves_only_the_variants_parameters_by_lr(tiny_pipe):
    """Adam's first step moves each parameter by lr |g| / (|g| + 1e-8) <= lr (m / sqrt(v) =
    sign g after bias correction): at most lr, and lr wherever the gradient is not tiny."""
    before = checksums(tiny_pipe.unet)
    for variant in ("x", "u"):
        deltas, losses = train(tiny_pipe, ESDConfig("nudity", variant, iterations=1, lr=1e-3,
                                                    ddim_steps=4), log_every=0)
        assert set(deltas) == set(trainable(tiny_pipe.unet, variant)) and len(losses) == 1
        moved = torch.cat([d.abs().flatten() for d in deltas.values()])
        assert moved.max() == pytest.approx(1e-3, rel=1e-3) and moved.max() <= 1e-3 * (1 + 1e-4)
    assert checksums(tiny_pipe.unet) == before  # the pipeline's UNet is the frozen model


def test_checkpoint_applies_and_restores_bit_exactly(tiny_pipe, tmp_path, monkeypatch):
    import bench.models

    monkeypatch.setattr(bench.models, "load_pipeline", lambda *a, **k: tiny_pipe)
    out = tmp_path / "esd"
    from bench.cli import main

    assert main(["train", "esd", "--model", "tiny-random", "--concept", "a cat", "--iterations", "3",
                 "--lr", "1e-3", "--ddim-steps", "4", "--eta", "2", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert {k: card[k] for k in ("method", "concept", "variant", "eta", "iterations", "lr")} == {
        "method": "esd", "concept": "a cat", "variant": "x", "eta": 2.0, "iterations": 3, "lr": 1e-3}
    assert card["model_fingerprint"] == bench.models.fingerprint(tiny_pipe)
    from safetensors.torch import load_file
    deltas = load_file(str(out / "delta.safetensors"))
    before = checksums(tiny_pipe.unet)
    original = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    batch = Batch(["a cat"], [3])
    plain = sample(tiny_pipe, [], batch, steps=4, height=32, width=32).images
    ad = ESD(ESDParams(checkpoint=str(out)))
    assert ad.skip_reason(tiny_pipe) is None
    ad.prepare(tiny_pipe)
    for n, p in tiny_pipe.unet.named_parameters():  # W_old + delta on the trained tensors only
        expected = original[n] + deltas[n] if n in deltas else original[n]
        assert torch.allclose(p, expected, atol=1e-7, rtol=0), n
    edited = sample(tiny_pipe, [ad], batch, steps=4, height=32, width=32).images
    ad.release(tiny_pipe)
    assert np.abs(edited - plain).max() > 1e-4
    assert checksums(tiny_pipe.unet) == before
    assert ESD().skip_reason(tiny_pipe).startswith("the model ships no esd checkpoint")


def test_bad_checkpoint_and_parameters_fail_in_one_line(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "card.json").write_text(json.dumps({"method": "esd"}))
    save_file({"conv_in.weight": torch.zeros(1, 1)}, tmp_path / "delta.safetensors")
    with pytest.raises(CheckpointError, match="another model"):
        ESD(ESDParams(checkpoint=str(tmp_path))).skip_reason(tiny_pipe)
    with pytest.raises(ValueError, match="esd:scale"):
        ESD.from_strings({"scale": "-1"})
    with pytest.raises(SystemExit):
        train_main(["--model", "tiny-random", "--concept", "x", "--variant", "a", "--out", "o"])


def test_world_ships_its_hazard_checkpoint_for_this_world():
    """`--methods all` on the world runs esd: the shipped esd-hazard/ was trained from this
    world's UNet (ESD-x: the cross-attention deltas only)."""
    from bench.models import fingerprint, load_pipeline

    pipe = load_pipeline("world", "cpu")
    ad = ESD()
    assert ad.skip_reason(pipe) is None
    path, card = ad.load_card(pipe)
    assert path.name == "esd-hazard" and card["model_fingerprint"] == fingerprint(pipe)
    assert card["variant"] == "x" and (path / "delta.safetensors").stat().st_size < 400_000
    assert ad.warnings(pipe, fingerprint(pipe), [7.5], 25) == []
