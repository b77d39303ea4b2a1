"""Method chains and named options (bench/spec.py): a method spec is parsed once, where a spec
enters, and its canonical string, which names cached images, is the one bench always wrote."""
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bench import planning, runner
from bench.grid import cache_key
from bench.spec import MethodChain, NamedOptions, RunSpec, SamplerSpec, SpecError

BUNDLE = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"


def test_a_chain_is_its_calls_in_order_with_sorted_options():
    chain = MethodChain.parse(r"fair-mapping + sld-strong:warmup=5,concept=blood\, gore")
    assert chain.calls == (NamedOptions("fair-mapping"),
                           NamedOptions("sld-strong", (("concept", "blood, gore"), ("warmup", "5"))))
    assert str(chain) == r"fair-mapping+sld-strong:concept=blood\, gore,warmup=5"
    assert chain.names == "fair-mapping+sld-strong"
    assert MethodChain.parse(str(chain)) == chain
    with pytest.raises(SpecError, match=r"^method spec 'sld:warmup': 'warmup' is not key=value$"):
        MethodChain.parse("baseline+sld:warmup")
    with pytest.raises(SpecError, match=r"^empty method spec in ''"):
        MethodChain.parse("baseline+")


def test_the_reference_runs_cache_keys_follow_from_the_canonical_strings():
    """Every method of the committed main job: the key recomputed from the parsed chain's string
    is the key its images are stored under (so no cached image is orphaned)."""
    if not BUNDLE.exists():
        pytest.skip("results/world/bundle.zip is not in this checkout")
    with zipfile.ZipFile(BUNDLE) as z:
        manifest = json.loads(z.read("manifest.json"))
        images = pd.read_parquet(io.BytesIO(z.read("images.parquet")))
    spec = RunSpec.from_dict(manifest["spec"])
    rows = images.drop_duplicates("method")
    assert len(rows) == len(manifest["methods"]) == 14
    for r in rows.itertuples():
        key = cache_key(manifest["model"]["fingerprint"], str(MethodChain.parse(r.method)),
                        r.prompt, int(r.seed), float(r.guidance), spec.sampler, 32, 32)
        assert key == r.key, r.method


def test_a_run_parses_each_method_spec_once(tmp_path, prompt_file, monkeypatch):
    parsed: list[str] = []
    original = MethodChain.parse.__func__

    def counting(cls, text):
        parsed.append(text)
        return original(cls, text)

    monkeypatch.setattr(MethodChain, "parse", classmethod(counting))
    built = []
    monkeypatch.setattr(planning, "build_adapters",
                        lambda chain, real=planning.build_adapters: built.append(chain) or real(chain))
    spec = RunSpec(model="tiny-random", methods=("baseline,sld-max:warmup=1",),
                   prompt_sets=(str(prompt_file(["a photo of a doctor"])),), samples=1,
                   sampler=SamplerSpec(steps=2), metrics=("none",), timing_rounds=0,
                   out=str(tmp_path / "r"))
    runner.run(spec, quiet=True)
    assert parsed == ["baseline", "sld-max:warmup=1"]
    assert [type(c) for c in built] == [MethodChain, MethodChain]
    table = pd.read_parquet(tmp_path / "r" / "images.parquet")
    assert sorted(set(table["method"])) == ["baseline", "sld-max:warmup=1"]


def test_named_options_name_what_they_parse():
    assert NamedOptions.parse("q16:weights=a.p, threshold=0.5") == NamedOptions(
        "q16", (("threshold", "0.5"), ("weights", "a.p")))
    assert str(NamedOptions("", (("limit", "3"),))) == ":limit=3"  # a prompt file's options
    with pytest.raises(SpecError, match=r"^metric spec 'q16:x': 'x' is not key=value$"):
        NamedOptions.parse("q16:x", "metric spec")
