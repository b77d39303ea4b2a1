"""The released-weights adapter: bit-exact restore, diffusers' own LoRA loading, bad files."""
import hashlib
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.models import load_pipeline
from bench.sampler import Batch, sample
from bench.methods.checkpoints import CheckpointError
from bench.methods.weights import PRESETS, Weights, WeightsParams


def checksums(pipe):
    return {f"{c}.{k}": hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest()
            for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}


def run(pipe, adapters, prompts=("a photo of a doctor", "a nurse"), seeds=(3, 4)):
    for a in adapters:
        a.prepare(pipe)
    try:
        return sample(pipe, adapters, Batch(list(prompts), list(seeds)), steps=5, height=32,
                      width=32).images
    finally:
        for a in adapters:
            a.release(pipe)


def test_unet_state_dict_applied_then_restored_bit_exactly(tiny_pipe, tmp_path):
    before = checksums(tiny_pipe)
    plain = run(tiny_pipe, [])
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in tiny_pipe.unet.state_dict().items()
          if "attn2" in k}  # a partial dict, as ESD-x saves
    save_file(sd, tmp_path / "esd.safetensors")
    torch.save({"unet." + k: v for k, v in sd.items()}, tmp_path / "esd.pt")  # prefixed keys
    for name in ("esd.safetensors", "esd.pt"):
        w = Weights.from_strings({"unet": str(tmp_path / name)})
        assert w.skip_reason(tiny_pipe) is None
        w.prepare(tiny_pipe)
        live = tiny_pipe.unet.state_dict()
        assert all(torch.equal(live[k], v) for k, v in sd.items())
        w.release(tiny_pipe)
        assert checksums(tiny_pipe) == before  # every tensor, bit for bit
    edited = run(tiny_pipe, [Weights.from_strings({"unet": str(tmp_path / "esd.pt")})])
    assert np.abs(edited - plain).max() > 1e-3  # the weights did act
    assert np.array_equal(run(tiny_pipe, []), plain)  # and are gone afterwards


def lora_layers(module, suffixes, r, gen):
    """peft's layout, as diffusers saves it: <module>.lora_A.weight (r, in), lora_B.weight (out, r)."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(suffixes):
            out[f"{name}.lora_A.weight"] = 0.1 * torch.randn(r, m.in_features, generator=gen)
            out[f"{name}.lora_B.weight"] = 0.1 * torch.randn(m.out_features, r, generator=gen)
    return out


@pytest.mark.parametrize("alpha", [None, 16])
def test_lora_equals_diffusers_load_lora_weights(tiny_pipe, tmp_path, alpha):
    from diffusers import StableDiffusionPipeline

    gen = torch.Generator().manual_seed(0)
    unet = lora_layers(tiny_pipe.unet, ("to_q", "to_k", "to_v", "to_out.0"), 4, gen)
    text = lora_layers(tiny_pipe.text_encoder, ("q_proj", "v_proj"), 2, gen)
    meta = {}
    if alpha:  # peft LoraConfig fields, as diffusers writes them into the safetensors metadata
        meta = {"unet_lora_adapter_metadata": {"r": 4, "lora_alpha": alpha,
                                               "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
                "text_encoder_lora_adapter_metadata": {"r": 2, "lora_alpha": alpha,
                                                       "target_modules": ["q_proj", "v_proj"]}}
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet,
                                              text_encoder_lora_layers=text, **meta)
    path = tmp_path / "pytorch_lora_weights.safetensors"

    ref_pipe = load_pipeline("tiny-random", "cpu")
    ref_pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    ref = sample(ref_pipe, [], Batch(["a photo of a doctor", "a nurse"], [3, 4]), steps=5,
                 height=32, width=32).images
    before = checksums(tiny_pipe)
    ours = run(tiny_pipe, [Weights(WeightsParams(lora=str(path)))])
    plain = run(tiny_pipe, [])
    assert np.abs(ref - plain).max() > 1e-3  # the LoRA changes the images
    assert np.abs(ours - ref).max() <= 1e-5
    assert checksums(tiny_pipe) == before


def test_bad_files_fail_in_one_line(tiny_pipe, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CheckpointError, match="evil.pt: not a readable weights file"):
        Weights.from_strings({"unet": str(tmp_path / "evil.pt")})
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable"):
        Weights.from_strings({"text_encoder": str(tmp_path / "junk.safetensors")})
    with pytest.raises(CheckpointError, match="does not exist"):
        Weights.from_strings({"unet": str(tmp_path / "absent.safetensors")})
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)},
              tmp_path / "compvis.safetensors")
    w = Weights.from_strings({"unet": str(tmp_path / "compvis.safetensors")})
    with pytest.raises(CheckpointError, match="not unet keys"):
        w.skip_reason(tiny_pipe)
    key = next(iter(tiny_pipe.unet.state_dict()))
    save_file({key: torch.zeros(3, 3, 3)}, tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match="has shape"):
        Weights.from_strings({"unet": str(tmp_path / "shape.safetensors")}).skip_reason(tiny_pipe)
    save_file({key: torch.full_like(tiny_pipe.unet.state_dict()[key], float("nan"))},
              tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        Weights.from_strings({"unet": str(tmp_path / "nan.safetensors")})
    with pytest.raises(ValueError, match="lora_scale"):
        Weights.from_strings({"lora_scale": "-1"})
    with pytest.raises(ValueError, match="preset"):
        Weights.from_strings({"preset": "nope"})


def test_missing_preset_is_a_skip_with_the_download_hint(tiny_pipe, tmp_path):
    w = Weights.from_strings({"preset": "advunlearn-nudity", "dir": str(tmp_path)})
    reason = w.skip_reason(tiny_pipe)
    assert "OPTML-Group/AdvUnlearn" in reason and str(tmp_path) in reason
    assert "no weights given" in Weights().skip_reason(tiny_pipe)
    assert all(p.component in ("unet", "text_encoder", "lora") for p in PRESETS.values())
