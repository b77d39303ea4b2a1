"""Declared evaluation suites: what is measured on a prompt set.

A `Suite` declares, for a prompt set or a family of them, its attribute groups, the scorers with
their options (per model family: a synthetic model can be scored by its own evaluators, real
models by the real ones), the aggregators with their arguments (and so the columns they read), the
baseline method and the headline metrics. It is data, as HELM's metric specs
(`MetricSpec(class_name, args)`) and lm-evaluation-harness' task YAML `metric_list` are: the
report builds the declared aggregators; it does not guess them from column names.

Which suite a board gets: the suite its prompt set names (the loader's `suite` attribute, as a
task YAML names its metrics); for a set that names none (a custom file), the first suite the run's
spec names (`suites:`, `--suite`), else a generic one: `safety` when the prompts carry categories,
`fairness` otherwise. Suites register in `SUITES` (entry-point group `bench.suites`).

Columns no declared aggregator reads still get the suite kind's defaults (`kind`), so a scorer
added with `--metrics` is never silently dropped: a `<scorer>.<attribute>` label column of one
of the suite's attributes gets parity and the requested-group rate (a fairness suite), each
scorer's declared flag columns the inappropriateness protocol (a safety suite), each scorer's
declared score columns their mean, each scorer's declared aggregators. Every board gets latency.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bench.metrics.base import MetricInfo
from bench.registry import METRICS, PROMPT_SETS, Registry

ANY_MODEL = "*"
KINDS = ("fairness", "safety")


@dataclass(frozen=True)
class Use:
    """A registered aggregator (`METRICS` name) with the arguments it is built with. Arguments the
    run supplies when not declared: `baseline` (the suite's), `confusion` (parity: the label
    scorer's, as the run configured it), `categories` (inappropriateness: those of the prompts),
    `timing` (latency)."""
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Derived:
    """A per-image column computed from two others: 1.0 where `left` equals `right`, else 0.0;
    its mean goes on the board as `info`."""
    column: str
    left: str
    right: str
    info: MetricInfo


@dataclass(frozen=True)
class Headline:
    """A headline metric: a name (`clipscore`) or `name[*]`, which takes `name[<qualifier>]` for
    each qualifier on the board (`parity_l2[skin]`, not `parity_l2[skin=light]`)."""
    metric: str
    lower_is_better: bool


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    kind: str = "fairness"  # which defaults undeclared columns get (module docstring)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # attribute -> groups
    # model name (or ANY_MODEL) -> scorer specs with options ("fairface:weights=x.pt"); a model
    # with no entry gets the registered default scorers of its family (`default_scorers`).
    scorers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    aggregators: tuple[Use, ...] = ()
    derived: tuple[Derived, ...] = ()
    baseline: str = "baseline"
    headline: tuple[Headline, ...] = ()
    # Attribute pairs whose joint groups get parity (`parity_l2[race*gender]`), from the labels
    # of a scorer that writes both (metrics/fairness.py IntersectionalParity).
    intersections: tuple[tuple[str, str], ...] = ()
    # Score metrics (their MetricInfo names) also reported per requested group, with the largest
    # gap between groups (`clipscore_gap[race]`; RequestedGroupQuality).
    per_group: tuple[str, ...] = ()
    # The side-effect matrix's axes on this suite's boards, declared like the headline
    # (bench/report/side_effects.py).
    side_effects: tuple[Headline, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"suite '{self.name}': kind={self.kind!r}; use one of {list(KINDS)}")

    def scorers_for(self, model: str) -> list[str]:
        name = model.partition(":")[0]
        declared = self.scorers.get(name, self.scorers.get(ANY_MODEL))
        return list(declared) if declared is not None else default_scorers(model)

    def headline_names(self, names: Sequence[str]) -> list[str]:
        """The headline metrics among a board's metric `names`, in the declared order."""
        return matching(self.headline, names)

    def side_effect_names(self, names: Sequence[str]) -> list[str]:
        """The side-effect matrix's metrics among a board's metric `names`, in declared order."""
        return matching(self.side_effects, names)


def matching(declared: Sequence[Headline], names: Sequence[str]) -> list[str]:
    """The `names` each declaration takes (Headline's doc), in the declared order."""
    out: list[str] = []
    for h in declared:
        if h.metric.endswith("[*]"):
            base = h.metric[:-3]
            out += [n for n in names if n.startswith(base + "[") and "=" not in n]
        elif h.metric in names:
            out.append(h.metric)
    return out


SUITES: Registry[Suite] = Registry("suite", "bench.suites", "bench.suites", (
    "a bench.suites.Suite", lambda obj: isinstance(obj, Suite)))


def default_scorers(model: str) -> list[str]:
    """Every registered scorer of the model's family that is not `opt_in`: a model whose name a
    scorer declares as its `family` (a plugin's synthetic model) gets those, any other model the
    scorers of real images (family "")."""
    from bench.metrics.base import Scorer

    scorers = {n: obj for n, obj in METRICS.items()
               if isinstance(obj, type) and issubclass(obj, Scorer)}
    name = model.partition(":")[0]
    family = name if any(s.family == name for s in scorers.values()) else ""
    return [n for n, s in scorers.items() if s.family == family and not s.opt_in]


def declared_suite(prompt_set: str) -> Suite | None:
    """The suite a registered prompt set's loader names (`loader.suite`), or None. `prompt_set`
    is a table's prompt-set name: `i2p:category=sexual` or a file's stem."""
    name = prompt_set.partition(":")[0]
    if name not in PROMPT_SETS:
        return None
    suite = getattr(PROMPT_SETS.get(name), "suite", None)
    return SUITES.get(suite) if suite else None


def suite_for(prompt_set: str, has_categories: bool = False, named: Sequence[str] = ()) -> Suite:
    """The suite of one prompt set (module docstring for the order)."""
    found = declared_suite(prompt_set)
    if found is not None:
        return found
    return SUITES.get(named[0] if named else "safety" if has_categories else "fairness")


def check_suites(names: Sequence[str]) -> None:
    """Before generation: each suite a spec names exists and is a Suite (UnknownNameError or
    RegistryTypeError: one line)."""
    for name in names:
        SUITES.get(name)


def run_scorers(model: str, prompt_sets: Sequence[str] = (), named: Sequence[str] = ()) -> list[str]:
    """`--metrics all`: the union of the scorers of the run's suites, in declared order."""
    suites = [suite_for(p, named=named) for p in prompt_sets] or [SUITES.get("fairness")]
    return list(dict.fromkeys(s for suite in suites for s in suite.scorers_for(model)))


# ------------------------------------------------------------------------------- built-ins

# Attribute groups of the real scorers' labels (FairFace's race groups, its 4-race file, the
# gender classifiers', the skin-tone scorer's Monk-scale groups).
GROUPS: dict[str, tuple[str, ...]] = {
    "skin": ("light", "medium", "dark"),
    "race": ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
             "Middle Eastern"),
    "race4": ("White", "Black", "Asian", "Indian"),
    "gender": ("male", "female"),
}

# The side-effect matrix's axes (issue 19): the suite's own question, then quality everywhere.
QUALITY_EFFECTS = (Headline("clipscore", False), Headline("quality", False),
                   Headline("aesthetic", False), Headline("fid_baseline", True))
FAIRNESS_EFFECTS = (Headline("parity_l2[*]", True), Headline("requested_group_rate[*]", False),
                    Headline("override_rate[*]", True), *QUALITY_EFFECTS)
SAFETY_EFFECTS = (Headline("inappropriate_prob", True), *QUALITY_EFFECTS)

FAIRNESS = Suite(
    "fairness", "occupation and face prompts: parity of each label attribute (and of race x "
    "gender) over neutral prompts, requested-group and override rates over group-specified "
    "ones, quality scores (also per requested group)",
    kind="fairness", groups=GROUPS, intersections=(("race", "gender"),),
    per_group=("clipscore", "aesthetic", "quality"), side_effects=FAIRNESS_EFFECTS,
    headline=(Headline("parity_l2[*]", True), Headline("requested_group_rate[*]", False),
              Headline("occupation_acc", False), Headline("clipscore", False)))

# Prompts that fix the group (prompt_sets/overcorrection.py): the fairness suite, headed by how
# often a method overrides the group.
OVERCORRECTION = dataclasses.replace(
    FAIRNESS, name="overcorrection", description="prompts fixing the group by fact or request: "
    "override rate against the baseline, requested-group rate, quality per requested group",
    headline=(Headline("override_rate[*]", True), Headline("requested_group_rate[*]", False),
              Headline("clipscore", False)))

SAFETY = Suite(
    "safety", "prompts with I2P categories: inappropriate probability and expected maximum "
    "inappropriateness (the I2P protocol) from the flag columns, quality scores",
    kind="safety", groups=GROUPS, side_effects=SAFETY_EFFECTS,
    headline=(Headline("inappropriate_prob", True), Headline("inappropriate_prob[*]", True),
              Headline("clipscore", False), Headline("quality", False)))

SUITES.register("fairness", FAIRNESS)
SUITES.register("safety", SAFETY)
SUITES.register("overcorrection", OVERCORRECTION)
# Plugins register theirs through the entry-point group bench.suites.
