"""The harness-owned denoising loop; the hooks it calls are the adapter contract (bench/adapter.py).

One batch = B images. Each UNet call evaluates, in one batched forward pass,
    [uncond (B) | cond (B) | extra branch 1 (B) | ... | extra branch K (B)]
and the noise prediction is
    eps = eps_u + s_g * (eps_c - eps_u) + sum(adapter.guide(...))
which reproduces diffusers' StableDiffusionPipeline for the baseline (no hooks), SLD
(guide returns -s_g * gamma) and SEGA/Fair Diffusion (guide returns the edit term).

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

from bench.adapter import Adapter, Batch, Skip, Step


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


@torch.no_grad()
def encode_text(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """Prompt embeddings as diffusers' encode_prompt computes them (no clip-skip, no LoRA scale)."""
    tok = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    enc = pipe.text_encoder
    mask = None
    if getattr(enc.config, "use_attention_mask", False):
        mask = tok.attention_mask.to(pipe.device)
    out = enc(tok.input_ids.to(pipe.device), attention_mask=mask)[0]
    return out.to(dtype=pipe.unet.dtype)


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
           height: int, width: int, negative_prompt: str = "") -> BatchResult:
    """Generate one batch. Returns images in [0, 1] as diffusers' output_type="np" does."""
    start = time.perf_counter()
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    B = len(batch)
    guidance = batch.guidance
    cond = encode_text(pipe, batch.prompts)
    for a in adapters:
        cond = a.encode(cond, batch)
    use_cfg = guidance > 1.0
    parts = [cond]
    if use_cfg:
        parts.insert(0, encode_text(pipe, negative_texts(adapters, batch, negative_prompt)))
    n_extra: list[int] = []
    for a in adapters:
        branches = a.extra_conditions(batch)
        n_extra.append(len(branches))
        parts.extend(encode_text(pipe, texts) for texts in branches)
    embeds = torch.cat(parts)
    n_branches = len(parts)
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
                eps_all = pipe.unet(model_in, t, encoder_hidden_states=step_embeds, return_dict=False)[0]
            chunks = list(eps_all.chunk(n_branches))
            if use_cfg:
                eps_u, eps_c = chunks[0], chunks[1]
                extras = chunks[2:]
                eps = eps_u + guidance * (eps_c - eps_u)
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
    z = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
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
