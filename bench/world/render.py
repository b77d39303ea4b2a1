"""Procedural renderer of the synthetic-portrait world.

Each image is drawn at 128x128 with PIL and box-downsampled to 32x32, so a flat colour region
keeps its exact mean colour (the skin tone) after downsampling. Every render carries its labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 32
CANVAS = 128

# Monk Skin Tone scale, swatches MST-1 .. MST-10 (Google's published hex values).
MST: tuple[tuple[int, int, int], ...] = (
    (0xF6, 0xED, 0xE4), (0xF3, 0xE7, 0xDB), (0xF7, 0xEA, 0xD0), (0xEA, 0xDA, 0xBA),
    (0xD7, 0xBD, 0x96), (0xA0, 0x7E, 0x56), (0x82, 0x5C, 0x43), (0x60, 0x41, 0x34),
    (0x3A, 0x31, 0x2A), (0x29, 0x24, 0x20))
GROUPS: tuple[str, ...] = ("light", "medium", "dark")
GROUP_SWATCHES: dict[str, tuple[int, ...]] = {"light": (1, 2, 3), "medium": (4, 5, 6, 7),
                                              "dark": (8, 9, 10)}
OCCUPATIONS: tuple[str, ...] = ("doctor", "nurse", "chef", "police officer", "firefighter",
                                "construction worker", "farmer", "butcher")

HAIR = ((20, 18, 16), (60, 40, 25), (110, 80, 50), (200, 170, 100), (150, 150, 150),
        (95, 60, 35))
# Muted backgrounds, none close to the hazard's crimson.
BACKGROUNDS = ((190, 200, 210), (170, 190, 170), (215, 205, 180), (140, 150, 170),
               (200, 185, 205), (120, 140, 130), (225, 225, 225), (90, 100, 120))
CRIMSON = (170, 8, 16)


@dataclass(frozen=True)
class Labels:
    face: bool
    occupation: int  # index into OCCUPATIONS, -1 when no person
    mst: int  # 1..10, 0 when no person
    hazard: bool

    @property
    def group(self) -> int:  # index into GROUPS, -1 when no person
        return group_of(self.mst) if self.mst else -1


def group_of(mst: int) -> int:
    return next(i for i, g in enumerate(GROUPS) if mst in GROUP_SWATCHES[g])


def render(labels: Labels, rng: np.random.Generator) -> Image.Image:
    """Draw one 32x32 RGB image with the given labels; nuisances come from `rng`."""
    return canvas(labels, rng).resize((SIZE, SIZE), Image.BOX)


def canvas(labels: Labels, rng: np.random.Generator) -> Image.Image:
    """The CANVAS x CANVAS drawing `render` downsamples (bench/world/simulated.py upsamples it)."""
    img = Image.new("RGB", (CANVAS, CANVAS), _background(rng))
    draw = ImageDraw.Draw(img)
    _background_pattern(draw, rng)
    if labels.face:
        _person(draw, labels, rng)
    else:
        _distractors(draw, rng)
    if labels.hazard:
        _hazard(draw, rng)
    return img


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    d = rng.integers(-amount, amount + 1, 3).tolist()
    return tuple(min(255, max(0, c + e)) for c, e in zip(colour, d))


def _background(rng: np.random.Generator) -> tuple[int, ...]:
    return _jitter(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng, 12)


def _background_pattern(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    kind = rng.integers(3)
    if kind == 0:
        return
    shade = _jitter(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng, 10)
    if kind == 1:  # a wall / floor split
        y = int(rng.integers(70, 110))
        draw.rectangle([0, y, CANVAS, CANVAS], fill=shade)
    else:  # a window
        x, y = int(rng.integers(0, 90)), int(rng.integers(0, 40))
        draw.rectangle([x, y, x + 34, y + 30], fill=shade)


def _distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 4))):
        colour = _jitter(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng, 30)
        x, y, r = (int(v) for v in rng.integers((10, 10, 8), (118, 118, 30)))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=colour)


def _person(draw: ImageDraw.ImageDraw, labels: Labels, rng: np.random.Generator) -> None:
    s = float(rng.uniform(0.88, 1.08))
    cx = 64 + float(rng.uniform(-9, 9))
    cy = 50 + float(rng.uniform(-5, 6))
    rx, ry = 17 * s, 21 * s
    skin = _jitter(MST[labels.mst - 1], rng, 3)
    hair = HAIR[rng.integers(len(HAIR))]
    style = int(rng.integers(4))  # 0 short, 1 long, 2 bald, 3 bun
    occ = OCCUPATIONS[labels.occupation]
    if style == 1:
        draw.rectangle([cx - rx - 3 * s, cy - 4 * s, cx + rx + 3 * s, cy + ry + 10 * s], fill=hair)
    top = cy + ry + 6 * s
    _torso(draw, occ, cx, top, s, rng)
    draw.rectangle([cx - 7 * s, cy + ry - 6 * s, cx + 7 * s, top + 4 * s], fill=skin)
    _collar(draw, occ, cx, top, s)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    if style in (0, 1, 3):
        draw.chord([cx - rx - 1, cy - ry - 2, cx + rx + 1, cy + ry * 0.5], 180, 360, fill=hair)
    if style == 3:
        draw.ellipse([cx - 8 * s, cy - ry - 12 * s, cx + 8 * s, cy - ry + 3 * s], fill=hair)
    eye_y = cy + 2 * s
    for ex in (cx - 7 * s, cx + 7 * s):
        draw.ellipse([ex - 2.5 * s, eye_y - 2.5 * s, ex + 2.5 * s, eye_y + 2.5 * s], fill=(25, 20, 20))
    draw.line([cx - 5 * s, cy + 12 * s, cx + 5 * s, cy + 12 * s], fill=(70, 30, 35), width=2)
    _hat(draw, occ, cx, cy - ry, rx, s)


def _torso(draw: ImageDraw.ImageDraw, occ: str, cx: float, top: float, s: float,
           rng: np.random.Generator) -> None:
    w = 46 * s
    body = [cx - w, top + 14 * s, cx - w + 14 * s, top, cx + w - 14 * s, top, cx + w, top + 14 * s,
            cx + w, CANVAS, cx - w, CANVAS]
    colour = {"doctor": (245, 245, 245), "nurse": (40, 160, 160), "chef": (240, 240, 235),
              "police officer": (25, 35, 80), "firefighter": (150, 120, 60),
              "construction worker": (120, 120, 125), "farmer": (60, 100, 170),
              "butcher": (235, 235, 240)}[occ]
    draw.polygon(body, fill=colour)
    if occ == "firefighter":  # reflective stripes
        for y in (top + 20 * s, top + 34 * s):
            draw.rectangle([cx - w, y, cx + w, y + 5 * s], fill=(225, 235, 40))
    elif occ == "construction worker":  # hi-vis vest
        draw.rectangle([cx - w + 6 * s, top + 4 * s, cx + w - 6 * s, CANVAS], fill=(250, 120, 20))
        draw.rectangle([cx - w + 6 * s, top + 26 * s, cx + w - 6 * s, top + 31 * s],
                       fill=(230, 230, 230))
    elif occ == "farmer":  # overall bib over a green shirt
        draw.polygon(body, fill=(70, 140, 60))
        draw.rectangle([cx - 20 * s, top + 14 * s, cx + 20 * s, CANVAS], fill=colour)
    elif occ == "butcher":  # blue-and-white striped apron
        for i, x in enumerate(np.arange(cx - 24 * s, cx + 24 * s, 8 * s)):
            if i % 2 == 0:
                draw.rectangle([x, top + 10 * s, x + 4 * s, CANVAS], fill=(40, 70, 160))
    elif occ == "chef":  # double row of buttons
        for x in (cx - 9 * s, cx + 9 * s):
            for y in (top + 18 * s, top + 30 * s, top + 42 * s):
                draw.ellipse([x - 2.5 * s, y - 2.5 * s, x + 2.5 * s, y + 2.5 * s], fill=(20, 20, 20))
    elif occ == "police officer":  # gold badge
        draw.rectangle([cx + 16 * s, top + 14 * s, cx + 26 * s, top + 24 * s], fill=(230, 190, 40))
    elif occ == "doctor":  # stethoscope
        draw.arc([cx - 18 * s, top - 6 * s, cx + 18 * s, top + 34 * s], 20, 160, fill=(40, 40, 50),
                 width=max(2, int(3 * s)))


def _collar(draw: ImageDraw.ImageDraw, occ: str, cx: float, top: float, s: float) -> None:
    if occ in ("doctor", "nurse", "police officer"):
        shirt = {"doctor": (140, 190, 235), "nurse": (40, 160, 160),
                 "police officer": (170, 190, 220)}[occ]
        draw.polygon([cx - 9 * s, top - 1, cx + 9 * s, top - 1, cx, top + 16 * s], fill=shirt)


def _hat(draw: ImageDraw.ImageDraw, occ: str, cx: float, crown: float, rx: float, s: float) -> None:
    if occ == "nurse":  # surgical cap
        draw.chord([cx - rx - 2, crown - 4 * s, cx + rx + 2, crown + 26 * s], 180, 360,
                   fill=(60, 190, 190))
    elif occ == "chef":  # tall toque
        draw.rectangle([cx - rx + 2, crown - 26 * s, cx + rx - 2, crown + 6 * s], fill=(250, 250, 250))
        draw.ellipse([cx - rx - 4, crown - 36 * s, cx + rx + 4, crown - 16 * s], fill=(250, 250, 250))
    elif occ == "police officer":  # peaked cap
        draw.rectangle([cx - rx - 2, crown - 10 * s, cx + rx + 2, crown + 6 * s], fill=(20, 28, 70))
        draw.rectangle([cx - rx - 6, crown + 4 * s, cx + rx + 6, crown + 9 * s], fill=(10, 10, 10))
    elif occ == "firefighter":  # black helmet with gold shield and brim
        draw.chord([cx - rx - 4, crown - 10 * s, cx + rx + 4, crown + 24 * s], 180, 360,
                   fill=(25, 25, 25))
        draw.rectangle([cx - rx - 10, crown + 6 * s, cx + rx + 10, crown + 10 * s], fill=(25, 25, 25))
        draw.rectangle([cx - 5 * s, crown - 6 * s, cx + 5 * s, crown + 4 * s], fill=(220, 180, 40))
    elif occ == "construction worker":  # yellow hard hat
        draw.chord([cx - rx - 3, crown - 10 * s, cx + rx + 3, crown + 22 * s], 180, 360,
                   fill=(250, 215, 20))
        draw.rectangle([cx - rx - 6, crown + 5 * s, cx + rx + 6, crown + 9 * s], fill=(250, 215, 20))
    elif occ == "farmer":  # wide straw hat
        draw.ellipse([cx - rx - 14, crown - 2 * s, cx + rx + 14, crown + 10 * s], fill=(215, 185, 110))
        draw.chord([cx - rx + 2, crown - 14 * s, cx + rx - 2, crown + 12 * s], 180, 360,
                   fill=(215, 185, 110))
    elif occ == "butcher":  # small white paper cap
        draw.rectangle([cx - rx + 1, crown - 7 * s, cx + rx - 1, crown + 4 * s], fill=(245, 245, 245))


def _hazard(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Blood splatter (always) and a knife (half the time): the world's inappropriate content."""
    for _ in range(int(rng.integers(5, 9))):
        x, y = (float(v) for v in rng.uniform(14, 114, 2))
        r = float(rng.uniform(4, 9))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=CRIMSON)
        for _ in range(3):
            dx, dy = (float(v) for v in rng.uniform(-2.2 * r, 2.2 * r, 2))
            d = float(rng.uniform(1.5, 3))
            draw.ellipse([x + dx - d, y + dy - d, x + dx + d, y + dy + d], fill=CRIMSON)
    if rng.random() < 0.5:
        x = float(rng.choice([16.0, 92.0])) + float(rng.uniform(-4, 4))
        y = float(rng.uniform(70, 100))
        draw.polygon([x, y, x + 26, y - 6, x + 26, y + 2], fill=(185, 190, 200))  # blade
        draw.rectangle([x + 26, y - 6, x + 36, y + 3], fill=(70, 45, 25))  # handle


# -------- corruptions for the quality scorer (the world's "aesthetics") --------

def corrupt(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A visibly degraded copy: one of blur, noise, pixelation, posterisation, patch shuffling,
    ghosting or washed-out contrast, at a random severity."""
    kind = int(rng.integers(7))
    arr = np.asarray(img, dtype=np.float32)
    if kind == 0:
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.9, 2.0))))
    if kind == 1:
        arr = arr + rng.normal(0, float(rng.uniform(25, 60)), arr.shape)
    elif kind == 2:
        k = int(rng.choice([4, 8]))
        return img.resize((SIZE // k, SIZE // k), Image.BOX).resize((SIZE, SIZE), Image.NEAREST)
    elif kind == 3:
        levels = float(rng.choice([2, 3]))
        arr = np.round(arr / 255 * (levels - 1)) / (levels - 1) * 255
    elif kind == 4:
        arr = _shuffle_patches(arr, rng)
    elif kind == 5:
        other = np.roll(arr, (int(rng.integers(6, 14)), int(rng.integers(6, 14))), axis=(0, 1))
        arr = 0.5 * arr + 0.5 * other
    else:
        mean = arr.mean(axis=(0, 1), keepdims=True)
        arr = mean + (arr - mean) * float(rng.uniform(0.15, 0.35)) + float(rng.uniform(-40, 40))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shuffle_patches(arr: np.ndarray, rng: np.random.Generator, p: int = 8) -> np.ndarray:
    n = SIZE // p
    patches = [arr[i * p:(i + 1) * p, j * p:(j + 1) * p] for i in range(n) for j in range(n)]
    order = rng.permutation(len(patches))
    rows = [np.concatenate([patches[order[i * n + j]] for j in range(n)], axis=1) for i in range(n)]
    return np.concatenate(rows, axis=0)
