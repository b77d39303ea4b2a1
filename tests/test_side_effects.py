"""The side-effect matrix (issue 19) on a synthetic score table with hand-computed effects."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report import boards as boards_mod
from bench.report import side_effects, tables
from bench.report import board_tables


def _rows(method: str, prompt_set: str, prompt: str, values: list[dict], seconds: float,
          **meta: object) -> list[dict]:
    return [{"method": method, "prompt_set": prompt_set, "guidance": 7.5, "prompt_id": prompt,
             "seed": j, "sample": j, "seconds": seconds, "unet_evals": 50.0,
             **{f"meta.{k}": v for k, v in meta.items()}, **v} for j, v in enumerate(values)]


def synthetic_table() -> pd.DataFrame:
    haz = {"categories": "violence", "kind": "hazard", "attribute": None, "group": None}
    neutral = {"kind": "neutral", "attribute": None, "group": None}
    dark = {"kind": "group", "attribute": "skin", "group": "dark"}

    def h(flags: list[int], quality: list[float]) -> list[dict]:
        return [{"world.hazard": bool(f), "world.quality": q} for f, q in zip(flags, quality)]

    def s(labels: list[str]) -> list[dict]:
        return [{"world.skin": x, "world.quality": 0.5} for x in labels]

    rows = []
    for m, sec in (("baseline", 1.0), ("m1", 2.0)):
        b = m == "baseline"
        rows += _rows(m, "haz", "h0", h([1, 1] if b else [0, 0], [0.9, 0.8] if b else [0.5, 0.4]),
                      sec, **haz)
        rows += _rows(m, "haz", "h1", h([1, 0], [0.7, 0.6]), sec, **haz)
        for p, labels in (("n0", ["light"] * 3), ("n1", ["dark"] * 3)):
            rows += _rows(m, "occ", p, s(labels if b else ["light", "medium", "dark"]), sec,
                          **neutral)
        rows += _rows(m, "occ", "g0", s(["dark", "dark"] if b else ["dark", "light"]), sec, **dark)
    return pd.DataFrame(rows)


def test_matrix_hand_values():
    table = synthetic_table()
    boards = list(boards_mod.leaderboards(table))
    parts = board_tables(table)
    got = side_effects.matrix(boards, parts)
    assert got is not None and got.methods() == ["m1"]
    cells = got.cells["m1"]
    one_hot = math.sqrt(6) / 3  # parity_l2 of one group out of 3; m1 draws each group once
    expected = {  # name: (difference, lo, hi)
        "inappropriate_prob @ haz": (1 / 4 - 3 / 4, -1.0, 0.0),  # prompts -1, 0
        "quality @ haz": (0.55 - 0.75, -0.4, 0.0),
        "parity_l2[skin] @ occ": (-one_hot, -one_hot, -one_hot),
        "requested_group_rate[skin] @ occ": (-0.5, -0.5, -0.5),
        # the baseline drew dark twice; m1 turned one of the two light: its own cell, 0/2..2/2
        "override_rate[skin] @ occ": (0.5, 0.0, 1.0),
        "quality @ occ": (0.0, 0.0, 0.0),
        "latency_ratio": (2.0, 2.0, 2.0),
    }
    assert [i.name for i in got.infos] == list(expected)
    for name, (d, lo, hi) in expected.items():
        c = cells[name]
        assert (c.value, c.lo, c.hi) == (pytest.approx(d), pytest.approx(lo), pytest.approx(hi)), name
    assert cells["inappropriate_prob @ haz"].n == 2  # prompts
    assert all(i.interval == "effect" for i in got.infos) and not any(
        got.best(i) for i in got.infos)  # effects are never bold
    md = tables.markdown(got)
    assert "| m1 | -0.5 [-1, 0] | -0.2 [-0.4, 0] | -0.816 | -0.5 | 0.5 [0, 1] | 0 | 2 |" in md


def test_no_baseline_no_matrix():
    table = synthetic_table()
    table = table[table["method"] != "baseline"]
    boards = list(boards_mod.leaderboards(table))
    assert side_effects.matrix(boards, board_tables(table)) is None


def test_columns_name_the_guidance_only_when_a_set_ran_at_several():
    table = synthetic_table()
    occ = table[table["prompt_set"] == "occ"].assign(guidance=3.0)
    table = pd.concat([table, occ], ignore_index=True)
    boards = list(boards_mod.leaderboards(table))
    got = side_effects.matrix(boards, board_tables(table))
    names = [i.name for i in got.infos]
    assert "quality @ haz" in names and "quality @ occ (guidance 3)" in names
    assert "parity_l2[skin] @ occ (guidance 7.5)" in names
