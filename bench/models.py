"""Model loading: aliases, hub ids, local diffusers directories, and offline tiny models.

`load_pipeline(name)` returns a diffusers `StableDiffusionPipeline` on the chosen device. The
sampler only uses its unet, vae, text_encoder, tokenizer and scheduler.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from bench.registry import MODELS


class ModelError(RuntimeError):
    pass


# alias -> hub id. sd14 is the model the I2P paper evaluated.
ALIASES: dict[str, str] = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
}

# Models built in code rather than loaded by id; registered lazily like every other entry.
MODELS.register("tiny-random", "bench.models:tiny_random_pipeline")


def resolve_device(device: str | None) -> torch.device:
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: torch.cuda.is_available() is False here (no GPU, driver "
                         f"or CUDA build of torch {torch.__version__}); omit --device to run on the CPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def load_pipeline(name: str, device: str | None = None) -> Any:
    """Load `name`: a registered model, an alias, a local diffusers directory or a hub id."""
    dev = resolve_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if name in MODELS:
        pipe = MODELS.get(name)()
    else:
        pipe = _from_pretrained(ALIASES.get(name, name), dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(dev)
    return pipe if pipe.unet.dtype == dtype else pipe.to(dtype=dtype)


def _from_pretrained(source: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline

    local = Path(source).expanduser()
    if local.exists() and not (local / "model_index.json").exists():
        raise ModelError(f"{local} is not a diffusers pipeline directory (no model_index.json)")
    if not local.exists() and source.startswith((".", "/", "~")):  # a path, not a hub id
        raise ModelError(f"model directory {source} does not exist; pass a diffusers pipeline "
                         f"directory, a hub id or an alias ({', '.join(ALIASES)}, world)")
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(local) if local.exists() else source, torch_dtype=dtype,
            safety_checker=None, requires_safety_checker=False, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(
            f"cannot load model '{source}': weights not found locally and the hub is unreachable "
            f"or the id is wrong. Download them with `huggingface-cli download {source}` "
            f"(or pass a local diffusers directory). Cause: {str(exc).splitlines()[0]}") from exc


def fingerprint(pipe: Any) -> str:
    """A short stable hash of the pipeline's weights and configs: two runs share cached images
    only when this matches. Hashes every tensor's bytes for small models, and shapes plus a
    strided sample of values for large ones (hashing 1 GB of SD weights takes seconds)."""
    h = hashlib.sha256()
    for part in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, part)
        h.update(json.dumps(_config_dict(module), sort_keys=True, default=str).encode())
        for key, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().float().flatten().cpu()
            if flat.numel() > 4096:
                flat = flat[:: max(1, flat.numel() // 4096)]
            h.update(key.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(flat.numpy().tobytes())
    h.update(json.dumps(_config_dict(pipe.scheduler), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _config_dict(obj: Any) -> dict[str, Any]:
    config = obj.config
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # "_"-keys are bookkeeping (diffusers stores a set there, whose order varies per process);
    # transformers adds the others when a model is saved: none of them changes the model.
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in _VOLATILE_KEYS}


_VOLATILE_KEYS = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version",
                            "name_or_path"})


def text_encoder_fingerprint(text_encoder: Any) -> str:
    """Hash of the text encoder alone: what Fair Mapping checkpoints are trained against."""
    h = hashlib.sha256()
    for key, tensor in sorted(text_encoder.state_dict().items()):
        flat = tensor.detach().float().flatten().cpu()
        if flat.numel() > 4096:
            flat = flat[:: max(1, flat.numel() // 4096)]
        h.update(key.encode())
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def clip_tokenizer() -> Any:
    """The real CLIP BPE tokenizer, built offline from open_clip's bundled vocabulary."""
    import open_clip
    from transformers import CLIPTokenizer

    vocab_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(vocab_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1: 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return _make_tokenizer(CLIPTokenizer, vocab, merges)


def _make_tokenizer(cls: Any, vocab: dict[str, int], merges: list[tuple[str, ...]]) -> Any:
    import inspect
    import tempfile

    if "vocab" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        return cls(vocab=vocab, merges=merges, model_max_length=77)
    tmp = Path(tempfile.mkdtemp(prefix="bench-clip-tok-"))
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return cls(vocab_file=str(tmp / "vocab.json"), merges_file=str(tmp / "merges.txt"),
               model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_random_pipeline(seed: int = 0) -> Any:
    """A Stable-Diffusion-architecture pipeline small enough for CPU tests (32 px, ~2M params),
    random weights seeded for reproducibility, the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=32, attention_head_dim=8)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        sample_size=32)
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def native_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")

# The synthetic-portrait world (bench/world), the default model.
MODELS.register("world", "bench.world:load_world_pipeline")
