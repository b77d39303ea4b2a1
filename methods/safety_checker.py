"""Stable Diffusion's post-hoc safety checker as a filter baseline (`sd-safety-checker`).

diffusers' `StableDiffusionSafetyChecker` (the model directory's `safety_checker/`, with the
`feature_extractor/` CLIPImageProcessor that prepares its input) compares the CLIP image embedding
with 17 concept and 3 special-care embeddings and replaces a flagged image with a black one, as
`StableDiffusionPipeline.run_safety_checker` does. Here it runs in the sampler's `on_decoded` hook:
a flagged image is stored black and recorded as filtered (`filtered` in its record and in
images.parquet), counted in the `filtered_rate` column and left out of the quality means and FID.

A model may bring its own checker instead: `pipe.bench_safety_checker`, a callable from float
images (B, H, W, 3) in [0, 1] to a boolean flag per image (a synthetic model may set its hazard
detector there); flagged images are blacked out the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.methods.checkpoints import CheckpointError
from bench.adapter import Adapter, Batch, is_sdxl

Checker = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # images -> (images, flags)


@dataclass(frozen=True)
class SafetyCheckerParams:
    model: str = ""  # a diffusers model directory holding safety_checker/ and feature_extractor/
    # (default: the run's model directory)


def checker_dir(pipe: Any, given: str) -> Path | None:
    if given:
        return Path(given).expanduser()
    source = getattr(pipe, "name_or_path", "") or ""
    return Path(source) if source and Path(source).is_dir() else None


def missing_reason(root: Path | None) -> str | None:
    """None when `root` holds both components as diffusers saves them, else the one-line fix."""
    need = ("safety_checker/config.json", "safety_checker/model.safetensors",
            "feature_extractor/preprocessor_config.json")
    if root is not None and all((root / n).is_file() for n in need):
        return None
    where = f"{root} has no " + ", ".join(n for n in need if not (root / n).is_file()) if root \
        else "the model is not a local diffusers directory"
    return (f"{where}; download them with `hf download REPO --include \"safety_checker/*.json\" "
            f"--include \"safety_checker/model.safetensors\" --include \"feature_extractor/*\"` "
            f"or pass sd-safety-checker:model=DIR")


@lru_cache(maxsize=2)
def load_checker(root: str, device: str, dtype: str = "float32") -> Checker:
    """diffusers' checker and its feature extractor from `root`, applied as
    StableDiffusionPipeline.run_safety_checker does (PIL images through the extractor, the
    checker blacking out what it flags). In `dtype`, the pipeline's, as diffusers loads it with
    the pipeline's torch_dtype."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from diffusers.utils import numpy_to_pil
    from transformers import CLIPImageProcessor

    try:
        model = StableDiffusionSafetyChecker.from_pretrained(
            str(Path(root) / "safety_checker"), use_safetensors=True,
            torch_dtype=getattr(torch, dtype)).to(device).eval()
        extractor = CLIPImageProcessor.from_pretrained(str(Path(root) / "feature_extractor"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"sd-safety-checker: cannot load {root}: "
                              f"{str(exc).splitlines()[0][:200]}") from None

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clip_input = extractor(numpy_to_pil(images), return_tensors="pt").pixel_values
        out, flags = model(images=images.copy(), clip_input=clip_input.to(device, model.dtype))
        return np.asarray(out, dtype=images.dtype), np.asarray(flags, dtype=bool)

    return run


def blackout(flag: Callable[[np.ndarray], np.ndarray]) -> Checker:
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flags = np.asarray(flag(images), dtype=bool).reshape(len(images))
        return np.where(flags[:, None, None, None], 0.0, images).astype(images.dtype), flags

    return run


class SafetyChecker(Adapter):
    name = "sd-safety-checker"
    description = ("Stable Diffusion's post-hoc safety checker as a filter: flagged images are "
                   "blacked out, recorded as filtered and left out of quality metrics.")
    Params = SafetyCheckerParams
    SDXL_SKIP = ("SDXL ships no safety checker; pass sd-safety-checker:model=DIR (an SD directory "
                 "with safety_checker/ and feature_extractor/) to filter with SD's")

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._run: Checker | None = None
        if self.params.model:  # an explicit directory: checked before the model loads
            reason = missing_reason(checker_dir(None, self.params.model))
            if reason:
                raise CheckpointError(f"sd-safety-checker: {reason}")

    def skip_reason(self, pipe: Any) -> str | None:
        if getattr(pipe, "bench_safety_checker", None) is not None and not self.params.model:
            return None
        if is_sdxl(pipe) and not self.params.model:
            return self.SDXL_SKIP
        return missing_reason(checker_dir(pipe, self.params.model))

    def prepare(self, pipe: Any) -> None:
        own = getattr(pipe, "bench_safety_checker", None)
        if own is not None and not self.params.model:
            self._run = blackout(own)
        else:
            from bench.models import dtype_name

            root = checker_dir(pipe, self.params.model)
            self._run = load_checker(str(root), str(pipe.device), dtype_name(pipe))

    def release(self, pipe: Any) -> None:
        self._run = None

    def on_decoded(self, images: np.ndarray, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        if self._run is None:
            raise RuntimeError("sd-safety-checker: on_decoded before prepare")
        return self._run(images)
