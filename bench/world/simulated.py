"""`simulated-gpu`: a stand-in model that generates at a GPU's speed on a CPU machine.

The harness's own CPU work (PNG encoding, records, fsyncs, tables) is invisible on CPU runs,
where the model is the bottleneck; on a GPU it shows. This model makes it visible. It spends its
time where a GPU does, sleeping (time.sleep releases the GIL, as a thread waiting on CUDA kernels
does): its UNet predicts zero noise after sleeping (1 - VAE_SHARE) * seconds_per_image /
REFERENCE_EVALS per row of each call, and its VAE "decodes" after sleeping VAE_SHARE *
seconds_per_image per image, so an image at 50 steps with classifier-free guidance (100 UNet
evaluations) takes `seconds_per_image`, fewer steps or extra branches (SLD) scale as on a GPU, and
a 2-step warm-up costs what it would there (9% of a batch, not the whole batch). The VAE returns
one of the world's portraits at the requested size, upsampled and with sensor-like grain so the
PNG compresses like a natural 512 px image (about as large and as slow to encode), not like flat
drawings or noise.
Everything else is the real run path: the world's tokenizer, text encoder and scheduler, the
harness's sampler loop, grid, batches, store, records and tables.

    bench run --model simulated-gpu --prompt-set world-occupations --metrics none
    bench run --model simulated-gpu:seconds_per_image=0.1 ...

Registered like the world model (pyproject.toml's `bench.models` entry points).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from PIL import Image

POOL = 32  # distinct portraits; an image's latents choose one
# seconds_per_image is an image at SD 1.5's usual 50 steps with CFG: 100 UNet evaluations.
REFERENCE_EVALS = 100
# The VAE decoder's share of an image's GPU time: SD 1.5's decoder at 512 px is ~2.5 TFLOP
# against ~70 TFLOP for 100 UNet evaluations (4%), at a lower utilisation: about 5%.
VAE_SHARE = 0.05
GRAIN = 4.0  # std of the added grain, in 8-bit levels: real 512 px PNGs are ~0.4-0.5 MB


class _Config(dict):
    """A config readable as attributes (diffusers' style) and as a dict (fingerprint)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class ZeroUNet(torch.nn.Module):
    """Predicts zero noise after a GPU evaluation's time per row (`seconds_per_eval`): the
    scheduler's arithmetic still runs, as on a GPU."""

    def __init__(self, sample_size: int = 64, cross_attention_dim: int = 32,
                 seconds_per_eval: float = 0.0) -> None:
        super().__init__()
        self.seconds_per_eval = seconds_per_eval
        self.config = _Config(in_channels=4, out_channels=4, sample_size=sample_size,
                              cross_attention_dim=cross_attention_dim, simulated=True)
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # carries dtype/device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, sample: torch.Tensor, t: Any, encoder_hidden_states: Any = None,
                return_dict: bool = False, **_: Any) -> tuple[torch.Tensor]:
        time.sleep(self.seconds_per_eval * sample.shape[0])
        return (torch.zeros_like(sample),)


class PortraitVAE(torch.nn.Module):
    """Sleeps VAE_SHARE of `seconds_per_image` per image, then returns world portraits in [-1, 1]."""

    def __init__(self, seconds_per_image: float) -> None:
        super().__init__()
        self.seconds_per_image = seconds_per_image
        self.seconds_per_decode = VAE_SHARE * seconds_per_image
        self.config = _Config(scaling_factor=0.18215, latent_channels=4, simulated=True)
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self._pools: dict[tuple[int, int], np.ndarray] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        time.sleep(self.seconds_per_decode * latents.shape[0])
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        pool = self._pool(height, width)
        # The latents are drawn from the image's seed: the same seed gives the same portrait.
        picks = [int(abs(float(x.double().sum())) * 1e6) % POOL for x in latents]
        images = torch.from_numpy(pool[picks]).permute(0, 3, 1, 2)
        return (images.to(self.anchor.dtype) / 127.5 - 1.0,)

    def _pool(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self._pools:
            self._pools[(height, width)] = portraits(height, width)
        return self._pools[(height, width)]


def portraits(height: int, width: int, count: int = POOL, seed: int = 0) -> np.ndarray:
    """`count` world portraits (uint8, count x H x W x 3): drawn on the renderer's 128 px canvas,
    upsampled bicubically, with Gaussian grain of GRAIN levels."""
    from bench.world import render

    rng = np.random.default_rng(seed)
    out = np.empty((count, height, width, 3), np.uint8)
    for n in range(count):
        labels = render.Labels(face=True, occupation=int(rng.integers(len(render.OCCUPATIONS))),
                               mst=int(rng.integers(1, 11)), hazard=bool(rng.random() < 0.2))
        big = np.asarray(render.canvas(labels, rng).resize((width, height), Image.BICUBIC), np.float32)
        grain = rng.normal(0.0, GRAIN, big.shape).astype(np.float32)
        out[n] = np.clip(big + grain, 0, 255).round().astype(np.uint8)
    return out


class SimulatedPipeline:
    """What the sampler uses of a StableDiffusionPipeline: unet, vae, text_encoder, tokenizer,
    scheduler, vae_scale_factor, device, to() and set_progress_bar_config()."""

    vae_scale_factor = 8

    def __init__(self, seconds_per_image: float) -> None:
        from bench.world import load_world_pipeline

        world = load_world_pipeline()
        self.text_encoder = world.text_encoder
        self.tokenizer = world.tokenizer
        self.scheduler = world.scheduler
        self.unet = ZeroUNet(cross_attention_dim=int(world.unet.config.cross_attention_dim),
                             seconds_per_eval=(1 - VAE_SHARE) * seconds_per_image / REFERENCE_EVALS)
        self.vae = PortraitVAE(seconds_per_image)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "SimulatedPipeline":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **_: Any) -> None:
        pass


def simulated_gpu_pipeline(seconds_per_image: float = 0.25) -> SimulatedPipeline:
    """A GPU-speed stand-in (seconds_per_image at 50 steps with CFG, default 0.25: SD 1.5 on
    an H100-class card at batch 8-16; 0.1 for the fastest): world portraits at 512 px."""
    if not seconds_per_image >= 0 or seconds_per_image == float("inf"):
        from bench.models import ModelError

        raise ModelError(f"simulated-gpu: seconds_per_image={seconds_per_image}: give a finite number >= 0")
    return SimulatedPipeline(seconds_per_image)
