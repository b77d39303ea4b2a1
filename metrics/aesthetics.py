"""LAION aesthetic predictor: a head on the L2-normalised CLIP ViT-L/14 image embedding.

Three published head layouts are read from a state dict (`torch.load(weights_only=True)` or
safetensors), each rebuilt as its publisher's `nn.Sequential` so the keys load as they are:

* linear (LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`): `nn.Linear(768, 1)`, keys
  `weight` (1, 768) and `bias` (1,);
* MLP (christophschuhmann/improved-aesthetic-predictor `sac+logos+ava1-l14-linearMSE.pth`,
  `ava+logos-l14-linearMSE.pth`): keys `layers.{0,2,4,6,7}`, Linear 768-1024, Dropout, Linear
  1024-128, Dropout, Linear 128-64, Dropout, Linear 64-16, Linear 16-1, no activation;
* ReLU MLP (same repository, `ava+logos-l14-reluMSE.pth`, trained with the ReLUs its current code
  comments out): keys `layers.{0,3,6,9,11}`, the same Linears with a ReLU after each of the first
  four (Linear, ReLU, Dropout, ..., Linear 64-16, ReLU, Linear 16-1).

Any other set of keys or shapes is refused, naming what the file holds. Weights come from
`weights=PATH` (or env BENCH_AESTHETIC_WEIGHTS), else from the HF hub file `hub=REPO/FILE`
(default below) when it is cached or the hub is reachable.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import pandas as pd
import torch
from PIL import Image

from bench.metrics.base import MetricInfo, Scorer
from bench.metrics.clip_models import ClipScorerBase, encode_images, file_sha256, model_embed_dim
from bench.metrics.faces import frame

DEFAULT_HUB = "camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth"
ENV = "BENCH_AESTHETIC_WEIGHTS"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor state dict from .safetensors or a torch file, never unpickling code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: not a torch state dict ({type(e).__name__}: "
                         f"{first[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


# Publisher's Sequential per layout: L = Linear, D = Dropout, R = ReLU; key indices are the L's.
LAYOUTS = {"linear": "L", "mlp": "LDLDLDLL", "relu-mlp": "LRDLRDLRDLRL"}
HIDDEN = (1024, 128, 64, 16)  # the MLPs' widths after the embedding; the score is 1-d
DROPOUT = (0.2, 0.2, 0.1)  # the publisher's rates (inactive at inference)


def layout_keys(pattern: str) -> set[str]:
    return {f"layers.{i}.{p}" for i, c in enumerate(pattern) if c == "L"
            for p in ("weight", "bias")}


def build_head(pattern: str, embed_dim: int) -> torch.nn.Sequential:
    widths = iter((embed_dim, 1) if pattern == "L" else (embed_dim, *HIDDEN, 1))
    dropouts = iter(DROPOUT)
    width, layers = next(widths), []
    for c in pattern:
        if c == "L":
            out = next(widths)
            layers.append(torch.nn.Linear(width, out))
            width = out
        else:
            layers.append(torch.nn.ReLU() if c == "R" else torch.nn.Dropout(next(dropouts)))
    return torch.nn.Sequential(*layers)


def match_layout(path: str | Path,
                 state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The layout name and the state keyed as in its Sequential (`N.weight`); ValueError naming
    the keys otherwise."""
    if set(state) == {"weight", "bias"}:
        return "linear", {f"0.{k}": v for k, v in state.items()}
    for name, pattern in LAYOUTS.items():
        if name != "linear" and set(state) == layout_keys(pattern):
            return name, {k.removeprefix("layers."): v for k, v in state.items()}
    keys = sorted(state, key=lambda k: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                        for t in k.split(".")])
    shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} keys)" if len(keys) > 12 else "")
    raise ValueError(f"{path}: not a published LAION aesthetic head layout (weight/bias; "
                     f"layers.{{0,2,4,6,7}}; layers.{{0,3,6,9,11}}); it holds "
                     f"{shown or 'no tensors'}")


def load_head(path: str | Path, embed_dim: int | None) -> torch.nn.Sequential:
    """The head as its publisher builds it, weights loaded; embed_dim None skips the input check."""
    name, state = match_layout(path, load_state_dict(path))
    width = int(state["0.weight"].shape[-1])
    if embed_dim is not None and width != embed_dim:
        raise ValueError(f"{path}: head maps {width} -> 1, the CLIP model gives {embed_dim}-d "
                         f"embeddings")
    head = build_head(LAYOUTS[name], width)
    expected = head.state_dict()
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape) or not value.is_floating_point():
            raise ValueError(f"{path}: {name} head tensor {key} is {value.dtype} "
                             f"{tuple(value.shape)}, expected floating "
                             f"{tuple(expected[key].shape)}")
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()


@lru_cache(maxsize=4)
def _head(path: str, embed_dim: int, device: str) -> torch.nn.Sequential:
    return load_head(path, embed_dim).to(device)


class LAIONAesthetic(ClipScorerBase, Scorer):
    name: ClassVar[str] = "aesthetic"
    description: ClassVar[str] = "LAION aesthetic predictor (head on CLIP ViT-L/14 image embedding)"
    columns: ClassVar[dict[str, MetricInfo]] = {
        "aesthetic.score": MetricInfo("aesthetic", "", True, "LAION aesthetic predictor")}

    def __init__(self, weights: str | None = None, hub: str = DEFAULT_HUB,
                 **clip_options: str) -> None:
        super().__init__(**clip_options)
        self.weights = weights or os.environ.get(ENV) or None
        self.hub = hub

    def _resolve(self, cached_only: bool = False) -> str:
        """The head file: the given path, else the hub file (cache only when offline)."""
        if self.weights:
            if not Path(self.weights).expanduser().is_file():
                raise FileNotFoundError(f"aesthetic head weights not found: {self.weights}")
            return str(Path(self.weights).expanduser())
        from huggingface_hub import hf_hub_download

        repo, filename = self.hub.rsplit("/", 1)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        return hf_hub_download(repo, filename, local_files_only=offline or cached_only)

    def available(self) -> str | None:
        try:
            self._resolve()
        except Exception as e:  # missing file, offline cache miss, network error
            default = self.weights or "sac+logos+ava1-l14-linearMSE.pth"
            return (f"aesthetic head weights unavailable ({type(e).__name__}): pass weights=PATH "
                    f"or set {ENV} to {default}, or make hub file {self.hub} reachable")
        return self.clip_reason()

    def check(self) -> None:
        """Before generation: the head file, if present (given or cached), is a published layout of
        the CLIP model's width."""
        self.check_clip()
        try:
            path = self._resolve(cached_only=True)
        except Exception:  # missing or not cached: available() gives the reason
            return
        load_head(path, model_embed_dim(self.model))

    def manifest(self) -> dict[str, str]:
        return {**self.clip_manifest(), "aesthetic_head": self.weights or f"hf://{self.hub}",
                "aesthetic_head_sha256": file_sha256(Path(self._resolve()))[:16]}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        clip = self.clip
        head = _head(self._resolve(), clip.embed_dim, clip.device)
        with torch.inference_mode():
            out = head(encode_images(clip, images, self.batch_size).to(clip.device))[:, 0].cpu()
        return frame(rows, len(images), {f"{self.name}.score": out.tolist()})
