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


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Put a third-party distribution on sys.path, as `pip install` would: `module`.py holding
    `source` and a dist-info whose entry_points.txt is `entry_points`. The registries given load
    their entry points again and are restored after the test."""
    def install(module: str, source: str, entry_points: str, *registries) -> Path:
        root = tmp_path / "plugin_src"
        root.mkdir(exist_ok=True)
        (root / f"{module}.py").write_text(source)
        info = root / f"{module}-0.1.dist-info"
        info.mkdir()
        name = module.replace("_", "-")
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(entry_points)
        monkeypatch.syspath_prepend(str(root))
        for reg in registries:
            reg.names()
            monkeypatch.setattr(reg, "_entries", dict(reg._entries))
            monkeypatch.setattr(reg, "_plugins_loaded", False)
        return root
    return install
