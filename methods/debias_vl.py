"""debias-vl (Chuang et al. 2023, "Debiasing Vision-Language Models via Biased Prompts").

A closed-form calibration of the text embedding: with z the L2-normalised embeddings of prompts
that differ only in the group ("A photo of a male doctor." / "A photo of a female doctor."),
    M = 1/|S| * sum_{(i,j) in S} (z_i - z_j)(z_i - z_j)^T,      P = (lambda * M + I)^-1
and every conditional prompt embedding is replaced by P e. As in the official generative code
(chingyaoc/debias_vl, generative/main.py): z is the text encoder's final hidden state at the EOS
token, P is applied to every token of the conditional sequence (not to the unconditional one), and
P_0 = I (the generative setting uses the calibration term only, no orthogonal projection).

On SDXL (ours; the official code is SD-only) the UNet attends to both encoders' penultimate
hidden states concatenated: z is that tensor at the EOS token, each encoder's part normalised on
its own and given its own P (P = diag(P_1, P_2): the encoders' spaces are not one space). The
pooled embedding (text_encoder_2's projected EOS output, CLIP's text embedding, the space the
paper's discriminative setting calibrates) gets its own P from the pairs' pooled embeddings
(`project_pooled`; false leaves it as is): left alone, it carries the group direction to the
UNet through the added time embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch

from bench.adapter import Adapter, Batch, is_sdxl
from bench.sampler import encode_condition, encode_text

def default_occupations() -> str:
    """Every other occupation of the project's own list (prompt_sets/data/occupations.txt): the
    official code likewise builds its projection from a training list of about 80 jobs."""
    from bench.prompt_sets.occupations import occupations

    return "|".join(occupations()[::2])


@dataclass(frozen=True)
class DebiasVLParams:
    lam: float = 500.0  # lambda, the official default
    groups: str = "male|female"  # '|'-separated; every pair of groups forms a pair per occupation
    template: str = "A photo of a {group} {occupation}."  # the official prompt
    occupations: str = ""  # '|'-separated; "" = every other occupation of the project's list
    project_pooled: bool = True  # SDXL: calibrate the pooled embedding too (its own P)


def pair_prompts(p: DebiasVLParams) -> list[tuple[str, str]]:
    groups = [g.strip() for g in p.groups.split("|") if g.strip()]
    occupations = [o.strip().lower() for o in (p.occupations or default_occupations()).split("|")]
    if len(set(groups)) < 2 or "{group}" not in p.template or "" in occupations:
        raise ValueError(f"debias-vl: need two or more distinct '|'-separated groups (got "
                         f"{p.groups!r}), a template containing {{group}} (got {p.template!r}) "
                         f"and non-empty occupations")

    def fill(group: str, occupation: str) -> str:  # replace, not str.format: templates are text
        return p.template.replace("{group}", group).replace("{occupation}", occupation)

    return [(fill(a, o), fill(b, o)) for o in occupations for a, b in combinations(groups, 2)]


def encoder_widths(pipe: Any) -> list[int]:
    """Widths of the encoders' parts of the prompt embeddings, in concatenation order."""
    from bench.methods.fair_mapping import text_encoders

    return [int(e.config.hidden_size) for e in text_encoders(pipe)]


def normalise_parts(z: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """Each encoder's part of z [N, sum(widths)] L2-normalised on its own."""
    return torch.cat([torch.nn.functional.normalize(part, dim=-1)
                      for part in z.split(widths, dim=-1)], dim=-1)


@torch.no_grad()
def eos_embeddings(pipe: Any, texts: list[str], chunk: int = 64) -> torch.Tensor:
    """The prompt embeddings at each text's first EOS token, float64 on the CPU, each encoder's
    part L2-normalised (SD: the final hidden state)."""
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2  # SDXL refiner
    out = []
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        ids = tokenizer(part, padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        hidden = encode_text(pipe, part).double().cpu()
        eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
        out.append(hidden[torch.arange(len(part)), eos])
    return normalise_parts(torch.cat(out), encoder_widths(pipe))


@torch.no_grad()
def pooled_embeddings(pipe: Any, texts: list[str]) -> torch.Tensor:
    """SDXL: the L2-normalised pooled embeddings, float64 on the CPU."""
    pooled = encode_condition(pipe, texts).pooled
    assert pooled is not None, "pooled embeddings exist on SDXL only"
    return torch.nn.functional.normalize(pooled.double().cpu(), dim=-1)


def calibration_matrix(z_a: torch.Tensor, z_b: torch.Tensor, lam: float) -> torch.Tensor:
    """P = (lam * M + I)^-1 with M the mean outer product of the pair differences."""
    d = z_a - z_b
    m = d.T @ d / d.shape[0]
    return torch.linalg.inv(lam * m + torch.eye(m.shape[0], dtype=m.dtype))


class DebiasVL(Adapter):
    name = "debias-vl"
    description = "debias-vl: prompt embeddings times (lambda*M + I)^-1 from group-paired prompts."
    Params = DebiasVLParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        if self.params.lam < 0:
            raise ValueError(f"debias-vl:lam={self.params.lam}: lambda must be >= 0")
        self.pairs = pair_prompts(self.params)
        self.projection: torch.Tensor | None = None  # float64 (d, d), set by prepare
        self.pooled_projection: torch.Tensor | None = None  # SDXL, float64 (p, p)

    def prepare(self, pipe: Any) -> None:
        a, b = zip(*self.pairs)
        texts, n, lam = list(a) + list(b), len(a), self.params.lam
        z = eos_embeddings(pipe, texts)
        widths = encoder_widths(pipe)
        self.projection = torch.block_diag(*[
            calibration_matrix(part[:n], part[n:], lam) for part in z.split(widths, dim=-1)])
        self.pooled_projection = None
        if is_sdxl(pipe) and self.params.project_pooled:
            pooled = pooled_embeddings(pipe, texts)
            self.pooled_projection = calibration_matrix(pooled[:n], pooled[n:], lam)

    def encode(self, cond: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.projection is None:
            raise RuntimeError("debias-vl: call prepare(pipe) before sampling (it builds P)")
        return cond @ self.projection.T.to(device=cond.device, dtype=cond.dtype)

    def encode_pooled(self, pooled: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.pooled_projection is None:
            return pooled
        return pooled @ self.pooled_projection.T.to(device=pooled.device, dtype=pooled.dtype)
