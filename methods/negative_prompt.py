"""A text as the negative prompt: the unconditional branch of classifier-free guidance encodes
`text` instead of the empty string, so the guided prediction moves away from it,
    eps = eps(x, neg) + s_g * (eps(x, prompt) - eps(x, neg)),
exactly what diffusers' StableDiffusionPipeline does with `negative_prompt=`. The cheapest
safety baseline; as a method it composes with `+` and appears in the leaderboards.

It overrides the run-level `sampler.negative_prompt` for its batches (the plan notes it); two
composed methods that both set the negative prompt are refused at planning.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.adapter import Adapter, Batch
from bench.methods.sld import DEFAULT_CONCEPT


@dataclass(frozen=True)
class NegativePromptParams:
    text: str = DEFAULT_CONCEPT  # SLD's safety concept (diffusers' text)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("negative-prompt:text is empty; give the text to guide away from "
                             "(default: SLD's safety concept)")


class NegativePrompt(Adapter):
    name = "negative-prompt"
    description = "A text (default SLD's safety concept) as the negative prompt of CFG."
    Params = NegativePromptParams

    def negative(self, batch: Batch) -> list[str] | None:
        return [self.params.text] * len(batch)
