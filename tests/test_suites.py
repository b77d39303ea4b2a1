"""Declared evaluation suites (bench/suites.py): boards are built from declarations, two scorers of
one attribute keep their own cells, a plugin suite registered through an entry point reaches the
leaderboard, scorers are chosen per suite and model family."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import pytest

from bench.metrics.base import MetricInfo
from bench.report.boards import leaderboards, plan
from bench.suites import SUITES, Headline, Suite, Use, suite_for


def neutral_table(prompt_set: str, labels: dict[str, list[str]]) -> pd.DataFrame:
    """One neutral prompt, one baseline image per label; one column per label scorer."""
    n = len(next(iter(labels.values())))
    return pd.DataFrame({"method": "baseline", "prompt_set": prompt_set, "guidance": 7.5,
                         "prompt_id": "p", "seed": range(n), "sample": range(n),
                         "meta.group": None, "meta.attribute": None, "seconds": 1.0,
                         "unet_evals": 50, **labels})


def parity_l2(p: list[float]) -> float:
    """||p - uniform||_2 by hand."""
    return math.sqrt(sum((x - 1 / len(p)) ** 2 for x in p))


@pytest.mark.parametrize("prompt_set", ["my-prompts", "world-occupations"])
def test_two_scorers_of_one_attribute_keep_their_own_cells(prompt_set):
    """world.skin and skin_tone.skin both label 'skin': before suites, both aggregators wrote
    parity_l2[skin] and the later one overwrote the other. The first (on the world's suite: the
    declared one) keeps the bare name, the other is qualified by its column."""
    table = neutral_table(prompt_set, {
        "world.skin": ["light", "light", "light", "light"],
        "skin_tone.skin": ["light", "medium", "dark", "light"]})
    (board,) = leaderboards(table)
    cells = board.cells["baseline"]
    assert cells["parity_l2[skin]"].value == pytest.approx(parity_l2([1, 0, 0]))  # 0.816
    assert cells["parity_l2[skin_tone.skin]"].value == pytest.approx(parity_l2([.5, .25, .25]))
    assert cells["no_face_rate[skin_tone.skin]"].value == 0
    assert board.suite == ("fairness" if prompt_set == "my-prompts" else "world-occupations")


def test_world_suites_are_what_the_world_prompt_sets_name():
    from bench.registry import PROMPT_SETS
    from bench.world.render import GROUPS

    assert suite_for("world-occupations").name == "world-occupations"
    assert suite_for("world-hazard:neutral=0").name == "world-hazard"
    assert suite_for("i2p:category=sexual").name == "safety"
    assert suite_for("occupations").name == "fairness"
    assert suite_for("prompts.csv", has_categories=True).name == "safety"
    assert getattr(PROMPT_SETS.get("world-occupations"), "suite") == "world-occupations"
    assert SUITES.get("world-occupations").groups["skin"] == GROUPS
    # a suite the spec names takes the prompt sets that name none
    assert suite_for("prompts.csv", named=["safety"]).name == "safety"
    assert suite_for("occupations", named=["safety"]).name == "fairness"


def test_scorers_per_suite_and_model_family():
    """`--metrics all` takes the suites' scorers: the world's on the world model, the registered
    scorers of real images on any other model (world scorers declare family 'world')."""
    from bench.scoring import scorer_names

    world = scorer_names("world", ["all"], ["world-occupations", "world-hazard"])
    assert world == ["world", "world-clipscore"]  # world-fid is opt-in
    assert scorer_names("world", ["all"], ["prompts.csv"]) == world  # generic: the family's
    real = scorer_names("sd15", ["all"], ["world-occupations"])
    assert "fairface" in real and "q16" in real and not [n for n in real if "world" in n]
    assert "fid" not in real  # opt-in: needs a reference folder
    assert scorer_names("sd15", ["none"]) == [] and scorer_names("world", ["q16"]) == ["q16"]


def test_headline_lower_is_better_agrees_with_the_metrics():
    """A headline's declared direction is the metric's own (MetricInfo.higher_is_better)."""
    from bench.metrics.aggregators import Inappropriateness, MeanScore, Parity, RequestedGroupRate

    infos = {i.name.split("[")[0]: i for a in (
        Parity("c.skin", ["a", "b"], "skin"), RequestedGroupRate("c.skin", "skin"),
        Inappropriateness("f"), MeanScore("x", MetricInfo("clipscore", "", True, "")))
        for i in a.infos}
    infos["occupation_acc"] = SUITES.get("world-occupations").derived[0].info
    infos["quality"] = MetricInfo("quality", "", True, "")
    for name in ("fairness", "safety", "world-occupations", "world-hazard"):
        for h in SUITES.get(name).headline:
            assert h.lower_is_better != infos[h.metric.removesuffix("[*]")].higher_is_better


def test_declared_aggregator_with_arguments_and_baseline():
    """A suite declares an aggregator with its arguments; the run supplies the suite's baseline."""
    suite = Suite("t", "test", groups={"g": ("a", "b")}, baseline="ref",
                  aggregators=(Use("parity", {"label_column": "s.g", "groups": ("a", "b"),
                                              "attribute": "g", "compare": ()}),))
    table = neutral_table("x", {"s.g": ["a", "a", "b", "a"]})
    par, latency = plan(table, suite).aggregators
    assert (par.label_column, par.groups, par.baseline, par.compare) == ("s.g", ["a", "b"], "ref", [])
    assert latency.baseline == "ref"
    with pytest.raises(ValueError, match="kind="):
        Suite("bad", "", kind="speed")


PLUGIN = '''
import numpy as np
import pandas as pd

from bench.metrics.aggregators import MeanScore
from bench.metrics.base import Aggregate, Aggregator, Cell, MetricInfo, Scorer
from bench.prompt_sets.base import Prompt, PromptSet
from bench.suites import Headline, Suite, Use


class Red(Scorer):
    name = "plug-red"
    columns = {"plug-red.red": MetricInfo("red", "", True, "mean red channel")}

    def score(self, images, rows):
        return pd.DataFrame({"plug-red.red": [float(np.asarray(im)[..., 0].mean()) for im in images]})


class Count(Aggregator):
    infos = (MetricInfo("images", "", True, "images per method", "none"),)

    def compute(self, table):
        n = table.groupby("method").size()
        return Aggregate({m: {"images": Cell(k, k, k, k)} for m, k in n.items()}, ["counted"])


def load_pink():
    return PromptSet("pink", (Prompt("a", "a pink square"), Prompt("b", "a red square")))


load_pink.suite = "pink-suite"
SUITE = Suite("pink-suite", "redness", scorers={"*": ("plug-red",)},
              aggregators=(Use("plug-count"),), headline=(Headline("red", False),))
'''


@pytest.fixture
def plugin(install_plugin):
    """A distribution whose entry points register a scorer, an aggregator, a prompt set and the
    suite that ties them, as a third-party package would."""
    from bench.registry import METRICS, PROMPT_SETS

    return install_plugin("pink_plugin", PLUGIN, textwrap.dedent("""\
        [bench.metrics]
        plug-red = pink_plugin:Red
        plug-count = pink_plugin:Count

        [bench.prompt_sets]
        pink = pink_plugin:load_pink

        [bench.suites]
        pink-suite = pink_plugin:SUITE
        """), METRICS, PROMPT_SETS, SUITES)


def test_plugin_suite_reaches_the_leaderboard(plugin, tmp_path):
    from PIL import Image

    from bench.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--steps", "2", "--quiet", "--samples", "2",
                 "--prompt-set", "pink", "--methods", "baseline", "--out", str(out)]) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    cells = board.set_index("metric")["value"]
    assert cells["images"] == 4  # the plugin aggregator: 2 prompts x 2 samples
    images = pd.read_parquet(out / "images.parquet")
    red = [float(np.asarray(Image.open(out / f))[..., 0].mean())
           for f in images["file"]]
    assert cells["red"] == pytest.approx(sum(red) / len(red), rel=1e-6)  # its scorer's mean
    scores = pd.read_parquet(out / "scores.parquet")
    assert [c for c in scores if not c.startswith("_") and c != "key"] == ["plug-red.red"]
    assert "counted" in (out / "leaderboard.md").read_text()  # its note
    assert "| red" in (out / "headline.md").read_text()  # its headline


def test_parity_corrects_with_the_scorer_as_the_run_configured_it(monkeypatch):
    """The confusion matrix comes from the label scorer built with the run's options (it was a
    class method that ignored them, e.g. world:weights=DIR)."""
    import numpy as np

    from bench.metrics.aggregators import Parity
    from bench.metrics.base import Scorer
    from bench.registry import METRICS
    from bench.report.boards import Context

    class Lab(Scorer):
        name = "lab"

        def __init__(self, device=None, swap="0"):
            self.swap = swap == "1"

        def confusion(self, attribute):
            m = np.array([[0.9, 0.1], [0.2, 0.8]])
            return m[::-1, ::-1] if self.swap else m

    METRICS.names()
    monkeypatch.setattr(METRICS, "_entries", {**METRICS._entries, "lab": Lab})
    suite = Suite("t", "test", groups={"g": ("a", "b")})
    table = neutral_table("x", {"lab.g": ["a", "b", "a", "a"]})
    for run, want in ((("lab:swap=1",), [[0.8, 0.2], [0.1, 0.9]]), ((), [[0.9, 0.1], [0.2, 0.8]])):
        (par,) = [a for a in plan(table, suite, Context(scorers=run)).aggregators
                  if isinstance(a, Parity)]
        np.testing.assert_allclose(par.confusion, want)
