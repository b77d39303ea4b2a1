"""The skin_tone scorer (metrics/skin_tone.py): CIELAB against scikit-image, ITA by hand, Monk
swatches, a drawn face of known colour, vectorisation, and its wiring into the report."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from bench.metrics import skin_tone as st

skimage_color = pytest.importorskip("skimage.color")


def swatch_rgb() -> np.ndarray:
    return np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in st.MONK_HEX], np.uint8)


def test_lab_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    rgb = np.concatenate([rng.integers(0, 256, (2000, 3)), swatch_rgb(), [[0, 0, 0], [255, 255, 255],
                                                                          [1, 2, 3]]]).astype(np.uint8)
    ours = st.srgb_to_lab(rgb[None])[0]
    ref = skimage_color.rgb2lab(rgb[None])[0]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # float input in [0, 1] is the same colour as its uint8 form
    np.testing.assert_allclose(st.srgb_to_lab(rgb / 255.0), ours, atol=1e-9)


def test_ita_by_hand() -> None:
    lab = np.array([[75.0, 3.0, 25.0], [50.0, 9.0, 12.0], [30.0, 0.0, 20.0],
                    [50.0 + np.sqrt(3), 1.0, 1.0]])
    # arctan(25/25) = 45; arctan(0) = 0; arctan(-20/20) = -45; arctan(sqrt 3) = 60
    np.testing.assert_allclose(st.ita(lab), [45.0, 0.0, -45.0, 60.0], atol=1e-12)


def test_monk_lab_order_and_grouping() -> None:
    lab = st.monk_lab()
    assert lab.shape == (10, 3)
    assert np.all(np.diff(lab[2:, 0]) < 0)  # from MST 3 on, each swatch is darker (L*)
    from bench.world.render import GROUP_SWATCHES, MST

    assert [tuple(c) for c in swatch_rgb()] == list(MST)  # the world renders these very swatches
    assert {g: tuple(i for i in range(1, 11) if st.MONK_GROUP[i - 1] == g) for g in st.GROUPS} \
        == GROUP_SWATCHES


def test_swatch_images_score_their_own_monk_index() -> None:
    images = [Image.new("RGB", (64, 64), tuple(int(v) for v in c)) for c in swatch_rgb()]
    out = st.SkinTone(device="cpu", fallback="center").score(images, pd.DataFrame(index=range(10)))
    assert out["skin_tone.monk"].tolist() == list(range(1, 11))
    assert out["skin_tone.skin"].tolist() == list(st.MONK_GROUP)
    expected_ita = st.ita(st.monk_lab())
    np.testing.assert_allclose(out["skin_tone.ita"].to_numpy(float), expected_ita, atol=1e-9)
    # without the portrait prior, an image with no detected face has no label
    bare = st.SkinTone(device="cpu").score(images[:1], pd.DataFrame(index=[0]))
    assert bare["skin_tone.n_faces"].tolist() == [0] and pd.isna(bare["skin_tone.skin"][0])


def drawn_face(skin: tuple[int, int, int], size: int = 256) -> Image.Image:
    """A centred cartoon face of a flat skin colour: hair, dark eyes, brows and a red mouth."""
    im = Image.new("RGB", (size, size), (200, 210, 225))
    d = ImageDraw.Draw(im)
    s = size / 128
    d.ellipse([45 * s, 28 * s, 83 * s, 76 * s], fill=skin)
    d.chord([43 * s, 24 * s, 85 * s, 60 * s], 180, 360, fill=(30, 22, 18))  # hair
    for ex in (56, 72):
        d.ellipse([(ex - 3) * s, 46 * s, (ex + 3) * s, 52 * s], fill=(20, 15, 15))
        d.line([(ex - 4) * s, 43 * s, (ex + 4) * s, 43 * s], fill=(30, 22, 18), width=int(2 * s))
    d.line([58 * s, 66 * s, 70 * s, 66 * s], fill=(150, 40, 50), width=int(3 * s))
    return im


@pytest.mark.parametrize("skin,group", [((240, 226, 210), "light"), ((190, 150, 110), "medium"),
                                        ((118, 84, 62), "medium"), ((70, 52, 42), "dark")])
def test_drawn_face_of_known_colour(skin: tuple[int, int, int], group: str) -> None:
    image = drawn_face(skin)
    scorer = st.SkinTone(device="cpu", fallback="center")
    out = scorer.score([image], pd.DataFrame(index=[0]))
    assert out["skin_tone.skin"][0] == group
    expected = st.srgb_to_lab(np.array(skin, np.uint8))
    assert out["skin_tone.ita"][0] == pytest.approx(float(st.ita(expected)), abs=1e-9)
    # a detector's face box (here given by hand) leads to the same colour
    lab = scorer.measure(image, np.array([[45.0, 28.0, 83.0, 76.0]]) * 2)
    np.testing.assert_allclose(lab, expected, atol=1e-9)


def _line_events(fn, *args) -> int:  # type: ignore[no-untyped-def]
    """Python line events executed inside metrics/skin_tone.py while fn runs."""
    count = 0

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        if frame.f_code.co_filename == st.__file__:
            if event == "line":
                count += 1
            return tracer
        return None

    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def test_no_per_pixel_python_loops() -> None:
    """The Python work does not grow with the number of pixels: same line count for 8x8 and
    256x256 regions (numpy does the per-pixel work)."""
    rng = np.random.default_rng(1)
    small, large = (rng.integers(100, 110, (n, n, 3)).astype(np.uint8) for n in (8, 256))
    assert _line_events(st.skin_lab, small) == _line_events(st.skin_lab, large)
    assert _line_events(st.srgb_to_lab, small) == _line_events(st.srgb_to_lab, large)


def test_no_dominant_colour_gives_no_label() -> None:
    rng = np.random.default_rng(2)
    assert st.skin_lab(rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)) is None


def test_report_wiring() -> None:
    from bench.metrics.aggregators import Parity
    from bench.registry import METRICS
    from bench.report.boards import plan
    from bench.suites import SUITES

    assert METRICS.get("skin_tone") is st.SkinTone
    table = pd.DataFrame({"method": ["baseline"], "prompt_id": ["p"], "meta.group": [None],
                          "skin_tone.skin": ["light"], "skin_tone.ita": [40.0]})
    (par,) = [a for a in plan(table, SUITES.get("fairness")).aggregators if isinstance(a, Parity)]
    assert (par.label_column, par.groups, par.name) == ("skin_tone.skin", ["light", "medium", "dark"],
                                                       "skin")
    m = st.SkinTone().confusion("skin")
    assert m is not None and m.shape == (3, 3)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(par.confusion, m)  # the report corrects with the scorer's matrix
    assert st.SkinTone().confusion("race") is None
    with pytest.raises(ValueError, match="fallback"):
        st.SkinTone(fallback="middle")
