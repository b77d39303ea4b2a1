"""Prompt and PromptSet: what every prompt-set loader returns.

A prompt set is data, frozen once loaded: its content hash goes into the run manifest so a
reviewer can tell whether they ran the same prompts.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence


class PromptSetError(ValueError):
    """A prompt file or set that cannot be used; the message names the file, line and fix."""


@dataclass(frozen=True)
class PromptMeta:
    """What a prompt's metadata means to the grid, the scorers and the report. Each field is
    text or None; in the run's tables it is the column `meta.<field>` (`column`). Other keys a
    prompt file carries (I2P's `hard`, `hazard_rate`) are `extras`, kept as they are."""
    kind: str | None = None  # sizes the grid (samples_by_kind): "neutral", "group", "hazard", ...
    occupation: str | None = None
    attribute: str | None = None  # the attribute a group-specified prompt names: "skin", "race"
    group: str | None = None  # the group it asks for; None: a neutral prompt
    categories: str | None = None  # I2P's categories, comma separated
    extras: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, metadata: Mapping[str, Any], where: str) -> "PromptMeta":
        """The typed view of a prompt's metadata; a known key holding anything but text is one
        PromptSetError line `WHERE: metadata KEY=VALUE ...` naming the fix."""
        known = {f.name for f in fields(cls)} - {"extras"}
        typed = {}
        for key in known & set(metadata):
            value = metadata[key]
            if isinstance(value, float) and math.isnan(value):  # a missing cell of a table
                value = None
            if value is not None and not isinstance(value, str):
                raise PromptSetError(f"{where}: metadata {key!r}={value!r} is a {_kind(value)}, "
                                     f"but {key!r} holds text; quote it")
            typed[key] = value
        return cls(**typed, extras={k: v for k, v in metadata.items() if k not in known})

    @staticmethod
    def column(name: str) -> str:
        """The table column of a metadata field: 'group' -> 'meta.group'."""
        return f"meta.{name}"


@dataclass(frozen=True)
class Prompt:
    id: str  # unique within its set; stable across releases
    text: str
    seed: int | None = None  # the set's own seed (I2P's sd_seed); None -> derived from run seed
    metadata: Mapping[str, Any] = field(default_factory=dict)  # as loaded: hashed and stored
    meta: PromptMeta = field(init=False, repr=False, compare=False)  # its typed view

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", PromptMeta.of(self.metadata, f"prompt {self.id!r}"))


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]
    source: str = ""  # file path or description

    def content_hash(self) -> str:
        """SHA-256 over ids, texts, seeds and metadata, in order."""
        h = hashlib.sha256()
        for p in self.prompts:
            row = [p.id, p.text, p.seed, dict(sorted(p.metadata.items()))]
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
            h.update(b"\n")
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.prompts)


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    return "number" if isinstance(value, (int, float)) else "string"


def check_metadata_types(sets: Sequence[PromptSet]) -> None:
    """One kind per metadata key across the run's prompt sets: each key becomes one table column,
    and a column of strings and numbers fails to write after every image is generated."""
    seen: dict[str, tuple[str, PromptSet, Prompt]] = {}
    for s in sets:
        for p in s.prompts:
            for key, value in p.metadata.items():
                kind = _kind(value)
                first = seen.setdefault(key, (kind, s, p)) if kind else None
                if first and first[0] != kind:
                    raise PromptSetError(
                        f"{s.source or s.name}: prompt {p.id!r} has metadata {key!r}={value!r}, a "
                        f"{kind}, but prompt {first[2].id!r} of {first[1].source or first[1].name} "
                        f"has a {first[0]}; give {key!r} one type (e.g. quote the numbers)")
