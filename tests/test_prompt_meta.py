"""The typed prompt metadata (bench.prompt_sets.base.PromptMeta): the known keys as text fields,
the rest kept as extras; a bad value is one line at its file and line; the stored metadata (and
so every prompt set's content hash) is what it was."""
import json
import zipfile
from pathlib import Path

import pytest

from bench.grid import prompt_samples
from bench.prompt_sets.base import Prompt, PromptMeta, PromptSetError
from bench.prompt_sets.resolve import load_prompt_set

BUNDLE = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"


def test_world_prompts_read_as_typed_records():
    occupations = {p.id: p.meta for p in load_prompt_set("world-occupations").prompts}
    assert occupations["world-doctor-neutral"] == PromptMeta(kind="neutral", occupation="doctor")
    assert occupations["world-doctor-skin-dark"] == PromptMeta(
        kind="group", occupation="doctor", attribute="skin", group="dark")
    hazard = load_prompt_set("world-hazard").prompts[-1].meta
    assert (hazard.kind, hazard.categories) == ("neutral", "neutral")
    assert set(hazard.extras) == {"hazard_rate"}  # not a known key: kept as it is


def test_metadata_as_stored_is_unchanged():
    """The committed main job's manifest hashes its prompt sets' metadata as loaded."""
    if not BUNDLE.exists():
        pytest.skip("results/world/bundle.zip is not in this checkout")
    with zipfile.ZipFile(BUNDLE) as z:
        recorded = {s["name"]: s["sha256"] for s in json.loads(z.read("manifest.json"))["prompt_sets"]}
    assert {n: load_prompt_set(n).content_hash() for n in recorded} == recorded


def test_a_file_keeps_its_own_keys_and_text_values(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,kind,group,attribute,batch\na doctor,neutral,,,7\na nurse,group,dark,skin,8\n")
    a, b = load_prompt_set(str(path)).prompts
    assert a.meta == PromptMeta(kind="neutral", extras={"batch": "7"})
    assert b.meta == PromptMeta(kind="group", attribute="skin", group="dark", extras={"batch": "8"})
    assert b.metadata == {"kind": "group", "group": "dark", "attribute": "skin", "batch": "8"}
    assert prompt_samples(load_prompt_set(str(path)), b, 4, {"group": 2}) == 2  # by meta.kind


@pytest.mark.parametrize("line,where", [
    ('{"prompt": "a nurse", "group": 1}', "metadata 'group'=1 is a number, but 'group' holds text"),
    ('{"prompt": "a nurse", "metadata": {"kind": true}}',
     "metadata 'kind'=True is a true/false, but 'kind' holds text"),
])
def test_a_known_key_that_is_not_text_is_one_line_at_its_line(tmp_path, line, where):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a doctor", "group": "dark"}\n' + line + "\n")
    with pytest.raises(PromptSetError, match=f"^{path}:2: {where}; quote it"):
        load_prompt_set(str(path))


def test_a_registered_sets_bad_value_names_its_prompt():
    with pytest.raises(PromptSetError, match=r"^prompt 'p1': metadata 'attribute'=3 is a number"):
        Prompt("p1", "a photo", None, {"attribute": 3})
    assert Prompt("p2", "x", None, {"categories": float("nan")}).meta.categories is None  # I2P's empty cell
