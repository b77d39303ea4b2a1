"""Erased Stable Diffusion (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023;
official code rohitgandikota/erasing): the UNet is fine-tuned so that its prediction for the
concept c points away from it,

    eps*(x_t, c, t) = eps(x_t, t) - eta [eps(x_t, c, t) - eps(x_t, t)]

with the frozen model's predictions as the target. ESD-x trains the cross-attention parameters
only (`attn2`), ESD-u the others (the official ICCV-era selection; `trainable`). On SDXL the same
objective with SDXL's conditioning (pooled embeddings and add_time_ids; official esd_sdxl.py).

`bench train esd` writes a checkpoint: `delta.safetensors` (trained W - W_old of every trained
parameter, by parameter name) and `card.json`. This adapter adds the deltas in `prepare` and
copies the original tensors back in `release` (methods.checkpoints.DeltaAdapter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.methods.checkpoints import DeltaAdapter, DeltaParams

VARIANTS = ("x", "u")


def trainable(unet: Any, variant: str) -> dict[str, torch.nn.Parameter]:
    """The parameters ESD trains, by name. x: every parameter of a cross-attention block (`attn2`:
    to_q, to_k, to_v, to_out), on SD and SDXL alike (the official esd_sdxl.py's 'esd-x'). u: every
    other parameter except the time embedding and the output layers (the official 'noxattn' rule,
    with the original UNet's `time_embed`/`out.` named as diffusers names them: `time_embedding.`,
    `conv_norm_out.`, `conv_out.`); on SDXL the official esd_sdxl.py's 'esd-u' (`sdxl_u`)."""
    if variant not in VARIANTS:
        raise ValueError(f"esd variant {variant!r}: choose x (cross-attention) or u (the rest)")
    if variant == "u" and getattr(unet.config, "addition_embed_type", None) == "text_time":
        return sdxl_u(unet)
    out = {}
    for name, p in unet.named_parameters():
        cross = "attn2" in name
        excluded = name.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))
        if (variant == "x" and cross) or (variant == "u" and not cross and not excluded):
            out[name] = p
    return out


def sdxl_u(unet: Any) -> dict[str, torch.nn.Parameter]:
    """ESD-u on SDXL as the official esd_sdxl.py selects it: the weights and biases of the linear
    and convolution layers inside the down/mid/up blocks, except cross-attention and the
    time-embedding projections (no norms, no conv_in/conv_out, no add_embedding). The official
    script calls it experimental on SDXL."""
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and "block" in name \
                and "attn2" not in name and "emb" not in name:
            out.update({f"{name}.{n}": p for n, p in module.named_parameters()})
    return out


@dataclass(frozen=True)
class ESDParams(DeltaParams):
    method: ClassVar[str] = "esd"


class ESD(DeltaAdapter):
    name = "esd"
    description = ("Erased Stable Diffusion: UNet fine-tuned away from a concept (ESD-x: "
                   "cross-attention, ESD-u: the rest), from `bench train esd`.")
    Params = ESDParams
    TARGETS = "parameters"
