"""`bench train esd`: fine-tune the UNet away from a concept (ESD, Gandikota et al., ICCV 2023)
and write the trained parameters' change as a checkpoint (`delta.safetensors` + `card.json`).

Each iteration, as the official code (rohitgandikota/erasing, esd_sd.py) does: draw a step k
uniformly from the DDIM schedule's `--ddim-steps` steps, generate the concept with the frozen
model at `--start-guidance` for the first k DDIM steps (a partial generation, x_t at the noise
level of timestep t = timesteps[k]), evaluate the frozen model there with the concept and with the
empty prompt, and take one Adam step on

    || eps_esd(x_t, c, t) - (eps(x_t, t) - eta [eps(x_t, c, t) - eps(x_t, t)]) ||^2 (mean)

over the variant's parameters (batch size 1, as the official code). On SDXL every UNet call also
gets the pooled embedding and add_time_ids (official esd_sdxl.py; `conditions`); that script's
defaults differ from the paper's: --iterations 200 --lr 2e-4 (ESD-x) --start-guidance 2.

`--dtype` is the frozen model's (the partial generation and the targets). The trained copy and
Adam's state are float32 whatever it is (master weights): Adam moves a parameter by about lr per
step, and lr 1e-5 is below float16's and bfloat16's resolution of most UNet weights (the official
esd_sd.py trains both UNets in bfloat16, where those steps round away).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from bench.methods.checkpoints import (DELTA, add_dtype, architecture, check_finite,
                                       nonnegative_float, positive_int)
from bench.methods.esd import VARIANTS, trainable


@dataclass(frozen=True)
class ESDConfig:
    concept: str
    variant: str = "x"
    eta: float = 1.0  # negative guidance (paper 1; the diffusers-era script's default is 2)
    iterations: int = 1000  # paper 1000 (the diffusers-era script: 200)
    lr: float = 1e-5  # paper 1e-5 (the diffusers-era script: 5e-5)
    start_guidance: float = 3.0  # CFG of the partial generation (official 3)
    ddim_steps: int = 50  # official 50
    seed: int = 0


def ddim(pipe: Any, steps: int) -> Any:
    """A DDIM scheduler on the model's own noise schedule, set to `steps` steps; clip_sample off,
    as StableDiffusionPipeline sets it for every SD scheduler (DDIM's default is on)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(steps)
    return sched


@dataclass(frozen=True)
class XLCondition:
    """One SDXL condition for direct UNet calls: hidden states, pooled embedding, add_time_ids.
    On SD a condition is the hidden-states tensor alone."""
    hidden: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor


Condition = Union[torch.Tensor, XLCondition]


def _cat(a: Condition, b: Condition) -> Condition:
    if isinstance(a, XLCondition) and isinstance(b, XLCondition):
        return XLCondition(*(torch.cat([x, y]) for x, y in
                             ((a.hidden, b.hidden), (a.pooled, b.pooled), (a.time_ids, b.time_ids))))
    return torch.cat([a, b])  # type: ignore[list-item]


def _to(cond: Condition, dtype: torch.dtype) -> Condition:
    if isinstance(cond, XLCondition):
        return XLCondition(*(x.to(dtype) for x in (cond.hidden, cond.pooled, cond.time_ids)))
    return cond.to(dtype)


def eps(unet: Any, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
    if isinstance(cond, XLCondition):
        added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        return unet(x, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added,
                    return_dict=False)[0]
    return unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


def conditions(pipe: Any, concept: str, size: int) -> tuple[Condition, Condition, Condition]:
    """(concept, empty prompt for the target, unconditional branch of the partial generation).
    On SD the last two are the encoded "". On SDXL, as esd_sdxl.py: the target's eps(x_t, t) is
    the encoded "" (it passes negative_prompt=""), the partial generation's unconditional branch is
    the pipeline's default (zeros with force_zeros_for_empty_prompt), add_time_ids for size x size."""
    from bench.adapter import is_sdxl
    from bench.sampler import add_time_ids, encode_condition, encode_text, uncond_condition

    if not is_sdxl(pipe):
        cond, empty = encode_text(pipe, [concept]), encode_text(pipe, [""])
        return cond, empty, empty
    c, e = encode_condition(pipe, [concept]), encode_condition(pipe, [""])
    z = uncond_condition(pipe, [""], c)
    ids = add_time_ids(pipe, size, size, 1, c.hidden.dtype)
    return tuple(XLCondition(x.hidden, x.pooled, ids) for x in (c, e, z))  # type: ignore[return-value]


@torch.no_grad()
def partial_latents(unet: Any, sched: Any, k: int, cond: Condition, uncond: Condition,
                    guidance: float, noise: torch.Tensor) -> torch.Tensor:
    """x_t after the first k DDIM steps (eta 0) of a classifier-free-guided generation of the
    concept from `noise` (the official pipeline call with run_till_timestep=k, output 'latent')."""
    latents = noise * sched.init_noise_sigma
    embeds = _cat(uncond, cond)
    for t in sched.timesteps[:k]:
        e_u, e_c = eps(unet, sched.scale_model_input(torch.cat([latents] * 2), t), t, embeds).chunk(2)
        latents = sched.step(e_u + guidance * (e_c - e_u), t, latents, eta=0.0, return_dict=False)[0]
    return latents


def esd_target(eps_c: torch.Tensor, eps_u: torch.Tensor, eta: float) -> torch.Tensor:
    """The paper's eq. 5 target: eps(x_t, t) - eta [eps(x_t, c, t) - eps(x_t, t)]."""
    return eps_u - eta * (eps_c - eps_u)


def esd_loss(esd_unet: Any, frozen: Any, x_t: torch.Tensor, t: torch.Tensor, cond: Condition,
             uncond: Condition, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean squared error of the trained UNet's concept prediction to the target, the target);
    the target comes from the frozen model, without gradient, in its dtype; the loss is taken in
    the trained UNet's (float32 when the frozen model is half)."""
    with torch.no_grad():
        target = esd_target(eps(frozen, x_t, t, cond), eps(frozen, x_t, t, uncond), eta)
    dtype = esd_unet.dtype
    pred = eps(esd_unet, x_t.to(dtype), t, _to(cond, dtype))
    return torch.nn.functional.mse_loss(pred, target.to(dtype)), target


def train(pipe: Any, cfg: ESDConfig, log_every: int = 100) -> tuple[dict[str, torch.Tensor], list[float]]:
    """`<parameter name>` -> trained W - W_old (float32) for the variant's parameters, and the
    loss of every iteration. `pipe.unet` is the frozen model (in the pipeline's dtype) and is left
    unchanged; the trained copy is float32."""
    from bench.models import native_size

    frozen = pipe.unet
    frozen.requires_grad_(False)
    frozen_dtype = str(frozen.dtype).removeprefix("torch.")
    model = copy.deepcopy(frozen).float()  # master weights (the module docstring)
    params = trainable(model, cfg.variant)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    cond, uncond, sampling_uncond = conditions(pipe, cfg.concept, native_size(pipe))
    sched = ddim(pipe, cfg.ddim_steps)
    side = native_size(pipe) // pipe.vae_scale_factor
    shape = (1, frozen.config.in_channels, side, side)
    rng = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    for it in range(cfg.iterations):
        k = int(rng.integers(cfg.ddim_steps))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
        x_t = partial_latents(frozen, sched, k, cond, sampling_uncond, cfg.start_guidance,
                              noise.to(frozen.device, frozen.dtype))
        loss, target = esd_loss(model, frozen, x_t, sched.timesteps[k], cond, uncond, cfg.eta)
        where = f"at iteration {it} (DDIM step {k}, frozen model in {frozen_dtype})"
        check_finite("esd", float(target.float().abs().sum()), f"the frozen model's target {where}",
                     "train with --dtype float32")
        check_finite("esd", loss.item(), f"the loss {where}", f"lower --lr (now {cfg.lr:g})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (it + 1) % log_every == 0:
            print(f"esd iteration {it + 1}/{cfg.iterations}: loss (last {log_every}) "
                  f"{np.mean(losses[-log_every:]):.5f}", flush=True)
    own = dict(frozen.named_parameters())
    deltas = {n: (p.detach().double() - own[n].detach().double()).float().cpu().contiguous()
              for n, p in params.items()}
    return deltas, losses


def write(out: Path, deltas: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(deltas, str(out / DELTA))
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number > 0")
    return value


def parser() -> argparse.ArgumentParser:
    d = ESDConfig(concept="")
    ap = argparse.ArgumentParser(prog="bench train esd", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="model name, alias, hub id or diffusers dir")
    ap.add_argument("--concept", required=True, help="the text to erase (e.g. 'nudity')")
    ap.add_argument("--variant", choices=VARIANTS, default=d.variant,
                    help="x: cross-attention parameters (ESD-x); u: the others (ESD-u)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--eta", type=nonnegative_float, default=d.eta, help="negative guidance")
    ap.add_argument("--iterations", type=positive_int, default=d.iterations)
    ap.add_argument("--lr", type=positive_float, default=d.lr)
    ap.add_argument("--start-guidance", type=nonnegative_float, default=d.start_guidance,
                    help="CFG scale of the partial generation that gives x_t")
    ap.add_argument("--ddim-steps", type=positive_int, default=d.ddim_steps)
    ap.add_argument("--name", default="", help="the card's attribute, naming a shipped "
                    "esd-<name>/ checkpoint (default: erase)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=None)
    add_dtype(ap, "the frozen model's partial generations and targets run in it; the trained copy "
              "and Adam's state are float32 (master weights: Adam's steps of about --lr are below "
              "half precision's resolution of the weights; the official esd_sd.py trains in "
              "bfloat16, where they round away)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from bench.models import dtype_name, fingerprint, load_pipeline

    a = parser().parse_args(argv)
    cfg = ESDConfig(concept=a.concept, variant=a.variant, eta=a.eta, iterations=a.iterations,
                    lr=a.lr, start_guidance=a.start_guidance, ddim_steps=a.ddim_steps, seed=a.seed)
    start = time.perf_counter()
    pipe = load_pipeline(a.model, a.device, a.dtype)
    deltas, losses = train(pipe, cfg)
    tail = max(1, len(losses) // 10)
    card: dict[str, Any] = {"method": "esd", "model": a.model, "model_fingerprint": fingerprint(pipe),
                            "architecture": architecture(pipe),
                            "attribute": a.name or "erase", **asdict(cfg),
                            "dtype": dtype_name(pipe),
                            "parameters": len(deltas),
                            "values": int(sum(d.numel() for d in deltas.values())),
                            "loss_first_tenth": round(float(np.mean(losses[:tail])), 6),
                            "loss_last_tenth": round(float(np.mean(losses[-tail:])), 6),
                            "seconds": round(time.perf_counter() - start, 3),
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write(a.out, deltas, card)
    norm = sum(float(d.norm() ** 2) for d in deltas.values()) ** 0.5
    print(f"wrote {a.out}: ESD-{a.variant} on {card['values']:,} values of {len(deltas)} tensors "
          f"(|delta| {norm:.4g}); loss {card['loss_first_tenth']:.5f} -> "
          f"{card['loss_last_tenth']:.5f} in {card['seconds']:.1f} s")
    return 0
