"""`bench generate`: one prompt, one seed, one method, to a PNG, through the same sampler."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench.models import load_pipeline, native_size
from bench.runner import build_adapters, canonical_method, check_size
from bench.sampler import Batch, sample, to_uint8
from bench.spec import SpecError


def generate_one(model: str, method: str, prompt: str, seed: int, guidance: float, steps: int,
                 resolution: int | None, device: str | None, out: Path) -> None:
    adapters = build_adapters(canonical_method(method))
    pipe = load_pipeline(model, device)
    for a in adapters:
        reason = a.skip_reason(pipe)
        if reason:
            raise SpecError(f"method '{method}' cannot run on '{model}': {reason}")
        a.prepare(pipe)
    size = resolution or native_size(pipe)
    check_size(pipe, size, size)
    result = sample(pipe, adapters, Batch([prompt], [seed], [{}], guidance), steps=steps,
                    height=size, width=size)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(result.images)[0]).save(out)
