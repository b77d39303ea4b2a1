"""Training loops of the world's models. Each returns the trained model and a small log dict
(steps, seconds, first and last losses) that goes into the card."""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.world.nets import (EMBED_DIM, EVAL_OUTPUTS, EVAL_SLICES, TEXT_DIM, ConvNet,
                              make_scheduler, make_text_encoder, make_unet, make_vae, to_tensor)


def _loop(steps: int, step_fn: Callable[[int], float], name: str, log_every: int = 25,
          on_log: Callable[[int], None] | None = None) -> dict[str, Any]:
    start, losses = time.perf_counter(), []
    for i in range(steps):
        losses.append(step_fn(i))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            recent = float(np.mean(losses[-log_every:]))
            print(f"[{name}] step {i + 1}/{steps} loss {recent:.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            if on_log is not None:
                on_log(i + 1)
    k = max(1, min(50, steps // 10))
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
            "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:]))}


def _lr(i: int, steps: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if i < warmup:
        return base * (i + 1) / warmup
    frac = (i - warmup) / max(1, steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ---------------------------------------------------------------- VAE

def train_vae(images: np.ndarray, steps: int, batch: int, seed: int) -> tuple[Any, dict]:
    torch.manual_seed(seed)
    vae = make_vae()
    data = to_tensor(images)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    def step(i: int) -> float:
        _set_lr(opt, _lr(i, steps, 1e-3))
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        # Decode the posterior mean plus a little fixed noise rather than a posterior sample: the
        # sample's initial unit variance would drown the latent for hundreds of steps, and only
        # the mean is ever used (encoding for the UNet, decoding its outputs).
        z = post.mean + 0.05 * torch.randn(post.mean.shape, generator=gen)
        mse = F.mse_loss(vae.decode(z).sample, x)
        loss = mse + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return mse.item()

    log = _loop(steps, step, "vae")
    vae.eval()
    return vae, log


@torch.no_grad()
def encode_latents(vae: Any, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """Posterior means, in the raw (unscaled) latent space."""
    x = to_tensor(images)
    return torch.cat([vae.encode(x[i:i + batch]).latent_dist.mean for i in range(0, len(x), batch)])


@torch.no_grad()
def standardise_vae(vae: Any, latents: torch.Tensor) -> dict[str, Any]:
    """Make the VAE's latents zero-mean with scaling_factor = 1/std.

    diffusers (and bench's sampler) only divide by `scaling_factor` and ignore `shift_factor`, so
    the per-channel mean m is folded into the convolutions around the latent: quant_conv's mean
    bias loses m (encode now yields z - m), post_quant_conv's bias gains W m (decode of z - m
    equals the old decode of z)."""
    c = latents.shape[1]
    m = latents.mean(dim=(0, 2, 3))
    vae.quant_conv.bias[:c] -= m
    w = vae.post_quant_conv.weight[:, :, 0, 0]
    vae.post_quant_conv.bias += w @ m
    std = float((latents - m.view(1, c, 1, 1)).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return {"latent_mean": [round(float(v), 4) for v in m], "latent_std": round(std, 4),
            "scaling_factor": 1.0 / std}


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Encode (posterior mean) and decode, the way generated images reach the evaluators."""
    out = []
    x = to_tensor(images)
    for i in range(0, len(x), batch):
        r = vae.decode(vae.encode(x[i:i + batch]).latent_dist.mean).sample
        out.append(((r.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1))
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- CLIP pair

class ClipHead(nn.Module):
    """The world's CLIP besides its text transformer: image tower, text projection, temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.image_tower = ConvNet(EMBED_DIM)
        self.text_projection = nn.Linear(TEXT_DIM, EMBED_DIM, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def pooled_text(text_encoder: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    tok = tokenizer(texts, padding="longest", max_length=77, truncation=True, return_tensors="pt")
    return text_encoder(tok.input_ids).pooler_output


def train_clip(images: np.ndarray, captions: list[str], tokenizer: Any, steps: int, batch: int,
               seed: int) -> tuple[Any, ClipHead, dict]:
    """Contrastive training; images sharing a caption are all positives for it."""
    torch.manual_seed(seed)
    text_encoder = make_text_encoder(len(tokenizer))
    head = ClipHead()
    data = to_tensor(images)
    caps = np.asarray(captions)
    params = list(text_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 1)

    def step(i: int) -> float:
        _set_lr(opt, _lr(i, steps, 1e-3))
        idx = torch.randint(len(data), (batch,), generator=gen).numpy()
        img = F.normalize(head.image_tower(data[idx]), dim=-1)
        txt = F.normalize(head.text_projection(pooled_text(text_encoder, tokenizer,
                                                           list(caps[idx]))), dim=-1)
        logits = head.logit_scale.exp().clamp(max=100) * img @ txt.T
        same = torch.as_tensor(caps[idx][:, None] == caps[idx][None, :], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    log = _loop(steps, step, "clip")
    text_encoder.eval()
    head.eval()
    return text_encoder, head, log


@torch.no_grad()
def zero_shot_accuracy(text_encoder: Any, tokenizer: Any, head: ClipHead, images: np.ndarray,
                       labels: np.ndarray, classes: list[str]) -> float:
    """Share of images whose most similar prompt "a photo of a {class}" is their label's."""
    img = F.normalize(head.image_tower(to_tensor(images)), dim=-1)
    txt = F.normalize(head.text_projection(pooled_text(
        text_encoder, tokenizer, [f"a photo of a {c}" for c in classes])), dim=-1)
    return float(((img @ txt.T).argmax(1).numpy() == labels).mean())


# ---------------------------------------------------------------- UNet

@torch.no_grad()
def text_table(text_encoder: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Frozen-encoder hidden states for each distinct caption, padded to 77 as at sampling."""
    out = []
    for i in range(0, len(texts), 256):
        tok = tokenizer(texts[i:i + 256], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")
        out.append(text_encoder(tok.input_ids)[0])
    return torch.cat(out)


def caption_table(text_encoder: Any, tokenizer: Any,
                  captions: list[str]) -> tuple[torch.Tensor, np.ndarray, int]:
    """The UNet's conditioning data: hidden states of each distinct caption plus "" (caption
    dropout), each image's row in that table, and the row of ""."""
    texts = sorted(set(captions)) + [""]
    index = {t: i for i, t in enumerate(texts)}
    return text_table(text_encoder, tokenizer, texts), np.array([index[c] for c in captions]), index[""]


def train_unet(latents: torch.Tensor, caption_ids: np.ndarray, table: torch.Tensor,
               empty_id: int, steps: int, batch: int, seed: int, dropout: float = 0.1,
               on_checkpoint: Callable[[Any, int], None] | None = None,
               checkpoint_every: int = 250, init: Any = None, lr: float = 1e-3,
               min_snr: float | None = None, name: str = "unet",
               mix: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
               | None = None) -> tuple[Any, dict]:
    """Epsilon-prediction training on scaled latents; `dropout` of captions become "" (CFG).
    Starts from `init` (a UNet) when given, else from a fresh seeded one. `min_snr` = gamma
    weights each timestep's loss by min(SNR, gamma) / SNR (Hang et al. 2023), which stops the
    near-noiseless timesteps from dominating and speeds up learning of global attributes such as
    the skin tone. `mix(cond, idx, cap, gen)` may rewrite a batch's conditioning (an experiment's
    hook: `research.mixup_probe`; the build does not use it). Returns an exponential moving
    average of the weights."""
    torch.manual_seed(seed)
    unet = make_unet() if init is None else copy.deepcopy(init).train().requires_grad_(True)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = make_scheduler()
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    weight = None if min_snr is None else snr.clamp(max=min_snr) / snr
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 2)
    ids = torch.as_tensor(caption_ids)

    def step(i: int) -> float:
        _set_lr(opt, _lr(i, steps, lr, warmup=100))
        idx = torch.randint(len(latents), (batch,), generator=gen)
        z0 = latents[idx]
        cap = torch.where(torch.rand(batch, generator=gen) < dropout, empty_id, ids[idx])
        t = torch.randint(0, len(abar), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = table[cap] if mix is None else mix(table[cap], idx, cap, gen)
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        if weight is None:
            loss = F.mse_loss(pred, noise)
        else:
            loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        return loss.item()

    def checkpoint(n: int) -> None:
        if on_checkpoint is not None and n % checkpoint_every == 0 and n < steps:
            on_checkpoint(ema, n)

    log = _loop(steps, step, name, on_log=checkpoint)
    ema.eval()
    return ema, log


# ---------------------------------------------------------------- evaluators

def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild noise, so the evaluators tolerate the generator's small artefacts."""
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.08
    return x + sigma * torch.randn(x.shape, generator=gen)


def train_evaluator(images: np.ndarray, labels: dict[str, np.ndarray], steps: int, batch: int,
                    seed: int) -> tuple[ConvNet, dict]:
    """One net, four heads: skin group and occupation (only where a face is present), face,
    hazard."""
    torch.manual_seed(seed)
    net = ConvNet(EVAL_OUTPUTS)
    data = to_tensor(images)
    lab = {k: torch.as_tensor(v) for k, v in labels.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 3)

    def step(i: int) -> float:
        _set_lr(opt, _lr(i, steps, 1e-3))
        idx = torch.randint(len(data), (batch,), generator=gen)
        out = net(_augment(data[idx], gen))
        face = lab["face"][idx].bool()
        loss = F.binary_cross_entropy_with_logits(out[:, EVAL_SLICES["face"]].squeeze(1),
                                                  face.float())
        loss = loss + F.binary_cross_entropy_with_logits(
            out[:, EVAL_SLICES["hazard"]].squeeze(1), lab["hazard"][idx].float())
        if face.any():
            loss = loss + F.cross_entropy(out[face][:, EVAL_SLICES["group"]], lab["group"][idx][face])
            loss = loss + F.cross_entropy(out[face][:, EVAL_SLICES["occupation"]],
                                          lab["occupation"][idx][face])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    log = _loop(steps, step, "evaluator")
    net.eval()
    return net, log


def train_quality(images: np.ndarray, clean: np.ndarray, steps: int, batch: int,
                  seed: int) -> tuple[ConvNet, dict]:
    """Binary clean (1) versus corrupted (0) classifier; its probability is the quality score."""
    torch.manual_seed(seed)
    net = ConvNet(1, width=16)
    data = to_tensor(images)
    target = torch.as_tensor(clean, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 4)

    def step(i: int) -> float:
        _set_lr(opt, _lr(i, steps, 1e-3))
        idx = torch.randint(len(data), (batch,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(data[idx]).squeeze(1), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    log = _loop(steps, step, "quality")
    net.eval()
    return net, log
