"""Spec -> work grid: one WorkItem per image, with its stable seed and content-addressed key.

Seeds and keys are SHA-256 based (never Python's salted `hash()`), so they are the same on every
machine, in every process, for every shard and batch composition.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from bench.spec import SamplerSpec
from bench.prompt_sets.base import Prompt, PromptSet

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class WorkItem:
    key: str
    method: str  # canonical method spec string
    prompt_set: str
    prompt: Prompt
    sample: int
    seed: int
    guidance: float


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def image_seed(run_seed: int, prompt_set: str, prompt: Prompt, sample: int) -> int:
    """The prompt set's own seed (I2P's sd_seed) plus the sample index when it has one, else a
    hash of (run seed, prompt set, prompt id, sample index), in [0, 2**32)."""
    if prompt.seed is not None:
        return int(prompt.seed) + sample
    return int(_sha([run_seed, prompt_set, prompt.id, sample])[:8], 16)


def cache_key(model_fp: str, method: str, prompt_text: str, seed: int, guidance: float,
              sampler: SamplerSpec, height: int, width: int, dtype: str = "float32",
              options: Sequence[str] = ()) -> str:
    settings = [sampler.steps, guidance, height, width, sampler.scheduler, sampler.negative_prompt]
    if dtype != "float32":  # keys made before dtypes were chosen are float32's and stay valid
        settings.append(dtype)
    settings.extend(options)  # RunSpec.pixel_options(): none -> the key as before they existed
    if sampler.guidance_rescale:  # off -> the key as before the option existed
        settings.append(["guidance_rescale", sampler.guidance_rescale])
    return _sha([model_fp, method, prompt_text, seed, settings])[:24]


def prompt_samples(ps: PromptSet, prompt: Prompt, samples: int,
                   by_kind: Mapping[str, int]) -> int:
    """Images of one prompt: by "<set>.<kind>", else by its `meta.kind`, else `samples`. A
    prompt's images are its samples 0..n-1 whatever n is, so a larger n only adds images."""
    kind = prompt.meta.kind
    if kind is None:
        return samples
    return by_kind.get(f"{ps.name}.{kind}", by_kind.get(str(kind), samples))


def build_grid(model_fp: str, methods: Sequence[str], prompt_sets: Sequence[PromptSet],
               samples: int, run_seed: int, guidances: Sequence[float], sampler: SamplerSpec,
               height: int, width: int, dtype: str = "float32",
               by_kind: Mapping[str, int] | None = None,
               options: Sequence[str] = ()) -> list[WorkItem]:
    items: list[WorkItem] = []
    for method in methods:
        for guidance in guidances:
            for ps in prompt_sets:
                for prompt in ps.prompts:
                    for s in range(prompt_samples(ps, prompt, samples, by_kind or {})):
                        seed = image_seed(run_seed, ps.name, prompt, s)
                        key = cache_key(model_fp, method, prompt.text, seed, guidance, sampler,
                                        height, width, dtype, options)
                        items.append(WorkItem(key, method, ps.name, prompt, s, seed, guidance))
    return items


def unique_images(items: Sequence[WorkItem]) -> list[WorkItem]:
    """One work item per image key, the first in grid order: grid positions that define the same
    image (two prompt sets sharing a text and seed) share one generation and one PNG, and each
    keeps its own row in images.parquet (`grid_tables`)."""
    seen: set[str] = set()
    return [w for w in items if not (w.key in seen or seen.add(w.key))]


def prompt_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def grid_tables(items: Sequence[WorkItem], prompt_sets: Sequence[PromptSet]
                ) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(grid, prompts) as the run store keeps them: every grid position with its seed and image
    key, and every prompt once, its text and metadata (JSON) referenced by (set, id)."""
    import pandas as pd

    grid = pd.DataFrame({
        "method": [w.method for w in items], "guidance": [w.guidance for w in items],
        "prompt_set": [w.prompt_set for w in items], "prompt_id": [w.prompt.id for w in items],
        "sample": [w.sample for w in items], "seed": [w.seed for w in items],
        "key": [w.key for w in items]})
    rows = [(ps.name, p.id, p.text, prompt_sha256(p.text), json.dumps(dict(p.metadata), default=str))
            for ps in prompt_sets for p in ps.prompts]
    prompts = pd.DataFrame(rows, columns=["prompt_set", "prompt_id", "prompt", "prompt_sha256",
                                          "metadata"])
    return grid, prompts


def shard(items: Sequence[WorkItem], index: int, count: int,
          cost: dict[str, int] | None = None, batch_size: int = 1) -> list[WorkItem]:
    """Deterministic partition of whole batches, as `batches(items, batch_size)` forms them over
    the full grid, balanced by cost (UNet evaluations per image of each method): greedy
    longest-processing-time over batches sorted by first key, so every shard computes the same
    assignment independently. Whole batches, because an image's floats depend (at ~1e-6) on the
    other images in its batch: a shard's images are then bit-equal to an unsharded run's."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: index must be in 0..{count - 1}")
    groups = batches(items, batch_size)
    weights = [sum((cost or {}).get(w.method, 1) for w in b) for b in groups]
    loads = [0] * count
    mine: list[int] = []
    for n in sorted(range(len(groups)), key=lambda n: (-weights[n], groups[n][0].key)):
        target = min(range(count), key=lambda s: (loads[s], s))
        loads[target] += weights[n]
        if target == index:
            mine.append(n)
    return [w for n in sorted(mine) for w in groups[n]]


def batches(items: Iterable[WorkItem], size: int) -> list[list[WorkItem]]:
    """Consecutive batches of at most `size` items sharing method and guidance. Executors batch
    the whole grid (or a shard of whole batches, which batches back to the same groups since each
    (method, guidance) run is contiguous) and regenerate a partly written batch whole, so an
    image is always computed in the same company."""
    out: list[list[WorkItem]] = []
    for item in items:
        last = out[-1] if out else None
        if last and len(last) < size and last[0].method == item.method \
                and last[0].guidance == item.guidance:
            last.append(item)
        else:
            out.append([item])
    return out
