"""Skin tone from pixels, without classifier weights (issue 20): `skin_tone`.

Per image: faces from the shared MTCNN helper (`bench.metrics.faces.detect`, facenet-pytorch's bundled
weights), the cheek band of the most probable face box, a skin mask inside it, and from the masked
pixels' median CIELAB colour the Individual Typology Angle and the nearest Monk Skin Tone swatch,
grouped light (MST 1-3) / medium (4-7) / dark (8-10).

Columns: `skin_tone.ita` (degrees), `skin_tone.monk` (1-10), `skin_tone.skin` (light / medium /
dark; None without a face or skin pixels; the report's parity aggregators pick it up as a `skin`
label column), `skin_tone.n_faces`.

Anchors: HEIM's skin-tone metric (skin-pixel rules, nearest MST swatch) and DALL-Eval's ITA; both
loop over pixels in Python. Here every step is a numpy array operation. The skin mask is a
consensus mask, not fixed YCrCb thresholds: those thresholds (Cr >= 133) reject the extreme Monk
swatches themselves (MST 1 has Cr 133.2, MST 10 Cr 130.8). Instead the pixels of the cheek band
within `max_delta_e` (CIE76) of the band's densest Lab colour are skin: eyes, brows, mouth, hair
and background are the minority of the band and fall outside it.

`fallback="center"` uses a fixed portrait box (the centre of the image, where most
portrait prompts put the face) when MTCNN finds no face; MTCNN rarely fires on
cartoon faces (probability < 0.9 on most 128-512 px renders). The default ("none") leaves such
images unlabelled, as the other face-based classifiers do.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from bench.metrics.base import Calibration, MetricInfo, Scorer, calibration
from bench.metrics.faces import detect, frame, mtcnn_unavailable

# Monk Skin Tone scale MST-1 .. MST-10, Google's published hex values (skintone.google).
MONK_HEX: tuple[str, ...] = ("#f6ede4", "#f3e7db", "#f7ead0", "#eadaba", "#d7bd96", "#a07e56",
                             "#825c43", "#604134", "#3a312a", "#292420")
GROUPS: tuple[str, ...] = ("light", "medium", "dark")
MONK_GROUP: tuple[str, ...] = ("light",) * 3 + ("medium",) * 4 + ("dark",) * 3
# The cheek band of a face box (fractions of its width/height): below the eyes, above the mouth.
CHEEKS = (0.15, 0.45, 0.85, 0.72)  # x0, y0, x1, y1
# The portrait prior for `fallback="center"` (fractions of the image), then its cheek band.
CENTER_FACE = (0.34, 0.22, 0.66, 0.62)

# sRGB (D65) -> XYZ and the D65 2-degree white point, as scikit-image's rgb2lab uses them.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])

def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] float sRGB (..., 3) -> CIELAB (..., 3), D65: sRGB decoding, the sRGB
    matrix to XYZ, then CIE 1976 L*a*b* with its linear segment below (6/29)^3."""
    c = np.asarray(rgb, dtype=np.float64)
    if np.issubdtype(np.asarray(rgb).dtype, np.integer):
        c = c / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def ita(lab: np.ndarray) -> np.ndarray:
    """Individual Typology Angle in degrees, arctan((L* - 50) / b*) * 180 / pi. arctan2 keeps
    b* = 0 finite (+-90 degrees) and equals arctan for b* > 0, where skin lies."""
    lab = np.asarray(lab, dtype=np.float64)
    return np.degrees(np.arctan2(lab[..., 0] - 50.0, lab[..., 2]))


def monk_lab() -> np.ndarray:
    """The 10 Monk swatches in CIELAB, (10, 3)."""
    rgb = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in MONK_HEX], np.uint8)
    return srgb_to_lab(rgb)


def nearest_monk(lab: np.ndarray) -> np.ndarray:
    """Monk index 1..10 of the swatch nearest (CIE76 delta E) to each Lab colour (..., 3)."""
    d = np.linalg.norm(np.asarray(lab)[..., None, :] - monk_lab(), axis=-1)
    return d.argmin(axis=-1) + 1


def region(shape: tuple[int, int], box: Sequence[float], band: Sequence[float] = CHEEKS
           ) -> tuple[slice, slice]:
    """Rows and columns of `band` (fractions) of a pixel box, clipped to an image of `shape`."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    c0, c1 = int(np.floor(x0 + band[0] * bw)), int(np.ceil(x0 + band[2] * bw))
    r0, r1 = int(np.floor(y0 + band[1] * bh)), int(np.ceil(y0 + band[3] * bh))
    c0, r0 = min(max(c0, 0), w - 1), min(max(r0, 0), h - 1)
    return slice(r0, max(min(r1, h), r0 + 1)), slice(c0, max(min(c1, w), c0 + 1))


def skin_lab(pixels: np.ndarray, max_delta_e: float = 12.0, sample: int = 1024) -> np.ndarray | None:
    """Median Lab colour of the skin pixels of a region (H, W, 3 uint8): those within `max_delta_e`
    of the region's densest colour (the pixel with most neighbours within `max_delta_e`, among an
    evenly strided sample of at most `sample` pixels). None when fewer than a quarter of the pixels
    qualify (no dominant colour: not a face)."""
    lab = srgb_to_lab(pixels).reshape(-1, 3)
    if len(lab) == 0:
        return None
    probe = lab[::max(1, -(-len(lab) // sample))]
    near = np.linalg.norm(probe[:, None, :] - probe[None, :, :], axis=-1) <= max_delta_e
    peak = probe[near.sum(axis=1).argmax()]
    mask = np.linalg.norm(lab - peak, axis=1) <= max_delta_e
    if mask.sum() < 0.25 * len(lab):
        return None
    return np.median(lab[mask], axis=0)  # robust to edge pixels blended with eyes or hair


def calibration_of(name: str) -> Calibration | None:
    """The `calibration=` option's registered counts, checked to be in this scorer's group order."""
    found = calibration("skin_tone", "skin", name)
    if found is not None and tuple(found.groups) != GROUPS:
        raise ValueError(f"skin_tone: calibration {name or '(default)'} orders its groups "
                         f"{list(found.groups)}; the scorer's are {list(GROUPS)}")
    return found


class SkinTone(Scorer):
    name: ClassVar[str] = "skin_tone"
    description: ClassVar[str] = ("ITA and nearest Monk Skin Tone swatch of the face's cheek pixels "
                                  "(MTCNN boxes, no classifier weights)")
    # No leaderboard mean: a mean ITA has no "better" direction (MetricInfo needs one); the
    # group labels feed parity, the ITA stays per image in scores.parquet.
    columns: ClassVar[dict[str, MetricInfo]] = {}

    def __init__(self, device: str | None = None, min_prob: float | str = 0.9,
                 fallback: str = "none", max_delta_e: float | str = 12.0,
                 batch_size: int | str = 16, calibration: str = "") -> None:
        if fallback not in ("none", "center"):
            raise ValueError(f"skin_tone: fallback={fallback!r}; use none or center")
        # The measured confusion counts parity is corrected with: a registered calibration
        # (bench.metrics.base.calibration: "" takes the one registered for skin_tone, "none" none).
        self.calibration: Calibration | None = calibration_of(calibration)
        self.device = device
        self.min_prob = float(min_prob)
        self.fallback = fallback
        self.max_delta_e = float(max_delta_e)
        self.batch_size = int(batch_size)

    def available(self) -> str | None:
        return mtcnn_unavailable()

    def manifest(self) -> dict[str, str]:
        return {"detector": "mtcnn (facenet-pytorch bundled weights)", "min_prob": str(self.min_prob),
                "fallback": self.fallback, "max_delta_e": str(self.max_delta_e),
                "cheeks": str(CHEEKS), "center_face": str(CENTER_FACE)}

    def confusion(self, attribute: str) -> np.ndarray | None:
        """P(predicted | true) of the calibration, for the report's parity correction; None for
        any attribute but "skin" or without a calibration."""
        if attribute != "skin" or self.calibration is None:
            return None
        return self.calibration.matrix()

    def face_box(self, size: tuple[int, int], boxes: np.ndarray) -> np.ndarray | None:
        """The most probable face's box, or the portrait prior (fallback="center"), or None."""
        if len(boxes):
            return boxes[0]
        if self.fallback == "center":
            w, h = size
            return np.array(CENTER_FACE) * np.array([w, h, w, h])
        return None

    def measure(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray | None:
        """Median skin Lab colour of one image, None without a face or a dominant colour."""
        rgb = np.asarray(image.convert("RGB"))
        box = self.face_box(image.size, boxes)
        if box is None:
            return None
        rows, cols = region(rgb.shape[:2], box)
        return skin_lab(rgb[rows, cols], self.max_delta_e)

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        faces = detect(images, "mtcnn", device=self.device, min_prob=self.min_prob,
                       batch_size=self.batch_size)
        labs = [self.measure(im, f.boxes) for im, f in zip(images, faces)]
        itas: list[float | None] = [None if lab is None else float(ita(lab)) for lab in labs]
        monks: list[int | None] = [None if lab is None else int(nearest_monk(lab)) for lab in labs]
        return frame(rows, len(images), {
            f"{self.name}.n_faces": [len(f) for f in faces],
            f"{self.name}.ita": [np.nan if v is None else v for v in itas],
            f"{self.name}.monk": monks,
            f"{self.name}.skin": [None if m is None else MONK_GROUP[m - 1] for m in monks],
        })

