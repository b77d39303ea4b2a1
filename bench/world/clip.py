"""The world's CLIP: the pipeline's text tower (CLIPTextModel) with its text projection, and the
image tower trained with it contrastively. For CLIPScore and zero-shot use on world images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench.world.train import ClipHead, pooled_text


@dataclass
class WorldClip:
    text_encoder: Any
    tokenizer: Any
    head: ClipHead

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, 3, 32, 32) float in [0, 1], or uint8 (N, 32, 32, 3) -> unit-norm (N, 32)."""
        if isinstance(images, np.ndarray):
            images = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
        x = images.float() * 2 - 1
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="area")
        return F.normalize(self.head.image_tower(x), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm (N, 32) text embeddings (pooled end-of-text state, projected)."""
        pooled = pooled_text(self.text_encoder, self.tokenizer, list(texts))
        return F.normalize(self.head.text_projection(pooled), dim=-1)


def load_world_clip(weights_dir: Path | None = None) -> WorldClip:
    from transformers import CLIPTextModel

    from bench.models import clip_tokenizer
    from bench.world.paths import WEIGHTS_DIR

    root = Path(weights_dir or WEIGHTS_DIR)
    path = root / "clip_head.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; rebuild the world with `bench world build`")
    head = ClipHead()
    head.load_state_dict(load_file(str(path)))
    text_encoder = CLIPTextModel.from_pretrained(str(root / "pipeline" / "text_encoder"),
                                                 use_safetensors=True)
    return WorldClip(text_encoder.eval(), clip_tokenizer(), head.eval())
