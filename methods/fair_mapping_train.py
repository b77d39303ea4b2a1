"""`bench train fair-mapping`: fit the Fair Mapping affine map on the frozen text encoder alone.

Per occupation and template there is a neutral prompt ("a photo of the face of a doctor") and one
prompt per group ("... of a female doctor"). With M(x) = W x + b applied per token (W = I, b = 0
at the start), the loss is L_text + lam * L_fair:
  L_text = E_x ||M(x) - x||^2 / E_x ||x||^2 over every token of every training prompt (neutral
           and group-specified): the map must keep prompts' meaning. M is affine, so this is
           computed exactly from the tokens' first and second moments, never storing the tokens.
  L_fair = mean over neutral prompts n and groups k of (d_k - mean_j d_j)^2 / c, where
           d_k = ||pool(M(E(n))) - pool(E(g_k))|| / sqrt(D), pool = mean over the 77 tokens
           (alignment-free: "female" shifts the later tokens by one position), the group
           embeddings are the fixed anchors, and c = mean d_k^2 at the start (so lam is unitless).
Because pooling commutes with an affine map, both terms cost O(D^2) per step whatever the data.
On SDXL, E(.) is both encoders' hidden states concatenated (the UNet's cross-attention input).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from bench.methods.checkpoints import (add_dtype, check_finite, nonnegative_float, positive_int,
                                       trainer_parser)
from bench.methods.fair_mapping import AttributeSpec, default_occupations, get_spec, read_lines


@dataclass
class TextStats:
    second: torch.Tensor  # E[x x^T] over all tokens of all training prompts, [D, D]
    mean: torch.Tensor  # E[x], [D]
    neutral: torch.Tensor  # token-mean embeddings of the neutral prompts, [N, D]
    groups: torch.Tensor  # token-mean embeddings of their group-specified versions, [N, K, D]
    dist0: float = 1.0  # mean d_k^2 at the identity map: L_fair's unit


def build_prompts(spec: AttributeSpec, occupations: Sequence[str]
                  ) -> tuple[list[str], list[list[str]]]:
    """Neutral prompts and, for each, its group-specified versions in `spec.groups` order."""
    from bench.prompt_sets.occupations import with_article

    neutral, grouped = [], []
    for occ in occupations:
        for tpl in spec.templates:
            neutral.append(tpl.format(noun=with_article(spec.noun(occ, None))))
            grouped.append([tpl.format(noun=with_article(spec.noun(occ, g)))
                            for g in range(len(spec.groups))])
    return neutral, grouped


@torch.no_grad()
def text_stats(pipe: object, neutral: list[str], grouped: list[list[str]],
               batch_size: int = 64) -> TextStats:
    from bench.sampler import encode_text

    texts = neutral + [t for row in grouped for t in row]
    pooled, second, total, count = [], None, None, 0
    for start in range(0, len(texts), batch_size):
        x = encode_text(pipe, texts[start:start + batch_size]).double()  # [b, 77, D]
        pooled.append(x.mean(1))
        flat = x.reshape(-1, x.shape[-1])
        second = flat.T @ flat if second is None else second + flat.T @ flat
        total = flat.sum(0) if total is None else total + flat.sum(0)
        count += flat.shape[0]
    pool = torch.cat(pooled).float()
    n, k = len(neutral), len(grouped[0])
    stats = TextStats((second / count).float(), (total / count).float(), pool[:n],
                      pool[n:].reshape(n, k, -1))
    stats.dist0 = float((_distances(stats.neutral, stats.groups) ** 2).mean())
    return stats


def _distances(neutral: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    return (neutral[:, None, :] - groups).norm(dim=-1) / math.sqrt(neutral.shape[-1])


def losses(weight: torch.Tensor, bias: torch.Tensor, s: TextStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_text, L_fair) for the map x -> weight @ x + bias."""
    a = weight - torch.eye(weight.shape[0], device=weight.device)
    err = (a @ s.second * a).sum() + 2 * bias @ (a @ s.mean) + bias @ bias  # E||a x + b||^2
    text = err / torch.trace(s.second)
    d = _distances(s.neutral @ weight.T + bias, s.groups)
    fair = ((d - d.mean(1, keepdim=True)) ** 2).mean() / s.dist0
    return text, fair


def fit(stats: TextStats, steps: int, lam: float, lr: float = 1e-3
        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[float]]]:
    dim = stats.mean.shape[0]
    weight = torch.nn.Parameter(torch.eye(dim, device=stats.mean.device))
    bias = torch.nn.Parameter(torch.zeros(dim, device=stats.mean.device))
    opt = torch.optim.Adam([weight, bias], lr=lr)
    curve: dict[str, list[float]] = {"loss": [], "loss_text": [], "loss_fair": []}
    for step in range(steps + 1):  # the last pass only records the final loss
        text, fair = losses(weight, bias, stats)
        loss = text + lam * fair
        check_finite("fair-mapping", float(loss.detach()), f"the loss at step {step}",
                     f"lower --lr (now {lr})")
        for key, v in zip(curve, (loss, text, fair)):
            curve[key].append(float(v.detach()))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return weight.detach(), bias.detach(), curve


def train(model: str, attribute: str, occupations: list[str] | None, out: Path, steps: int = 1000,
          lam: float = 1.0, seed: int = 0, device: str | None = None, *, lr: float = 1e-3,
          spec: AttributeSpec | None = None, dtype: str | None = None) -> Path:
    """Train and write `out/mapping.safetensors` + `out/card.json`; returns `out`. `spec`
    overrides the attribute's groups, phrasings and templates (all recorded in the card). The text
    encoder runs in `dtype`; its embeddings are summed in float64 and the map is fit in float32."""
    from safetensors.torch import save_file

    from bench.methods.checkpoints import architecture
    from bench.methods.fair_mapping import text_fingerprint
    from bench.models import dtype_name, load_pipeline

    start = time.perf_counter()
    torch.manual_seed(seed)
    spec = spec or get_spec(attribute)
    pipe = load_pipeline(model, device, dtype)
    occupations = list(occupations or default_occupations(pipe))
    stats = text_stats(pipe, *build_prompts(spec, occupations))
    moments = torch.cat([stats.second.flatten(), stats.neutral.flatten(), stats.groups.flatten()])
    check_finite("fair-mapping", float(moments.double().abs().sum()), "the text encoder's "
                 f"embeddings' sum in {dtype_name(pipe)}", "train with --dtype float32")
    weight, bias, curve = fit(stats, steps, lam, lr)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"weight": weight.float().cpu().contiguous(), "bias": bias.float().cpu().contiguous()},
              str(out / "mapping.safetensors"))
    card = {
        "method": "fair-mapping", "model": model, "attribute": attribute, **spec.to_card(),
        "occupations": occupations, "lambda": lam, "lr": lr,
        "steps": steps, "seed": seed, "dim": int(weight.shape[0]), "dtype": dtype_name(pipe),
        "text_encoder_fingerprint": text_fingerprint(pipe), "architecture": architecture(pipe),
        "seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **curve,
    }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = trainer_parser("bench train fair-mapping", __doc__, "the `occupations` prompt set's list")
    ap.add_argument("--steps", type=positive_int, default=1000)
    ap.add_argument("--lam", type=nonnegative_float, default=1.0, help="weight of L_fair against L_text")
    ap.add_argument("--lr", type=nonnegative_float, default=1e-3)
    add_dtype(ap, "the map is fit in float32 (the embeddings' moments are summed in float64)")
    a = ap.parse_args(argv)
    occ = read_lines(a.occupations, "occupation") if a.occupations else None
    out = train(a.model, a.attribute, occ, a.out, a.steps, a.lam, a.seed, a.device, lr=a.lr,
                dtype=a.dtype)
    card = json.loads((out / "card.json").read_text())
    print(f"wrote {out}: loss {card['loss'][0]:.4g} -> {card['loss'][-1]:.4g} "
          f"(L_fair {card['loss_fair'][0]:.4g} -> {card['loss_fair'][-1]:.4g}, "
          f"L_text {card['loss_text'][-1]:.3g}) in {card['seconds']:.1f} s")
    return 0
