"""Generation: run work items through the sampler in batches and write them to the run store.

The local executor is the reference: other executors (sharded, Ray) must produce the same images
for the same items, which holds because every image's latents come from its own seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tqdm import tqdm

from bench.grid import WorkItem, batches
from bench.sampler import Adapter, Batch, sample, to_uint8
from bench.spec import SamplerSpec
from bench.store import RunStore


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    sampler: SamplerSpec
    height: int
    width: int
    batch_size: int


def generate(pipe: Any, items: Sequence[WorkItem], adapters: dict[str, list[Adapter]],
             store: RunStore, settings: GenerationSettings, quiet: bool = False) -> int:
    """Generate every item not already in the store. Returns the number generated."""
    todo = [w for w in items if not store.has(w.key)]
    bar = tqdm(total=len(todo), desc="generate", unit="img", disable=quiet)
    active: list[Adapter] = []
    for chunk in batches(todo, settings.batch_size):
        method_adapters = adapters[chunk[0].method]
        if method_adapters is not active:  # weight-patching methods own the pipe one at a time
            swap(pipe, active, method_adapters)
            active = method_adapters
        batch = Batch(prompts=[w.prompt.text for w in chunk], seeds=[w.seed for w in chunk],
                      metadata=[dict(w.prompt.metadata) for w in chunk], guidance=chunk[0].guidance)
        result = sample(pipe, method_adapters, batch, steps=settings.sampler.steps,
                        height=settings.height, width=settings.width,
                        negative_prompt=settings.sampler.negative_prompt)
        pixels = to_uint8(result.images)
        for n, item in enumerate(chunk):
            store.put(item.key, pixels[n], record(item, settings, result, len(chunk)))
        bar.update(len(chunk))
    swap(pipe, active, [])
    bar.close()
    return len(todo)


def swap(pipe: Any, old: Sequence[Adapter], new: Sequence[Adapter]) -> None:
    for a in reversed(old):
        a.release(pipe)
    for a in new:
        a.prepare(pipe)


def record(item: WorkItem, settings: GenerationSettings, result: Any, batch_len: int) -> dict:
    record = {
        "key": item.key, "method": item.method, "prompt_set": item.prompt_set,
        "prompt_id": item.prompt.id, "prompt": item.prompt.text, "seed": item.seed,
        "sample": item.sample, "guidance": item.guidance, "steps": settings.sampler.steps,
        "height": settings.height, "width": settings.width, "model": settings.model,
        "seconds": result.seconds / batch_len, "unet_evals": result.unet_evals,
        "step_seconds": result.step_seconds, "peak_memory_mb": result.peak_memory_mb,
        "batch_size": batch_len,
    }
    for k, v in item.prompt.metadata.items():
        record[f"meta.{k}"] = v
    return record
