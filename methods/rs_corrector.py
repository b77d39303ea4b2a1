"""RS-Corrector (Jiang et al., "RS-Corrector: Correcting the Racial Stereotypes in Latent Diffusion
Models", arXiv 2312.04810), as we reconstruct it: the paper's method details are not public.

A noise-aware latent preference model R(z_t, t) (a small conv net with a timestep embedding;
prompt-agnostic, see docs/methods.md) classifies a latent into one of the attribute's groups or
"distorted". It is trained by methods/rs_corrector_train.py on the model's own sampling
trajectories for group-specified prompts; the "distorted" class (corrupted latents) is the quality
term: raising p_R(target) also lowers the probability of an out-of-distribution latent.

At inference every image gets a target group, drawn from its seed alone (uniform, or
`distribution=0.2/0.3/0.5` in the card's group order; a prompt that requests a group of this
attribute keeps it), and before each step i in [start, stop) the latent is moved k times:
    z_t <- z_t + eta * g / RMS(g),  g = grad_z log p_R(target | z_t, t)   (per image)
(or z_t + eta * g with normalize=false), and with keep_norm (the default) each image's stepped latent
is scaled back to the norm it had before the step.
R sees latents in the unit-variance space the UNet sees (see `latent_input_scale`).
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from bench.adapter import Batch, Step
from bench.spec import SpecError
from bench.methods.checkpoints import CheckpointedAdapter, CheckpointError, read_card, resolve_checkpoint

DISTORTED = "distorted"


def timestep_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PreferenceNet(nn.Module):
    """R(z_t, t): logits over the groups + "distorted". The timestep scales and shifts the first
    feature map (FiLM); global pooling makes it resolution-independent. No batch statistics, so an
    image's logits never depend on its batch."""

    def __init__(self, n_classes: int, in_channels: int = 4, width: int = 32) -> None:
        super().__init__()
        w = width
        self.temb = nn.Sequential(nn.Linear(64, 2 * w), nn.SiLU(), nn.Linear(2 * w, 2 * w))
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1)
        layers: list[nn.Module] = []
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)):
            layers += [nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, stride=2, padding=1)]
        layers += [nn.GroupNorm(8, 4 * w), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.temb(timestep_embedding(t)).chunk(2, dim=-1)
        h = self.stem(z) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.head(self.body(h))


def latent_input_scale(scheduler: Any, t: torch.Tensor | float) -> float:
    """Factor taking the sampler's latents at timestep t into the unit-variance DDPM space:
    1 for DDPM-type schedulers (init_noise_sigma 1: DDIM, PNDM, DPM-Solver), sqrt(alpha_bar_t) =
    1 / sqrt(sigma_t^2 + 1) for sigma-space ones (Euler, Heun, LMS), with alpha_bar at the
    nearest integer timestep, i.e. what `scale_model_input` does up to that rounding."""
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) == 1.0:
        return 1.0
    alphas = scheduler.alphas_cumprod
    return float(alphas[min(int(round(float(t))), len(alphas) - 1)].sqrt())


def draw_target(seed: int, probs: Sequence[float]) -> int:
    """A group index from the image's seed alone (its own RNG stream, not the latents')."""
    u = random.Random(f"rs-corrector:{int(seed)}").random()
    return min(bisect.bisect_right(list(itertools.accumulate(probs)), u), len(probs) - 1)


def parse_distribution(text: str, groups: Sequence[str]) -> list[float]:
    """'' -> uniform; '0.2/0.3/0.5' -> one probability per group (in the card's group order)."""
    if not text:
        return [1.0 / len(groups)] * len(groups)
    hint = (f"rs-corrector: distribution={text} needs {len(groups)} non-negative numbers "
            f"separated by '/' summing to 1, one per group {'/'.join(groups)}")
    try:
        probs = [float(x) for x in text.split("/")]
    except ValueError:
        raise SpecError(hint) from None
    if len(probs) != len(groups) or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
        raise SpecError(hint)
    return probs


def load_preference(path: Any, card: dict[str, Any], device: Any = "cpu") -> PreferenceNet:
    from safetensors.torch import load_file

    net = PreferenceNet(len(card["labels"]), card["in_channels"], card["width"])
    net.load_state_dict(load_file(str(path / "preference.safetensors")))
    return net.to(device).eval().requires_grad_(False)


@dataclass(frozen=True)
class RSCorrectorParams:
    checkpoint: str = ""  # a `bench train rs-corrector` directory; "" -> the model's default
    attribute: str = ""  # which default checkpoint (rs-corrector-<attribute>); "" -> the only one
    # Defaults chosen on the synthetic model (25 DDIM steps, guidance 7.5, 32 images per neutral
    # prompt; docs/methods.md has the sweep). Raw gradient steps are heavy-tailed (median RMS
    # 0.002, max 1.6 at eta=4): the few huge ones flip groups and break faces, the rest do
    # nothing; normalised steps move every image alike and keep faces. Without keep_norm the
    # steps add energy the UNet renders as extra content (there: the hazard, even for random
    # directions of the same size).
    eta: float = 0.6  # per-image RMS of each latent update (normalize=true), else gradient scale
    normalize: bool = True  # step = eta * g / RMS(g) per image; false: eta * g
    keep_norm: bool = True  # scale each image's stepped latent back to its norm before the step
    k: int = 3  # inner iterations per corrected step
    start: int = 0  # first corrected step index (into scheduler.timesteps)
    stop: int = 6  # first step index no longer corrected
    distribution: str = ""  # target-group probabilities "p1/p2/...", card's group order; "" uniform


@dataclass
class _State:
    targets: torch.Tensor  # [B] group index per image


class RSCorrector(CheckpointedAdapter):
    name = "rs-corrector"
    description = ("RS-Corrector (reconstructed): gradient steps on the latent toward a per-image "
                   "target group under a trained latent preference model.")
    Params = RSCorrectorParams
    WEIGHTS = ("preference.safetensors",)

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        p = self.params
        if p.k < 0 or p.start < 0 or p.stop < p.start:
            raise SpecError(f"{self.name}: need k >= 0 and 0 <= start <= stop; "
                            f"got k={p.k}, start={p.start}, stop={p.stop}")
        if p.eta < 0:  # a step size (an RMS with normalize=true): negative steps away from the target
            raise SpecError(f"{self.name}:eta={p.eta}: must be >= 0")
        self.net: PreferenceNet | None = None
        self.card: dict[str, Any] = {}
        self.probs: list[float] = []

    def prepare(self, pipe: Any) -> None:
        p = self.params
        path, card = self.load_card(pipe)
        channels = pipe.unet.config.in_channels
        if card["in_channels"] != channels:
            raise CheckpointError(f"{self.name}: {path} was trained on {card['in_channels']}-channel "
                                  f"latents, this model has {channels}; retrain for this model")
        self.probs = parse_distribution(p.distribution, card["groups"])
        self.net = load_preference(path, card, pipe.device)
        self.card = card

    def warnings(self, pipe: Any, model_fp: str, guidance: Sequence[float], steps: int) -> list[str]:
        """R knows only the trajectories it was trained on: another guidance, step count or model
        puts its inputs off that distribution (at guidance 1 the synthetic model's R loses 23
        points of occupation accuracy; docs/methods.md)."""
        path = resolve_checkpoint(self.name, self.params.checkpoint, self.params.attribute, pipe)
        if path is None:  # skipped: nothing to warn about
            return []
        card = read_card(path, self.name)
        fix = "retrain with `bench train rs-corrector` on these settings, or pass checkpoint=DIR"
        out = []
        other = [g for g in guidance if card.get("guidance") not in (None, g)]
        if other:
            out.append(f"{self.name}: {path} was trained on guidance-{card['guidance']:g} "
                       f"trajectories, this run samples at guidance {', '.join(f'{g:g}' for g in other)}; {fix}")
        if card.get("sample_steps") not in (None, steps):
            out.append(f"{self.name}: {path} was trained on {card['sample_steps']}-step "
                       f"trajectories, this run samples {steps} steps; {fix}")
        if card.get("model_fingerprint") not in (None, model_fp):
            out.append(f"{self.name}: {path} was trained on a pipeline with fingerprint "
                       f"{card['model_fingerprint']}, this one is {model_fp} (other weights or "
                       f"scheduler); {fix}")
        return out

    def targets(self, batch: Batch) -> list[int]:
        """Per image: the group its prompt requests for this attribute, else one drawn from its seed."""
        groups = self.card["groups"]
        out = []
        for n, seed in enumerate(batch.seeds):
            meta = batch.metadata[n] if n < len(batch.metadata) else {}
            asked = meta.get("group") if meta.get("attribute") == self.card["attribute"] else None
            out.append(groups.index(asked) if asked in groups else draw_target(seed, self.probs))
        return out

    def init_state(self, batch: Batch) -> _State:
        if self.net is None:
            raise RuntimeError(f"{self.name}: prepare(pipe) must run before sampling")
        device = next(self.net.parameters()).device
        return _State(torch.tensor(self.targets(batch), device=device))

    def log_prob(self, latents: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor:
        """log p_R(target | z_t, t) per image, [B]."""
        assert self.net is not None
        t = step.t
        scale = latent_input_scale(step.scheduler, t)
        tt = torch.as_tensor(t, device=latents.device).float().expand(latents.shape[0])
        logits = self.net(latents.float() * scale, tt)
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)

    def on_step(self, latents: torch.Tensor, step: Step, state: _State) -> torch.Tensor:
        p = self.params
        if not p.start <= step.i < p.stop or p.eta == 0:
            return latents
        for _ in range(p.k):
            z = latents.detach().requires_grad_(True)
            grad, = torch.autograd.grad(self.log_prob(z, step, state.targets).sum(), z)
            if p.normalize:
                rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12)
                grad = grad / _per_image(rms, grad)
            new = z + p.eta * grad
            if p.keep_norm:  # stay on the latent's shell: added energy renders as artefacts
                scale = z.flatten(1).norm(dim=1) / new.flatten(1).norm(dim=1).clamp(min=1e-12)
                new = new * _per_image(scale, new)
            latents = new.detach()
        return latents


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-image vector [B] shaped to broadcast over x [B, ...]."""
    return v.view(-1, *[1] * (x.dim() - 1))
