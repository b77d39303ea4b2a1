"""Bold marks, interval notation, findings (paired difference, permutation p, Holm) and the
paper tables, against hand computations."""
from __future__ import annotations

import itertools
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.report import boards as boards_mod
from bench.report import findings, tables
from bench.metrics.base import Cell, MetricInfo

ACC = MetricInfo("occupation_acc", "", True, "share correct")
PAR = MetricInfo("parity_l2[skin]", "", False, "parity")
P = MetricInfo("parity_l2_p[skin]", "", False, "a p-value", "none")
EMAX = MetricInfo("exp_max_inappropriate", "", False, "mean and sd over draws", "sd")


def board(cells: dict[str, dict[str, Cell]], *infos: MetricInfo) -> tables.Leaderboard:
    return tables.Leaderboard("set (guidance 7.5)", infos, cells)


def test_ties_are_all_bold_when_their_cis_clear_every_other_method():
    cells = {m: {"occupation_acc": Cell(1.0, 1.0, 1.0, 32)} for m in ("baseline", "a", "b")}
    cells["c"] = {"occupation_acc": Cell(0.6, 0.5, 0.7, 32)}
    b = board(cells, ACC)
    assert b.best(ACC) == {"baseline", "a", "b"}
    md = tables.markdown(b)
    assert md.count("**1**") == 3 and "**0.6" not in md


def test_ties_are_not_bold_when_another_ci_reaches_them_and_nobody_when_all_tie():
    cells = {m: {"occupation_acc": Cell(1.0, 1.0, 1.0, 32)} for m in ("baseline", "a")}
    cells["c"] = {"occupation_acc": Cell(0.98, 0.94, 1.0, 32)}  # its CI touches 1
    assert board(cells, ACC).best(ACC) == set()
    del cells["c"]
    assert board(cells, ACC).best(ACC) == set()  # everyone ties


def test_overlapping_cis_are_not_bold_disjoint_ones_are():
    lower_better = {"baseline": Cell(0.50, 0.45, 0.55, 8), "rs": Cell(0.30, 0.20, 0.46, 8)}
    assert board({m: {PAR.name: c} for m, c in lower_better.items()}, PAR).best(PAR) == set()
    lower_better["rs"] = Cell(0.30, 0.20, 0.44, 8)
    b = board({m: {PAR.name: c} for m, c in lower_better.items()}, PAR)
    assert b.best(PAR) == {"rs"}
    assert "| rs | **0.3** [0.2, 0.44] |" in tables.markdown(b)


def test_p_values_and_sd_cells_are_never_bold_and_print_their_own_notation():
    cells = {"baseline": {P.name: Cell(1.0, 1.0, 1.0, 8), EMAX.name: Cell(0.9, 0.8, 1.0, 12)},
             "a": {P.name: Cell(0.0004, 0.0004, 0.0004, 8), EMAX.name: Cell(0.1, 0.05, 0.15, 12)}}
    b = board(cells, P, EMAX)
    assert b.best(P) == set() and b.best(EMAX) == set()
    md = tables.markdown(b)
    assert "**" not in md
    assert "| baseline | 1 | 0.9 ± 0.1 sd |" in md  # a p-value prints bare: never "1 ± 0"
    assert "| a | <0.001 | 0.1 ± 0.05 sd |" in md
    assert tables.fmt(Cell(0.8, 0.8, 0.8, 1), ACC) == "0.8"  # n = 1: bare
    assert tables.fmt(Cell(0.833, 0.583, 1.0, 48), ACC) == "0.833 [0.583, 1]"  # never "± 0.21"


def test_column_filter_takes_names_prefixes_and_globs():
    keep = tables.column_filter("parity_l2, clip*")
    assert keep("parity_l2[skin]") and keep("parity_l2") and keep("clipscore")
    assert not keep("parity_l2_p[skin]") and not keep("occupation_acc")
    b = board({"baseline": {}}, PAR, ACC, P)
    assert [i.name for i in tables.subset(b, keep).infos] == ["parity_l2[skin]"]


def test_headline_declares_the_few_metrics_per_family():
    names = ["parity_l2[skin]", "kl_uniform[skin]", "parity_l2_p[skin]",
             "requested_group_rate[skin]", "requested_group_rate[skin=light]", "occupation_acc",
             "clipscore", "quality"]
    b = board({"baseline": {}}, *(MetricInfo(n, "", True, "") for n in names))
    assert boards_mod.headline(b) == ["parity_l2[skin]", "requested_group_rate[skin]",
                                      "occupation_acc", "clipscore"]
    names = ["inappropriate_prob", "inappropriate_prob[violence]", "clipscore", "quality"]
    b = board({"baseline": {}}, *(MetricInfo(n, "", True, "") for n in names))
    # Per-category rates too: the sets' hazard-asking prompts can differ from the pooled rate.
    assert boards_mod.headline(b) == ["inappropriate_prob", "inappropriate_prob[violence]",
                                      "clipscore", "quality"]


# --- findings -------------------------------------------------------------------------------
FLAGS = {  # method -> per prompt, per sample: the flag of each image
    "baseline": [[1, 1], [1, 0], [1, 1], [0, 1], [1, 1]],
    "sld": [[0, 0], [1, 0], [0, 0], [0, 0], [0, 1]],
    "weak": [[1, 1], [1, 0], [1, 0], [0, 1], [1, 1]],
}
QUALITY = {"baseline": 0.9, "sld": 0.7, "weak": 0.88}


def small_table() -> pd.DataFrame:
    rows = []
    for m, per_prompt in FLAGS.items():
        for p, flags in enumerate(per_prompt):
            for s, f in enumerate(flags):
                rows.append({"method": m, "prompt_id": f"p{p}", "prompt": f"prompt {p}",
                             "seed": 10 * p + s, "sample": s, "q16.flag": float(f),
                             "meta.categories": "violence",
                             "world.quality": QUALITY[m] + 0.01 * p - 0.02 * s})
    return pd.DataFrame(rows)


def hand_finding(method: str, column: str) -> tuple[float, float]:
    """Paired difference of pooled means and the exact two-sided sign-flip permutation p over
    prompts (2^5 = 32 patterns), by itertools."""
    t = small_table()
    a = t[t.method == method].sort_values(["prompt_id", "sample"])[column].to_numpy().reshape(5, 2)
    b = t[t.method == "baseline"].sort_values(["prompt_id", "sample"])[column].to_numpy().reshape(5, 2)
    observed = a.mean() - b.mean()
    hits = 0
    for signs in itertools.product([False, True], repeat=5):
        x = np.where(np.array(signs)[:, None], b, a)
        y = np.where(np.array(signs)[:, None], a, b)
        hits += abs(x.mean() - y.mean()) >= abs(observed) - 1e-12
    return observed, hits / 32


def test_findings_equal_a_hand_computation_with_holm_per_metric():
    t = small_table()  # world.quality: the world scorer's column, leaderboard name "quality"
    infos = (MetricInfo("inappropriate_prob", "", False, ""), MetricInfo("quality", "", True, ""))
    cells = {m: {} for m in FLAGS}
    b = tables.Leaderboard("s (guidance 7.5)", infos, cells)
    got = findings.findings(t, b, infos)
    assert [(f.method, f.metric.name) for f in got] == [
        ("sld", "inappropriate_prob"), ("weak", "inappropriate_prob"),
        ("sld", "quality"), ("weak", "quality")]
    hand = [hand_finding(m, c) for c, m in (("q16.flag", "sld"), ("q16.flag", "weak"),
                                            ("world.quality", "sld"), ("world.quality", "weak"))]
    for f, (diff, p) in zip(got, hand):
        assert f.diff == pytest.approx(diff) and f.p == pytest.approx(p)
        assert f.n_prompts == 5 and f.lo <= f.diff <= f.hi
    # Holm by hand within each metric's family of 2 methods: smaller p doubled, the larger kept
    # (but never below the first), capped at 1.
    adj = []
    for pa, pb in ((hand[0][1], hand[1][1]), (hand[2][1], hand[3][1])):
        lo, hi = sorted((pa, pb))
        first, second = min(1.0, 2 * lo), min(1.0, max(2 * lo, hi))
        adj += [first, second] if pa <= pb else [second, first]
    assert [f.p_holm for f in got] == pytest.approx(adj)
    # sld flags 6 of 10 fewer; prompt p1 is the same for both, so only 2^4 swaps differ and the
    # smallest p is 2/16: not significant after Holm, and stated so.
    assert got[0].diff == pytest.approx(-0.6) and got[0].p == pytest.approx(2 / 16)
    assert "no significant difference in inappropriate_prob" in got[0].sentence()


def test_a_significant_finding_is_stated_with_its_direction_and_ci_as_positive_numbers():
    f = findings.Finding("rs-corrector", PAR, -0.23, -0.31, -0.15, 0.0001, 0.0004, 16)
    assert f.sentence() == ("rs-corrector lowers parity_l2[skin] by 0.23 [0.15, 0.31], "
                            "p_holm < 0.001, 16 prompts (better)")
    assert f.better and f.verdict() == "lowers it by 0.23 (better)"


def test_findings_parity_equals_the_board_cell(world_bundle_table):
    """The statistic findings recompute is the leaderboard's: method - baseline of the cells."""
    table = world_bundle_table
    part = table[table.prompt_set == "world-occupations"].reset_index(drop=True)
    (b,) = [x for x in boards_mod.leaderboards(part)]
    infos = tuple(i for i in b.infos if i.name in ("parity_l2[skin]", "clipscore"))
    for f in findings.findings(part, b, infos):
        expected = b.cells[f.method][f.metric.name].value - b.cells["baseline"][f.metric.name].value
        assert f.diff == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def world_bundle_table(tmp_path_factory):
    import zipfile
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"
    if not bundle.exists():
        pytest.skip("results/world/bundle.zip absent")
    out = tmp_path_factory.mktemp("wb")
    with zipfile.ZipFile(bundle) as z:
        z.extract("images.parquet", out)
        z.extract("scores.parquet", out)
    images, scores = pd.read_parquet(out / "images.parquet"), pd.read_parquet(out / "scores.parquet")
    keep = [c for c in scores.columns if not c.startswith("_scored.")]
    return images.merge(scores[keep], on="key", how="left")


# --- LaTeX ----------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_headline_latex_compiles_and_fits_the_text_width(tmp_path):
    names = ["parity_l2[skin]", "requested_group_rate[skin]", "occupation_acc", "clipscore",
             "inappropriate_prob", "quality", "kl_uniform[skin]"]
    infos = tuple(MetricInfo(n, "", n != "parity_l2[skin]", "") for n in names)
    methods = ["baseline", "rs-corrector", "fair-diffusion", "sld-strong:concept=a_b"]
    cells = {m: {n: Cell(0.471 + k, 0.392 + k, 0.538 + k, 32) for n in names}
             for k, m in enumerate(methods)}
    tex = tables.latex_doc([tables.Leaderboard("world-occupations (guidance 7.5)", infos, cells)],
                           "headline")
    assert r"0.471 {\scriptsize[0.392, 0.538]}" in tex
    assert r"\label{tab:headline-world-occupations-guidance-7-5}" in tex
    (tmp_path / "t.tex").write_text(tex)
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs,graphicx}\\begin{document}\n"
                   "\\input{t.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode",
                           doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "! LaTeX Error" not in log and "Undefined control sequence" not in log, log[-2000:]
    assert (tmp_path / "doc.pdf").exists()
    assert "Overfull \\hbox" not in log  # \resizebox brought the wide tabular to \textwidth
    # and it was wide: unscaled, the same tabular overflows
    (tmp_path / "t.tex").write_text(tex.replace(
        r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%", "{%"))
    subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", doc.name],
                   cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Overfull \\hbox" in (tmp_path / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0


def test_skin_tones_are_drawn_light_to_dark_and_methods_get_distinct_styles():
    from PIL import ImageColor

    from bench.report import plots

    def lightness(hex_colour: str) -> float:  # Rec. 709 luma
        r, g, b = ImageColor.getrgb(hex_colour)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    luma = [lightness(c) for c in plots.group_colours(["light", "medium", "dark"])]
    assert luma == sorted(luma, reverse=True) and luma[0] - luma[-1] > 100
    methods = ["baseline", *(f"m{i}" for i in range(8))]
    styles = [plots._style(m, methods) for m in methods]
    assert styles[0] == ("#000000", "o") and len(set(styles)) == len(methods)
    assert len({c for c, _ in styles}) == len(methods)  # nine methods, nine colours
    assert plots.attribute_heading("world.skin") == "skin tone (scorer world)"


def test_report_of_the_reference_bundle_keeps_compare_working_and_filters_columns(tmp_path):
    """CI runs `bench compare` of results/world/bundle.zip against a reproduction: the re-reported
    leaderboard.csv keeps its shape (every cell), while --columns trims the md/tex tables."""
    import io
    import zipfile
    from pathlib import Path

    from bench import compare
    from bench.cli import main

    bundle = Path(__file__).resolve().parents[1] / "results" / "world" / "bundle.zip"
    if not bundle.exists():
        pytest.skip("results/world/bundle.zip absent")
    shutil.copy(bundle, tmp_path / "b.zip")
    assert main(["report", str(tmp_path / "b.zip"), "--quiet", "--columns", "parity_l2,clip*"]) == 0
    out = tmp_path / "b"
    with zipfile.ZipFile(bundle) as z:
        old = pd.read_csv(io.BytesIO(z.read("leaderboard.csv")))
    new = pd.read_csv(out / "leaderboard.csv")
    assert list(new.columns) == list(old.columns)
    # every reference cell is re-reported, and no other
    keys = ["table", "method", "metric"]
    assert len(old.merge(new[keys], on=keys)) == len(old) == len(new)
    assert compare.compare(bundle, out).disagreeing() == []
    heads = [line for line in (out / "leaderboard.md").read_text().splitlines()
             if line.startswith("| method")]
    clip_groups = " | ".join(f"clipscore[skin={g}] ↑" for g in ("light", "medium", "dark"))
    assert heads == ["| method | clipscore ↑ |", "| method | parity_l2[skin] (FD) ↓ | clipscore ↑ | "
                     f"{clip_groups} | clipscore_gap[skin] ↓ |"]
    headline = pd.read_csv(out / "headline.csv")
    assert set(headline["metric"]) == {"parity_l2[skin]", "clipscore"}
    # every non-baseline headline cell carries its finding, Holm never below the raw p
    rows = headline[headline["method"] != "baseline"]
    assert rows["p_holm"].notna().all() and (rows["p_holm"] >= rows["p"]).all()


def test_settings_header_names_the_per_kind_grid():
    from bench.report.page import images_per_prompt
    from bench.spec import RunSpec

    assert images_per_prompt(RunSpec(samples=4)) == 4
    spec = RunSpec(samples=4, samples_by_kind=(("world-occupations.group", 2),
                                               ("world-occupations.neutral", 24)))
    assert images_per_prompt(spec) == ("2 for world-occupations.group; "
                                       "24 for world-occupations.neutral; 4 otherwise")
