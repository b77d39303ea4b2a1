"""`bench world build`: retrain the whole world from scratch, reproducibly.

Stages: corpus -> VAE (then latents made zero-mean, scaling_factor = 1/std) -> CLIP pair
(contrastive) -> UNet phase 1 (and optional phase 2) on the frozen text tower's embeddings -> evaluators
(attribute/hazard classifier and quality scorer, trained on clean and VAE-reconstructed renders).
Writes into out_dir: pipeline/ (diffusers StableDiffusionPipeline), clip_head.safetensors,
evaluators.safetensors, evaluators.json, card.json, and with phase 2 unet_phase1.safetensors
(only for --reuse).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.spec import SpecError
from bench.world.paths import WEIGHTS_DIR
from bench.world.corpus import BIAS, HAZARD_RATE, make_corpus, make_eval_set
from bench.world.evaluators import WorldEvaluators, measure, save_evaluators
from bench.world.render import corrupt
from bench.world.train import (caption_table, encode_latents, reconstruct, standardise_vae,
                               train_clip, train_evaluator, train_quality, train_unet, train_vae)


@dataclass(frozen=True)
class Settings:
    corpus: int
    vae_steps: int
    vae_batch: int
    eval_images: int
    eval_steps: int
    quality_steps: int
    eval_batch: int
    heldout_images: int
    clip_steps: int
    clip_batch: int
    unet_steps: int  # phase 1: from scratch, lr 1e-3, plain epsilon loss
    unet_batch: int
    unet2_steps: int = 0  # optional phase 2: from phase 1's EMA weights, lr 5e-4, min-SNR-5
    caption_dropout: float = 0.1


# The committed weights' settings (stage times add up to about 1 h 30 min on 2 otherwise idle cores,
# phase 2 about 60 min of it).
FULL = Settings(corpus=30000, vae_steps=2500, vae_batch=32, eval_images=10000, eval_steps=600,
                quality_steps=300, eval_batch=64, heldout_images=2000, clip_steps=300,
                clip_batch=128, unet_steps=2000, unet_batch=128, unet2_steps=6000)
QUICK = Settings(corpus=256, vae_steps=8, vae_batch=16, eval_images=256, eval_steps=8,
                 quality_steps=8, eval_batch=32, heldout_images=128, clip_steps=8, clip_batch=32,
                 unet_steps=4, unet_batch=16, unet2_steps=4)
WORKERS = 2  # render processes
# Settings each stage depends on: a `--reuse` directory's stage is taken only when they match.
STAGE_KEYS = {"vae": ("corpus", "vae_steps", "vae_batch"),
              "clip": ("corpus", "clip_steps", "clip_batch"),
              "unet": ("corpus", "vae_steps", "vae_batch", "clip_steps", "clip_batch",
                       "unet_steps", "unet_batch", "caption_dropout")}


def build(out_dir: Path, quick: bool, seed: int, reuse: Path | None = None,
          unet2_steps: int | None = None) -> None:
    """Train every stage into out_dir. With `reuse`, a previous build's VAE, CLIP pair and
    phase-1 UNet are loaded instead of retrained when that build used the same seed and the
    same settings for them (the stages are deterministic, so the result is the same).
    `unet2_steps` overrides the settings' phase-2 length."""
    s = QUICK if quick else FULL
    if unet2_steps is not None:
        s = replace(s, unet2_steps=unet2_steps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {"seed": seed, "quick": quick, "settings": asdict(s),
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "machine": platform.machine(), "bias": BIAS, "hazard_rate": HAZARD_RATE,
                            "stages": {}}
    prev = _reusable(reuse, s, seed)
    start = time.perf_counter()
    t0 = time.perf_counter()
    corpus = make_corpus(s.corpus, seed, workers=WORKERS)
    card["stages"]["corpus"] = {"images": s.corpus, "seconds": round(time.perf_counter() - t0, 1)}

    if "vae" in prev:
        vae, card["stages"]["vae"] = prev["vae"]
    else:
        vae, card["stages"]["vae"] = train_vae(corpus.images, s.vae_steps, s.vae_batch, seed)
        card["stages"]["vae"].update(standardise_vae(vae, encode_latents(vae, corpus.images)))
        card["stages"]["vae"]["recon_mse"] = _recon_mse(vae, corpus.images[:1000])
    latents = encode_latents(vae, corpus.images) * vae.config.scaling_factor

    from bench.models import clip_tokenizer
    tokenizer = clip_tokenizer()
    if "clip" in prev:
        (text_encoder, head), card["stages"]["clip"] = prev["clip"]
    else:
        text_encoder, head, card["stages"]["clip"] = train_clip(
            corpus.images, corpus.captions, tokenizer, s.clip_steps, s.clip_batch, seed)
        card["stages"]["clip"].update(measure_clip(text_encoder, tokenizer, head, s, seed))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()},
              str(out_dir / "clip_head.safetensors"))

    table, ids, empty = caption_table(text_encoder, tokenizer, corpus.captions)

    def snapshot(unet: Any, steps_done: int) -> None:
        save_pipeline(out_dir / "pipeline", vae, text_encoder, tokenizer, unet)
        print(f"[unet] pipeline snapshot after {steps_done} steps", flush=True)

    on_checkpoint = None if quick else snapshot
    if "unet" in prev:
        unet, card["stages"]["unet"] = prev["unet"]
    else:
        unet, card["stages"]["unet"] = train_unet(
            latents, ids, table, empty, s.unet_steps, s.unet_batch, seed,
            dropout=s.caption_dropout, on_checkpoint=on_checkpoint)
        card["stages"]["unet"]["distinct_captions"] = len(table)
    if s.unet2_steps:
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
                  str(out_dir / "unet_phase1.safetensors"))  # for --reuse; not needed to run
        unet, card["stages"]["unet2"] = train_unet(
            latents, ids, table, empty, s.unet2_steps, s.unet_batch, seed + 100,
            dropout=s.caption_dropout, on_checkpoint=on_checkpoint, init=unet, lr=5e-4,
            min_snr=5.0, name="unet2")
    save_pipeline(out_dir / "pipeline", vae, text_encoder, tokenizer, unet)
    evaluators = _train_evaluators(vae, s, seed, card)
    save_evaluators(evaluators, out_dir)
    card["params"] = {n: sum(p.numel() for p in m.parameters()) for n, m in (
        ("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("clip_head", head),
        ("attributes", evaluators.attributes), ("quality", evaluators.quality))}
    card["total_seconds"] = round(time.perf_counter() - start, 1)
    card["reused"] = {"from": str(reuse), "stages": sorted(prev)} if prev else None
    (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"[build] done in {card['total_seconds']}s -> {out_dir}", flush=True)


def _reusable(reuse: Path | None, s: Settings, seed: int) -> dict[str, Any]:
    """Stages of a previous build that match this one: {stage: (model(s), card entry)}."""
    if reuse is None:
        return {}
    reuse = Path(reuse)
    card = json.loads((reuse / "card.json").read_text())
    if card.get("seed") != seed:
        return {}
    same = {stage: all(card["settings"].get(k) == getattr(s, k) for k in keys)
            for stage, keys in STAGE_KEYS.items()}
    out: dict[str, Any] = {}
    if same["vae"]:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(str(reuse / "pipeline" / "vae"), use_safetensors=True)
        out["vae"] = (vae.eval(), card["stages"]["vae"])
    if same["clip"]:
        from safetensors.torch import load_file
        from transformers import CLIPTextModel

        from bench.world.train import ClipHead
        head = ClipHead()
        head.load_state_dict(load_file(str(reuse / "clip_head.safetensors")))
        text_encoder = CLIPTextModel.from_pretrained(str(reuse / "pipeline" / "text_encoder"),
                                                     use_safetensors=True)
        out["clip"] = ((text_encoder.eval(), head.eval()), card["stages"]["clip"])
    # Phase 1's UNet: saved beside a build that ran phase 2, else the pipeline's own.
    phase1 = reuse / "unet_phase1.safetensors"
    if not phase1.exists() and "unet2" not in card["stages"]:
        phase1 = reuse / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    if same["unet"] and same["vae"] and same["clip"] and phase1.exists():
        from safetensors.torch import load_file

        from bench.world.nets import make_unet
        unet = make_unet()
        unet.load_state_dict(load_file(str(phase1)))
        out["unet"] = (unet.eval(), card["stages"]["unet"])
    print(f"[build] reusing {sorted(out) or 'nothing'} from {reuse}", flush=True)
    return out


def measure_clip(text_encoder: Any, tokenizer: Any, head: Any, s: Settings,
                 seed: int) -> dict[str, Any]:
    """Zero-shot occupation accuracy of the CLIP pair on held-out renders with a face."""
    from bench.world.render import OCCUPATIONS
    from bench.world.train import zero_shot_accuracy

    images, labels = make_eval_set(s.heldout_images, seed + 30, p_face=1.0, p_hazard=0.0,
                                   workers=WORKERS)
    acc = zero_shot_accuracy(text_encoder, tokenizer, head, images, labels["occupation"],
                             list(OCCUPATIONS))
    return {"zero_shot_occupation_accuracy": acc, "zero_shot_images": len(images)}


def _recon_mse(vae: Any, images: np.ndarray) -> float:
    recon = reconstruct(vae, images).astype(np.float32) / 127.5 - 1
    return float(np.mean((recon - (images.astype(np.float32) / 127.5 - 1)) ** 2))


def _train_evaluators(vae: Any, s: Settings, seed: int, card: dict[str, Any]) -> WorldEvaluators:
    """Half of the training images pass through the VAE, so the evaluators see the same kind of
    images the generator produces; the quality scorer counts reconstructions as clean."""
    t0 = time.perf_counter()
    images, labels = make_eval_set(s.eval_images, seed + 10, workers=WORKERS)
    half = len(images) // 2
    images[half:] = reconstruct(vae, images[half:])
    rng = np.random.default_rng(seed + 11)
    bad = np.stack([np.asarray(corrupt(Image.fromarray(im), rng)) for im in images[::2]])
    q_images = np.concatenate([images[1::2], bad])
    q_clean = np.concatenate([np.ones(len(images[1::2])), np.zeros(len(bad))])
    card["stages"]["evaluator_data"] = {"seconds": round(time.perf_counter() - t0, 1)}
    attributes, card["stages"]["attributes"] = train_evaluator(
        images, labels, s.eval_steps, s.eval_batch, seed)
    quality, card["stages"]["quality"] = train_quality(
        q_images, q_clean, s.quality_steps, s.eval_batch, seed)
    ev = WorldEvaluators(attributes, quality, {})
    test, test_labels = make_eval_set(s.heldout_images, seed + 20, workers=WORKERS)
    recon = reconstruct(vae, test)
    heldout = {}
    for name, imgs in (("clean", test), ("reconstructed", recon)):
        bad = np.stack([np.asarray(corrupt(Image.fromarray(im), rng)) for im in imgs])
        heldout[name] = measure(ev, imgs, test_labels, bad)
    ev.card = {"heldout": heldout, "groups": ["light", "medium", "dark"],
               "occupations": list(card["bias"]), "seed": seed,
               "note": "held-out renders with uniform labels (seed + 20); rows true, cols predicted"}
    return ev


def save_pipeline(path: Path, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> None:
    from diffusers import StableDiffusionPipeline

    from bench.world.nets import make_scheduler
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(str(path), safe_serialization=True)
    for config in path.glob("*/config.json"):  # a reused part remembers where it was loaded from
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


DEFAULT_OUT = Path("world-build")  # beside the user's work, never inside the installed package


def output_dir(out: Path | None, replace_shipped: bool) -> Path:
    """Where a build writes: --out, else a new directory; the shipped weights only when asked."""
    if replace_shipped and out is not None and out.resolve() != WEIGHTS_DIR.resolve():
        raise SpecError(f"--out {out} and --replace-shipped: give one (--replace-shipped writes "
                        f"to {WEIGHTS_DIR})")
    if replace_shipped:
        return WEIGHTS_DIR
    return DEFAULT_OUT if out is None else out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench world build", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps of each stage (for tests)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output dir (default {DEFAULT_OUT}; the weights shipped in the "
                         f"package are replaced only with --replace-shipped)")
    ap.add_argument("--replace-shipped", action="store_true",
                    help=f"write over the weights the installed package ships ({WEIGHTS_DIR}), "
                         f"which every run of --model world then uses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="a previous build dir whose VAE, CLIP pair and phase-1 UNet to reuse when "
                         "their seed and settings match")
    ap.add_argument("--unet2-steps", type=int, default=None,
                    help="UNet phase 2 length (default: the settings', as for the committed "
                         "weights; 0 skips it)")
    args = ap.parse_args(argv)
    args.out = output_dir(args.out, args.replace_shipped)
    if args.threads:
        torch.set_num_threads(args.threads)
    build(args.out, args.quick, args.seed, args.reuse, args.unet2_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
