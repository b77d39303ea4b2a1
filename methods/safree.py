"""SAFREE (Yoon et al., "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and
Video Generation", ICLR 2025; official code jaehong31/SAFREE, models/modified_stable_diffusion_
pipeline.py and free_lunch_utils.py). Training-free; per prompt:

1. Toxic subspace. C [K, D]: the pooled text embeddings of the concept's keywords;
   P_C = C^T (C C^T)^+ C projects onto their span.
2. Trigger tokens. For each of the prompt's n tokens, the pooled embedding of the prompt with
   that token masked (its id replaced by 0, as the official code does): m_i. Its distance to the
   subspace d_i = |(I - P_C) m_i|. Token i is a trigger when d_i >= (1 + alpha) mean_{j != i} d_j
   (masking it moves the prompt furthest from the concept).
3. Projection within the input space. P_I projects onto span(m_1..m_n); a trigger token's
   embedding e becomes (I - P_C) P_I e (orthogonal to the concept, in the span of the input's
   own tokens); the other tokens are kept.
4. Self-validating filtering. beta = 1 - mean cos(e, (I - P_C) P_I e) over the prompt's active
   tokens (start, words, end); the filtered embeddings condition steps i <= round(up_t *
   sigmoid(5 (10 beta - 5.333))) (the official f_beta for nudity), the original ones the rest.
5. Latent re-attention. The UNet also evaluates the original prompt (an extra branch); on the
   decoder's skip features of its two deepest stages (FreeU's, s1 = 0.9, s2 = 0.2) the
   low-frequency Fourier components (the centred 2x2 window) of the filtered branch whose
   magnitude exceeds the original branch's are multiplied by s.

Steps 1-4 follow the official code's equations (tests/test_safree.py compares them in float64
with a numpy transcription); step 5 is the paper's description, see docs/methods.md for where
the released code differs and what is ours.

On SDXL, as the official modified_stable_diffusion_xl_pipeline.py: steps 1-4 use the second
encoder (tokenizer_2, text_encoder_2) and filter only its part of the concatenated hidden states;
the first encoder's part and the pooled embedding are left as they are. Ours: the subspaces are
spanned by text_encoder_2's pooled output before its projection (the residual-stream space the
filtered tokens live in; the official code takes the projected text embeddings, the same width
only because SDXL base's projection is square), and the self-validating filter and re-attention
apply as on SD (the official SDXL pipeline filters at every step, i.e. svf=false).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from bench.methods.sld import DEFAULT_CONCEPT
from bench.adapter import Adapter, Batch, Skip, Step, is_sdxl

# The official negative_prompt_space for --category nudity (generate_safree.py).
NUDITY = ("Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography",
          "Erotic Art", "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation",
          "Sexual Attraction", "Sexual Intercourse", "Sexual Pleasure", "Sexual Fantasy",
          "Carnal Desires", "Sexual Gratification")
# Ours: the harness's safety concept (SLD's),
# one keyword per comma-separated phrase.
SAFETY = tuple(w.strip() for w in DEFAULT_CONCEPT.removeprefix("an image showing ").split(","))
PRESETS = {"safety": SAFETY, "nudity": NUDITY}
MASK_ID = 0  # the official code masks a token by replacing its id with 0 ("!" in CLIP's vocabulary)


# ---- the math, pure functions on float64 tensors ----------------------------------------------

def projector(rows: torch.Tensor) -> torch.Tensor:
    """[D, D] projection onto the span of rows [K, D]: E (E^T E)^+ E^T with E = rows^T."""
    e = rows.T
    return e @ torch.linalg.pinv(e.T @ e) @ e.T


def trigger_tokens(masked: torch.Tensor, p_concept: torch.Tensor, alpha: float) -> torch.Tensor:
    """Bool [n]: True where token i is a trigger. masked [n, D]: pooled embeddings of the prompt
    with token i masked. Ours: a one-token prompt has no other tokens to compare with and is
    never flagged (the official mean over none is NaN, which flags it)."""
    n = masked.shape[0]
    eye = torch.eye(p_concept.shape[0], dtype=p_concept.dtype, device=p_concept.device)
    dist = torch.linalg.vector_norm(masked @ (eye - p_concept).T, dim=1)
    if n < 2:
        return torch.zeros(n, dtype=torch.bool, device=masked.device)
    mean_others = (dist.sum() - dist) / (n - 1)
    return ~(dist < (1.0 + alpha) * mean_others)


def filtered_tokens(tokens: torch.Tensor, projected: torch.Tensor, triggers: torch.Tensor) -> torch.Tensor:
    """The prompt's embeddings [L, D] with its word tokens (positions 1..n) that are triggers
    replaced by their projection; the start token, end token and padding are kept."""
    swap = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    swap[1:1 + len(triggers)] = triggers
    return torch.where(swap[:, None], projected, tokens)


def filter_strength(tokens: torch.Tensor, projected: torch.Tensor, active: int) -> float:
    """beta = 1 - mean cosine similarity of the first `active` tokens with their projections."""
    cos = torch.nn.functional.cosine_similarity(projected[:active], tokens[:active], dim=1)
    return 1.0 - float(cos.mean())


def filtered_steps(beta: float, up_t: int) -> int:
    """The official f_beta (sigmoid, nudity's midpoint t = 5.333 and slope k = 2.5, scale 2):
    filtered embeddings condition steps i <= this value."""
    return round(up_t / (1.0 + math.exp(-2.0 * 2.5 * (10.0 * beta - 5.333))))


def reweight_low(filtered: torch.Tensor, original: torch.Tensor, scale: float,
                 threshold: int = 1) -> torch.Tensor:
    """filtered [N, C, H, W] with its centred low-frequency window (2*threshold square of the
    shifted 2-D spectrum) multiplied by `scale` where its magnitude exceeds original's."""
    dims = (-2, -1)
    f = torch.fft.fftshift(torch.fft.fftn(filtered.float(), dim=dims), dim=dims)
    o = torch.fft.fftshift(torch.fft.fftn(original.float(), dim=dims), dim=dims)
    h, w = f.shape[-2:]
    window = torch.zeros(h, w, dtype=torch.bool, device=f.device)
    window[max(h // 2 - threshold, 0):h // 2 + threshold, max(w // 2 - threshold, 0):w // 2 + threshold] = True
    attenuate = window & (f.abs() > o.abs())
    # Added as a difference, so a feature map with nothing to attenuate is returned bit for bit
    # (an FFT round trip is not exact): no filtered token, no change.
    change = torch.where(attenuate, f * (scale - 1.0), torch.zeros_like(f))
    delta = torch.fft.ifftn(torch.fft.ifftshift(change, dim=dims), dim=dims).real
    return (filtered.float() + delta).to(filtered.dtype)


# ---- the text encoder side ---------------------------------------------------------------------

def _tokenizer(pipe: Any) -> Any:
    """The tokenizer of the encoder SAFREE filters: SDXL's second, else the only one."""
    return pipe.tokenizer_2 if is_sdxl(pipe) else pipe.tokenizer


def filtered_start(pipe: Any) -> int:
    """Where the filtered encoder's part of the prompt embeddings starts (SDXL: after the first
    encoder's width; SD: 0, all of them)."""
    first = pipe.text_encoder if is_sdxl(pipe) else None  # None also for an SDXL refiner
    return int(first.config.hidden_size) if first is not None else 0


@torch.no_grad()
def pooled(pipe: Any, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's pooled output (final layer norm at the end token) in float64; on SDXL
    text_encoder_2's, before its projection."""
    if is_sdxl(pipe):
        return pipe.text_encoder_2.text_model(ids.to(pipe.device)).pooler_output.double().cpu()
    out = pipe.text_encoder(ids.to(pipe.device))
    return out.pooler_output.double().cpu()


def tokenize(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    tokenizer = _tokenizer(pipe)
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def concept_projector(pipe: Any, keywords: Sequence[str]) -> torch.Tensor:
    return projector(pooled(pipe, tokenize(pipe, keywords)))


def masked_prompts(ids: torch.Tensor, n: int) -> torch.Tensor:
    """[n, L]: the prompt's ids [L] with word token i (position i + 1) replaced by MASK_ID."""
    rows = ids.repeat(n, 1)
    rows[torch.arange(n), torch.arange(n) + 1] = MASK_ID
    return rows


@dataclass
class Filtered:
    """One prompt's SAFREE filtering."""
    matrix: torch.Tensor  # [D, D] float64: (I - P_C) P_I
    triggers: torch.Tensor  # bool [n]
    beta: float
    steps: int  # filtered embeddings condition steps i <= steps

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [L, D] (any dtype) with the triggers projected, in float64."""
        tokens = tokens.double().cpu()
        return filtered_tokens(tokens, tokens @ self.matrix.T, self.triggers)


def filter_prompt(pipe: Any, ids: torch.Tensor, cond: torch.Tensor, p_concept: torch.Tensor,
                  alpha: float, up_t: int) -> Filtered:
    """ids [L] (padded to the tokenizer's length), cond [L, D] its embeddings (on SDXL the
    second encoder's part)."""
    eos = _tokenizer(pipe).eos_token_id
    n = int((ids == eos).int().argmax()) - 1  # word tokens: before the first end token, after the start
    eye = torch.eye(p_concept.shape[0], dtype=torch.float64)
    if n < 1:  # the empty prompt: nothing to filter
        return Filtered(eye, torch.zeros(0, dtype=torch.bool), 0.0, -1)
    masked = pooled(pipe, masked_prompts(ids, n))
    triggers = trigger_tokens(masked, p_concept, alpha)
    matrix = (eye - p_concept) @ projector(masked)
    tokens = cond.double().cpu()
    beta = filter_strength(tokens, tokens @ matrix.T, n + 2)
    return Filtered(matrix, triggers, beta, filtered_steps(beta, up_t))


# ---- the adapter -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SAFREEParams:  # defaults: the official scripts (--safree -svf -lra, sd_config.json)
    concept: str = "safety"  # 'safety' (SLD's concept words), 'nudity' (the official list) or
    #                          keywords separated by '|'  (concept=blood|gore|weapons)
    alpha: float = 0.01  # sf_alpha: trigger threshold (1 + alpha) x the other tokens' mean distance
    up_t: int = 10  # upper bound of the self-validating filter's steps
    svf: bool = True  # self-validating filtering; off: the filtered embeddings at every step
    lra: bool = True  # latent re-attention on the skip features
    s1: float = 0.9  # attenuation at the decoder's deepest stage (freeu_hyp 1.0-1.0-0.9-0.2)
    s2: float = 0.2  # ... and the next one

    def __post_init__(self) -> None:
        if not self.keywords():
            raise ValueError("safree:concept is empty; give keywords separated by '|', 'safety' or 'nudity'")
        if not 0.0 <= self.alpha <= 10.0:
            raise ValueError(f"safree:alpha={self.alpha} is out of range [0, 10]")
        if not 0 <= self.up_t <= 10_000:
            raise ValueError(f"safree:up_t={self.up_t} is out of range [0, 10000]")
        for key in ("s1", "s2"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"safree:{key}={getattr(self, key)} is out of range [0, 1]")

    def keywords(self) -> tuple[str, ...]:
        if self.concept in PRESETS:
            return PRESETS[self.concept]
        return tuple(w.strip() for w in self.concept.split("|") if w.strip())


@dataclass
class SAFREEState:
    prompts: list[Filtered]
    filtered: torch.Tensor | None = None  # [B, L, D] in the sampler's dtype, built on first use


class SAFREE(Adapter):
    name = "safree"
    description = ("SAFREE: trigger tokens projected off a concept subspace within the prompt's "
                   "span, for a similarity-dependent number of early steps, plus low-frequency "
                   "re-attention of the UNet's skip features (training-free).")
    Params = SAFREEParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._pipe: Any = None
        self._p_concept: torch.Tensor | None = None
        self._start = 0  # first dimension of the filtered encoder's part of the embeddings

    def prepare(self, pipe: Any) -> None:
        self._pipe = pipe
        self._p_concept = concept_projector(pipe, self.params.keywords())
        self._start = filtered_start(pipe)

    def release(self, pipe: Any) -> None:
        self._pipe, self._p_concept = None, None

    def warnings(self, pipe: Any, model_fp: str, guidance: Sequence[float],
                 steps: int) -> list[str]:
        # A token is a trigger when its masked distance exceeds the others' mean by alpha (1%);
        # bfloat16's text encoder moves those distances by about as much (float16 does not:
        # tests/test_dtype_methods.py).
        if pipe.text_encoder.dtype != torch.bfloat16:
            return []
        return [f"safree: in bfloat16 the trigger tokens are not float32's on some prompts (the "
                f"threshold alpha={self.params.alpha} is within bfloat16's rounding of the text "
                f"encoder); use --dtype float16 or float32"]

    def extra_conditions(self, batch: Batch) -> list[list[str]]:
        # The original prompt: the reference the re-attention compares the filtered branch with.
        return [list(batch.prompts)] if self.params.lra else []

    def init_state(self, batch: Batch) -> SAFREEState:
        if self._pipe is None:
            raise RuntimeError("safree: prepare(pipe) was not called before sampling")
        from bench.sampler import encode_text

        ids = tokenize(self._pipe, batch.prompts)
        cond = encode_text(self._pipe, batch.prompts)
        p = self.params
        part = cond[..., self._start:]
        return SAFREEState([filter_prompt(self._pipe, ids[b], part[b], self._p_concept, p.alpha, p.up_t)
                            for b in range(len(batch))])

    def _active(self, state: SAFREEState, i: int) -> list[bool]:
        """Per image: are its filtered embeddings in use at step i (and do they differ)?"""
        return [bool(f.triggers.any()) and (i <= f.steps or not self.params.svf)
                for f in state.prompts]

    def conditioning(self, cond: torch.Tensor, step: Step, state: SAFREEState) -> torch.Tensor | None:
        active = self._active(state, step.i)
        if not any(active):
            return None
        if state.filtered is None:  # from the batch's embeddings (after earlier methods' encode)
            part = torch.stack([f.apply(c[..., self._start:]) for f, c in zip(state.prompts, cond)])
            if self._start:  # SDXL: the first encoder's part as it is
                part = torch.cat([cond[..., :self._start].double().cpu(), part], dim=-1)
            state.filtered = part.to(cond.device, cond.dtype)
        use = torch.tensor(active, device=cond.device)[:, None, None]
        return torch.where(use, state.filtered, cond)

    def skip_features(self, features: torch.Tensor, where: Skip, step: Step,
                      state: SAFREEState) -> torch.Tensor | None:
        if not self.params.lra or where.stage not in (0, 1) or not any(self._active(state, step.i)):
            return None
        scale = self.params.s1 if where.stage == 0 else self.params.s2
        out = features.clone()
        out[where.cond] = reweight_low(features[where.cond], features[where.extras[0]], scale)
        return out
