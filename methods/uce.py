"""Unified Concept Editing (Gandikota et al., WACV 2024; official code
rohitgandikota/unified-concept-editing): a closed-form edit of every cross-attention block's key
and value projections (attn2.to_k, attn2.to_v). For each projection W_old,

    W = (sum_i v_i* c_i^T + lam W_old + sum_j W_old c_j c_j^T)
        (sum_i c_i c_i^T + lam I + sum_j c_j c_j^T)^-1

c_i are the edited concepts' text embeddings (the last word token of each concept text, as the
official scripts take them), v_i* their target outputs, c_j the preserved concepts' embeddings,
each sum weighted by the edit/preserve scales. The `lam` terms are the official code's
regulariser (preserving the identity basis), which the paper writes as part of sum_j.
Erasure: v_i* = W_old c_guide (the edited concept answers like its guide concept).
Debiasing: v_i* = W_old c_i + sum_k alpha_ik W_old c_ik (the profession's output moved toward a
mix of its groups' outputs; `bench train uce --mode debias` adjusts alpha until the generated
groups balance).

`bench train uce` writes a checkpoint: `delta.safetensors` (W - W_old for each edited projection,
named by module) and `card.json`. This adapter adds the deltas in `prepare` and copies the
original tensors back in `release`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from bench.methods.checkpoints import DELTA, DeltaAdapter, DeltaParams


def projections(unet: Any) -> dict[str, torch.nn.Linear]:
    """Every cross-attention key and value projection, by module name (the official selection:
    'attn2' in the name, ending in to_k or to_v)."""
    return {name: m for name, m in unet.named_modules()
            if "attn2" in name and name.endswith(("to_k", "to_v")) and isinstance(m, torch.nn.Linear)}


@torch.no_grad()
def concept_embeddings(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """[N, D] float64: each text's embedding at its last word token (the token before the end
    token), as the official scripts select it."""
    from bench.sampler import encode_text

    tok = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    last = tok.attention_mask.sum(1) - 2  # "" -> 0, the start token (the official "uncond" guide)
    emb = encode_text(pipe, texts).double()
    return emb[torch.arange(len(texts)), last.to(emb.device)]


def closed_form(w_old: torch.Tensor, edit: torch.Tensor, targets: torch.Tensor,
                preserve: torch.Tensor, lam: float, edit_scale: float = 1.0,
                preserve_scale: float = 1.0) -> torch.Tensor:
    """The UCE solution in float64. w_old [out, in]; edit [n, in] with targets [n, out];
    preserve [m, in] (their targets are W_old c_j)."""
    w = w_old.double()
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    lhs = lam * w + edit_scale * targets.T @ edit + preserve_scale * (w @ preserve.T) @ preserve
    rhs = lam * eye + edit_scale * edit.T @ edit + preserve_scale * preserve.T @ preserve
    # W rhs = lhs with rhs symmetric positive definite (lam > 0): solve instead of inverting.
    return torch.linalg.solve(rhs, lhs.T).T


@dataclass(frozen=True)
class UCEParams(DeltaParams):
    method: ClassVar[str] = "uce"


class UCE(DeltaAdapter):
    name = "uce"
    description = ("Unified Concept Editing: closed-form edit of the cross-attention key/value "
                   "projections (erase a concept or debias professions), from `bench train uce`.")
    Params = UCEParams
    TARGETS = "cross-attention projections"

    def targets(self, unet: Any) -> dict[str, torch.Tensor]:
        return {f"{n}.weight": m.weight for n, m in projections(unet).items()}
