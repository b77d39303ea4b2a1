"""Prompt and PromptSet: what every prompt-set loader returns.

A prompt set is data, frozen once loaded: its content hash goes into the run manifest so a
reviewer can tell whether they ran the same prompts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


class PromptSetError(ValueError):
    """A prompt file or set that cannot be used; the message names the file, line and fix."""


@dataclass(frozen=True)
class Prompt:
    id: str  # unique within its set; stable across releases
    text: str
    seed: int | None = None  # the set's own seed (I2P's sd_seed); None -> derived from run seed
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # metadata keys used by metrics: "occupation", "attribute" ("race"|"gender"|"skin"|None),
    # "group" (requested group or None for neutral), "categories" (I2P, comma separated).


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
