import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # open_clip otherwise retries the hub for ~46 s
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
I2P_CSV = SHARED / "data" / "i2p_benchmark.csv"


@pytest.fixture(scope="session")
def tiny_pipe():
    from bench.models import load_pipeline

    return load_pipeline("tiny-random", "cpu")


@pytest.fixture(scope="session")
def tiny_xl_pipe():
    """The SDXL architecture at 32 px (bench.models.tiny_random_xl_pipeline). Shared: tests
    that patch it must restore it."""
    from bench.models import load_pipeline

    return load_pipeline("tiny-random-xl", "cpu")


@pytest.fixture
def prompt_file(tmp_path):
    def make(lines: list[str], name: str = "prompts.txt") -> Path:
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return make
