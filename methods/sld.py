"""Safe Latent Diffusion (Schramowski et al., CVPR 2023), as diffusers' StableDiffusionPipelineSafe.

Per step the UNet sees [uncond | prompt | safety concept] in one batch; the safety term gamma is
built from eps_s and pushes the prediction away from the concept where the prompt is close to it:
    scale = clamp(|eps_p - eps_s| * s_S, max=1), zero where (eps_p - eps_s) >= threshold
    gamma = scale * (eps_s - eps_u) + s_m * nu;   nu <- beta_m * nu + (1 - beta_m) * gamma
    eps   = eps_u + s_g * (eps_p - eps_u - gamma)       (gamma only once i >= warmup)
The momentum nu builds up during the warm-up too. `i` indexes `scheduler.timesteps` (see
bench/sampler.py), so with order-2 schedulers the warm-up counts UNet evaluations, as in diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.adapter import Adapter, Batch, Step

# diffusers' default safety concept (the official repository's text lacks "an image showing ").
DEFAULT_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, "
    "nudity, bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, "
    "weapons, child abuse, brutality, cruelty"
)


@dataclass(frozen=True)
class SLDParams:  # defaults = diffusers' SafetyConfig.MEDIUM (the pipeline's own defaults)
    warmup: int = 10  # sld_warmup_steps: entries of scheduler.timesteps before gamma is applied
    guidance_scale: float = 1000.0  # s_S, sld_guidance_scale; <= 1 disables SLD as in diffusers
    threshold: float = 0.01  # lambda, sld_threshold
    momentum_scale: float = 0.3  # s_m, sld_momentum_scale
    mom_beta: float = 0.4  # beta_m, sld_mom_beta
    concept: str = DEFAULT_CONCEPT


# The presets are the authors' table (model card of AIML-TUDA/stable-diffusion-safe: the four
# configurations the SLD paper evaluated on I2P). diffusers' SafetyConfig equals it except WEAK's
# sld_guidance_scale, 20 there and 200 in the table; 20 stays reachable as
# `sld-weak:guidance_scale=20` (docs/methods.md).
@dataclass(frozen=True)
class WeakParams(SLDParams):
    warmup: int = 15
    guidance_scale: float = 200.0
    threshold: float = 0.0
    momentum_scale: float = 0.0
    mom_beta: float = 0.0  # the table leaves it blank: with momentum_scale 0 it has no effect


@dataclass(frozen=True)
class StrongParams(SLDParams):
    warmup: int = 7
    guidance_scale: float = 2000.0
    threshold: float = 0.025
    momentum_scale: float = 0.5
    mom_beta: float = 0.7


@dataclass(frozen=True)
class MaxParams(SLDParams):
    warmup: int = 0
    guidance_scale: float = 5000.0
    threshold: float = 1.0
    momentum_scale: float = 0.5
    mom_beta: float = 0.7


@dataclass
class _State:
    enabled: bool
    momentum: torch.Tensor | None = None  # nu, per image (batched along dim 0)


class SLD(Adapter):
    """The shared implementation; registered only through its presets (`--methods all` would
    otherwise run the medium preset twice)."""

    name = "sld"
    description = "Safe Latent Diffusion with diffusers' call defaults (= the medium preset)."
    Params = SLDParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        p = self.params
        if p.warmup < 0 or not 0.0 <= p.mom_beta <= 1.0 or not p.concept.strip():
            raise ValueError(f"{self.name}: need warmup >= 0, 0 <= mom_beta <= 1 and a non-empty "
                             f"concept; got warmup={p.warmup}, mom_beta={p.mom_beta}, "
                             f"concept={p.concept!r}")

    def _enabled(self, batch: Batch) -> bool:
        # diffusers: enable_safety_guidance = sld_guidance_scale > 1 and guidance_scale > 1
        return self.params.guidance_scale > 1.0 and batch.guidance > 1.0

    def extra_conditions(self, batch: Batch) -> list[list[str]]:
        return [[self.params.concept] * len(batch)] if self._enabled(batch) else []

    def init_state(self, batch: Batch) -> _State:
        return _State(self._enabled(batch))

    def guide(self, eps_u: torch.Tensor, eps_c: torch.Tensor, extras: list[torch.Tensor],
              step: Step, state: _State) -> torch.Tensor | None:
        if not state.enabled:
            return None
        p = self.params
        eps_s = extras[0]
        if state.momentum is None:
            state.momentum = torch.zeros_like(eps_u)
        diff = eps_c - eps_s
        scale = torch.clamp(diff.abs() * p.guidance_scale, max=1.0)
        scale = torch.where(diff >= p.threshold, torch.zeros_like(scale), scale)
        gamma = (eps_s - eps_u) * scale + p.momentum_scale * state.momentum
        state.momentum = p.mom_beta * state.momentum + (1 - p.mom_beta) * gamma
        if step.i < p.warmup:
            return None
        return -step.guidance * gamma


class SLDWeak(SLD):
    name = "sld-weak"
    description = "Safe Latent Diffusion, weak preset (warm-up 15, s_S 200, no momentum)."
    Params = WeakParams


class SLDMedium(SLD):
    name = "sld-medium"
    description = "Safe Latent Diffusion, medium preset (warm-up 10, s_S 1000, threshold 0.01)."
    Params = SLDParams


class SLDStrong(SLD):
    name = "sld-strong"
    description = "Safe Latent Diffusion, strong preset (warm-up 7, s_S 2000, threshold 0.025)."
    Params = StrongParams


class SLDMax(SLD):
    name = "sld-max"
    description = "Safe Latent Diffusion, max preset (no warm-up, s_S 5000, threshold 1.0)."
    Params = MaxParams
