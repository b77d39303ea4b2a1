"""Fair Mapping (Li et al., "Fair Text-to-Image Diffusion via Fair Mapping", arXiv 2311.17695).

No official code exists: this is our reconstruction from the paper (docs/methods.md). An affine
map M(x) = W x + b, trained by methods/fair_mapping_train.py and initialised at the identity, is
applied per token to the conditional prompt embeddings [B, 77, D], but only for prompts a keyword
detector finds human-related. Training needs only the frozen text encoder, so a checkpoint is
tied to one text encoder: `prepare` refuses a checkpoint whose card names another fingerprint.
On SDXL the map acts on the concatenation of both encoders' hidden states (what the UNet
attends to; D = 768 + 1280) and the card's fingerprint names both encoders; the pooled embedding
is left as is (the paper maps the token embeddings of one encoder; docs/methods.md).

This module also holds what Fair Mapping and RS-Corrector share: the attribute/group phrasings
used to build training prompts (checkpoint lookup is in methods/checkpoints.py).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from bench.models import text_encoder_fingerprint
from bench.adapter import Batch, is_sdxl
from bench.spec import SpecError
from bench.methods.checkpoints import CheckpointedAdapter, CheckpointError  # noqa: F401 (re-export)


# --- attributes: groups and how a group is written into a prompt ------------------------------

@dataclass(frozen=True)
class AttributeSpec:
    groups: tuple[str, ...]  # canonical labels, as in prompt metadata "group" and classifier output
    phrases: tuple[str, ...]  # how each group is written into a prompt
    pattern: str  # where the phrase goes: "{phrase} {occupation}" or "{occupation} {phrase}"
    templates: tuple[str, ...]  # training prompts; "{noun}" gets "a"/"an" + the occupation phrase

    def noun(self, occupation: str, group: int | None) -> str:
        if group is None:
            return occupation
        return self.pattern.format(phrase=self.phrases[group], occupation=occupation)

    def to_card(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "phrases": list(self.phrases),
                "pattern": self.pattern, "templates": list(self.templates)}


# The `occupations` prompt set's template and one variant: two, because encoding the training
# prompts dominates training time (0.34 s a prompt for CLIP ViT-L/14 on one shared CPU thread).
FACE_TEMPLATES = ("a photo of the face of {noun}", "a portrait photo of {noun}")


def attribute_specs() -> dict[str, AttributeSpec]:
    """race/gender as the `occupations` prompt set phrases them (FairFace's 7 race groups), skin
    as portrait captions do ("a photo of a doctor with dark skin")."""
    from bench.prompt_sets.occupations import GROUPS

    def spec(groups: dict[str, str], pattern: str, templates: tuple[str, ...]) -> AttributeSpec:
        return AttributeSpec(tuple(groups), tuple(groups.values()), pattern, templates)

    skin = {"light": "with light skin", "medium": "with medium skin", "dark": "with dark skin"}
    return {"race": spec(GROUPS["race"], "{phrase} {occupation}", FACE_TEMPLATES),
            "gender": spec(GROUPS["gender"], "{phrase} {occupation}", FACE_TEMPLATES),
            "skin": spec(skin, "{occupation} {phrase}", ("a photo of {noun}", "a portrait of {noun}"))}


def get_spec(attribute: str) -> AttributeSpec:
    specs = attribute_specs()
    if attribute not in specs:
        raise SpecError(f"unknown attribute '{attribute}'; choose one of {sorted(specs)}")
    return specs[attribute]


def text_encoders(pipe: Any) -> list[Any]:
    """The encoders whose hidden states the UNet attends to, in concatenation order (an SDXL
    refiner has only the second)."""
    if not is_sdxl(pipe):
        return [pipe.text_encoder]
    return [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]


def text_fingerprint(pipe: Any) -> str:
    """What a text-side checkpoint is tied to: SD's text encoder hash (as cards have recorded
    it), or on SDXL both encoders' hashes joined by '+'."""
    return "+".join(text_encoder_fingerprint(e) for e in text_encoders(pipe))


def conditioning_width(pipe: Any) -> int:
    """D of the prompt embeddings [B, 77, D] (on SDXL both encoders' widths added)."""
    return sum(int(e.config.hidden_size) for e in text_encoders(pipe))


def default_occupations(pipe: Any) -> list[str]:
    """Training occupations: those the model declares (`pipe.bench_occupations`: a model that
    knows only a few), else the `occupations` prompt set's."""
    own = getattr(pipe, "bench_occupations", None)
    if own:
        return list(own)
    from bench.prompt_sets.occupations import occupations

    return occupations()


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty, non-'#' lines of a word list; a line with other than letters, spaces, '-' and
    "'" is refused with its file and line number."""
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > 60 or not re.fullmatch(r"[^\W\d_]+(?:[ '\-][^\W\d_]+)*", line):
            raise SpecError(f"{path}:{n}: {what} {line[:60]!r} must be words of letters "
                             f"(spaces, '-' and \"'\" between them), at most 60 characters")
        out.append(line)
    if not out:
        raise SpecError(f"{path}: no {what}s (one per line; '#' starts a comment)")
    return out


# --- checkpoints --------------------------------------------------------------------------------

# --- the human-related prompt detector ----------------------------------------------------------

# Nouns that make a prompt human-related; the trained occupations' head nouns are added to these.
# Irregular plurals are listed; regular ones are handled by `_singulars`.
HUMAN_WORDS: tuple[str, ...] = (
    "person", "people", "human", "man", "men", "woman", "women", "boy", "girl", "child",
    "children", "kid", "baby", "toddler", "teen", "teenager", "adult", "guy", "lady", "gentleman",
    "gentlemen", "mother", "father", "mom", "dad", "parent", "son", "daughter", "brother", "sister",
    "wife", "husband", "grandmother", "grandfather", "grandparent", "family", "friend", "couple",
    "someone", "somebody", "he", "she", "him", "her", "worker", "employee", "student", "athlete",
    "player", "soldier", "officer", "professional", "crowd", "portrait", "selfie",
)
_INFLECTED = ("ed", "ing", "es", "ly")  # typo matching skips these: "worked" is no typo of "worker"


def _words(text: str) -> list[str]:
    """Lower-case ASCII letter runs, accents stripped ("Café" -> "cafe")."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z]+", plain)


def _singulars(word: str) -> set[str]:
    """The word and what it would be if it were a simple plural (no dictionary: over-generates,
    which is harmless because candidates are only looked up in the keyword set)."""
    out = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])  # doctors, nurses
        if word.endswith("es"):
            out.add(word[:-2])  # witches, boxes
        if word.endswith("ies"):
            out.add(word[:-3] + "y")  # ladies
    return out


def _one_edit(a: str, b: str) -> bool:
    """Damerau-Levenshtein distance <= 1: one insertion, deletion, substitution or swap of
    neighbours."""
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    i = next((k for k in range(len(a)) if a[k] != b[k]), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    rest = i + 1
    return a[rest:] == b[rest:] or (a[i + 2:] == b[i + 2:] and a[i:i + 2] == b[i:i + 2][::-1])


class HumanDetector:
    """Is a prompt about people? Words are lower-cased ASCII letter runs; a word matches a keyword
    when it or its simple-plural singular equals it (doctors, ladies, witches), or, for a word of
    >= 5 letters not ending in ed/ing/es/ly, when it is one edit (insert, delete, substitute, swap
    neighbours) away from a keyword of >= 5 letters with the same first letter (docter, nurce,
    enginer). Multi-word keywords are reduced to their last word (the English head noun:
    "police officer" -> "officer")."""

    MIN_TYPO = 5

    def __init__(self, keywords: Iterable[str], typos: bool = True) -> None:
        self.keywords = {words[-1] for k in keywords if (words := _words(k))}
        self.typos = typos
        self._long: dict[str, list[str]] = {}
        for k in self.keywords:
            if len(k) >= self.MIN_TYPO:
                self._long.setdefault(k[0], []).append(k)

    def match(self, text: str) -> str | None:
        """The keyword a prompt matches, or None."""
        for word in _words(text):
            hit = self._match_word(word)
            if hit:
                return hit
        return None

    def __call__(self, text: str) -> bool:
        return self.match(text) is not None

    def _match_word(self, word: str) -> str | None:
        for form in _singulars(word):
            if form in self.keywords:
                return form
        if not self.typos or word.endswith(_INFLECTED):
            return None
        forms = {word, word[:-1]} if word.endswith("s") else {word}
        for form in (f for f in forms if len(f) >= self.MIN_TYPO):
            for k in self._long.get(form[0], ()):
                if _one_edit(form, k):
                    return k
        return None


# --- the adapter -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FairMappingParams:
    checkpoint: str = ""  # a `bench train fair-mapping` directory; "" -> the model's default
    attribute: str = ""  # which default checkpoint (fair-mapping-<attribute>); "" -> the only one
    gate: bool = True  # apply the mapping only to prompts the keyword detector finds human-related
    keywords: str = ""  # a file of keywords (one a line) replacing the built-in list + occupations
    typos: bool = True  # let the detector match one-edit typos of keywords of >= 5 letters


class FairMapping(CheckpointedAdapter):
    name = "fair-mapping"
    description = ("Fair Mapping (reconstructed): a trained linear map on the prompt embeddings "
                   "of human-related prompts.")
    Params = FairMappingParams
    WEIGHTS = ("mapping.safetensors",)

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.detector: HumanDetector | None = None
        self.card: dict[str, Any] = {}

    def prepare(self, pipe: Any) -> None:
        from safetensors.torch import load_file

        path, card = self.load_card(pipe)
        mine = text_fingerprint(pipe)
        if card.get("text_encoder_fingerprint") != mine:
            raise CheckpointError(
                f"{self.name}: {path} was trained for text encoder {card.get('text_encoder_fingerprint')} "
                f"but this model's text encoder is {mine}; retrain with `bench train fair-mapping`")
        tensors = load_file(str(path / "mapping.safetensors"))
        dim = conditioning_width(pipe)
        if tensors["weight"].shape != (dim, dim) or tensors["bias"].shape != (dim,):
            raise CheckpointError(f"{self.name}: {path}/mapping.safetensors is not a {dim}x{dim} map")
        self.weight = tensors["weight"].to(pipe.device)
        self.bias = tensors["bias"].to(pipe.device)
        self.detector = self._detector(card)
        self.card = card

    def _detector(self, card: dict[str, Any]) -> HumanDetector:
        if self.params.keywords:
            words = read_lines(Path(self.params.keywords).expanduser(), "keyword")
        else:
            words = [*HUMAN_WORDS, *card.get("occupations", [])]
        return HumanDetector(words, typos=self.params.typos)

    def gated(self, prompts: list[str]) -> list[bool]:
        assert self.detector is not None
        return [not self.params.gate or self.detector(p) for p in prompts]

    def encode(self, cond: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.weight is None or self.bias is None:
            raise RuntimeError(f"{self.name}: prepare(pipe) must run before sampling")
        rows = torch.tensor(self.gated(batch.prompts), device=cond.device)
        mapped = (cond.float() @ self.weight.T + self.bias).to(cond.dtype)
        return torch.where(rows[:, None, None], mapped, cond)
