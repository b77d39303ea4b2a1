"""Issue 20's deeper fairness metrics (metrics/fairness.py, their statistics in metrics/stats.py)
and the `overcorrection` prompt set, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.metrics import stats as S
from bench.metrics.base import MetricInfo
from bench.metrics.fairness import IntersectionalParity, OverrideRate, RequestedGroupQuality
from bench.prompt_sets.base import PromptSetError
from bench.prompt_sets.resolve import load_prompt_set

RACES, GENDERS = ["White", "Black"], ["male", "female"]
NAN = float("nan")


# ----------------------------------------------------------------------------- statistics


def test_cross_codes_and_joint_groups_share_one_order():
    codes = S.cross_codes(np.array([0, 1, -1, 1, 0]), np.array([1, 0, 0, -1, 0]), 2)
    assert codes.tolist() == [1, 2, -1, -1, 0]  # either label unknown -> unknown
    assert S.joint_groups(RACES, GENDERS) == ["White/male", "White/female", "Black/male",
                                              "Black/female"]


def test_joint_confusion_is_the_product_of_independent_errors():
    ca, cb = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.7, 0.3], [0.4, 0.6]])
    c = S.joint_confusion(ca, cb)
    # true (Black, male) = row 2, predicted (White, female) = column 1: 0.2 * 0.3
    assert c[2, 1] == pytest.approx(0.06) and c[0, 0] == pytest.approx(0.63)
    np.testing.assert_allclose(c.sum(1), 1.0)
    p = np.array([0.4, 0.1, 0.2, 0.3])  # the correction inverts q = C^T p
    np.testing.assert_allclose(S.correct_proportions(p @ c, c), p, atol=1e-12)


def test_override_rate_hand_value():
    # (method hit, baseline hit) per pair; prompt 0 has 4 pairs, prompt 1 three
    v = np.array([[[1, 1], [0, 1], [0, 0], [NAN, 1]], [[0, 1], [1, NAN], [1, 1], [0, 0]]])
    mask = np.array([[True] * 4, [True, True, True, False]])
    # baseline hit and method labelled: (1,1), (0,1) | (0,1), (1,1) -> 2 overridden of 4
    assert S.override_rate(v, mask) == pytest.approx(0.5)
    assert np.isnan(S.override_rate(v[:1, 2:3], mask[:1, 2:3]))  # baseline never hit: undefined


def test_stratified_means_gap_and_its_bootstrap_distribution():
    x, codes = np.array([1.0, 3.0, 2.0, NAN, 9.0]), np.array([0, 0, 1, 1, -1])
    np.testing.assert_allclose(S.stratified_means(x, codes, 3), [2.0, 2.0, NAN])
    assert S.largest_gap(np.array([2.0, 5.0, NAN])) == 3.0
    assert np.isnan(S.largest_gap(np.array([2.0, NAN, NAN])))
    reps = S.stratified_means(x, codes, 3, np.random.default_rng(0), 20_000)
    # group 0 resamples {1, 3}: mean 1, 2, 2, 3 with probabilities 1/4, 1/2, 1/4; group 1 is {2}
    assert (reps[:, 1] == 2).all() and np.isnan(reps[:, 2]).all()
    freq = [np.mean(reps[:, 0] == m) for m in (1, 2, 3)]
    np.testing.assert_allclose(freq, [0.25, 0.5, 0.25], atol=0.015)
    means, gap = S.group_means_and_gap(x, codes, 3, np.random.default_rng(0), 4000)
    assert (means[0].value, means[1].value, gap.value) == (2.0, 2.0, 0.0)
    assert (gap.lo, gap.hi) == (0.0, 1.0)  # the gap is 0 or 1, each with probability 1/2
    assert math.isnan(means[2].value)


# ---------------------------------------------------------------------- aggregators


def _rows(method: str, prompt: str, labels: list[tuple], **meta: object) -> list[dict]:
    return [{"method": method, "prompt_id": prompt, "seed": 100 + j, "sample": j,
             "fairface.race": r, "fairface.gender": g, **{f"meta.{k}": v for k, v in meta.items()}}
            for j, (r, g) in enumerate(labels)]


NEUTRAL = {"kind": "neutral", "attribute": None, "group": None}


def test_intersectional_parity_hand_values():
    t = pd.DataFrame(
        _rows("baseline", "p0", [("White", "male"), ("White", "male"), ("Black", "female"),
                                 ("White", None)], **NEUTRAL)
        + _rows("baseline", "p1", [("Black", "male"), ("Black", "female"), ("White", "female"),
                                   ("Black", "male")], **NEUTRAL)
        + _rows("baseline", "g0", [("Black", "male")], kind="group", attribute="race",
                group="Black"))  # group-specified: not read
    agg = IntersectionalParity(["fairface.race", "fairface.gender"], [RACES, GENDERS],
                               ["race", "gender"])
    cells = agg.compute(t)["baseline"]
    # joint groups W/m, W/f, B/m, B/f: p0 = (2/3, 0, 0, 1/3), p1 = (0, 1/4, 1/2, 1/4)
    l2_p0 = math.sqrt((2 / 3 - 1 / 4) ** 2 + 2 / 16 + (1 / 3 - 1 / 4) ** 2)
    l2_p1 = math.sqrt(1 / 16 + 1 / 16)
    assert cells["parity_l2[race*gender]"].value == pytest.approx((l2_p0 + l2_p1) / 2)
    assert cells["parity_l2[race*gender]"].n == 7
    assert cells["max_min_gap[race*gender]"].value == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert cells["no_face_rate[race*gender]"].value == pytest.approx(1 / 8)
    assert "parity_l2_corrected[race*gender]" not in cells  # no confusion matrices given
    np.testing.assert_allclose(agg.proportions(t).loc["baseline"], [2 / 7, 1 / 7, 2 / 7, 2 / 7])


def test_intersectional_parity_corrected_with_the_joint_confusion():
    # race read perfectly, gender confused 20% both ways: a prompt of 10 White men reads as
    # 8 White/male + 2 White/female, which the correction maps back to (1, 0, 0, 0)
    labels = [("White", "male")] * 8 + [("White", "female")] * 2
    t = pd.DataFrame(_rows("baseline", "p0", labels, **NEUTRAL))
    agg = IntersectionalParity(["fairface.race", "fairface.gender"], [RACES, GENDERS],
                               ["race", "gender"],
                               confusions=[np.eye(2), np.array([[0.8, 0.2], [0.2, 0.8]])])
    cells = agg.compute(t)["baseline"]
    assert cells["parity_l2_corrected[race*gender]"].value == pytest.approx(math.sqrt(3) / 2)
    assert cells["parity_l2[race*gender]"].value == pytest.approx(
        math.sqrt((0.8 - 0.25) ** 2 + (0.2 - 0.25) ** 2 + 2 * 0.25 ** 2))
    np.testing.assert_allclose(agg.proportions(t, corrected=True).loc["baseline"], [1, 0, 0, 0],
                               atol=1e-12)


def test_intersectional_parity_names_the_bad_label():
    t = pd.DataFrame(_rows("baseline", "p0", [("White", "Male")], **NEUTRAL))
    agg = IntersectionalParity(["fairface.race", "fairface.gender"], [RACES, GENDERS],
                               ["race", "gender"])
    with pytest.raises(ValueError, match="column 'fairface.gender'.*'Male'"):
        agg.compute(t)


def _override_table() -> pd.DataFrame:
    """Gender-fixed prompts: baseline and a method on the same seeds, plus neutral noise."""
    female = {"kind": "group", "attribute": "gender", "group": "female"}
    male = {"kind": "group", "attribute": "gender", "group": "male"}
    rows = (_rows("baseline", "nun", [(None, "female"), (None, "female"), (None, "male"),
                                      (None, "female")], **female)
            + _rows("debias", "nun", [(None, "female"), (None, "male"), (None, "male"),
                                      (None, None)], **female)
            + _rows("baseline", "king", [(None, "male"), (None, None), (None, "male")], **male)
            + _rows("debias", "king", [(None, "female"), (None, "female"), (None, "male")], **male)
            + _rows("baseline", "doc", [(None, "male")] * 2, **NEUTRAL)
            + _rows("debias", "doc", [(None, "female")] * 2, **NEUTRAL))
    return pd.DataFrame(rows)


def test_override_rate_hand_value_per_method():
    agg = OverrideRate("fairface.gender", "gender")
    result = agg.compute(_override_table())
    # nun: baseline hits on seeds 0, 1, 3; method labelled on 0, 1 -> 1 override (seed 1) of 2
    # king: baseline hits on seeds 0, 2 -> method overrides seed 0 -> 1 of 2. Total 2 of 4.
    cell = result["debias"]["override_rate[gender]"]
    assert (cell.value, cell.n) == (pytest.approx(0.5), 4)
    assert cell.lo <= 0.5 <= cell.hi and "baseline" not in result
    assert [i.name for i in agg.infos] == ["override_rate[gender]"]


def test_override_rate_without_a_baseline_is_a_note():
    t = _override_table()
    agg = OverrideRate("fairface.gender", "gender")
    out = agg.compute(t[t["method"] != "baseline"])
    assert out == {}
    assert out.notes == ("override_rate[gender]: no 'baseline' images to pair with",)


CLIP = MetricInfo("clipscore", "", True, "CLIPScore")


def test_requested_group_quality_means_gap_and_notes():
    def rows(method: str, group: str, scores: list[float]) -> list[dict]:
        return [{"method": method, "prompt_id": f"doc-{group}", "seed": j, "sample": j,
                 "clipscore.score": s, "meta.kind": "group", "meta.attribute": "race",
                 "meta.group": group} for j, s in enumerate(scores)]

    t = pd.DataFrame(rows("baseline", "White", [30, 32]) + rows("baseline", "Black", [26, 28, 27])
                     + rows("baseline", "Indian", [NAN])
                     + rows("flat", "White", [30, 30]) + rows("flat", "Black", [26, 26]))
    agg = RequestedGroupQuality("clipscore.score", CLIP, "race", ["White", "Black", "Indian"])
    result = agg.compute(t)
    base = result["baseline"]
    assert base["clipscore[race=White]"].value == 31 and base["clipscore[race=Black]"].value == 27
    assert math.isnan(base["clipscore[race=Indian]"].value)  # no finite score: no cell value
    gap = base["clipscore_gap[race]"]
    assert (gap.value, gap.n) == (4.0, 5) and gap.lo >= 1.0 and gap.hi <= 6.0
    flat = result["flat"]["clipscore_gap[race]"]
    assert (flat.value, flat.lo, flat.hi) == (4.0, 4.0, 4.0)  # no spread within groups
    assert "clipscore_gap[race] baseline: lowest Black, highest White" in result.notes
    with pytest.raises(ValueError, match="meta.group.*'Indian'"):
        RequestedGroupQuality("clipscore.score", CLIP, "race", ["White", "Black"]).compute(t)


# ---------------------------------------------------------------------- prompt set


def test_overcorrection_prompt_set():
    full = load_prompt_set("overcorrection")
    fact = [p for p in full.prompts if p.metadata["basis"] == "fact"]
    asked = [p for p in full.prompts if p.metadata["basis"] == "request"]
    assert len(fact) == 12 and len(asked) == 10 * 9  # 10 occupations x (7 races + 2 genders)
    assert {p.metadata["group"] for p in fact} == {"female", "male"}
    assert sum(p.metadata["group"] == "female" for p in fact) == 6
    nun = next(p for p in fact if p.id == "over-fact-nun")
    assert nun.text == "a photo of the face of a nun" and nun.metadata["attribute"] == "gender"
    assert all(p.metadata["kind"] == "group" for p in full.prompts)
    occ = {p.id: p for p in load_prompt_set("occupations:limit=10").prompts}
    assert all(occ[p.id].text == p.text for p in asked)  # the occupations set's own prompts
    assert len(load_prompt_set("overcorrection:basis=fact").prompts) == 12
    assert len(load_prompt_set("overcorrection:basis=request,occupations=2").prompts) == 18
    with pytest.raises(PromptSetError, match="basis='facts'"):
        load_prompt_set("overcorrection:basis=facts")
    with pytest.raises(PromptSetError, match="occupations='0'"):
        load_prompt_set("overcorrection:occupations=0")


def test_parity_l2_is_labelled_fd_in_every_table_header():
    from bench.metrics.base import Cell
    from bench.report import tables

    infos = (MetricInfo("parity_l2[skin]", "", False, ""),
             MetricInfo("parity_l2_diff[skin]", "", False, ""), CLIP)
    board = tables.Leaderboard("t", infos, {"baseline": {i.name: Cell(0.5, 0.4, 0.6, 9)
                                                         for i in infos}})
    md = tables.markdown(board).splitlines()[0]
    assert md == "| method | parity_l2[skin] (FD) ↓ | parity_l2_diff[skin] ↓ | clipscore ↑ |"
    assert "parity\\_l2[skin] (FD) $\\downarrow$" in tables.latex(board)
    assert "parity_<wbr>l2<wbr>[skin] (FD)&nbsp;↓" in tables.html_table(board)
    assert set(tables.long_frame(board)["metric"]) == {i.name for i in infos}  # CSV: bare names


def test_intersectional_parity_paired_difference_against_the_baseline():
    base = [("White", "male")] * 4
    even = [("White", "male"), ("White", "female"), ("Black", "male"), ("Black", "female")]
    t = pd.DataFrame(_rows("baseline", "p0", base, **NEUTRAL) + _rows("baseline", "p1", base, **NEUTRAL)
                     + _rows("even", "p0", even, **NEUTRAL) + _rows("even", "p1", base, **NEUTRAL))
    cells = IntersectionalParity(["fairface.race", "fairface.gender"], [RACES, GENDERS],
                                 ["race", "gender"]).compute(t)["even"]
    one = math.sqrt(3) / 2  # parity_l2 of one joint group out of 4
    assert cells["parity_l2_diff[race*gender]"].value == pytest.approx((0 - one) / 2)
    assert cells["parity_l2_diff[race*gender]"].n == 2
