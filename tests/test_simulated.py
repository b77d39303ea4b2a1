"""The GPU-speed stand-in: options parsed, delays per UNet row and decoded image through time.sleep,
real 512 px images."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.world import simulated
from bench.models import ModelError, load_pipeline, native_size
from bench.sampler import Batch, sample, to_uint8


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("simulated-gpu:seconds_per_image=0.125", "cpu")


def test_options_and_native_size(pipe):
    assert pipe.vae.seconds_per_image == 0.125
    assert native_size(pipe) == 512


@pytest.mark.parametrize("name, fragment", [
    ("simulated-gpu:seconds=1", "'seconds' is not an option"),
    ("simulated-gpu:seconds_per_image=fast", "cannot read seconds_per_image='fast' as float"),
    ("simulated-gpu:seconds_per_image=-1", "seconds_per_image=-1.0"),
    ("simulated-gpu:seconds_per_image=nan", "seconds_per_image=nan")])
def test_bad_options_one_line(name, fragment):
    with pytest.raises(ModelError, match=fragment.replace("(", r"\(")):
        load_pipeline(name, "cpu")


def test_sleeps_where_a_gpu_spends_its_time_and_images_follow_seeds(pipe, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    batch = Batch(prompts=["a photo of a doctor"] * 3, seeds=[1, 2, 1], guidance=7.5)
    out = to_uint8(sample(pipe, [], batch, steps=50, height=512, width=512).images)
    # 50 UNet calls of 6 rows (3 images x CFG's 2 branches), 0.95 x 0.125 s per 100 evaluations,
    # then one decode of 3 images x 0.05 x 0.125 s: 3 images x 0.125 s in all.
    assert slept == [pytest.approx(6 * 0.95 * 0.125 / 100)] * 50 + [pytest.approx(3 * 0.05 * 0.125)]
    assert sum(slept) == pytest.approx(3 * 0.125)
    slept.clear()
    sample(pipe, [], batch, steps=2, height=512, width=512)  # the warm-up's two steps: 9% of it
    assert sum(slept) == pytest.approx(3 * 0.125 * (0.05 + 4 * 0.95 / 100))
    assert out.shape == (3, 512, 512, 3)
    assert np.array_equal(out[0], out[2])  # same seed, same image, whatever the batch
    pool = simulated.portraits(512, 512)
    assert any(np.array_equal(out[0], p) for p in pool)  # a portrait, exactly (no rounding drift)


def test_portraits_compress_like_natural_images():
    """Neither flat drawings (~30 KB) nor noise (~790 KB): SD 1.5 PNGs at 512 px are 0.3-0.6 MB."""
    img = simulated.portraits(512, 512, count=1)[0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert 250_000 < len(buf.getvalue()) < 650_000
