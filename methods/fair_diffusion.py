"""Fair Diffusion (Friedrich et al. 2023): semantic guidance (SEGA) toward one group concept and
away from the others, the target group drawn per image so that groups balance.

The edit term is SEGA's, as in diffusers' SemanticStableDiffusionPipeline (and the authors'
semdiffusers, which Fair Diffusion's official code calls), for concepts c with the shared settings:
    d_c  = +-s_e * (eps_c_concept - eps_u)         (minus for concepts edited away from)
    d_c  = d_c where |d_c| >= the per-(image, channel) `threshold`-quantile of |d_c|, else 0
    edit = sum_c d_c + s_m * nu;   nu <- beta_m * nu + (1 - beta_m) * edit
    eps  = eps_u + s_g * (eps_p - eps_u) + edit     (edit only once i >= warmup)
Unlike SLD the edit term is not multiplied by s_g. With the default two groups an image's edit is
["male person" reversed, "female person"] or the mirror, exactly the official generate_images.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.adapter import Adapter, Batch, Step

_SALT = 0xFA1D  # separates the group draw from every other use of the image's seed


@dataclass(frozen=True)
class FairDiffusionParams:  # defaults: the official generate_images.py (edit mode)
    groups: str = "male person|female person"  # '|'-separated group concepts
    target: str = ""  # a group to always edit toward; "" draws one per image from its seed
    edit_guidance_scale: float = 4.0
    warmup: int = 5  # entries of scheduler.timesteps before the edit is applied
    threshold: float = 0.95  # quantile of |edit| below which it is zeroed (keeps the top 5%)
    momentum_scale: float = 0.5
    mom_beta: float = 0.6


@dataclass
class _State:
    enabled: bool
    momentum: torch.Tensor | None = None


def draw_group(seed: int, n_groups: int) -> int:
    """The index of the group an image is edited toward: uniform, a pure function of its seed."""
    return int(np.random.default_rng([_SALT, int(seed)]).integers(n_groups))


class FairDiffusion(Adapter):
    name = "fair-diffusion"
    description = "Fair Diffusion: SEGA edits toward a per-image group concept, away from the others."
    Params = FairDiffusionParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        p = self.params
        self.groups = [g.strip() for g in p.groups.split("|")]
        if len(self.groups) < 2 or "" in self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"{self.name}:groups={p.groups!r}: need two or more distinct "
                             f"'|'-separated concepts, e.g. 'male person|female person'")
        if p.target and p.target not in self.groups:
            raise ValueError(f"{self.name}:target={p.target!r} is not one of groups {self.groups}")
        if not 0.0 <= p.threshold <= 1.0 or p.warmup < 0 or not 0.0 <= p.mom_beta <= 1.0:
            raise ValueError(f"{self.name}: need 0 <= threshold <= 1, warmup >= 0 and "
                             f"0 <= mom_beta <= 1; got {p.threshold}, {p.warmup}, {p.mom_beta}")
        if p.edit_guidance_scale < 0:  # the edit's direction comes from the groups, not the sign
            raise ValueError(f"{self.name}:edit_guidance_scale={p.edit_guidance_scale}: must be >= 0")

    def targets(self, batch: Batch) -> list[str]:
        if self.params.target:
            return [self.params.target] * len(batch)
        return [self.groups[draw_group(s, len(self.groups))] for s in batch.seeds]

    def extra_conditions(self, batch: Batch) -> list[list[str]]:
        """Branches 0..k-2: each image's other groups (edited away from); branch k-1: its target."""
        if batch.guidance <= 1.0:  # SEGA edits only under classifier-free guidance
            return []
        rows = [[g for g in self.groups if g != t] + [t] for t in self.targets(batch)]
        return [list(column) for column in zip(*rows)]

    def init_state(self, batch: Batch) -> _State:
        return _State(batch.guidance > 1.0)

    def guide(self, eps_u: torch.Tensor, eps_c: torch.Tensor, extras: list[torch.Tensor],
              step: Step, state: _State) -> torch.Tensor | None:
        if not state.enabled:
            return None
        p = self.params
        edit = torch.zeros_like(eps_u)
        for c, eps_e in enumerate(extras):
            sign = 1.0 if c == len(extras) - 1 else -1.0
            d = (eps_e - eps_u) * sign * p.edit_guidance_scale
            # torch.quantile needs float32; per image and channel over the spatial positions
            cut = torch.quantile(d.abs().flatten(start_dim=2).float(), p.threshold, dim=2)
            edit = edit + torch.where(d.abs() >= cut.to(d.dtype)[:, :, None, None], d,
                                      torch.zeros_like(d))
        if state.momentum is None:
            state.momentum = torch.zeros_like(edit)
        edit = edit + p.momentum_scale * state.momentum
        state.momentum = p.mom_beta * state.momentum + (1 - p.mom_beta) * edit
        return edit if step.i >= p.warmup else None
