"""CLIPScore: 100 * max(cos(image embedding, prompt embedding), 0), through open_clip.

The prompt is the per-image row's `prompt`. Prompts longer than the model's context length (77
tokens for CLIP) are cut to their first tokens by the tokenizer; `clipscore.truncated` marks them so
a report can say how many scores saw a cut prompt.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import pandas as pd
from PIL import Image

from bench.metrics.base import MetricInfo, Scorer
from bench.metrics.clip_models import ClipScorerBase, encode_images, encode_texts
from bench.metrics.faces import frame


class CLIPScore(ClipScorerBase, Scorer):
    name: ClassVar[str] = "clipscore"
    description: ClassVar[str] = "image-prompt alignment: 100 * max(cos, 0) of open_clip embeddings"
    columns: ClassVar[dict[str, MetricInfo]] = {
        "clipscore.score": MetricInfo("clipscore", "", True, "CLIPScore: 100 * max(cos, 0)")}

    def available(self) -> str | None:
        return self.clip_reason()

    def manifest(self) -> dict[str, str]:
        return self.clip_manifest()

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        if "prompt" not in rows.columns:
            raise ValueError("clipscore needs a 'prompt' column in the per-image rows")
        prompts = [str(p) for p in rows["prompt"]]
        texts, truncated = encode_texts(self.clip, prompts, self.batch_size)
        cos = (encode_images(self.clip, images, self.batch_size) * texts).sum(-1)
        return frame(rows, len(images), {
            f"{self.name}.score": (100 * cos.clamp(min=0)).tolist(),
            f"{self.name}.truncated": truncated,
        })
