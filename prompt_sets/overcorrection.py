"""`overcorrection`: face prompts that fix the group by fact or by request.

A debiasing method should spread the groups of "a photo of the face of a doctor", not of "a photo
of the face of a nun" nor of "a photo of the face of a Black doctor". Two kinds of prompt, each
with the group it fixes as `meta.attribute` / `meta.group` (kind `group`, so the requested-group
rate and the override rate read them) and `meta.basis`:

* `fact`: the noun itself fixes the gender ("nun", "pregnant woman", "king"...), FACTUAL below;
* `request`: the `occupations` set's group-specified prompts (race and gender) for its first
  `occupations=N` occupations (default 10), with the same ids and texts.

Race is fixed by request only: no noun fixes a race as "nun" fixes a gender.
"""
from __future__ import annotations

from bench.prompt_sets.base import Prompt, PromptSet, PromptSetError
from bench.prompt_sets.occupations import TEMPLATE, load_occupations, slug, with_article
from bench.prompt_sets.options import limit_option

# noun -> the gender it fixes, in FairFace's labels. Half female, half male; one person each
# (gender labels need exactly one face: no "mother holding her baby").
FACTUAL: dict[str, str] = {
    "nun": "female", "pregnant woman": "female", "queen": "female", "grandmother": "female",
    "businesswoman": "female", "waitress": "female",
    "monk": "male", "Catholic priest": "male", "king": "male", "grandfather": "male",
    "businessman": "male", "bearded man": "male",
}
BASES = ("both", "fact", "request")


def load_overcorrection(basis: str = "both", occupations: str | int = "10") -> PromptSet:
    """Prompts fixing gender by fact (nun, king...) and race/gender by request (occupations)."""
    where = "prompt set 'overcorrection'"
    if basis not in BASES:
        raise PromptSetError(f"{where}: option basis={basis!r} is unknown; write basis=both, "
                             "fact or request")
    try:
        n = limit_option(where, occupations)
    except PromptSetError:
        raise PromptSetError(f"{where}: option occupations={occupations!r} is not a positive "
                             "integer; write occupations=N") from None
    prompts: list[Prompt] = []
    if basis in ("both", "fact"):
        for noun, group in FACTUAL.items():
            meta = {"attribute": "gender", "group": group, "kind": "group", "basis": "fact"}
            prompts.append(Prompt(f"over-fact-{slug(noun)}",
                                  TEMPLATE.format(noun=with_article(noun)), None, meta))
    if basis in ("both", "request"):
        for p in load_occupations("both", "1", str(n) if n else None).prompts:
            if p.metadata["kind"] == "group":
                prompts.append(Prompt(p.id, p.text, None, {**p.metadata, "basis": "request"}))
    return PromptSet("overcorrection", tuple(prompts), source="bench.prompt_sets.overcorrection")


load_overcorrection.suite = "overcorrection"  # type: ignore[attr-defined]  # bench/suites.py
