"""Scoring throughput per scorer (images/s) on this machine; prints a Markdown table.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_scoring.py --threads 1

Images: N distinct 512 x 512 crops of scikit-image's photos (distinct pixels, so the per-process
detection and embedding caches never hit). Each scorer is warmed up on two other images (model
loading is not timed) and its caches are cleared before the timed call, so attribute classifiers
include their face detection (MTCNN; dlib's CNN detector for FairFace). Scorers whose weights are
not available offline run on randomly initialised weights of the real architecture (ViT-L-14,
ResNet-34, 768-d heads), written to temporary files in the real formats: same compute, meaningless
scores. The preference scorers' files (ImageReward 1.8 GB, HPSv2 2 GB, PickScore 3.9 GB) are built
only for the scorers asked for with --only, or for all when --only is not given.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)]).convert("RGB")
        w, h = src.size
        side = int(min(w, h) * rng.uniform(0.8, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(src.crop((x, y, x + side, y + side)).resize((512, 512), Image.Resampling.BICUBIC))
    return out


def random_weights(tmp: Path) -> dict[str, str]:
    """Random heads / classifiers in the real file formats."""
    from bench.metrics.attributes import fairface_model

    torch.save(fairface_model().state_dict(), tmp / "res34_fair_align_multi_7_20190809.pt")
    dims = [768, 1024, 128, 64, 16, 1]
    mlp = {f"layers.{j}.{p}": t for j, (a, b) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:]))
           for p, t in torch.nn.Linear(a, b).state_dict().items()}
    torch.save(mlp, tmp / "aesthetic.pth")
    np.save(tmp / "q16.npy", np.random.default_rng(0).standard_normal((2, 768)).astype(np.float32))
    return {"fairface": str(tmp / "res34_fair_align_multi_7_20190809.pt"), "aesthetic": str(tmp / "aesthetic.pth"),
            "q16": str(tmp / "q16.npy")}


def preference_weights(tmp: Path, only: list[str] | None) -> dict[str, str]:
    """Random preference-scorer files at the published sizes and formats (GBs: only when asked)."""
    out: dict[str, str] = {}
    if not only or "imagereward" in only:  # BLIP ViT-L/16 224 + BERT-base with cross-attention
        from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        from bench.metrics.aesthetics import LAYOUTS, build_head
        from bench.metrics.image_reward import file_name

        nets = {"vision": BlipVisionModel(BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                           num_attention_heads=16, image_size=224, patch_size=16,
                                                           layer_norm_eps=1e-6)),
                "text": BlipTextModel(BlipTextConfig(vocab_size=30524, encoder_hidden_size=1024, num_attention_heads=12,
                                                     is_decoder=True), add_pooling_layer=False),
                "head": build_head(LAYOUTS["mlp"], 768)}
        torch.save({file_name(part, k): v for part, net in nets.items() for k, v in net.state_dict().items()},
                   tmp / "ImageReward.pt")
        (tmp / "bert").mkdir()
        (tmp / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo",
                                                            "of", "an", "astronaut"]) + "\n")
        BertTokenizer(str(tmp / "bert" / "vocab.txt")).save_pretrained(tmp / "bert")
        out["imagereward"] = str(tmp / "ImageReward.pt")
    if not only or "hpsv2" in only:  # open_clip ViT-H-14, {'state_dict'} in float16
        import open_clip

        state = {k: v.half() for k, v in open_clip.create_model("ViT-H-14", pretrained=None).state_dict().items()}
        torch.save({"state_dict": state}, tmp / "HPS_v2.1_compressed.pt")
        out["hpsv2"] = str(tmp / "HPS_v2.1_compressed.pt")
    if not only or "pickscore" in only:  # transformers CLIPModel, CLIP-ViT-H-14's configuration
        import json

        from transformers import CLIPConfig, CLIPModel

        from bench.models import clip_tokenizer

        config = CLIPConfig(text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                             num_attention_heads=16, hidden_act="gelu"),
                            vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                               num_attention_heads=16, patch_size=14, image_size=224, hidden_act="gelu"),
                            projection_dim=1024)
        CLIPModel(config).save_pretrained(tmp / "pickscore")
        clip_tokenizer().save_pretrained(tmp / "pickscore")
        (tmp / "pickscore" / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 224}))
        out["pickscore"] = str(tmp / "pickscore")
    return out


def scorers(weights: dict[str, str], device: str, threads: int) -> dict[str, tuple[object, str]]:
    from bench.metrics.aesthetics import LAIONAesthetic
    from bench.metrics.attributes import AgeGender, CLIPAttributes, FairFace
    from bench.metrics.clip_score import CLIPScore
    from bench.metrics.faces import MTCNNFaces
    from bench.metrics.nudenet import NudeNet
    from bench.metrics.q16 import Q16

    clip = {"model": "ViT-L-14", "pretrained": "none", "device": device}
    rand = "random-init weights, real architecture"
    return {
        "mtcnn": (MTCNNFaces(device=device), "bundled weights"),
        "age-gender": (AgeGender(device=device), "bundled weights; includes MTCNN"),
        "fairface": (FairFace(weights=weights["fairface"], device=device), rand + "; includes dlib CNN detection and chips"),
        "clip-attributes": (CLIPAttributes(**clip), "ViT-L-14 " + rand + "; includes MTCNN; CLIP only on single-face images"),
        "nudenet": (NudeNet(threads=threads), "bundled 320n.onnx"),
        "clipscore": (CLIPScore(**clip), "ViT-L-14 " + rand),
        "aesthetic": (LAIONAesthetic(weights=weights["aesthetic"], **clip), "ViT-L-14 + MLP head, " + rand),
        "q16": (Q16(weights=weights["q16"], **clip), "ViT-L-14 " + rand),
        **preference_scorers(weights, device),
    }


def preference_scorers(weights: dict[str, str], device: str) -> dict[str, tuple[object, str]]:
    from bench.metrics.hpsv2 import HPSv2
    from bench.metrics.image_reward import ImageReward
    from bench.metrics.pickscore import PickScore

    rand = "random-init weights, published size and format"
    out: dict[str, tuple[object, str]] = {}
    if "imagereward" in weights:
        tokenizer = str(Path(weights["imagereward"]).parent / "bert")
        out["imagereward"] = (ImageReward(weights=weights["imagereward"], tokenizer=tokenizer, device=device),
                              "BLIP ViT-L/16 + BERT-base, " + rand)
    if "hpsv2" in weights:
        out["hpsv2"] = (HPSv2(weights=weights["hpsv2"], device=device), "open_clip ViT-H-14, " + rand)
    if "pickscore" in weights:
        out["pickscore"] = (PickScore(model=weights["pickscore"], processor=weights["pickscore"], device=device),
                            "CLIP ViT-H/14 (transformers), " + rand)
    return out


def clear_caches() -> None:
    import bench.metrics.clip_models
    import bench.metrics.faces

    bench.metrics.faces._DETECTIONS.data.clear()
    bench.metrics.faces._CHIPS.data.clear()
    bench.metrics.clip_models._EMBEDDINGS.data.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="timed images per scorer")
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="scorer names to run (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    images = photos(args.n + 2)
    warm, timed = images[:2], images[2:]
    rows = pd.DataFrame({"prompt": ["a photo of an astronaut"] * args.n})
    lines = ["| scorer | images/s | s/image | notes |", "|---|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp)) | preference_weights(Path(tmp), args.only)
        for name, (scorer, note) in scorers(weights, args.device, args.threads).items():
            if args.only and name not in args.only:
                continue
            scorer.score(warm, rows.iloc[:2])  # loads the models
            clear_caches()
            start = time.perf_counter()
            scorer.score(timed, rows)
            seconds = time.perf_counter() - start
            lines.append(f"| {name} | {args.n / seconds:.2f} | {seconds / args.n:.3f} | {note} |")
            print(lines[-1], flush=True)
    print(f"\n{args.n} images, 512 x 512, device {args.device}, {args.threads} thread(s), "
          f"torch {torch.__version__}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
