"""`bench train rs-corrector`: train the latent preference model R on the model's own trajectories.

1. Sample, through bench.sampler (so trajectories are exactly what inference sees), `samples`
   images per occupation and group from group-specified prompts ("a photo of the face of a Black
   doctor", templates cycled), recording the latent before every step, in the UNet's
   unit-variance space (`latent_input_scale`).
2. With a `classify(images) -> labels` callable, keep an image's whole trajectory only where the
   classifier's label equals the requested group (label noise would teach R the model's own bias).
3. Fit R(z_t, t) by cross-entropy on (latent, timestep, group); a quarter of every minibatch is
   corrupted copies labelled "distorted" (scale off for t, channels rescaled/shifted, or detail
   blurred away): the quality term, so that raising p_R(target) also moves latents away from
   out-of-distribution ones. Latents are mirrored and shifted at random.
4. Every fifth kept image's trajectory is held out; the card reports R's group accuracy on it and
   how often it calls clean or corrupted held-out latents "distorted": R must not memorise its
   training latents and call every unseen one distorted.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.adapter import Adapter, Batch, Step
from bench.sampler import sample
from bench.spec import SpecError
from bench.methods.checkpoints import (add_dtype, architecture, check_finite, nonnegative_float,
                                       positive_int, trainer_parser)
from bench.methods.fair_mapping import AttributeSpec, default_occupations, get_spec, read_lines
from bench.methods.rs_corrector import DISTORTED, PreferenceNet, latent_input_scale

Classifier = Callable[[np.ndarray], Sequence[Any]]
# Training images' seeds start here, away from the small seeds tests and users pick, so that R
# never sees at t=T the very noise it is later asked to correct.
TRAIN_SEED_BASE = 2**31


class _Recorder(Adapter):
    """Keeps the latent before each step, as R will see it."""
    name = "rs-corrector-recorder"

    def __init__(self) -> None:
        super().__init__()
        self.latents: list[torch.Tensor] = []
        self.timesteps: list[float] = []

    def on_step(self, latents: torch.Tensor, step: Step, state: Any) -> torch.Tensor:
        scale = latent_input_scale(step.scheduler, step.t)
        self.latents.append((latents.detach() * scale).to("cpu", torch.float16))
        self.timesteps.append(float(step.t))
        return latents


@dataclass
class Trajectories:
    latents: torch.Tensor  # [N, C, h, w] float16
    timesteps: torch.Tensor  # [N]
    labels: torch.Tensor  # [N] group index
    images: torch.Tensor  # [N] which kept image (trajectory) the latent comes from
    requested: dict[str, int]  # images sampled per group
    kept: dict[str, int]  # images whose trajectories were kept per group

    def take(self, mask: torch.Tensor) -> "Trajectories":
        return dataclasses.replace(self, latents=self.latents[mask], timesteps=self.timesteps[mask],
                                   labels=self.labels[mask], images=self.images[mask])

    def split(self, every: int = 5) -> tuple["Trajectories", "Trajectories"]:
        """(train, held out): every `every`-th image's whole trajectory is held out, as the
        latents of one trajectory are near-duplicates of each other."""
        held = self.images % every == every - 1
        return self.take(~held), self.take(held)


def collect(pipe: Any, spec: AttributeSpec, occupations: Sequence[str], samples: int,
            sample_steps: int, guidance: float, seed: int, classify: Classifier | None = None,
            batch_size: int = 8) -> Trajectories:
    from bench.models import native_size
    from bench.prompt_sets.occupations import with_article

    templates = spec.templates
    jobs = [(templates[s % len(templates)].format(noun=with_article(spec.noun(occ, g))), g)
            for occ in occupations for g in range(len(spec.groups)) for s in range(samples)]
    size = native_size(pipe)
    zs, ts, ys, ids = [], [], [], []
    requested = dict.fromkeys(spec.groups, 0)
    kept = dict.fromkeys(spec.groups, 0)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        rec = _Recorder()
        seeds = [TRAIN_SEED_BASE + seed * 100_003 + start + n for n in range(len(chunk))]
        batch = Batch([text for text, _ in chunk], seeds, [{} for _ in chunk], guidance)
        result = sample(pipe, [rec], batch, steps=sample_steps, height=size, width=size)
        labels = list(classify(result.images)) if classify else None
        for n, (_, g) in enumerate(chunk):
            requested[spec.groups[g]] += 1
            if labels is not None and labels[n] != spec.groups[g]:
                continue
            kept[spec.groups[g]] += 1
            zs += [z[n] for z in rec.latents]
            ts += rec.timesteps
            ys += [g] * len(rec.latents)
            ids += [sum(kept.values()) - 1] * len(rec.latents)
    if not zs:
        raise RuntimeError("rs-corrector: the classifier agreed with no requested group; "
                           "nothing to train on (check the classifier's labels match the groups "
                           f"{list(spec.groups)})")
    return Trajectories(torch.stack(zs), torch.tensor(ts), torch.tensor(ys), torch.tensor(ids),
                        requested, kept)


def corrupt(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each latent gets one of: its scale off by a factor of 1.35-2 (a noise level that does not
    match t), per-channel gain and offset (colour casts), detail blurred away. All are visible at
    every noise level; a corruption that is not (patch shuffling, which leaves noise looking like
    noise) only teaches R to memorise its training latents."""
    out = []
    for x in z:
        kind = int(torch.randint(3, (1,), generator=gen))
        c, h, w = x.shape
        if kind == 0:
            sign = 1.0 if bool(torch.rand(1, generator=gen) < 0.5) else -1.0
            x = x * float(torch.exp(sign * (0.3 + 0.4 * torch.rand(1, generator=gen))))
        elif kind == 1:
            gain = torch.exp(0.7 * torch.randn(c, 1, 1, generator=gen))
            x = x * gain + 0.7 * torch.randn(c, 1, 1, generator=gen)
        else:
            x = F.interpolate(F.avg_pool2d(x[None], 4), size=(h, w), mode="nearest")[0]
        out.append(x)
    return torch.stack(out)


def augment(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random mirror and shift (up to a quarter of the size, wrapping): a moved face is as
    plausible, and R cannot memorise where its training latents' noise sits."""
    h, w = z.shape[-2:]
    out = []
    for x in z:
        dy, dx = (int(v) for v in torch.randint(-(h // 4), h // 4 + 1, (2,), generator=gen))
        x = x.roll((dy, dx), (1, 2))
        out.append(x.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else x)
    return torch.stack(out)


def fit_preference(data: Trajectories, n_groups: int, steps: int, batch_size: int = 64,
                   lr: float = 1e-3, width: int = 32, seed: int = 0, device: str = "cpu"
                   ) -> tuple[PreferenceNet, list[float]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = PreferenceNet(n_groups + 1, data.latents.shape[1], width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n_bad = max(1, batch_size // 3)  # a quarter of each minibatch: "distorted"
    # Trajectories visit only their schedule's timesteps; jittering t over the gap between them
    # lets R serve other step counts (else it calls an unseen t's latent "distorted").
    gap = float(data.timesteps.unique().diff().abs().median()) if data.timesteps.unique().numel() > 1 else 0.0
    curve = []
    for step in range(steps):
        idx = torch.randint(len(data.labels), (batch_size,), generator=gen)
        bad = torch.randint(len(data.labels), (n_bad,), generator=gen)
        z = torch.cat([data.latents[idx].float(), corrupt(data.latents[bad].float(), gen)])
        z = augment(z, gen)
        t = torch.cat([data.timesteps[idx], data.timesteps[bad]])
        t = (t + gap * (torch.rand(len(t), generator=gen) - 0.5)).clamp(0, 999)
        y = torch.cat([data.labels[idx], torch.full((n_bad,), n_groups)])
        loss = F.cross_entropy(net(z.to(device), t.to(device)), y.to(device))
        check_finite("rs-corrector", float(loss.detach()), f"R's loss at step {step}",
                     f"lower --lr (now {lr})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    return net.eval(), curve


@torch.no_grad()
def evaluate(net: PreferenceNet, data: Trajectories, n_groups: int, seed: int = 0,
             chunk: int = 256) -> dict[str, float]:
    """On held-out trajectories: group accuracy (argmax over the groups), the share of clean
    latents R calls distorted, and the share of their corrupted copies it calls distorted."""
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)

    def predict(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(z[i:i + chunk].float().to(device), data.timesteps[i:i + chunk].to(device)).cpu()
                          for i in range(0, len(z), chunk)])

    clean, bad = predict(data.latents), predict(corrupt(data.latents.float(), gen))
    return {"latents": len(data.labels),
            "group_accuracy": float((clean[:, :n_groups].argmax(1) == data.labels).float().mean()),
            "clean_called_distorted": float((clean.argmax(1) == n_groups).float().mean()),
            "distorted_recall": float((bad.argmax(1) == n_groups).float().mean())}


def train(model: str, attribute: str, occupations: list[str] | None, out: Path, steps: int = 2000,
          seed: int = 0, device: str | None = None, *, samples: int = 2, sample_steps: int = 25,
          guidance: float = 7.5, classify: Classifier | None = None, batch_size: int = 64,
          lr: float = 1e-3, width: int = 32, spec: AttributeSpec | None = None,
          dtype: str | None = None) -> Path:
    """Sample trajectories (the model in `dtype`), fit R in float32, write
    `out/preference.safetensors` + `out/card.json`."""
    from safetensors.torch import save_file

    from bench.models import dtype_name, fingerprint, load_pipeline

    start = time.perf_counter()
    spec = spec or get_spec(attribute)
    pipe = load_pipeline(model, device, dtype)
    occupations = list(occupations or default_occupations(pipe)[:20])  # sampling is the cost
    data = collect(pipe, spec, occupations, samples, sample_steps, guidance, seed, classify)
    sampled = time.perf_counter()
    fit_data, held = data.split()
    net, curve = fit_preference(fit_data, len(spec.groups), steps, batch_size, lr, width, seed,
                                str(pipe.device))
    validation = evaluate(net, held, len(spec.groups), seed) if len(held.labels) else None
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu().contiguous() for k, v in net.state_dict().items()},
              str(out / "preference.safetensors"))
    card = {
        "method": "rs-corrector", "model": model, "model_fingerprint": fingerprint(pipe),
        "architecture": architecture(pipe),
        "attribute": attribute, **spec.to_card(), "labels": [*spec.groups, DISTORTED],
        "occupations": occupations, "samples": samples,
        "sample_steps": sample_steps, "guidance": guidance,
        "classifier": getattr(classify, "__name__", type(classify).__name__) if classify else None,
        "requested": data.requested, "kept": data.kept, "latents": len(fit_data.labels),
        "validation": validation,
        "in_channels": int(data.latents.shape[1]), "width": width, "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "dtype": dtype_name(pipe),
        "sampling_seconds": round(sampled - start, 3),
        "seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "loss": curve,
    }
    (out / "card.json").write_text(json.dumps(card, indent=1))
    return out


def load_classifier(target: str) -> Classifier:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise SpecError(f"--classifier {target}: write module:callable, e.g. mypkg.faces:classify_race")
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = trainer_parser("bench train rs-corrector", __doc__,
                        "the first 20 of the `occupations` prompt set")
    ap.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps for R")
    ap.add_argument("--samples", type=positive_int, default=2, help="images per occupation and group")
    ap.add_argument("--sample-steps", type=positive_int, default=25, help="denoising steps per image")
    ap.add_argument("--guidance", type=nonnegative_float, default=7.5)
    ap.add_argument("--classifier", help="module:callable, images (B,H,W,3 in [0,1]) -> group "
                    "labels; trajectories are kept only where it agrees with the requested group")
    ap.add_argument("--batch-size", type=positive_int, default=64, help="R's minibatch (clean latents)")
    ap.add_argument("--width", type=positive_int, default=32, help="R's base channel count (multiple of 8)")
    ap.add_argument("--lr", type=nonnegative_float, default=1e-3, help="R's Adam learning rate")
    add_dtype(ap, "the trajectories are sampled in it (and stored as float16), R trains in float32")
    a = ap.parse_args(argv)
    occ = read_lines(a.occupations, "occupation") if a.occupations else None
    classify = load_classifier(a.classifier) if a.classifier else None
    out = train(a.model, a.attribute, occ, a.out, a.steps, a.seed, a.device, samples=a.samples,
                sample_steps=a.sample_steps, guidance=a.guidance, classify=classify,
                batch_size=a.batch_size, width=a.width, lr=a.lr, dtype=a.dtype)
    card = json.loads((out / "card.json").read_text())
    head, tail = np.mean(card["loss"][:50]), np.mean(card["loss"][-50:])
    print(f"wrote {out}: {card['latents']} latents (kept {card['kept']} of {card['requested']}), "
          f"loss {head:.4g} -> {tail:.4g} in {card['seconds']:.1f} s; held out: {card['validation']}")
    return 0
