"""Face detection scorers and the one shared detection helper.

Backends:

* `mtcnn`: MTCNN from facenet-pytorch 2.5.3, whose P/R/O-net weights ship inside the wheel
  (the offline default). A face counts when MTCNN's probability is >= `min_prob` (default 0.9:
  MTCNN's own cascade thresholds let through texture false positives on generated images).
* `insightface`: SCRFD from insightface's `buffalo_l` pack, when its ONNX files are present under
  `ROOT/models/buffalo_l` (ROOT defaults to `~/.insightface`). The same pass also yields
  insightface's gender/age, used by `bench.metrics.attributes.InsightFaceGenderAge`.
* dlib (FairFace's own preprocessing, `fairface_chips`): the publisher's `predict.py` steps, dlib's
  CNN face detector (MMOD), 5-point landmarks and aligned chips; used by
  `bench.metrics.attributes.FairFace`.

Detections are cached per process, keyed by image content, so a detector scorer and the attribute
classifiers that need face crops detect each image once.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from bench.metrics.base import Scorer

BUFFALO_FILES = ("det_10g.onnx", "genderage.onnx")  # what we use from buffalo_l
BUFFALO_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"


# ---- small shared utilities (also used by the CLIP scorers) -------------------------------------

def image_key(image: Image.Image) -> str:
    """Content hash of an image: equal pixels give equal keys, whatever object holds them."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class LRU:
    """A bounded dict; the oldest entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


def resolve_device(device: str | None = None) -> str:
    """"auto"/None -> cuda when available, else cpu; anything else is passed through."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def frame(rows: pd.DataFrame | None, n: int, columns: dict[str, list]) -> pd.DataFrame:
    """The scorer output: one row per image, indexed like `rows`."""
    if rows is not None and len(rows) != n:
        raise ValueError(f"score() got {n} images but {len(rows)} rows; pass one row per image")
    index = rows.index if rows is not None else pd.RangeIndex(n)
    return pd.DataFrame(columns, index=index)


# ---- detections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Faces:
    """Faces found in one image, most probable first."""

    boxes: np.ndarray  # (n, 4) float: x0, y0, x1, y1 in pixels
    probs: np.ndarray  # (n,)
    genders: tuple[str, ...] = ()  # insightface only: "male"/"female" per face
    ages: tuple[int, ...] = ()  # insightface only: years per face

    def __len__(self) -> int:
        return len(self.probs)

    def above(self, min_prob: float) -> "Faces":
        keep = self.probs >= min_prob
        pick = [i for i, k in enumerate(keep) if k]
        return Faces(
            self.boxes[keep], self.probs[keep],
            tuple(self.genders[i] for i in pick) if self.genders else (),
            tuple(self.ages[i] for i in pick) if self.ages else (),
        )


_DETECTIONS = LRU(200_000)  # (backend, image key) -> raw Faces; a few hundred bytes each


@lru_cache(maxsize=2)
def _mtcnn(device: str) -> Any:
    from facenet_pytorch import MTCNN

    # keep_all: we count faces; select_largest=False: most probable face first.
    return MTCNN(keep_all=True, select_largest=False, device=device).eval()


def _mtcnn_raw(images: Sequence[Image.Image], device: str, batch_size: int) -> list[Faces]:
    model = _mtcnn(device)
    out: list[Faces] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        if len({im.size for im in chunk}) > 1:  # MTCNN batches only equal-size images
            results = [model.detect([im]) for im in chunk]
            pairs = [(b[0], p[0]) for b, p in results]
        else:
            boxes, probs = model.detect(chunk)
            pairs = list(zip(boxes, probs))
        for box, prob in pairs:
            if box is None:
                out.append(Faces(np.zeros((0, 4)), np.zeros(0)))
            else:
                out.append(Faces(np.asarray(box, float), np.asarray(prob, float)))
    return out


def _insightface_raw(images: Sequence[Image.Image], root: str, device: str) -> list[Faces]:
    app = _insightface_app(root, device)
    out = []
    for im in images:
        # insightface wants BGR
        bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
        found = sorted(app.get(bgr), key=lambda f: -float(f.det_score))
        out.append(Faces(
            np.array([f.bbox for f in found], float).reshape(-1, 4),
            np.array([f.det_score for f in found], float),
            tuple("male" if int(f.gender) == 1 else "female" for f in found),  # insightface: 1 = M
            tuple(int(f.age) for f in found),
        ))
    return out


def detect(images: Sequence[Image.Image], backend: str = "mtcnn", *, device: str | None = None,
           min_prob: float = 0.9, batch_size: int = 16,
           root: str = "~/.insightface") -> list[Faces]:
    """Faces per image (prob >= min_prob), detecting only images not seen before."""
    device = resolve_device(device)
    tag = backend if backend == "mtcnn" else f"{backend}:{Path(root).expanduser()}"
    keys = [(tag, image_key(im.convert("RGB"))) for im in images]
    todo = [i for i, k in enumerate(keys) if _DETECTIONS.get(k) is None]
    if backend not in ("mtcnn", "insightface"):
        raise ValueError(f"unknown face backend '{backend}'; use mtcnn or insightface")
    todo_images = [images[i].convert("RGB") for i in todo]
    if not todo:
        fresh: list[Faces] = []
    elif backend == "mtcnn":
        fresh = _mtcnn_raw(todo_images, device, batch_size)
    else:
        fresh = _insightface_raw(todo_images, root, device)
    for i, faces in zip(todo, fresh):
        _DETECTIONS.put(keys[i], faces)
    return [_DETECTIONS.get(k).above(min_prob) for k in keys]


def crop(image: Image.Image, box: np.ndarray, margin: float = 0.25) -> Image.Image:
    """A square crop around a face box, grown by `margin` x its size on each side (FairFace's
    chips use padding 0.25), clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * (0.5 + margin)
    w, h = image.size
    left, top = max(0, round(cx - half)), max(0, round(cy - half))
    right, bottom = min(w, round(cx + half)), min(h, round(cy + half))
    return image.convert("RGB").crop((left, top, max(right, left + 1), max(bottom, top + 1)))


# ---- dlib: FairFace's face chips ----------------------------------------------------------------

# FairFace's predict.py (github.com/dchen236/FairFace): the image is resized so its longer side is
# 800 px (dlib.resize_image, sides truncated to int), faces are found by dlib's CNN detector with
# one upsampling, 5 landmarks are fitted in each box, and dlib.get_face_chips cuts 300 x 300 chips
# aligned on them with padding 0.25. The publisher writes the chips to disk and reads them back;
# for PNG inputs (ours) that round trip is lossless, so we keep them in memory.
FAIRFACE_MAX_SIZE = 800
FAIRFACE_UPSAMPLE = 1
FAIRFACE_CHIP_SIZE = 300
FAIRFACE_CHIP_PADDING = 0.25
# The detector file FairFace's repository ships (dlib_models/), identical to davisking/dlib-models'
# mmod_human_face_detector.dat. face-recognition-models ships a different file of the same name.
FAIRFACE_DETECTOR_SHA256 = "be467b1a76f482693de3b0f6a1ff91d092319be71523d4d4b0628f6a53fcb87a"
DLIB_MODELS_URL = "https://github.com/davisking/dlib-models (mmod_human_face_detector.dat.bz2)"

_CHIPS = LRU(512)  # (detector, landmarks, image key) -> chips; 270 kB per chip


def packaged_dlib_model(name: str) -> Path | None:
    """A .dat file from the face-recognition-models package, located without importing it (its
    __init__ imports pkg_resources, which current setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / name


@lru_cache(maxsize=2)
def _dlib_detector(path: str) -> Any:
    import dlib

    return dlib.cnn_face_detection_model_v1(path)


@lru_cache(maxsize=2)
def _dlib_landmarks(path: str) -> Any:
    import dlib

    return dlib.shape_predictor(path)


def load_dlib_models(detector: str, landmarks: str) -> tuple[Any, Any]:
    """The CNN detector and the 5-point shape predictor; ValueError naming a file dlib refuses."""
    import dlib

    out = []
    for path, load in ((detector, _dlib_detector), (landmarks, _dlib_landmarks)):
        try:
            out.append(load(path))
        except RuntimeError as e:  # dlib's deserialisation errors span several lines
            raise ValueError(f"{path}: dlib cannot read it: {' '.join(str(e).split())}") from None
    parts = out[1](np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
    if parts != 5:
        raise ValueError(f"{landmarks}: a {parts}-point shape predictor; FairFace aligns with the "
                         f"5-point one (shape_predictor_5_face_landmarks.dat)")
    return out[0], out[1]


def fairface_resize(rgb: np.ndarray) -> np.ndarray:
    """predict.py's first step: the longer side to 800 px with dlib's bilinear resize."""
    import dlib

    h, w = rgb.shape[:2]
    if w > h:
        size = (int(FAIRFACE_MAX_SIZE * h / w), FAIRFACE_MAX_SIZE)
    else:
        size = (FAIRFACE_MAX_SIZE, int(FAIRFACE_MAX_SIZE * w / h))
    return dlib.resize_image(rgb, rows=size[0], cols=size[1])


def fairface_chips(image: Image.Image, detector: str, landmarks: str) -> list[np.ndarray]:
    """FairFace's aligned face chips (300 x 300 x 3 uint8 RGB), one per face dlib finds."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    key = (detector, landmarks, image_key(image.convert("RGB")))
    cached = _CHIPS.get(key)
    if cached is not None:
        return cached
    import dlib

    cnn, predictor = load_dlib_models(detector, landmarks)
    resized = fairface_resize(rgb)
    shapes = dlib.full_object_detections()
    for found in cnn(resized, FAIRFACE_UPSAMPLE):
        shapes.append(predictor(resized, found.rect))
    chips = list(dlib.get_face_chips(resized, shapes, size=FAIRFACE_CHIP_SIZE,
                                     padding=FAIRFACE_CHIP_PADDING)) if len(shapes) else []
    _CHIPS.put(key, chips)
    return chips


# ---- insightface --------------------------------------------------------------------------------

def buffalo_dir(root: str) -> Path:
    return Path(root).expanduser() / "models" / "buffalo_l"


def insightface_reason(root: str) -> str | None:
    try:
        import insightface  # noqa: F401
    except ImportError as e:
        return f"insightface is not importable ({e}); pip install insightface"
    missing = [f for f in BUFFALO_FILES if not (buffalo_dir(root) / f).is_file()]
    if missing:
        return (f"insightface buffalo_l models missing: {buffalo_dir(root) / missing[0]}; "
                f"unzip {BUFFALO_URL} into {buffalo_dir(root)} or pass root=DIR")
    return None


@lru_cache(maxsize=2)
def _insightface_app(root: str, device: str) -> Any:
    from insightface.app import FaceAnalysis

    cuda = device.startswith("cuda")
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    # Pass the directory itself: insightface then loads it and never tries to download.
    app = FaceAnalysis(name=str(buffalo_dir(root)), allowed_modules=["detection", "genderage"],
                       providers=providers)
    app.prepare(ctx_id=0 if cuda else -1, det_size=(640, 640))
    return app


def mtcnn_unavailable() -> str | None:
    """Why MTCNN cannot run here (facenet-pytorch missing), or None."""
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError as e:
        return f"facenet-pytorch is not importable ({e}); pip install facenet-pytorch==2.5.3"
    return None


# ---- scorers ------------------------------------------------------------------------------------

class MTCNNFaces(Scorer):
    name: ClassVar[str] = "mtcnn"
    description: ClassVar[str] = "face count from MTCNN (facenet-pytorch, bundled weights)"

    def __init__(self, device: str | None = None, min_prob: float | str = 0.9,
                 batch_size: int | str = 16) -> None:
        self.device = device
        self.min_prob = float(min_prob)
        self.batch_size = int(batch_size)

    def available(self) -> str | None:
        return mtcnn_unavailable()

    def detect(self, images: Sequence[Image.Image]) -> list[Faces]:
        return detect(images, "mtcnn", device=self.device, min_prob=self.min_prob,
                      batch_size=self.batch_size)

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        faces = self.detect(images)
        return frame(rows, len(images), {
            f"{self.name}.n_faces": [len(f) for f in faces],
            f"{self.name}.max_prob": [float(f.probs.max()) if len(f) else 0.0 for f in faces],
        })


class InsightFaceFaces(MTCNNFaces):
    name: ClassVar[str] = "insightface"
    description: ClassVar[str] = "face count from insightface buffalo_l (SCRFD)"

    def __init__(self, device: str | None = None, min_prob: float | str = 0.5,
                 root: str = "~/.insightface") -> None:
        super().__init__(device=device, min_prob=min_prob)
        self.root = root

    def available(self) -> str | None:
        return insightface_reason(self.root)

    def detect(self, images: Sequence[Image.Image]) -> list[Faces]:
        return detect(images, "insightface", device=self.device, min_prob=self.min_prob,
                      root=self.root)
