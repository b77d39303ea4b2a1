"""The one place that loads open_clip models (model + preprocess + tokenizer), device-aware and
cached, and encodes images and texts with them.

`pretrained` is an open_clip tag ("openai"), a checkpoint file (.pt/.pth/.bin/.safetensors, read
by open_clip with `weights_only=True`), or None/"none"/"random" for a randomly initialised model of
the same architecture (tests and benchmarks; it goes through the same code path). For tags whose
weights were trained with QuickGELU (all "openai" ones) the activation is forced to match, which
open_clip 3.x only warns about; a checkpoint file of OpenAI weights needs the `-quickgelu` model
name (e.g. `ViT-L-14-quickgelu`) for the same reason. `local-dir:` and `hf-hub:` model names work
as in open_clip.

Image embeddings are cached per process by image content, so CLIPScore, the aesthetic predictor
and Q16 on the same ViT-L/14 encode each image once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from metrics.faces import LRU, image_key, resolve_device

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
_RANDOM = ("", "none", "random")
_EMBEDDINGS = LRU(50_000)  # (model, pretrained, image key) -> (embed_dim,) float32 tensor on cpu


def parse_pretrained(pretrained: str | None) -> str | None:
    return None if pretrained is None or pretrained.strip().lower() in _RANDOM else pretrained


@dataclass(frozen=True, eq=False)
class Clip:
    name: str
    pretrained: str | None
    model: Any  # open_clip CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    device: str
    embed_dim: int

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _tag_cached(cfg: dict) -> bool:
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" -> default file names
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()


def weights_reason(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED) -> str | None:
    """None when `load_clip(name, pretrained)` can get its weights, else a one-line reason."""
    import open_clip

    if name.startswith("local-dir:"):  # config + weights in a folder: pretrained is ignored
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        return None if (folder / "open_clip_config.json").is_file() else f"no open_clip_config.json in {folder}"
    if name.startswith("hf-hub:"):
        return None  # open_clip resolves config and weights from the hub itself
    if name not in open_clip.list_models():
        return f"unknown open_clip model '{name}'; pick one of open_clip.list_models(), e.g. ViT-L-14"
    tag = parse_pretrained(pretrained)
    if tag is None or Path(tag).expanduser().is_file():
        return None
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        return f"open_clip pretrained '{tag}' for {name} is neither a file nor a known tag ({known})"
    if _hub_offline() and not _tag_cached(cfg):
        where = cfg.get("hf_hub") or cfg.get("url")
        return (f"open_clip {name}/{tag} weights ({where}) are not cached and HF_HUB_OFFLINE is set; "
                f"run once online or pass pretrained=PATH to a checkpoint")
    return None


def load_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | None = None) -> Clip:
    """The open_clip model, its eval preprocess and tokenizer; one instance per arguments."""
    tag = parse_pretrained(pretrained)
    if tag is not None and Path(tag).expanduser().is_file():
        tag = str(Path(tag).expanduser().resolve())
    return _load(name, tag, resolve_device(device))


@lru_cache(maxsize=4)
def _load(name: str, tag: str | None, device: str) -> Clip:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=tag, device=device, force_quick_gelu=bool(cfg.get("quick_gelu", False)))
    model.eval().requires_grad_(False)
    embed_dim = getattr(model.visual, "output_dim", None)
    if embed_dim is None:  # timm towers do not record it: measure it
        with torch.inference_mode():
            embed_dim = model.encode_image(preprocess(Image.new("RGB", (8, 8)))[None].to(device)).shape[-1]
    return Clip(name, tag, model, preprocess, open_clip.get_tokenizer(name), device, int(embed_dim))


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens `text` needs, start/end tokens included."""
    if hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer (the CLIP BPE)
        return len(tokenizer.encode(text)) + 2
    return len(tokenizer.tokenizer(tokenizer.clean_fn(text))["input_ids"])  # HFTokenizer


def encode_texts(clip: Clip, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, list[bool]]:
    """L2-normalised text embeddings (cpu, float32) and which texts were truncated.

    Texts longer than the context length are cut by the tokenizer to their first
    context_length - 2 tokens (plus start/end); the flags say which ones lost tokens."""
    truncated = [token_count(clip.tokenizer, t) > clip.context_length for t in texts]
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(clip.device)
            out.append(torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu())
    return (torch.cat(out) if out else torch.zeros(0, clip.embed_dim)), truncated


def encode_images(clip: Clip, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """L2-normalised image embeddings (cpu, float32), (n, embed_dim); cached by image content."""
    # A random model's embeddings are its own: key them by the instance, not the name.
    weights = clip.pretrained or f"random@{id(clip.model)}"
    keys = [(clip.name, weights, image_key(im)) for im in images]
    todo = [i for i, k in enumerate(keys) if _EMBEDDINGS.get(k) is None]
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            x = torch.stack([clip.preprocess(images[i].convert("RGB")) for i in idx]).to(clip.device)
            emb = torch.nn.functional.normalize(clip.model.encode_image(x).float(), dim=-1).cpu()
            for i, e in zip(idx, emb):
                _EMBEDDINGS.put(keys[i], e)
    if not images:
        return torch.zeros(0, clip.embed_dim)
    return torch.stack([_EMBEDDINGS.get(k) for k in keys])


class ClipScorerBase:
    """Options shared by the scorers built on an open_clip model (mixed into a Scorer)."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 device: str | None = None, batch_size: int | str = 32) -> None:
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = int(batch_size)

    def clip_reason(self) -> str | None:
        return weights_reason(self.model, self.pretrained)

    @property
    def clip(self) -> Clip:
        return load_clip(self.model, self.pretrained, self.device)

    def clip_manifest(self) -> dict[str, str]:
        return {"clip_model": self.model, "clip_pretrained": str(parse_pretrained(self.pretrained))}
