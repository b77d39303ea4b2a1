"""The method adapter contract: the `Adapter` base class, the `Batch` it is handed and the `Step`
context its per-step hooks receive. `bench/sampler.py` calls the hooks; `methods/` implement them.

Hooks, all optional (the baseline implements none):
  prepare(pipe) / release(pipe)    load checkpoints, patch or swap weights before this method's
                                   batches, and undo it after (methods run one after another)
  encode(cond_embeds, batch)       transform the conditional prompt embeddings
  negative(batch) -> list[str] | None   the unconditional branch's text per image (the
                                   negative prompt); None keeps the run's `negative_prompt`.
                                   At most one adapter of a composition may return texts
  extra_conditions(batch)          texts of extra branches, each a list of B strings
  init_state(batch)                per-batch, per-image state the adapter owns
  guide(eps_u, eps_c, extras, step, state) -> additive term to the guided prediction, or None
  on_step(latents, step, state)    update latents before step.i's UNet call; autograd is enabled
                                   and the latents are float32 whatever the model's dtype (cast
                                   back after), so gradient steps do not underflow in float16
  on_decoded(images, batch) -> (images, filtered)   see the decoded images (B, H, W, 3) in
                                   [0, 1] and may replace them; `filtered` (B bools) marks those a
                                   filter replaced (recorded, left out of quality metrics)
  conditioning(cond, step, state) -> the conditional embeddings for this step, or None to keep
                                   the batch's (after `encode`); chained over a composition
  skip_features(features, skip, step, state) -> the features of one skip connection of the
                                   UNet's decoder (every branch's rows, [N, C, H, W]; where they
                                   are in `skip`, a Skip), or None to keep them
  encode_pooled(pooled, batch)     SDXL only: transform the conditional branch's pooled
                                   embedding [B, P] (after `encode`); see "SDXL" below
Planning hooks: skip_reason(pipe), warnings(pipe, model_fp, guidance, steps).

SDXL (`is_sdxl(pipe)` below: the UNet takes pooled text embeddings and add_time_ids). Nothing
changes for SD 1.x/2.x adapters. On SDXL:
  - `cond` in `encode` and `conditioning`, and `bench.sampler.encode_text(pipe, texts)`, are the
    hidden states the UNet attends to: both encoders' penultimate hidden states concatenated
    ([B, 77, 768 + 1280] on SDXL base), so a hook that edits them edits both encoders' parts.
  - the pooled embedding (text_encoder_2's projection, [B, 1280]) travels beside them in
    `bench.sampler.TextCondition`; `bench.sampler.encode_condition(pipe, texts)` returns both.
    Only `encode_pooled` sees the conditional branch's; per-step hooks do not (it does not
    change over steps).
  - every branch is a complete SDXL condition: the unconditional branch has its own pooled
    embedding (zeros when the negative prompt is empty and the model's config has
    `force_zeros_for_empty_prompt`, as diffusers), and each text of `extra_conditions` is
    encoded with its own pooled embedding, so SLD's concept and Fair Diffusion's edits need no
    SDXL code. add_time_ids ((h, w) original, (0, 0) crop, (h, w) target) are the same for
    every row of a batch, added by the sampler at the UNet call.
  - a method reads whether the pipeline is SDXL with `is_sdxl(pipe)` in `prepare`,
    `skip_reason` or `warnings` (keep the answer on self if a later hook needs it).

The per-step hooks get everything they may need about the step in `Step` (this batch's
scheduler, i, t, the guidance scale): they never reach into the pipeline for it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    prompts: list[str]
    seeds: list[int]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    guidance: float = 7.5  # the CFG scale this batch is sampled at (SLD scales its term by it)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Step:
    """Where the sampler is, handed to `guide` and `on_step`.

    `i` is the index into `scheduler.timesteps`, as in diffusers: with order-2 schedulers (Heun,
    DPM2) each model step appears twice in the timesteps, so `i` counts UNet evaluations, not
    model steps, and a warm-up of N means N entries of `scheduler.timesteps`."""

    scheduler: Any  # this batch's own scheduler, timesteps set (a copy of the pipeline's)
    i: int  # index into scheduler.timesteps
    t: torch.Tensor  # scheduler.timesteps[i]
    guidance: float  # the classifier-free guidance scale s_g of this batch
    n: int  # len(scheduler.timesteps)


@dataclass(frozen=True)
class Skip:
    """A skip connection of the UNet's decoder, handed to `skip_features` with its features, which
    hold every branch's rows: [uncond | cond | extra branches], B rows each."""

    block: int  # index into unet.up_blocks
    layer: int  # which of the block's resnets consumes it (0 first)
    stage: int  # width rank of the decoder features it joins: 0 the widest (FreeU's first stage), 1 the next; -1 unknown
    cond: slice  # rows of the conditional branch
    extras: tuple[slice, ...]  # rows of this adapter's own extra branches


@dataclass(frozen=True)
class NoParams:
    pass


class Adapter:
    """Base class for method adapters. Subclasses set `name`, `description` and `Params`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams  # frozen dataclass; fields with defaults = the parameters

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        check_finite(self.name, self.params)

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> "Adapter":
        """Build from `key=value` strings, converting by the Params field types."""
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in fields:
                raise ValueError(
                    f"method '{cls.name}' has no parameter '{key}'; parameters: {sorted(fields)}"
                )
            default = fields[key].default
            kwargs[key] = _convert(raw, default, f"{cls.name}:{key}")
        return cls(cls.Params(**kwargs))

    def skip_reason(self, pipe: Any) -> str | None:
        """None if the adapter can run on this pipeline, else a one-line reason (missing checkpoint)."""
        return None

    def warnings(self, pipe: Any, model_fp: str, guidance: Sequence[float], steps: int) -> list[str]:
        """One-line cautions about running on these settings (e.g. a checkpoint trained for
        another guidance): recorded in the manifest and printed beside the leaderboards."""
        return []

    def prepare(self, pipe: Any) -> None:
        pass

    def release(self, pipe: Any) -> None:
        """Undo what `prepare` patched in the shared pipeline."""

    def encode(self, cond: torch.Tensor, batch: Batch) -> torch.Tensor:
        return cond

    def negative(self, batch: Batch) -> list[str] | None:
        return None

    def encode_pooled(self, pooled: torch.Tensor, batch: Batch) -> torch.Tensor:
        return pooled

    def extra_conditions(self, batch: Batch) -> list[list[str]]:
        return []

    def init_state(self, batch: Batch) -> Any:
        return None

    def guide(self, eps_u: torch.Tensor, eps_c: torch.Tensor, extras: list[torch.Tensor],
              step: Step, state: Any) -> torch.Tensor | None:
        return None

    def on_step(self, latents: torch.Tensor, step: Step, state: Any) -> torch.Tensor:
        return latents

    def on_decoded(self, images: np.ndarray, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        return images, np.zeros(len(images), dtype=bool)

    def conditioning(self, cond: torch.Tensor, step: Step, state: Any) -> torch.Tensor | None:
        return None

    def skip_features(self, features: torch.Tensor, skip: Skip, step: Step,
                      state: Any) -> torch.Tensor | None:
        return None

    # True where on_step is overridden: the sampler then enables autograd around it.
    @classmethod
    def has_hook(cls, hook: str) -> bool:
        return getattr(cls, hook) is not getattr(Adapter, hook)


def is_sdxl(pipe: Any) -> bool:
    """True when the pipeline's UNet is conditioned SDXL's way ("text_time": pooled text
    embeddings and add_time_ids), as StableDiffusionXLPipeline's UNets are."""
    config = getattr(getattr(pipe, "unet", None), "config", None) or {}
    return config.get("addition_embed_type") == "text_time"


def _convert(raw: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)  # Adapter.__init__ rejects nan and inf
    except ValueError:
        raise ValueError(f"{where}: cannot read '{raw}' as {type(default).__name__}") from None
    return raw


def check_finite(method: str, params: Any) -> None:
    """Every float parameter finite, however the Params were built (flags, YAML or Python): a
    NaN scale samples black images, an infinite one NaNs or silently disables a method."""
    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{method}:{f.name}={value} is not a finite number; give one "
                             f"(default {f.default})")
