"""`bench generate`: one prompt, one seed, one method, to a PNG, through the same sampler."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench.models import dtype_name, load_pipeline, native_size
from bench.planning import build_adapters, check_size
from bench.sampler import Batch, NonFiniteError, sample, to_uint8
from bench.spec import MethodChain, SpecError


def generate_one(model: str, method: str, prompt: str, seed: int, guidance: float, steps: int,
                 resolution: int | None, device: str | None, out: Path, dtype: str | None = None,
                 scheduler: str | None = None, guidance_rescale: float = 0.0,
                 vae: str | None = None) -> None:
    chain = MethodChain.parse(method)  # `bench generate --method`: parsed here, once
    adapters = build_adapters(chain)
    pipe = load_pipeline(model, device, dtype, scheduler, vae)
    for a in adapters:
        reason = a.skip_reason(pipe)
        if reason:
            raise SpecError(f"method '{method}' cannot run on '{model}': {reason}")
        a.prepare(pipe)
    size = resolution or native_size(pipe)
    check_size(pipe, size, size)
    try:
        result = sample(pipe, adapters, Batch([prompt], [seed], [{}], guidance), steps=steps,
                        height=size, width=size, guidance_rescale=guidance_rescale)
        pixels = to_uint8(result.images)[0]
    except NonFiniteError as exc:
        raise exc.naming(str(chain), [(repr(prompt), seed)], dtype_name(pipe)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(out)
