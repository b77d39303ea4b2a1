"""The harness-owned denoising loop; the hooks it calls are the adapter contract (bench/adapter.py).

One batch = B images. Each UNet call evaluates, in one batched forward pass,
    [uncond (B) | cond (B) | extra branch 1 (B) | ... | extra branch K (B)]
and the noise prediction is
    eps = eps_u + s_g * (eps_c - eps_u) + sum(adapter.guide(...))
which reproduces diffusers' StableDiffusionPipeline for the baseline (no hooks), SLD
(guide returns -s_g * gamma) and SEGA/Fair Diffusion (guide returns the edit term). On SDXL
(`is_sdxl(pipe)`) it reproduces StableDiffusionXLPipeline: every row also carries its pooled
embedding and add_time_ids (a `TextCondition`), and `guidance_rescale` > 0 rescales the CFG
prediction as both pipelines do (arXiv:2305.08891, section 3.4) before the adapters' terms.

Latents are checked for NaN/inf after every hook and step and the decoded images before they
are returned: a non-finite image raises NonFiniteError (never a black PNG).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from bench.adapter import Adapter, Batch, Skip, Step, is_sdxl


class NonFiniteError(RuntimeError):
    """NaN or inf in some images' latents or pixels. `images` are indices into the batch; the
    executor re-raises it naming method, prompt ids and seeds (one line, exit 2)."""

    def __init__(self, where: str, images: Sequence[int], message: str | None = None) -> None:
        self.where, self.images = where, list(images)
        super().__init__(message or f"non-finite values in {where} of batch image(s) {self.images}")

    def naming(self, method: str, items: Sequence[tuple[str, int]], dtype: str) -> "NonFiniteError":
        """The same error with the images named: items[n] = (prompt id, seed) of batch image n."""
        named = ", ".join(f"prompt {items[n][0]} seed {items[n][1]}" for n in self.images)
        return NonFiniteError(self.where, self.images, (
            f"method {method}: non-finite values (NaN/inf) in {self.where} for {named} "
            f"({dtype}); nothing of this batch was written. Try --dtype float32, or fix the "
            "method's numerics"))


def require_finite(x: torch.Tensor | np.ndarray, where: str) -> None:
    """Raise NonFiniteError naming the batch images of `x` [B, ...] holding NaN or inf."""
    if isinstance(x, np.ndarray):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    else:
        bad = (~torch.isfinite(x.detach().flatten(1)).all(dim=1)).cpu().numpy()
    if bad.any():
        raise NonFiniteError(where, [int(n) for n in np.flatnonzero(bad)])


@dataclass
class BatchResult:
    images: np.ndarray  # (B, H, W, 3) float in [0, 1]
    seconds: float  # wall time of the whole batch
    unet_evals: int  # UNet evaluations per image (branches x timesteps)
    step_seconds: float  # mean wall time of one denoising step for the batch
    peak_memory_mb: float | None
    filtered: np.ndarray | None = None  # (B,) bool when an adapter has on_decoded, else None


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded as diffusers' `generator=` is for a single image."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def initial_latents(pipe: Any, seeds: Sequence[int], height: int, width: int,
                    dtype: torch.dtype, generators: Sequence[torch.Generator] | None = None
                    ) -> torch.Tensor:
    """Drawn from each image's own generator exactly as diffusers draws a single image's
    latents, so an image never depends on its batch, its neighbours or its shard. Stochastic
    schedulers (euler-a, DDPM) then draw their step noise from the same generators."""
    channels = pipe.unet.config.in_channels
    scale = pipe.vae_scale_factor
    shape = (1, channels, height // scale, width // scale)
    gens = generators if generators is not None else image_generators(seeds)
    parts = [torch.randn(shape, generator=g, dtype=dtype) for g in gens]
    return torch.cat(parts).to(pipe.device)


@dataclass(frozen=True)
class TextCondition:
    """What the UNet is conditioned on, one row per image and branch. SD: the hidden states alone.
    SDXL: the two encoders' penultimate hidden states concatenated, and `pooled`, the second
    encoder's projected pooled output (add_time_ids are the same for every row of a batch and
    are added at the UNet call)."""

    hidden: torch.Tensor  # [N, 77, D] encoder_hidden_states
    pooled: torch.Tensor | None = None  # [N, P] SDXL's added_cond_kwargs["text_embeds"]

    @staticmethod
    def cat(parts: Sequence["TextCondition"]) -> "TextCondition":
        pooled = [p.pooled for p in parts]
        return TextCondition(torch.cat([p.hidden for p in parts]),
                             None if pooled[0] is None else torch.cat(pooled))  # type: ignore[arg-type]


@torch.no_grad()
def encode_text(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """Prompt embeddings as diffusers' encode_prompt computes them (no clip-skip, no LoRA scale):
    on SDXL the two encoders' penultimate hidden states, concatenated."""
    return encode_condition(pipe, texts).hidden


@torch.no_grad()
def encode_condition(pipe: Any, texts: Sequence[str]) -> TextCondition:
    if is_sdxl(pipe):
        return _encode_xl(pipe, texts)
    tok = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    enc = pipe.text_encoder
    mask = None
    if getattr(enc.config, "use_attention_mask", False):
        mask = tok.attention_mask.to(pipe.device)
    out = enc(tok.input_ids.to(pipe.device), attention_mask=mask)[0]
    return TextCondition(out.to(dtype=pipe.unet.dtype))


def _encode_xl(pipe: Any, texts: Sequence[str]) -> TextCondition:
    """StableDiffusionXLPipeline.encode_prompt: each encoder's hidden_states[-2], concatenated;
    the pooled embedding is the first 2-D output[0] (text_encoder_2's text_embeds)."""
    hidden: list[torch.Tensor] = []
    pooled = None
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    for tokenizer, encoder in pairs:
        if encoder is None:  # a refiner has only the second encoder
            continue
        ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out = encoder(ids.to(pipe.device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("SDXL: no text encoder returns a pooled embedding (text_encoder_2 must be "
                         "a CLIPTextModelWithProjection)")
    dtype = pipe.unet.dtype
    return TextCondition(torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype))


def uncond_condition(pipe: Any, texts: Sequence[str], like: TextCondition) -> TextCondition:
    """The unconditional branch. On SDXL with `force_zeros_for_empty_prompt` in the pipeline's
    config, an empty negative prompt is zeros shaped `like` the conditional rows (hidden and
    pooled), not an encoded "", as StableDiffusionXLPipeline does when given no negative prompt."""
    zero = [t == "" for t in texts] if _forces_zeros(pipe) else [False] * len(texts)
    if all(zero) and like.pooled is not None:
        return TextCondition(torch.zeros_like(like.hidden), torch.zeros_like(like.pooled))
    full = encode_condition(pipe, texts)
    if not any(zero) or full.pooled is None:
        return full
    keep = torch.tensor([not z for z in zero], device=full.hidden.device)
    return TextCondition(full.hidden * keep[:, None, None], full.pooled * keep[:, None])


def _forces_zeros(pipe: Any) -> bool:
    config = getattr(pipe, "config", None) or {}
    return is_sdxl(pipe) and bool(config.get("force_zeros_for_empty_prompt", False))


def add_time_ids(pipe: Any, height: int, width: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning per row, as the pipeline's defaults: original size = target
    size = (height, width), crop top-left (0, 0)."""
    ids = [height, width, 0, 0, height, width]
    projection = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None \
        else None
    expected = pipe.unet.add_embedding.linear_1.in_features
    passed = pipe.unet.config.addition_time_embed_dim * len(ids) + (projection or 0)
    if projection is not None and passed != expected:
        raise ValueError(f"SDXL UNet expects an added embedding of {expected} values, its config "
                         f"and text_encoder_2's projection_dim give {passed}: the model's configs "
                         "do not match (check unet/config.json and text_encoder_2/config.json)")
    return torch.tensor([ids], dtype=dtype, device=pipe.device).repeat(rows, 1)


def rescale_guidance(eps: torch.Tensor, eps_c: torch.Tensor, factor: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, arXiv:2305.08891, eq. 15-16): match the guided
    prediction's per-image std to the conditional one's, mixed in by `factor`."""
    dims = list(range(1, eps.ndim))
    rescaled = eps * (eps_c.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * eps


def negative_texts(adapters: Sequence[Adapter], batch: Batch, negative_prompt: str) -> list[str]:
    """The unconditional branch's texts: an adapter's `negative` overrides the run's."""
    given = [n for a in adapters if (n := a.negative(batch)) is not None]
    if len(given) > 1:
        raise ValueError("two composed methods set the negative prompt; keep one")
    texts = given[0] if given else [negative_prompt] * len(batch)
    if len(texts) != len(batch):
        raise ValueError(f"negative(): {len(texts)} texts for a batch of {len(batch)}")
    return list(texts)


def _fresh_scheduler(pipe: Any) -> Any:
    # Schedulers keep per-run state (PNDM's history, step index): one copy per batch. A deep
    # copy, because from_config() resets keys listed in `_use_default_values` (e.g. clip_sample
    # after StableDiffusionPipeline patched it) and would sample with another scheduler.
    return copy.deepcopy(pipe.scheduler)


def sample(pipe: Any, adapters: Sequence[Adapter], batch: Batch, *, steps: int,
           height: int, width: int, negative_prompt: str = "",
           guidance_rescale: float = 0.0) -> BatchResult:
    """Generate one batch. Returns images in [0, 1] as diffusers' output_type="np" does."""
    start = time.perf_counter()
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    B = len(batch)
    guidance = batch.guidance
    cond = encode_condition(pipe, batch.prompts)
    hidden = cond.hidden
    for a in adapters:
        hidden = a.encode(hidden, batch)
    pooled = cond.pooled
    if pooled is not None:
        for a in adapters:
            if a.has_hook("encode_pooled"):
                pooled = a.encode_pooled(pooled, batch)
    use_cfg = guidance > 1.0
    parts = [TextCondition(hidden, pooled)]
    if use_cfg:
        texts = negative_texts(adapters, batch, negative_prompt)
        parts.insert(0, uncond_condition(pipe, texts, parts[0]))
    n_extra: list[int] = []
    for a in adapters:
        branches = a.extra_conditions(batch)
        n_extra.append(len(branches))
        parts.extend(encode_condition(pipe, texts) for texts in branches)
    conditions = TextCondition.cat(parts)
    embeds = conditions.hidden
    n_branches = len(parts)
    unet_kwargs: dict[str, Any] = {}
    if conditions.pooled is not None:  # SDXL
        time_ids = add_time_ids(pipe, height, width, len(embeds), embeds.dtype)
        unet_kwargs["added_cond_kwargs"] = {"text_embeds": conditions.pooled, "time_ids": time_ids}
    states = [a.init_state(batch) for a in adapters]

    scheduler = _fresh_scheduler(pipe)
    scheduler.set_timesteps(steps, device=device)
    generators = image_generators(batch.seeds)
    latents = initial_latents(pipe, batch.seeds, height, width, embeds.dtype, generators)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs: dict[str, Any] = {}
    accepted = inspect.signature(scheduler.step).parameters
    if "eta" in accepted:
        step_kwargs["eta"] = 0.0
    if "generator" in accepted:  # as diffusers' prepare_extra_step_kwargs, one per image
        step_kwargs["generator"] = generators
    stepping = [a for a in adapters if a.has_hook("on_step")]
    step_start = time.perf_counter()
    n_steps = len(scheduler.timesteps)
    rows = _Rows(B, use_cfg, tuple(n_extra))
    for i, t in enumerate(scheduler.timesteps):
        step = Step(scheduler, i, t, guidance, n_steps)
        for a, st in zip(adapters, states):
            if a in stepping:
                latents = _on_step(a, latents, step, st)
        with torch.no_grad():
            model_in = torch.cat([latents] * n_branches)
            model_in = scheduler.scale_model_input(model_in, t)
            step_embeds = _step_conditioning(adapters, states, embeds, rows.cond, step)
            with _skip_hooks(pipe.unet, adapters, states, rows, step):
                eps_all = pipe.unet(model_in, t, encoder_hidden_states=step_embeds,
                                    return_dict=False, **unet_kwargs)[0]
            chunks = list(eps_all.chunk(n_branches))
            if use_cfg:
                eps_u, eps_c = chunks[0], chunks[1]
                extras = chunks[2:]
                eps = eps_u + guidance * (eps_c - eps_u)
                if guidance_rescale > 0:
                    eps = rescale_guidance(eps, eps_c, guidance_rescale)
            else:
                eps_u = eps_c = chunks[0]
                extras = chunks[1:]
                eps = eps_c
            offset = 0
            for a, st, k in zip(adapters, states, n_extra):
                term = a.guide(eps_u, eps_c, list(extras[offset:offset + k]), step, st)
                offset += k
                if term is not None:
                    eps = eps + term
            latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        require_finite(latents, f"the latents after step {i}")
    step_seconds = (time.perf_counter() - step_start) / max(n_steps, 1)
    images = decode(pipe, latents)
    images, filtered = decoded_hooks(adapters, images, batch)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return BatchResult(images, time.perf_counter() - start, n_branches * n_steps, step_seconds, peak,
                       filtered)


def decoded_hooks(adapters: Sequence[Adapter], images: np.ndarray,
                  batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
    """Each adapter's `on_decoded` in order; an image is filtered if any of them filtered it.
    None when no adapter has the hook (records then carry no `filtered` field)."""
    hooked = [a for a in adapters if a.has_hook("on_decoded")]
    if not hooked:
        return images, None
    filtered = np.zeros(len(images), dtype=bool)
    for a in hooked:
        images, mask = a.on_decoded(images, batch)
        mask = np.asarray(mask, dtype=bool)
        if images.shape[0] != len(batch) or mask.shape != (len(batch),):
            raise ValueError(f"{a.name}: on_decoded returned {images.shape[0]} images and "
                             f"{mask.shape} flags for a batch of {len(batch)}")
        require_finite(images, f"the images after {a.name}'s on_decoded")
        filtered |= mask
    return images, filtered


@dataclass(frozen=True)
class _Rows:
    """Where each branch sits in the UNet batch [uncond | cond | extras of adapter 1 | ...]."""
    B: int
    use_cfg: bool
    n_extra: tuple[int, ...]

    @property
    def cond(self) -> slice:
        start = self.B if self.use_cfg else 0
        return slice(start, start + self.B)

    def extras(self, adapter_index: int) -> tuple[slice, ...]:
        first = self.cond.stop // self.B + sum(self.n_extra[:adapter_index])
        return tuple(slice((first + k) * self.B, (first + k + 1) * self.B)
                     for k in range(self.n_extra[adapter_index]))


def _step_conditioning(adapters: Sequence[Adapter], states: list, embeds: torch.Tensor,
                       cond_rows: slice, step: Step) -> torch.Tensor:
    """The UNet's text embeddings for this step: the batch's, with the conditional rows replaced
    by the adapters' `conditioning` (chained) where any returns embeddings."""
    cond, changed = embeds[cond_rows], False
    for a, st in zip(adapters, states):
        new = a.conditioning(cond, step, st) if a.has_hook("conditioning") else None
        if new is not None:
            if new.shape != cond.shape:
                raise ValueError(f"{a.name}.conditioning returned shape {tuple(new.shape)}, "
                                 f"expected {tuple(cond.shape)}")
            cond, changed = new, True
    if not changed:
        return embeds
    return torch.cat([embeds[:cond_rows.start], cond, embeds[cond_rows.stop:]])


@contextlib.contextmanager
def _skip_hooks(unet: Any, adapters: Sequence[Adapter], states: list, rows: _Rows,
                step: Step) -> Iterator[None]:
    """During one UNet call, hand each decoder skip connection to the adapters' `skip_features`
    (forward pre-hooks on unet.up_blocks; diffusers passes `res_hidden_states_tuple` by keyword)."""
    users = [(n, a, st) for n, (a, st) in enumerate(zip(adapters, states)) if a.has_hook("skip_features")]
    if not users:
        yield
        return
    widths = sorted(set(unet.config.block_out_channels), reverse=True)

    def hook_for(block_index: int) -> Any:
        def hook(block: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            skips = list(kwargs["res_hidden_states_tuple"])
            for layer in range(len(skips)):  # resnet k consumes skips[-1 - k]
                k = len(skips) - 1 - layer
                hidden = block.resnets[layer].in_channels - skips[k].shape[1]
                stage = widths.index(hidden) if hidden in widths else -1
                for n, a, st in users:
                    skip = Skip(block_index, layer, stage, rows.cond, rows.extras(n))
                    new = a.skip_features(skips[k], skip, step, st)
                    if new is not None:
                        skips[k] = new
            return args, {**kwargs, "res_hidden_states_tuple": tuple(skips)}
        return hook

    handles = [b.register_forward_pre_hook(hook_for(n), with_kwargs=True)
               for n, b in enumerate(unet.up_blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _on_step(adapter: Adapter, latents: torch.Tensor, step: Step, state: Any) -> torch.Tensor:
    """A gradient hook in float32 (in float16 a squared gradient underflows to 0 and a step
    divided by its RMS becomes inf), cast back to the sampler's dtype."""
    with torch.enable_grad():
        stepped = adapter.on_step(latents.detach().float(), step, state).detach()
    stepped = stepped.to(latents.dtype)  # beyond float16's range is inf: checked here too
    require_finite(stepped, f"the latents after {adapter.name}'s on_step at step {step.i}")
    return stepped


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Pixels in [0, 1]. The VAE may compute in float32 while the UNet is float16 (load_pipeline
    keeps VAEs with `force_upcast` in float32, as diffusers decodes them)."""
    config = pipe.vae.config
    z = latents.to(pipe.vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # VAEs that normalise their latents, as diffusers
        shape = (1, -1, 1, 1)
        z = z * torch.tensor(std).view(shape).to(z) / config.scaling_factor \
            + torch.tensor(mean).view(shape).to(z)
    else:
        z = z / config.scaling_factor
    image = pipe.vae.decode(z, return_dict=False)[0]
    image = (image / 2 + 0.5).clamp(0, 1)  # clamp keeps NaN: checked below
    images = image.cpu().permute(0, 2, 3, 1).float().numpy()
    require_finite(images, "the decoded images")
    return images


def to_uint8(images: np.ndarray) -> np.ndarray:
    """diffusers' numpy_to_pil rounding, so PNGs match the pipeline's PIL output. NaN would
    become 0 (black): refused."""
    require_finite(images, "the images to write")
    return (images * 255).round().astype("uint8")
