"""World-FID: FID and KID in the world CLIP's image space against the world's clean renders, the
quality cost with ground truth (docs/metrics.md). A feature scorer (`world-fid`, opt-in) and its
aggregator (`world-fid-to-renders`), built on bench.metrics.fid's public pieces and registered
through the `bench.metrics` entry points in pyproject.toml."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from bench.metrics.aggregators import _Bootstrapped
from bench.metrics.base import Aggregate, Cell, MetricInfo, Scorer
from bench.metrics.fid import MIN_N, from_bytes, to_bytes, unpaired_cells
from bench.world.scorers import _clip, _missing, _sha256, _weights_dir, to_array

WORLD_DIM = 32  # the world CLIP's image embedding
WORLD_REF_N = 2000
WORLD_REF_SEED = 20_261_129


@lru_cache(maxsize=2)
def world_reference(weights_dir: str, n: int = WORLD_REF_N, seed: int = WORLD_REF_SEED) -> np.ndarray:
    """World-CLIP features of n clean renders: portraits (uniform occupation and skin tone), no
    hazard, drawn with a fixed seed, so every run and method meets the same reference."""
    from bench.world.corpus import make_eval_set

    images, _ = make_eval_set(n, seed, p_face=1.0, p_hazard=0.0)
    return world_features(weights_dir, images)


def world_features(weights_dir: str, images: np.ndarray) -> np.ndarray:
    return _clip(weights_dir).encode_image(images).double().cpu().numpy()


class WorldFID(_Bootstrapped):
    """FID and KID of each method's images to the world's clean renders, in world-CLIP space."""

    def __init__(self, column: str, weights: str | None = None, n_boot: int = 100, seed: int = 0,
                 min_n: int = MIN_N) -> None:
        super().__init__(n_boot=n_boot, seed=seed)
        self.column, self.weights, self.min_n = column, _weights_dir(weights), min_n
        self.infos = (
            MetricInfo("fid_world", "", False,
                       f"FID in world-CLIP space to {WORLD_REF_N} clean world renders; 95% "
                       "bias-shifted percentile bootstrap CI over both sets' images"),
            MetricInfo("kid_world", "", False,
                       "KID in world-CLIP space to the clean renders; lo/hi = +-1.96 SE"))

    def applies(self, table: pd.DataFrame) -> bool:
        return self.column in table and bool(table[self.column].notna().any())

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = self._prepare(table, [self.column])
        ref = world_reference(self.weights)
        result: dict[str, dict[str, Cell]] = {}
        notes: list[str] = []
        for method, g in df.groupby("method", sort=False):
            x = from_bytes(g[self.column].dropna(), WORLD_DIM)
            if len(x) < self.min_n:
                notes.append(f"fid_world {method}: refused, {len(x)} images < {self.min_n}")
                continue
            result[str(method)] = world_cells(x, ref, self._rng(str(method), "world"), self.n_boot)
        return Aggregate(result, notes)


class WorldCLIPFeatures(Scorer):
    """Per-image world-CLIP image embeddings for `fid_world` / `kid_world`."""

    name: ClassVar[str] = "world-fid"
    opt_in: ClassVar[bool] = True  # not in `--metrics all` (docs/metrics.md: main job)
    family: ClassVar[str] = "world"
    aggregators: ClassVar[tuple[tuple[str, dict], ...]] = (  # WorldFID on its feature column
        ("world-fid-to-renders", {"column": "world-fid.feature"}),)
    description: ClassVar[str] = ("world-CLIP image features for FID/KID against the world's clean "
                                  "renders (quality cost with ground truth)")

    def __init__(self, device: str | None = None, weights: str | None = None) -> None:
        self.weights = _weights_dir(weights)

    def available(self) -> str | None:
        return _missing(Path(self.weights) / "clip_head.safetensors")

    def manifest(self) -> dict[str, str]:
        return {"clip_head.safetensors": _sha256(str(Path(self.weights) / "clip_head.safetensors")),
                "reference": f"{WORLD_REF_N} clean renders, seed {WORLD_REF_SEED}"}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        feats = world_features(self.weights, to_array(images))
        return pd.DataFrame({f"{self.name}.feature": to_bytes(feats)})


def world_cells(x: np.ndarray, ref: np.ndarray, rng: np.random.Generator,
                n_boot: int) -> dict[str, Cell]:
    return unpaired_cells(x, ref, rng, n_boot, "world")
