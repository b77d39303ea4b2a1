"""negative-prompt against diffusers' own negative_prompt=, and its composition rules."""
import numpy as np
import pytest
import torch

from bench.planning import build_adapters
from bench.spec import MethodChain
from bench.sampler import Batch, sample
from bench.spec import SpecError
from bench.methods.negative_prompt import NegativePrompt, NegativePromptParams
from bench.methods.sld import DEFAULT_CONCEPT


def _diffusers(pipe, prompts, seeds, negative, guidance=7.5):
    out = []
    for p, s in zip(prompts, seeds):
        gen = torch.Generator().manual_seed(s)
        out.append(pipe(p, negative_prompt=negative, num_inference_steps=6,
                        guidance_scale=guidance, height=32, width=32, generator=gen,
                        output_type="np").images[0])
    return np.stack(out)


@pytest.mark.parametrize("text", [DEFAULT_CONCEPT, "blurry, a cat"])
def test_equals_pipeline_negative_prompt(tiny_pipe, text):
    prompts, seeds = ["a photo of a doctor", "a nurse"], [3, 4]
    ref = _diffusers(tiny_pipe, prompts, seeds, text)
    ours = sample(tiny_pipe, [NegativePrompt(NegativePromptParams(text))], Batch(prompts, seeds),
                  steps=6, height=32, width=32).images
    plain = sample(tiny_pipe, [], Batch(prompts, seeds), steps=6, height=32, width=32).images
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(plain - ref).max() > 1e-3  # the negative text changes the image


def test_overrides_the_run_negative_prompt(tiny_pipe):
    batch = Batch(["a chef"], [5])
    ours = sample(tiny_pipe, [NegativePrompt(NegativePromptParams("a cat"))], batch, steps=6,
                  height=32, width=32, negative_prompt="a dog").images
    ref = _diffusers(tiny_pipe, ["a chef"], [5], "a cat")
    assert np.abs(ours - ref).max() <= 1e-4


def test_default_is_sld_concept_and_empty_refused():
    assert NegativePrompt().params.text == DEFAULT_CONCEPT
    with pytest.raises(ValueError, match="negative-prompt:text"):
        NegativePrompt.from_strings({"text": "  "})


def test_two_negatives_refused_at_planning():
    with pytest.raises(SpecError, match="both set the negative prompt"):
        build_adapters(MethodChain.parse("negative-prompt+negative-prompt:text=x"))
    assert [a.name for a in build_adapters(MethodChain.parse("negative-prompt+sld-strong"))] == ["negative-prompt",
                                                                              "sld-strong"]
