"""HPSv2 (Wu et al. 2023, Human Preference Score v2): open_clip ViT-H-14 fine-tuned on HPD v2.

As tgxs002/HPSv2's `hpsv2/img_score.py` computes it: the checkpoint (`HPS_v2.1_compressed.pt` or
`HPS_v2_compressed.pt`, a torch file `{'state_dict': <open_clip CLIP state dict>}`) loads strictly
into open_clip's ViT-H-14; the image goes through its validation transform with
`light_augmentation=True` (RGB to a [0, 1] tensor, the longest side resized to 224 bicubic on the
tensor, zero padding centred to 224 x 224, then the OpenAI mean/std); the prompt through the
ViT-H-14 tokenizer (77 tokens, cut); and

    hpsv2 = image_features @ text_features.T  (diagonal)

with both features L2-normalised (open_clip's `forward` normalises them), i.e. the cosine: HPSv2
does **not** multiply by the checkpoint's logit scale, so real images score about 0.2-0.3. The
tensor resize uses torchvision's current default antialiasing (torchvision < 0.17, contemporary
with the release, did not antialias tensors: their scores differ slightly on downscaled images).

The file is `weights=PATH` (or env BENCH_HPSV2_WEIGHTS), else `version`'s file in the HF cache of
`xswu/HPSv2`, else in HPSv2's own cache (`$HPS_ROOT` or `~/.cache/hpsv2`). Nothing is downloaded.
It is read with `torch.load(weights_only=True)`; float16 and float32 tensors are accepted (cast to
float32). `model=` names another open_clip architecture (tests use a small one).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pandas as pd
import torch
from PIL import Image

from bench.metrics.base import MetricInfo, Scorer, file_sha256
from bench.metrics.faces import frame, resolve_device
from bench.metrics.preference import (cached_file, check_scores, check_tensors, prompts_of,
                                      read_tensors, tensor_specs, weights_file)

ENV = "BENCH_HPSV2_WEIGHTS"
HUB_REPO = "xswu/HPSv2"
# hpsv2.utils.hps_version_map
FILES = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hps_transform(image: Image.Image, size: int, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """HPSv2's validation transform (light_augmentation): to tensor, longest side -> size
    (bicubic, on the tensor), zero padding centred, then normalise (the padding too)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    x = F.to_tensor(image.convert("RGB"))
    height, width = x.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new = (round(height * scale), round(width * scale))
        x = F.resize(x, list(new), InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new[0], size - new[1]
        x = F.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(x, mean, std)


@lru_cache(maxsize=2)
def load_hps(path: str, name: str, device: str) -> tuple[Any, Any]:
    """The open_clip model with the checkpoint loaded strictly, and its tokenizer."""
    import open_clip

    model = open_clip.create_model(name, pretrained=None, device="cpu")
    state = read_tensors(path, "state_dict")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device).eval().requires_grad_(False), open_clip.get_tokenizer(name)


class HPSv2(Scorer):
    name: ClassVar[str] = "hpsv2"
    description: ClassVar[str] = ("HPSv2 human preference score: cos(image, prompt) of fine-tuned "
                                  "open_clip ViT-H-14")
    columns: ClassVar[dict[str, MetricInfo]] = {"hpsv2.score": MetricInfo(
        "hpsv2", "", True, "HPSv2: cos(image, prompt), fine-tuned ViT-H-14")}

    def __init__(self, weights: str | None = None, version: str = "2.1", model: str = "ViT-H-14",
                 device: str | None = None, batch_size: int | str = 16) -> None:
        version = str(version).removeprefix("v")
        if version not in FILES:
            raise ValueError(f"hpsv2:version={version}: expected one of {', '.join(FILES)}")
        self.weights = weights or os.environ.get(ENV) or None
        self.version = version
        self.model = model
        self.device = device
        self.batch_size = int(batch_size)

    def _path(self) -> Path | None:
        root = Path(os.environ.get("HPS_ROOT") or "~/.cache/hpsv2").expanduser()
        return weights_file(self.weights, [cached_file(HUB_REPO, FILES[self.version]),
                                           root / FILES[self.version]])

    def available(self) -> str | None:
        if self._path() is not None:
            return None
        if self.weights:
            return f"HPSv2 checkpoint not found: {self.weights}"
        return (f"HPSv2 checkpoint {FILES[self.version]} not in the HF cache nor ~/.cache/hpsv2: "
                f"run `hf download {HUB_REPO} {FILES[self.version]}`, or pass hpsv2:weights=PATH "
                f"(or set {ENV})")

    def check(self) -> None:
        """Before generation: a present checkpoint is {'state_dict': ...} with the keys and shapes
        of open_clip's model (built on the meta device)."""
        path = self._path()
        if path is None:
            return
        import open_clip

        try:
            expected = open_clip.create_model(self.model, pretrained=None,
                                              device="meta").state_dict()
        except Exception as e:  # an unknown architecture name
            raise ValueError(f"hpsv2:model={self.model}: not an open_clip architecture "
                             f"({e})") from None
        check_tensors(path, tensor_specs(path, "state_dict"), expected,
                      f"an HPSv2 {self.model} checkpoint")

    def manifest(self) -> dict[str, str]:
        path = self._path()
        return {"hpsv2_model": self.model, "hpsv2_weights": str(path or FILES[self.version]),
                "hpsv2_weights_sha256": file_sha256(path)[:16] if path else "absent"}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        prompts = prompts_of(rows, self.name)
        path = self._path()
        if path is None:
            raise FileNotFoundError(self.available())
        device = resolve_device(self.device)
        model, tokenizer = load_hps(str(path.resolve()), self.model, device)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(model.visual, "image_std", None) or OPENAI_STD
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                pixels = torch.stack([hps_transform(im, int(size), mean, std)
                                      for im in batch]).to(device)
                text = tokenizer(prompts[start:start + len(batch)]).to(device)
                image_features = model.encode_image(pixels, normalize=True)
                text_features = model.encode_text(text, normalize=True)
                out.append((image_features * text_features).sum(-1))
        scores = torch.cat(out) if out else torch.zeros(0)
        return frame(rows, len(images), {f"{self.name}.score": check_scores(self.name, scores)})
