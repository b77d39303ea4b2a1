"""PickScore (Kirstain et al., NeurIPS 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

As its model card computes it (yuvalkirstain/PickScore): the model is a transformers `CLIPModel`
(`yuvalkirstain/PickScore_v1`), the processor that of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`;
image and prompt embeddings (`get_image_features`, `get_text_features`, prompts truncated to 77
tokens) are L2-normalised and

    pickscore = logit_scale.exp() * cos(image, prompt)

(the checkpoint's logit scale, about 100, so scores are about 20-23 on real images). The image
processor is run with its PIL backend (`CLIPImageProcessorPil`: shortest side to 224, bicubic,
centre crop, OpenAI mean/std): the slow processor the model card's transformers used;
transformers 5's default torchvision backend resizes slightly differently.

The files come from the HF cache (or `model=DIR`, `processor=DIR`); nothing is downloaded: when
absent, the scorer is skipped with the `hf download` command. Weights load through transformers with
`weights_only=True` (`model.safetensors` when present).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pandas as pd
import torch
from PIL import Image

from bench.metrics.base import MetricInfo, Scorer, file_sha256
from bench.metrics.faces import frame, resolve_device
from bench.metrics.preference import (cached_file, check_scores, check_tensors, prompts_of,
                                      tensor_specs)

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")


def weights_file(model: str) -> Path | None:
    return next((p for p in (cached_file(model, f) for f in WEIGHT_FILES) if p is not None), None)


@lru_cache(maxsize=2)
def load_pickscore(model: str, processor: str, device: str) -> tuple[Any, Any, Any]:
    """(CLIPModel, PIL image processor, tokenizer), from disk only."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    net = CLIPModel.from_pretrained(model, local_files_only=True, weights_only=True,
                                    torch_dtype=torch.float32)
    images = CLIPImageProcessorPil.from_pretrained(processor, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(processor, local_files_only=True)
    return net.to(device).eval().requires_grad_(False), images, tokenizer


def features(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected features, 5 an output whose pooler_output they are."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScore(Scorer):
    name: ClassVar[str] = "pickscore"
    description: ClassVar[str] = ("PickScore v1: logit_scale.exp() * cos(image, prompt), "
                                  "fine-tuned CLIP ViT-H/14")
    columns: ClassVar[dict[str, MetricInfo]] = {
        "pickscore.score": MetricInfo("pickscore", "", True,
                                      "PickScore v1: logit_scale.exp() * cos(image, prompt)")}

    def __init__(self, model: str = DEFAULT_MODEL, processor: str = DEFAULT_PROCESSOR,
                 device: str | None = None, batch_size: int | str = 16) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = int(batch_size)

    def available(self) -> str | None:
        missing = []
        if cached_file(self.model, "config.json") is None or weights_file(self.model) is None:
            missing.append(self.model)
        if any(cached_file(self.processor, f) is None for f in PROCESSOR_FILES):
            missing.append(self.processor)
        if not missing:
            return None
        return (f"PickScore files not in the HF cache ({', '.join(missing)}): run `hf download "
                f"{DEFAULT_MODEL}` and `hf download {DEFAULT_PROCESSOR} --include '*.json' "
                f"--include '*.txt'`, or pass pickscore:model=DIR,processor=DIR")

    def check(self) -> None:
        """Before generation: a present weight file has the config's CLIPModel keys and shapes."""
        path, config = weights_file(self.model), cached_file(self.model, "config.json")
        if path is None or config is None:
            return
        from transformers import CLIPConfig, CLIPModel

        with torch.device("meta"):
            expected = CLIPModel(CLIPConfig.from_json_file(str(config))).state_dict()
        check_tensors(path, tensor_specs(path), expected, "a PickScore CLIPModel (config.json)",
                      ignored=("text_model.embeddings.position_ids",
                               "vision_model.embeddings.position_ids"))

    def manifest(self) -> dict[str, str]:
        path = weights_file(self.model)
        return {"pickscore_model": self.model, "pickscore_processor": self.processor,
                "pickscore_weights_sha256": file_sha256(path)[:16] if path else "absent"}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        prompts = prompts_of(rows, self.name)
        net, processor, tokenizer = load_pickscore(self.model, self.processor,
                                                   resolve_device(self.device))
        device = net.device
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
                text = tokenizer(prompts[start:start + self.batch_size], padding=True,
                                 truncation=True, max_length=77, return_tensors="pt").to(device)
                image_emb = features(net.get_image_features(pixel_values=pixels))
                image_emb = torch.nn.functional.normalize(image_emb, dim=-1)
                text_emb = torch.nn.functional.normalize(features(net.get_text_features(**text)),
                                                         dim=-1)
                out.append(net.logit_scale.exp() * (image_emb * text_emb).sum(-1))
        scores = torch.cat(out) if out else torch.zeros(0)
        return frame(rows, len(images), {f"{self.name}.score": check_scores(self.name, scores)})
