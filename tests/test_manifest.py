"""The run manifest as a typed record (bench/manifest.py): the runner writes the JSON it always
wrote, an old manifest (the committed reference bundle's, or one from before a key existed)
reads and writes back byte for byte, and a damaged or mis-typed one is one line naming the file
and the key."""
import copy
import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
import torch

from bench import planning, provenance
from bench.cli import main
from bench.manifest import Manifest, ManifestError
from bench.spec import RunSpec, SamplerSpec

BUNDLE = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"


@pytest.fixture(scope="module")
def bundled() -> bytes:
    if not BUNDLE.exists():
        pytest.skip("results/world/bundle.zip is not in this checkout")
    with zipfile.ZipFile(BUNDLE) as z:
        return z.read("manifest.json")


def test_the_reference_bundles_manifest_reads_and_writes_back_byte_for_byte(bundled):
    plain = json.loads(bundled)
    m = Manifest.from_json(bundled, "bundle.zip: manifest.json")
    # it predates the thread count (the lead's next regeneration records it)
    assert m.to_json() == bundled and m.absent <= frozenset({"threads"})
    assert m.spec == RunSpec.from_dict(plain["spec"])
    assert (m.model.name, m.model.fingerprint, m.model.dtype) == ("world", "26f98c29afa961c4",
                                                                  "float32")
    assert (m.height, m.width, m.png_compress_level) == (32, 32, 1)
    assert (m.grid.images, m.grid.done, m.grid.shard) == (4032, 4032, None)
    assert [s.sha256 for s in m.prompt_sets] == [s["sha256"] for s in plain["prompt_sets"]]
    assert m.methods["sld-strong"][0].params["warmup"] == 7
    assert m.method_names() == (*plain["methods"], *plain["skipped_methods"])
    assert m.protocol is None and m.reproduces is None and m.git_dirty is False


def test_a_manifest_from_before_the_newer_keys_reads_and_keeps_its_keys(bundled):
    old = json.loads(bundled)
    for key in ("png", "protocol", "method_warnings", "git_dirty"):
        del old[key]
    del old["model"]["dtype"], old["grid"]["done"]
    old["device"] = "cuda:0"
    old["from_a_newer_bench"] = {"kept": [1, 2]}
    raw = json.dumps(old, indent=2).encode()
    m = Manifest.from_json(raw, "old/manifest.json")
    assert m.dtype == "float16"  # before dtypes were recorded: half on cuda
    assert m.png_compress_level is None and m.method_warnings == {} and m.git_dirty is None
    assert m.to_json() == raw


def test_the_runner_writes_the_manifest_it_always_wrote(tmp_path, prompt_file):
    """The JSON the runner wrote before the typed record (its dict, spelled out here), and the
    round trip of its bytes."""
    spec = RunSpec(model="tiny-random", methods=("baseline,sld-max:warmup=2",),
                   prompt_sets=(str(prompt_file(["a photo of a doctor"])),),
                   sampler=SamplerSpec(steps=2), metrics=("none",), out=str(tmp_path / "r"))
    p = planning.plan(spec)
    m = provenance.manifest(p)
    expected = {
        "bench_manifest": 1, "created": m.created, "spec": p.spec.to_dict(),
        "model": {"name": "tiny-random", "fingerprint": p.model_fp,
                  "scheduler": type(p.pipe.scheduler).__name__, "dtype": "float32"},
        "size": {"height": p.height, "width": p.width}, "png": {"compress_level": 1},
        "methods": {k: [{"name": a.name, "params": dataclasses.asdict(a.params)} for a in ads]
                    for k, ads in p.adapters.items()},
        "protocol": None, "skipped_methods": {}, "method_warnings": {},
        "prompt_sets": [{"name": s.name, "source": s.source, "prompts": 1,
                         "sha256": s.content_hash()} for s in p.prompt_sets],
        "grid": {"images": 8, "shard": None}, "device": "cpu",
        "threads": torch.get_num_threads(),  # added: images depend on it on the CPU
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(), "git_dirty": provenance.git_dirty()}
    raw = m.to_json()
    assert raw == json.dumps(expected, indent=2, default=str).encode()
    assert list(m.methods) == ["baseline", "sld-max:warmup=2"]
    assert Manifest.from_json(raw, "r/manifest.json").to_json() == raw


BAD = [  # (edit, key named in the one line)
    (lambda d: d["model"].update(fingerprint=3), "'model.fingerprint' is 3, expected a string"),
    (lambda d: d["spec"].update(samples=0), "'spec': samples=0"),
    (lambda d: d["spec"].update(colour=1), "'spec': unknown run-spec key(s) ['colour']"),
    (lambda d: d["methods"].update(baseline=[{"name": "baseline"}]),
     "'methods.baseline[0].params' is missing"),
    (lambda d: d["prompt_sets"][1].update(prompts="12"),
     "'prompt_sets[1].prompts' is \"12\", expected a whole number"),
    (lambda d: d.update(grid=None), "'grid' is null, expected a mapping"),
    (lambda d: d.update(git_dirty="no"), "'git_dirty' is \"no\", expected true or false"),
    (lambda d: d["skipped_methods"].update(weights=["x"]), "'skipped_methods.weights' is [\"x\"]"),
    (lambda d: d.pop("size"), "'size' is missing"),
]


@pytest.mark.parametrize("edit,named", BAD, ids=[b[1].split("'")[1] for b in BAD])
def test_a_mistyped_manifest_is_one_line_naming_file_and_key(bundled, tmp_path, capsys, edit,
                                                             named):
    data = copy.deepcopy(json.loads(bundled))
    edit(data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="^" + str(run / "manifest.json")):
        Manifest.read(run / "manifest.json")
    for args in (["report", str(run)], ["bundle", str(run), "--out", str(tmp_path / "b.zip")],
                 ["reproduce", str(run), "--out", str(tmp_path / "again")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run / 'manifest.json'}: key {named}" in err, err
    assert not (tmp_path / "b.zip").exists() and not (tmp_path / "again").exists()


def test_a_bundles_mistyped_manifest_is_one_line_naming_the_entry(bundled, tmp_path, capsys):
    data = json.loads(bundled)
    data["grid"]["images"] = "3168"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(BUNDLE) as src, zipfile.ZipFile(bad, "w") as z:
        for name in src.namelist():
            z.writestr(name, json.dumps(data) if name == "manifest.json" else src.read(name))
    for args in (["reproduce", str(bad), "--out", str(tmp_path / "again")],
                 ["compare", str(bad), str(BUNDLE)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (f"{bad}: manifest.json: key 'grid.images' is \"3168\", "
                                         "expected a whole number; rebuild the bundle") in err, err
    assert not (tmp_path / "again").exists()
