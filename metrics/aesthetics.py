"""LAION aesthetic predictor: a head on the L2-normalised CLIP ViT-L/14 image embedding.

Two head layouts are read from a state dict (`torch.load(weights_only=True)` or safetensors):

* linear (LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`): keys `weight` (1, 768) and
  `bias` (1,);
* MLP (christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth`): keys
  `layers.{0,2,4,6,7}.weight/bias`, Linear 768-1024-128-64-16-1 with dropout between and no
  activation, so at inference it is the chain of its linear layers.

Weights come from `weights=PATH` (or env BENCH_AESTHETIC_WEIGHTS), else from the HF hub file
`hub=REPO/FILE` (default below) when it is cached or the hub is reachable.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import pandas as pd
import torch
from PIL import Image

from metrics.base import MetricInfo, Scorer
from metrics.clip_models import ClipScorerBase, encode_images
from metrics.faces import frame

DEFAULT_HUB = "camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth"
ENV = "BENCH_AESTHETIC_WEIGHTS"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor state dict from .safetensors or a torch file, never unpickling code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


class LinearChain(torch.nn.Module):
    """y = W_k(...W_1 x + b_1...) + b_k: the LAION heads at inference (dropout off, no activation)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.linears = torch.nn.ModuleList()
        for weight, bias in layers:
            lin = torch.nn.Linear(weight.shape[1], weight.shape[0])
            lin.load_state_dict({"weight": weight, "bias": bias})
            self.linears.append(lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.linears:
            x = lin(x)
        return x


def load_head(path: str | Path, embed_dim: int) -> LinearChain:
    state = load_state_dict(path)
    if set(state) == {"weight", "bias"}:
        layers = [(state["weight"], state["bias"])]
    else:
        idx = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
        if not idx:
            raise ValueError(f"{path}: not a LAION aesthetic head (expected keys weight/bias or "
                             f"layers.N.weight/bias), got {sorted(state)[:4]}")
        layers = [(state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]) for i in idx]
    if layers[0][0].shape[1] != embed_dim or layers[-1][0].shape[0] != 1:
        raise ValueError(f"{path}: head maps {layers[0][0].shape[1]} -> {layers[-1][0].shape[0]}, "
                         f"the CLIP model gives {embed_dim}-d embeddings and the score is 1-d")
    return LinearChain([(w.float(), b.float()) for w, b in layers]).eval()


@lru_cache(maxsize=4)
def _head(path: str, embed_dim: int, device: str) -> LinearChain:
    return load_head(path, embed_dim).to(device)


class LAIONAesthetic(ClipScorerBase, Scorer):
    name: ClassVar[str] = "aesthetic"
    description: ClassVar[str] = "LAION aesthetic predictor (head on CLIP ViT-L/14 image embedding)"
    columns: ClassVar[dict[str, MetricInfo]] = {
        "aesthetic.score": MetricInfo("aesthetic", "", True, "LAION aesthetic predictor")}

    def __init__(self, weights: str | None = None, hub: str = DEFAULT_HUB, **clip_options: str) -> None:
        super().__init__(**clip_options)
        self.weights = weights or os.environ.get(ENV) or None
        self.hub = hub

    def _resolve(self) -> str:
        """The head file: the given path, else the hub file (cache only when offline)."""
        if self.weights:
            if not Path(self.weights).expanduser().is_file():
                raise FileNotFoundError(f"aesthetic head weights not found: {self.weights}")
            return str(Path(self.weights).expanduser())
        from huggingface_hub import hf_hub_download

        repo, filename = self.hub.rsplit("/", 1)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        return hf_hub_download(repo, filename, local_files_only=offline)

    def available(self) -> str | None:
        try:
            self._resolve()
        except Exception as e:  # missing file, offline cache miss, network error
            return (f"aesthetic head weights unavailable ({type(e).__name__}): pass weights=PATH or "
                    f"set {ENV} to {self.weights or 'sac+logos+ava1-l14-linearMSE.pth'}, or make hub "
                    f"file {self.hub} reachable")
        return self.clip_reason()

    def manifest(self) -> dict[str, str]:
        return {**self.clip_manifest(), "aesthetic_head": self.weights or f"hf://{self.hub}"}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        clip = self.clip
        head = _head(self._resolve(), clip.embed_dim, clip.device)
        with torch.inference_mode():
            out = head(encode_images(clip, images, self.batch_size).to(clip.device))[:, 0].cpu()
        return frame(rows, len(images), {f"{self.name}.score": out.tolist()})
