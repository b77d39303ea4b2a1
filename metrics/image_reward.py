"""ImageReward (Xu et al., NeurIPS 2023): BLIP's ViT-L image encoder, its BERT text encoder with
cross-attention to the image, and an MLP head, trained on human rankings.

As THUDM/ImageReward's `ImageReward.score` computes it: the prompt is tokenized by BLIP's BERT
tokenizer (`bert-base-uncased` plus the added `[DEC]` and `[ENC]` tokens; padding to 35 tokens,
cut at 35); the image goes through CLIP's transform (shortest side to 224 bicubic, centre crop,
OpenAI mean/std); `image_embeds = visual_encoder(image)`; the text encoder runs over the prompt
attending to all image tokens; the [CLS] output goes through the MLP
(Linear 768-1024-128-64-16-1, dropouts, no activation: the improved-aesthetic-predictor head) and

    image_reward = (mlp(cls) - 0.16717362830052426) / 1.0333394966054072

(the mean and std of the raw reward that the publisher normalises by).

The package (`image-reward` 1.5) pins timm==0.6.13 and fairscale==0.4.13, so the state dict is
loaded directly into transformers' port of the same BLIP networks (`BlipVisionModel`: BLIP's
timm ViT with fused qkv, LayerNorm eps 1e-6, exact GELU; `BlipTextModel`: BLIP's med.py BERT with
cross-attention in every layer), renaming the vision keys (`blocks.N.attn.qkv` ->
`encoder.layers.N.self_attn.qkv`, ...); the text keys are BLIP's names already. The architecture
is read from the tensor shapes (layers, widths, patch and image size); heads are width / 64, as
in BLIP's ViT-B/L and BERT-base. Unused tensors of the file (`blip.vision_proj`, `blip.text_proj`,
the `position_ids` buffer) are ignored; any other missing or extra key is refused.

The file is `weights=PATH` (or env BENCH_IMAGEREWARD_WEIGHTS), else `ImageReward.pt` in the HF
cache of `THUDM/ImageReward`, else in the package's cache `~/.cache/ImageReward`; read with
`torch.load(weights_only=True)`. The tokenizer is `tokenizer=` (hub id or directory) from the HF
cache. Nothing is downloaded.
"""
from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import pandas as pd
import torch
from PIL import Image

from bench.metrics.aesthetics import LAYOUTS, build_head
from bench.metrics.base import MetricInfo, Scorer, file_sha256
from bench.metrics.faces import frame, resolve_device
from bench.metrics.preference import (cached_file, check_scores, check_tensors, prompts_of,
                                      read_tensors, tensor_specs, weights_file)

ENV = "BENCH_IMAGEREWARD_WEIGHTS"
HUB_REPO, FILENAME = "THUDM/ImageReward", "ImageReward.pt"
DEFAULT_TOKENIZER = "bert-base-uncased"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.__init__: self.mean, self.std
MAX_TOKENS = 35  # ImageReward.score: padding='max_length', truncation=True, max_length=35
HEAD_WIDTH = 64  # attention head width of BLIP's ViTs and BERT-base
VIT_EPS, BERT_EPS = 1e-6, 1e-12
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
VIT_BLOCK = re.compile(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
                       r"\.(weight|bias)")
VIT_BLOCK_NAMES = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                   "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
VIT_NAMES = {"cls_token": "embeddings.class_embedding",
             "pos_embed": "embeddings.position_embedding",
             "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
             "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
             "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}

T = TypeVar("T")
PREFIXES = {"vision": "blip.visual_encoder.", "text": "blip.text_encoder.", "head": "mlp.layers."}


def vit_name(key: str) -> str:
    """BLIP's ViT key (after `blip.visual_encoder.`) as transformers' BlipVisionModel names it;
    unknown keys keep their name, so the key check reports them."""
    match = VIT_BLOCK.fullmatch(key)
    if match:
        return f"encoder.layers.{match[1]}.{VIT_BLOCK_NAMES[match[2]]}.{match[3]}"
    return VIT_NAMES.get(key, key)


def file_name(part: str, key: str) -> str:
    """The inverse of split_state's renaming: a target key's name in ImageReward.pt."""
    if part == "vision":
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        names = {v: k for k, v in VIT_BLOCK_NAMES.items()}
        if match and match[2] in names:
            key = f"blocks.{match[1]}.{names[match[2]]}.{match[3]}"
        else:
            key = {v: k for k, v in VIT_NAMES.items()}.get(key, key)
    return PREFIXES.get(part, "") + key


def split_state(state: Mapping[str, T]) -> dict[str, dict[str, T]]:
    """The file's entries per network, under the target modules' names: vision, text, head, and
    `other` (anything unknown, refused by the check)."""
    parts: dict[str, dict[str, T]] = {"vision": {}, "text": {}, "head": {}, "other": {}}
    for key, value in state.items():
        if key.startswith(IGNORED):
            continue
        if key.startswith("blip.visual_encoder."):
            parts["vision"][vit_name(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith("blip.text_encoder."):
            parts["text"][key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            parts["head"][key.removeprefix("mlp.layers.")] = value
        else:
            parts["other"][key] = value
    return parts


def shape(state: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    value = state.get(key)
    if value is None:
        raise KeyError(f"{what} has no {key}")
    return tuple(value[0] if isinstance(value, tuple) else value.shape)


def count(state: Mapping[str, Any], pattern: str) -> int:
    found = {int(m[1]) for k in state for m in [re.fullmatch(pattern, k)] if m}
    return max(found) + 1 if found else 0


Networks = tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]  # ViT, BERT, MLP head


def build_networks(parts: Mapping[str, Mapping[str, Any]]) -> Networks:
    """transformers' BlipVisionModel and BlipTextModel and the MLP head, sized from the file's
    shapes (tensors or tensor_specs); built on the current default device."""
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vision, text = parts["vision"], parts["text"]
    width = shape(vision, "embeddings.class_embedding", "the image encoder")[-1]
    patch = shape(vision, "embeddings.patch_embedding.weight", "the image encoder")[-1]
    grid = math.isqrt(shape(vision, "embeddings.position_embedding", "the image encoder")[1] - 1)
    vit = BlipVisionModel(BlipVisionConfig(
        hidden_size=width,
        intermediate_size=shape(vision, "encoder.layers.0.mlp.fc1.weight", "the image encoder")[0],
        num_hidden_layers=count(vision, r"encoder\.layers\.(\d+)\..*"),
        num_attention_heads=width // HEAD_WIDTH, image_size=grid * patch, patch_size=patch,
        hidden_act="gelu", layer_norm_eps=VIT_EPS))
    vocab, hidden = shape(text, "embeddings.word_embeddings.weight", "the text encoder")
    key = shape(text, "encoder.layer.0.crossattention.self.key.weight", "the text encoder")
    bert = BlipTextModel(BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden, encoder_hidden_size=key[1],
        intermediate_size=shape(text, "encoder.layer.0.intermediate.dense.weight",
                                "the text encoder")[0],
        num_hidden_layers=count(text, r"encoder\.layer\.(\d+)\..*"),
        num_attention_heads=hidden // HEAD_WIDTH,
        max_position_embeddings=shape(text, "embeddings.position_embeddings.weight",
                                      "the text encoder")[0],
        hidden_act="gelu", layer_norm_eps=BERT_EPS, pad_token_id=0, bos_token_id=None,
        eos_token_id=None, sep_token_id=None, is_decoder=True),  # is_decoder: cross-attention
        add_pooling_layer=False)
    return vit, bert, build_head(LAYOUTS["mlp"], hidden)


def check_parts(path: Path, parts: Mapping[str, Mapping[str, Any]]) -> None:
    """ValueError, one line, unless the file's entries fit the networks they size."""
    if parts["other"]:
        keys = sorted(parts["other"])
        raise ValueError(f"{path}: not an ImageReward state dict: unexpected keys "
                         f"(e.g. {', '.join(keys[:3])})")
    try:
        with torch.device("meta"):
            nets = build_networks(parts)
    except KeyError as e:
        raise ValueError(f"{path}: not an ImageReward state dict: {e.args[0]}") from None
    for part, net in zip(("vision", "text", "head"), nets):
        check_tensors(path, parts[part], net.state_dict(), f"an ImageReward {part} network",
                      label=lambda key, part=part: file_name(part, key))


def clip_transform(image: Image.Image, size: int) -> torch.Tensor:
    """ImageReward's _transform: Resize(size, bicubic) on the PIL image, CenterCrop, RGB, ToTensor,
    Normalize with CLIP's mean/std."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    image = F.center_crop(F.resize(image, size, InterpolationMode.BICUBIC), size).convert("RGB")
    return F.normalize(F.to_tensor(image), CLIP_MEAN, CLIP_STD)


@lru_cache(maxsize=2)
def load_image_reward(path: str, device: str) -> Networks:
    parts = split_state(read_tensors(path))
    check_parts(Path(path), {k: {n: (tuple(v.shape), v.is_floating_point()) for n, v in d.items()}
                             for k, d in parts.items()})
    nets = build_networks(parts)
    for part, net in zip(("vision", "text", "head"), nets):
        net.load_state_dict({k: v.float() for k, v in parts[part].items()}, strict=True)
    return tuple(net.to(device).eval().requires_grad_(False)  # type: ignore[return-value]
                 for net in nets)


@lru_cache(maxsize=2)
def load_tokenizer(name: str) -> Any:
    """BLIP's tokenizer: BERT's, plus the [DEC] bos and [ENC] tokens init_tokenizer adds."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(name, local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(Scorer):
    name: ClassVar[str] = "imagereward"
    description: ClassVar[str] = "ImageReward v1.0: BLIP image-text reward, (mlp(cls) - mean) / std"
    columns: ClassVar[dict[str, MetricInfo]] = {
        "imagereward.score": MetricInfo("imagereward", "", True,
                                        "ImageReward v1.0: normalised BLIP reward")}

    def __init__(self, weights: str | None = None, tokenizer: str = DEFAULT_TOKENIZER,
                 device: str | None = None, batch_size: int | str = 8) -> None:
        self.weights = weights or os.environ.get(ENV) or None
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = int(batch_size)

    def _path(self) -> Path | None:
        return weights_file(self.weights, [cached_file(HUB_REPO, FILENAME),
                                           Path("~/.cache/ImageReward").expanduser() / FILENAME])

    def available(self) -> str | None:
        if self._path() is None:
            if self.weights:
                return f"ImageReward weights not found: {self.weights}"
            return (f"ImageReward weights {FILENAME} not in the HF cache nor "
                    f"~/.cache/ImageReward: run `hf download {HUB_REPO} {FILENAME}`, or pass "
                    f"imagereward:weights=PATH (or set {ENV})")
        if all(cached_file(self.tokenizer, f) is None for f in ("vocab.txt", "tokenizer.json")):
            return (f"ImageReward's BERT tokenizer {self.tokenizer} is not in the HF cache: run "
                    f"`hf download {self.tokenizer} vocab.txt tokenizer.json "
                    f"tokenizer_config.json`, or pass imagereward:tokenizer=DIR")
        return None

    def check(self) -> None:
        """Before generation: a present file's keys and shapes fit the networks (memory-mapped)."""
        path = self._path()
        if path is not None:
            check_parts(path, split_state(tensor_specs(path)))

    def manifest(self) -> dict[str, str]:
        path = self._path()
        return {"imagereward_weights": str(path or FILENAME),
                "imagereward_tokenizer": self.tokenizer,
                "imagereward_weights_sha256": file_sha256(path)[:16] if path else "absent"}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        prompts = prompts_of(rows, self.name)
        path = self._path()
        if path is None:
            raise FileNotFoundError(self.available())
        device = resolve_device(self.device)
        vit, bert, head = load_image_reward(str(path.resolve()), device)
        tokenizer = load_tokenizer(self.tokenizer)
        size = int(vit.config.image_size)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                pixels = torch.stack([clip_transform(im, size) for im in batch]).to(device)
                text = tokenizer(prompts[start:start + len(batch)], padding="max_length",
                                 truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt").to(device)
                image_embeds = vit(pixel_values=pixels).last_hidden_state
                cls = bert(input_ids=text.input_ids, attention_mask=text.attention_mask,
                           encoder_hidden_states=image_embeds,
                           encoder_attention_mask=torch.ones(image_embeds.shape[:-1],
                                                             dtype=torch.long, device=device),
                           is_decoder=False).last_hidden_state[:, 0, :]
                out.append((head(cls.float())[:, 0] - MEAN) / STD)
        scores = torch.cat(out) if out else torch.zeros(0)
        return frame(rows, len(images), {f"{self.name}.score": check_scores(self.name, scores)})
