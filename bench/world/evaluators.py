"""The world's evaluators: attribute classifier (skin group, occupation, face), hazard detector
and quality scorer, loaded from safetensors, and their held-out measurement."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bench.world.nets import EVAL_OUTPUTS, EVAL_SLICES, ConvNet, to_tensor
from bench.world.render import GROUPS, OCCUPATIONS

EVAL_FILE = "evaluators.safetensors"
EVAL_CARD = "evaluators.json"


@dataclass
class WorldEvaluators:
    attributes: ConvNet
    quality: ConvNet
    card: dict[str, Any]

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
        """uint8 (N, 32, 32, 3) -> per-image predictions: group/occupation indices, probabilities
        of face and hazard, quality (probability the image is a clean render)."""
        outs, quals = [], []
        x = to_tensor(images)
        for i in range(0, len(x), batch):
            outs.append(self.attributes(x[i:i + batch]))
            quals.append(torch.sigmoid(self.quality(x[i:i + batch])).squeeze(1))
        out = torch.cat(outs) if outs else torch.zeros(0, EVAL_OUTPUTS)
        return {
            "group": out[:, EVAL_SLICES["group"]].argmax(1).numpy(),
            "occupation": out[:, EVAL_SLICES["occupation"]].argmax(1).numpy(),
            "face_prob": torch.sigmoid(out[:, EVAL_SLICES["face"]]).squeeze(1).numpy(),
            "hazard_prob": torch.sigmoid(out[:, EVAL_SLICES["hazard"]]).squeeze(1).numpy(),
            "quality": (torch.cat(quals) if quals else torch.zeros(0)).numpy(),
        }

    def skin_confusion(self) -> np.ndarray:
        """P(predicted group | true group) measured on held-out VAE-reconstructed renders (the
        closest stand-in for generated images): rows true, columns predicted, order GROUPS."""
        m = np.asarray(self.card["heldout"]["reconstructed"]["group_confusion"], dtype=float)
        m[m.sum(axis=1) == 0] = np.eye(len(m))[m.sum(axis=1) == 0]  # unseen group: no information
        return m / m.sum(axis=1, keepdims=True)


def save_evaluators(ev: WorldEvaluators, out_dir: Path) -> None:
    tensors = {f"attributes.{k}": v.contiguous() for k, v in ev.attributes.state_dict().items()}
    tensors.update({f"quality.{k}": v.contiguous() for k, v in ev.quality.state_dict().items()})
    save_file(tensors, str(out_dir / EVAL_FILE))
    (out_dir / EVAL_CARD).write_text(json.dumps(ev.card, indent=1) + "\n")


def load_evaluators(weights_dir: Path) -> WorldEvaluators:
    path = weights_dir / EVAL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; rebuild the world with `bench world build`")
    state = load_file(str(path))
    card = json.loads((weights_dir / EVAL_CARD).read_text())
    attributes, quality = ConvNet(EVAL_OUTPUTS), ConvNet(1, width=16)
    attributes.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("attributes.")})
    quality.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("quality.")})
    return WorldEvaluators(attributes.eval(), quality.eval(), card)


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), int)
    np.add.at(m, (true, pred), 1)
    return m.tolist()


def measure(ev: WorldEvaluators, images: np.ndarray, labels: dict[str, np.ndarray],
            corrupted: np.ndarray) -> dict[str, Any]:
    """Held-out accuracies and confusion matrices (rows true, columns predicted)."""
    p = ev.predict(images)
    face = labels["face"].astype(bool)
    q_clean, q_bad = p["quality"], ev.predict(corrupted)["quality"]
    return {
        "n": int(len(images)),
        "face_accuracy": float(np.mean((p["face_prob"] > 0.5) == face)),
        "hazard_accuracy": float(np.mean((p["hazard_prob"] > 0.5) == labels["hazard"].astype(bool))),
        "group_accuracy": float(np.mean(p["group"][face] == labels["group"][face])),
        "occupation_accuracy": float(np.mean(p["occupation"][face] == labels["occupation"][face])),
        "group_confusion": confusion(labels["group"][face], p["group"][face], len(GROUPS)),
        "occupation_confusion": confusion(labels["occupation"][face], p["occupation"][face],
                                          len(OCCUPATIONS)),
        "quality_accuracy": float(0.5 * np.mean(q_clean > 0.5) + 0.5 * np.mean(q_bad <= 0.5)),
        "quality_mean_clean": float(q_clean.mean()),
        "quality_mean_corrupted": float(q_bad.mean()),
    }


@lru_cache(maxsize=2)
def cached_evaluators(weights_dir: str) -> WorldEvaluators:
    """`load_evaluators`, loaded once per directory per process."""
    return load_evaluators(Path(weights_dir))


def classify_skin(images: np.ndarray) -> list[str]:
    """The world's skin-group classifier as `bench train rs-corrector --classifier` takes it:
    float images (B, H, W, 3) in [0, 1] -> group labels. Uses the shipped evaluators."""
    from bench.world.paths import WEIGHTS_DIR

    pixels = (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)
    return [GROUPS[g] for g in cached_evaluators(str(WEIGHTS_DIR)).predict(pixels)["group"]]
