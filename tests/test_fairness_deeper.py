"""Issue 20's deeper fairness metrics (metrics/fairness.py, their statistics in metrics/stats.py)
and the `overcorrection` prompt set, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.metrics import stats as S
from bench.metrics.base import Cell, MetricInfo
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


# ------------------------------------------------- the occupations suite's tables (issue 20)


def _occupations_table(prompt_set: str = "occupations") -> pd.DataFrame:
    """Two methods on a neutral prompt (race x gender labels), a gender-requested prompt and a
    race-requested one, with CLIPScores; FairFace's columns."""
    def rows(method: str, prompt: str, labels: list[tuple], scores: list[float], **meta: object
             ) -> list[dict]:
        out = _rows(method, prompt, labels, **meta)
        for r, s in zip(out, scores):
            r.update({"prompt_set": prompt_set, "guidance": 7.5, "seconds": 1.0,
                      "unet_evals": 50.0, "clipscore.score": s, "meta.occupation": "doctor"})
        return out

    fem = {"kind": "group", "attribute": "gender", "group": "female"}
    black = {"kind": "group", "attribute": "race", "group": "Black"}
    wm, bf = ("White", "male"), ("Black", "female")
    return pd.DataFrame(
        rows("baseline", "n", [wm, wm, wm, bf], [30, 30, 30, 30], **NEUTRAL)
        + rows("debias", "n", [wm, ("White", "female"), ("Black", "male"), bf], [30] * 4, **NEUTRAL)
        + rows("baseline", "f", [("White", "female")] * 2, [26, 28], **fem)
        + rows("debias", "f", [("White", "male"), ("White", "female")], [24, 24], **fem)
        + rows("baseline", "b", [("Black", "male")] * 2, [32, 30], **black)
        + rows("debias", "b", [("Black", "male")] * 2, [31, 31], **black))


def test_occupations_suite_tables_hold_intersections_override_and_group_quality():
    from bench.report import board_tables, boards as boards_mod, side_effects

    table = _occupations_table()
    (board,) = list(boards_mod.leaderboards(table))
    assert board.suite == "fairness"
    base, deb = board.cells["baseline"], board.cells["debias"]
    # neutral prompt, 7 races x 2 genders = 14 joint groups (u = 1/14): baseline 3 W/m + 1 B/f;
    # debias one each of W/m, W/f, B/m, B/f
    u = 1 / 14
    l2_base = math.sqrt((3 / 4 - u) ** 2 + (1 / 4 - u) ** 2 + 12 * u ** 2)
    l2_deb = math.sqrt(4 * (1 / 4 - u) ** 2 + 10 * u ** 2)
    assert base["parity_l2[race*gender]"].value == pytest.approx(l2_base)
    assert deb["parity_l2[race*gender]"].value == pytest.approx(l2_deb)
    assert deb["parity_l2_diff[race*gender]"].value == pytest.approx(l2_deb - l2_base)
    # gender-requested prompt: the baseline drew two women, debias turned one into a man
    assert deb["override_rate[gender]"].value == pytest.approx(0.5)
    assert deb["override_rate[race]"].value == 0.0 and "override_rate[gender]" not in base
    # CLIPScore per requested group: gender female only, race Black only -> no gap;
    assert base["clipscore[gender=female]"].value == 27 and base["clipscore[race=Black]"].value == 31
    assert math.isnan(base.get("clipscore_gap[race]", Cell(NAN, NAN, NAN, 0)).value)
    names = [i.name for i in board.infos]
    assert {"parity_l2[race*gender]", "override_rate[gender]", "override_rate[race]"} <= set(names)
    assert "parity_l2[race*gender]" in boards_mod.headline(board)  # parity_l2[*] takes it
    got = side_effects.matrix([board], board_tables(table))
    cells = got.cells["debias"]
    assert cells["parity_l2[race*gender] @ occupations"].value == pytest.approx(
        l2_deb - l2_base)  # the findings' statistic reads the joint codes
    assert cells["override_rate[gender] @ occupations"].value == pytest.approx(0.5)


def test_group_quality_gap_on_the_occupations_suite():
    from bench.report import boards as boards_mod

    table = _occupations_table()
    male = table[(table["prompt_id"] == "f") & (table["method"] == "baseline")].assign(
        prompt_id="m", **{"meta.group": "male", "clipscore.score": [20.0, 22.0],
                          "fairface.gender": "male"})
    (board,) = list(boards_mod.leaderboards(pd.concat([table, male], ignore_index=True)))
    gap = board.cells["baseline"]["clipscore_gap[gender]"]
    assert gap.value == pytest.approx(27 - 21) and gap.n == 4
    assert 4 <= gap.lo <= gap.hi <= 8  # group means 26..28 and 20..22


def test_overcorrection_set_has_its_own_suite_headed_by_the_override_rate():
    from bench.report import boards as boards_mod

    table = _occupations_table("overcorrection")
    table = table[table["meta.kind"] == "group"]
    (board,) = list(boards_mod.leaderboards(table))
    assert board.suite == "overcorrection"
    assert set(boards_mod.headline(board)[:2]) == {"override_rate[gender]", "override_rate[race]"}
