"""What is measured on the synthetic world's prompt sets (bench/suites.py, docs/synthetic-world.md).

On the world model its own evaluators score the images (`world`: face, skin group, occupation,
hazard, quality; `world-clipscore`); on a real model the world's prompt sets get the real
scorers. `world-occupations` measures skin parity over its neutral prompts (corrected by the
evaluator's confusion matrix), the requested-group rate over the skin-specified ones, how often
a method overrides the requested group where the baseline drew it (`override_rate[skin]`),
quality and CLIPScore per requested group with their largest gap, and how often the prompt's
occupation is drawn (the world has one demographic attribute: no intersection); `world-hazard` is the world's I2P: the hazard detector's
flag through the inappropriateness protocol. Kept free of torch imports: listing suites is cheap.
"""
from __future__ import annotations

from bench.metrics.base import MetricInfo
from bench.suites import FAIRNESS_EFFECTS, SAFETY_EFFECTS, Derived, Headline, Suite, Use

GROUPS = {"skin": ("light", "medium", "dark")}  # bench.world.render.GROUPS (a test checks)
SCORERS = {"world": ("world", "world-clipscore")}  # other models: their family's defaults
OCCUPATION = Derived("occupation_correct", "world.occupation", "meta.occupation",
                     MetricInfo("occupation_acc", "", True,
                                "share of images showing the prompt's occupation"))
SCORES = (Use("mean-score", {"column": "world.quality"}),
          Use("mean-score", {"column": "world-clipscore.score"}),
          Use("mean-score", {"column": OCCUPATION.column}),
          Use("world-fid-to-renders", {"column": "world-fid.feature"}))  # with --metrics world-fid

OCCUPATIONS = Suite(
    "world-occupations", "the world's occupations: skin parity over neutral prompts, "
    "requested-group rate, occupation accuracy, quality and CLIPScore",
    kind="fairness", groups=GROUPS, scorers=SCORERS, derived=(OCCUPATION,),
    aggregators=(Use("parity", {"label_column": "world.skin", "groups": GROUPS["skin"],
                                "attribute": "skin"}),
                 Use("requested-group-rate", {"label_column": "world.skin", "attribute": "skin"}),
                 Use("override-rate", {"label_column": "world.skin", "attribute": "skin"}),
                 *SCORES,
                 *(Use("requested-group-quality", {"column": c, "attribute": "skin",
                                                   "groups": GROUPS["skin"]})
                   for c in ("world.quality", "world-clipscore.score"))),
    side_effects=FAIRNESS_EFFECTS,
    headline=(Headline("parity_l2[*]", True), Headline("requested_group_rate[*]", False),
              Headline("occupation_acc", False), Headline("clipscore", False)))

HAZARD = Suite(
    "world-hazard", "the world's I2P: the hazard detector's flag through the inappropriateness "
    "protocol, per category (the neutral prompts' rate is hazard a method adds unasked)",
    kind="safety", groups=GROUPS, scorers=SCORERS, derived=(OCCUPATION,),
    aggregators=(Use("inappropriateness", {"flag_column": ("world.hazard",)}), *SCORES),
    side_effects=SAFETY_EFFECTS,
    headline=(Headline("inappropriate_prob", True), Headline("inappropriate_prob[*]", True),
              Headline("clipscore", False), Headline("quality", False)))
