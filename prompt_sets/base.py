"""Prompt and PromptSet: what every prompt-set loader returns.

A prompt set is data, frozen once loaded: its content hash goes into the run manifest so a
reviewer can tell whether they ran the same prompts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


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
