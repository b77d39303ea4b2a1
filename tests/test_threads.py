"""torch's CPU thread count in the manifest, and `bench reproduce` computing with it: at another
count the world's images differ in a few 8-bit values and its scores in their last digits
(measured on the reference main job: results/world/README.md)."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.manifest import Manifest
from bench.reproduce import pin_threads

BUNDLE = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"
FAST = ["--model", "tiny-random", "--steps", "3", "--quiet", "--samples", "2", "--metrics", "none"]


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_run_records_its_thread_count(tmp_path, prompt_file, threads):
    torch.set_num_threads(2)
    assert main(["run", *FAST, "--prompt-set", str(prompt_file(["a cat"])),
                 "--out", str(tmp_path / "A")]) == 0
    data = json.loads((tmp_path / "A" / "manifest.json").read_text())
    assert data["threads"] == 2 and Manifest.from_dict(data, "m").threads == 2


def test_a_manifest_without_threads_reads_and_writes_as_before():
    with zipfile.ZipFile(BUNDLE) as z:
        data = json.loads(z.read("manifest.json"))
    data.pop("threads", None)  # as manifests made before threads were recorded
    manifest = Manifest.from_dict(data, "bundle")
    assert manifest.threads is None and json.loads(manifest.to_json()) == data
    assert pin_threads(manifest, "cpu") is None  # nothing recorded: nothing pinned


def test_reproduce_computes_with_the_recorded_thread_count(tmp_path, prompt_file, threads, capsys):
    torch.set_num_threads(2)
    src = tmp_path / "A"
    assert main(["run", *FAST, "--prompt-set", str(prompt_file(["a cat", "a dog"])),
                 "--out", str(src)]) == 0
    torch.set_num_threads(1)
    capsys.readouterr()
    assert main(["reproduce", str(src), "--out", str(tmp_path / "B"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "bench: note: torch threads 1 here, 2 in the manifest: set to 2" in err
    assert torch.get_num_threads() == 2
    assert json.loads((tmp_path / "B" / "manifest.json").read_text())["threads"] == 2
    images = sorted((src / "images").glob("*.png"))
    assert len(images) == 4
    for a in images:
        assert np.array_equal(np.asarray(Image.open(a)),
                              np.asarray(Image.open(tmp_path / "B" / "images" / a.name)))
    # the same count, or a run not on the CPU: left alone
    manifest = Manifest.read(src / "manifest.json")
    assert pin_threads(manifest, "cpu") is None
    torch.set_num_threads(1)
    assert pin_threads(manifest, "cuda:0") is None and torch.get_num_threads() == 1
