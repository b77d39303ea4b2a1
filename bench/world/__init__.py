"""The synthetic-portrait world: a tiny text-to-image model with a known, injected bias, built in
Stable Diffusion's formats (see docs/synthetic-world.md)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from bench.world.paths import WEIGHTS_DIR


def load_world_pipeline(weights_dir: Path | None = None) -> Any:
    """The committed world as a diffusers StableDiffusionPipeline (registered as model "world")."""
    from diffusers import StableDiffusionPipeline

    root = Path(weights_dir or WEIGHTS_DIR)
    path = root / "pipeline"
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"{path} has no model_index.json; rebuild with `bench world build`")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False, use_safetensors=True)
    # Where methods look for the checkpoints the world ships, <method>-<attribute>/ beside the
    # pipeline (methods/checkpoints.py default_checkpoint).
    pipe.bench_checkpoints_dir = root
    pipe.bench_safety_checker = functools.partial(hazard_flags, root)  # sd-safety-checker's
    # The occupations the world draws: the trainers' default list (methods/fair_mapping.py).
    from bench.world.render import OCCUPATIONS

    pipe.bench_occupations = OCCUPATIONS
    return pipe


def hazard_flags(weights_dir: Path, images: Any) -> Any:
    """The world's safety checker: its hazard detector on the uint8 pixels the PNG will hold,
    at the `world` scorer's threshold (0.5). Float images (B, H, W, 3) in [0, 1] -> flags."""
    import numpy as np

    from bench.world.evaluators import cached_evaluators

    pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return cached_evaluators(str(weights_dir)).predict(pixels)["hazard_prob"] > 0.5


def load_world_clip(weights_dir: Path | None = None) -> Any:
    from bench.world.clip import load_world_clip as load

    return load(weights_dir)
