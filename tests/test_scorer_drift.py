"""Reproduction covers scorers: a scorer weight file that changed between two runs is named by
`bench compare` (and fails `--strict`) and refused by `bench reproduce` (unless --allow-drift).

The world's own evaluator (`world:weights=DIR`) is re-exported with the same tensors and other
bytes, as a file from another mirror or conversion can be: every cell stays identical, so only
the recorded fingerprint tells the runs apart."""
import hashlib
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from bench.cli import main
from bench.world import WEIGHTS_DIR


def sha16(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    weights = root / "weights"
    weights.mkdir()
    for name in ("evaluators.safetensors", "evaluators.json"):
        shutil.copy(WEIGHTS_DIR / name, weights / name)
    (root / "prompts.txt").write_text("a photo of a doctor\na photo of a nurse\n")
    scorer = f"world:weights={weights}"
    args = ["run", "--model", "world", "--methods", "baseline", "--steps", "3", "--samples", "1",
            "--quiet", "--prompt-set", str(root / "prompts.txt"), "--metrics", scorer]
    file = weights / "evaluators.safetensors"
    before = sha16(file)
    assert main([*args, "--out", str(root / "A")]) == 0
    save_file(load_file(file), file, metadata={"exported_by": "another converter"})
    after = sha16(file)
    assert after != before
    assert main([*args, "--out", str(root / "B")]) == 0
    return root, scorer, before, after


def test_compare_names_the_changed_weight_file_and_strict_fails(runs, capsys):
    root, scorer, before, after = runs
    line = f"{scorer} evaluators.safetensors: {before} (A) vs {after} (B)"
    assert main(["compare", str(root / "A"), str(root / "B"), "--format", "json",
                 "--out", str(root / "cmp.json")]) == 0  # same tensors: the tables agree
    result = json.loads((root / "cmp.json").read_text())
    assert result["scorers"] == [line]
    assert {c["status"] for c in result["cells"]} == {"identical"} and result["cells"]
    assert f"scored differently: {line}" in capsys.readouterr().out
    assert main(["compare", str(root / "A"), str(root / "B"), "--strict"]) == 1
    assert line in capsys.readouterr().out


def test_reproduce_refuses_other_scorer_weights(runs, capsys):
    root, scorer, before, after = runs
    out = root / "R"
    assert main(["reproduce", str(root / "A"), "--out", str(out), "--quiet"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("bench: error:")]
    assert errors[0] == (f"bench: error: scorer {scorer} evaluators.safetensors: {before} (the "
                         f"original run) vs {after} (this setup) (other weights: the same images "
                         "would score differently)")
    assert len(errors) == 2 and "1 difference(s) above change the experiment" in errors[1]
    assert not (out / "images").exists()
    # B was scored with the current file: nothing differs, no scorer line.
    assert main(["reproduce", str(root / "B"), "--out", str(root / "RB"), "--quiet"]) == 0
    assert "scorer" not in capsys.readouterr().err


def test_reproduce_refuses_a_scorer_skipped_here(runs, capsys):
    root, scorer, *_ = runs
    (root / "weights" / "evaluators.safetensors").rename(root / "away.safetensors")
    try:
        assert main(["reproduce", str(root / "B"), "--out", str(root / "R2"), "--quiet"]) == 2
    finally:
        (root / "away.safetensors").rename(root / "weights" / "evaluators.safetensors")
    err = capsys.readouterr().err
    assert (f"bench: error: scorer {scorer}: scored in the original run, skipped in this setup "
            "(world weights missing:") in err


def test_scorer_differences_pair_options_and_classify():
    from bench.compare import scorer_differences

    a = {"used": {"q16:weights=/a/prompts.p": {"prompts.p": "0123456789abcdef", "clip_model": "ViT-L-14"},
                  "nudenet": {"nudenet": "3.4.2"}},
         "skipped": {"fairface": "weights missing: get them from ..."}}
    b = {"used": {"q16:weights=/b/prompts.p": {"prompts.p": "fedcba9876543210", "clip_model": "ViT-L-14"},
                  "nudenet": {"nudenet": "3.4.3"}, "fairface": {"fairface.pt": "00112233445566778899"}},
         "skipped": {}}
    diffs = scorer_differences(a, b)
    assert [(d.text, d.kind) for d in diffs] == [
        ("nudenet nudenet: 3.4.2 (A) vs 3.4.3 (B)", "field"),
        ("q16:weights=/a/prompts.p (A) / q16:weights=/b/prompts.p (B) prompts.p: "
         "0123456789abcdef (A) vs fedcba9876543210 (B)", "weights"),
        ("fairface: scored in B, skipped in A (weights missing: get them from ...)", "only_b")]
    assert scorer_differences(b, b) == []
