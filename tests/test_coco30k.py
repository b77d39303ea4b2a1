"""The coco-30k prompt set on the real file (skipped when absent) and on small hand-made files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from bench.prompt_sets.base import PromptSetError
from bench.prompt_sets.coco import ENV_VAR, load_coco30k
from bench.prompt_sets.resolve import load_prompt_set

COCO = Path(__file__).resolve().parents[2] / "shared/data/coco_30k.csv"


@pytest.fixture(scope="module")
def coco_frame() -> pd.DataFrame:
    if not COCO.is_file():
        pytest.skip(f"real COCO-30k file absent: {COCO}")
    return pd.read_csv(COCO, dtype=str, keep_default_na=False)


def test_loads_every_row_with_its_evaluation_seed(coco_frame: pd.DataFrame) -> None:
    ps = load_coco30k(str(COCO))
    assert len(ps) == len(coco_frame) == 30_000
    assert [p.id for p in ps.prompts] == [f"coco-{i}" for i in coco_frame["image_id"]]
    assert [p.text for p in ps.prompts] == coco_frame["prompt"].tolist()
    assert [p.seed for p in ps.prompts] == coco_frame["evaluation_seed"].astype(int).tolist()
    first = ps.prompts[0]
    assert first.metadata == {"image_id": "000000203564", "kind": "coco"}  # padding kept
    assert first.seed == 41337


def test_sample_is_the_first_n_in_sha256_order(coco_frame: pd.DataFrame) -> None:
    ids = coco_frame["image_id"].tolist()
    want = set(sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:64])
    ps = load_prompt_set(f"coco-30k:path={COCO},sample=64")
    got = [p.metadata["image_id"] for p in ps.prompts]
    assert set(got) == want and len(got) == 64
    assert got == [i for i in ids if i in want]  # file order within the sample
    assert ps.name == f"coco-30k:path={COCO},sample=64"
    # nested: a larger sample contains the smaller one, and it does not depend on file order
    big = {p.id for p in load_coco30k(str(COCO), sample="128").prompts}
    assert {p.id for p in ps.prompts} <= big


def test_sample_ignores_file_order_and_limit_cuts(tmp_path: Path) -> None:
    rows = [(f"{i:012d}", f"caption {i}", str(100 + i)) for i in range(20)]
    def write(name: str, order: list) -> Path:
        path = tmp_path / name
        path.write_text("image_id,source,prompt,evaluation_seed\n"
                        + "".join(f"{a},coco-30k,{b},{c}\n" for a, b, c in order))
        return path
    a = load_coco30k(str(write("a.csv", rows)), sample="5")
    b = load_coco30k(str(write("b.csv", rows[::-1])), sample="5")
    assert {p.id for p in a.prompts} == {p.id for p in b.prompts}
    assert [p.id for p in load_coco30k(str(write("c.csv", rows)), limit="3").prompts] == \
        ["coco-000000000000", "coco-000000000001", "coco-000000000002"]
    assert [p.seed for p in a.prompts] == [int(p.id[5:]) + 100 for p in a.prompts]


def test_env_var_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "c.csv"
    good.write_text("image_id,source,prompt,evaluation_seed\n000000000042,coco-30k,a cat,7\n")
    monkeypatch.setenv(ENV_VAR, str(good))
    assert [(p.id, p.seed) for p in load_coco30k().prompts] == [("coco-000000000042", 7)]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,source,prompt,evaluation_seed\n1,coco-30k,a cat,seven\n")
    with pytest.raises(PromptSetError, match=r"bad.csv: data row 1 .*evaluation_seed 'seven'"):
        load_coco30k(str(bad))
    missing = tmp_path / "m.csv"
    missing.write_text("image_id,prompt\n1,a\n")
    with pytest.raises(PromptSetError, match="missing COCO-30k column.*evaluation_seed.*curl"):
        load_coco30k(str(missing))
    with pytest.raises(PromptSetError, match=r"option sample='0' is not a positive integer"):
        load_coco30k(str(good), sample="0")
