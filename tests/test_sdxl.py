"""The SDXL path of the harness loop against diffusers' StableDiffusionXLPipeline (tiny-random-xl)."""
import copy

import numpy as np
import pytest
import torch

from bench.adapter import Adapter, is_sdxl
from bench.sampler import Batch, encode_condition, rescale_guidance, sample

PROMPT = "a photo of a doctor"


def xl_reference(pipe, prompt, seed, steps=6, guidance=7.5, size=32, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size,
                width=size, generator=gen, output_type="np", **kwargs).images


def with_scheduler(pipe, name):
    import diffusers

    if name is None:
        return pipe
    sched = getattr(diffusers, name).from_config(pipe.scheduler.config)
    return diffusers.StableDiffusionXLPipeline(**{**pipe.components, "scheduler": sched})


@pytest.mark.parametrize("scheduler", [None, "DDIMScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_equals_stable_diffusion_xl_pipeline(tiny_xl_pipe, scheduler, negative):
    pipe = with_scheduler(tiny_xl_pipe, scheduler)
    ref = xl_reference(pipe, PROMPT, 3, negative_prompt=negative or None)
    ours = sample(pipe, [], Batch([PROMPT], [3]), steps=6, height=32, width=32,
                  negative_prompt=negative)
    assert ref.std() > 0.01  # a blank image would match anything
    assert np.abs(ours.images - ref).max() <= 1e-4


@pytest.mark.parametrize("guidance, rescale", [(7.5, 0.7), (1.0, 0.0), (5.0, 0.0)])
def test_guidance_and_guidance_rescale_match(tiny_xl_pipe, guidance, rescale):
    ref = xl_reference(tiny_xl_pipe, PROMPT, 4, guidance=guidance, guidance_rescale=rescale)
    ours = sample(tiny_xl_pipe, [], Batch([PROMPT], [4], guidance=guidance), steps=6, height=32,
                  width=32, guidance_rescale=rescale)
    assert np.abs(ours.images - ref).max() <= 1e-4
    if rescale:
        plain = sample(tiny_xl_pipe, [], Batch([PROMPT], [4], guidance=guidance), steps=6,
                       height=32, width=32)
        assert np.abs(plain.images - ours.images).max() > 1e-3  # the rescale is not a no-op


def test_rescale_formula_by_hand():
    eps_c = torch.tensor([[1.0, 3.0]])  # std (unbiased) sqrt(2)
    eps = torch.tensor([[0.0, 8.0]])  # std sqrt(32)
    # rescaled = eps * sqrt(2)/sqrt(32) = eps / 4 = [0, 2]; 0.5 of it + 0.5 of eps = [0, 5]
    assert torch.allclose(rescale_guidance(eps, eps_c, 0.5), torch.tensor([[0.0, 5.0]]))


def test_empty_negative_prompt_is_zeros_only_when_the_config_says_so(tiny_xl_pipe):
    """force_zeros_for_empty_prompt: the empty unconditional branch is zeros (the pipeline's
    default), not an encoded "" (what the pipeline computes when given negative_prompt="")."""
    ours = sample(tiny_xl_pipe, [], Batch([PROMPT], [5]), steps=6, height=32, width=32).images
    zeros = xl_reference(tiny_xl_pipe, PROMPT, 5)
    encoded = xl_reference(tiny_xl_pipe, PROMPT, 5, negative_prompt="")
    assert np.abs(ours - zeros).max() <= 1e-4
    assert np.abs(ours - encoded).max() > 1e-3  # the two differ: the test can fail
    unforced = copy.copy(tiny_xl_pipe)
    unforced.register_to_config(force_zeros_for_empty_prompt=False)
    assert tiny_xl_pipe.config.force_zeros_for_empty_prompt  # the shared fixture untouched
    ours = sample(unforced, [], Batch([PROMPT], [5]), steps=6, height=32, width=32).images
    assert np.abs(ours - xl_reference(unforced, PROMPT, 5)).max() <= 1e-4
    assert np.abs(ours - encoded).max() <= 1e-4


def test_image_independent_of_batch_size_and_order(tiny_xl_pipe):
    prompts = ["a photo of a doctor", "a photo of a nurse", "a chef", "a pilot"]
    seeds = [5, 6, 7, 8]
    # One image with its own negative prompt: zeros and encoded rows in one batch.
    negatives = ["", "", "blurry", ""]

    class Negatives(Adapter):
        name = "negatives"

        def negative(self, batch):
            return [negatives[prompts.index(p)] for p in batch.prompts]

    def run(order):
        return sample(tiny_xl_pipe, [Negatives()], Batch([prompts[i] for i in order],
                      [seeds[i] for i in order]), steps=5, height=32, width=32).images

    alone = [run([n])[0] for n in range(4)]
    together, shuffled = run([0, 1, 2, 3]), run([2, 0, 3, 1])
    for n in range(4):
        assert np.abs(together[n] - alone[n]).max() <= 1e-5
        assert np.abs(shuffled[[2, 0, 3, 1].index(n)] - alone[n]).max() <= 1e-5
    ref = xl_reference(tiny_xl_pipe, prompts[2], seeds[2], steps=5, negative_prompt="blurry")
    assert np.abs(alone[2] - ref).max() <= 1e-4


class Echo(Adapter):
    """An extra branch with the prompt's own text and one with another text."""
    name = "echo"

    def extra_conditions(self, batch):
        return [list(batch.prompts), ["an empty room"] * len(batch)]

    def init_state(self, batch):
        return []

    def guide(self, eps_u, eps_c, extras, step, state):
        state.append((torch.equal(extras[0], eps_c), (extras[1] - eps_c).abs().max().item()))
        return None


def test_extra_branches_are_complete_sdxl_conditions(tiny_xl_pipe):
    """An extra branch of the prompt's own text predicts exactly the conditional branch's noise
    (same hidden states, pooled embedding and time ids); another text predicts other noise."""
    echo = Echo()
    seen = []
    echo.init_state = lambda batch: seen  # keep the state to look at
    base = sample(tiny_xl_pipe, [], Batch([PROMPT], [2]), steps=4, height=32, width=32)
    ours = sample(tiny_xl_pipe, [echo], Batch([PROMPT], [2]), steps=4, height=32, width=32)
    assert ours.unet_evals == 4 * 4
    assert len(seen) == 4 and all(same for same, _ in seen)
    assert min(diff for _, diff in seen) > 1e-4
    assert np.abs(ours.images - base.images).max() <= 1e-5


def test_encode_pooled_hook_reaches_the_unet(tiny_xl_pipe):
    """encode_pooled replaces the conditional pooled embedding: zeros equal the pipeline given
    the same hidden states with a zero pooled embedding."""
    class ZeroPooled(Adapter):
        name = "zero-pooled"

        def encode_pooled(self, pooled, batch):
            return torch.zeros_like(pooled)

    ours = sample(tiny_xl_pipe, [ZeroPooled()], Batch([PROMPT], [6]), steps=5, height=32,
                  width=32).images
    cond = encode_condition(tiny_xl_pipe, [PROMPT])
    gen = torch.Generator().manual_seed(6)
    ref = tiny_xl_pipe(prompt_embeds=cond.hidden, pooled_prompt_embeds=torch.zeros_like(cond.pooled),
                       num_inference_steps=5, guidance_scale=7.5, height=32, width=32, generator=gen,
                       output_type="np").images
    plain = sample(tiny_xl_pipe, [], Batch([PROMPT], [6]), steps=5, height=32, width=32).images
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-3


def test_conditioning_is_both_encoders_penultimate_states(tiny_xl_pipe):
    """hidden = [encoder 1 | encoder 2] penultimate hidden states (32 + 64 wide); pooled = the
    second encoder's projection; computed here from the encoders directly."""
    cond = encode_condition(tiny_xl_pipe, [PROMPT, "a nurse"])
    parts = []
    for tok, enc in ((tiny_xl_pipe.tokenizer, tiny_xl_pipe.text_encoder),
                     (tiny_xl_pipe.tokenizer_2, tiny_xl_pipe.text_encoder_2)):
        ids = tok([PROMPT, "a nurse"], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            out = enc(ids, output_hidden_states=True)
        parts.append(out.hidden_states[-2])
    assert cond.hidden.shape == (2, 77, 96) and cond.pooled.shape == (2, 32)
    assert torch.equal(cond.hidden, torch.cat(parts, dim=-1))
    assert torch.equal(cond.pooled, out.text_embeds)
    assert tiny_xl_pipe.tokenizer_2.pad_token == "!"  # as SDXL's second tokenizer pads


def test_is_sdxl(tiny_pipe, tiny_xl_pipe):
    assert is_sdxl(tiny_xl_pipe) and not is_sdxl(tiny_pipe)


def test_fingerprint_covers_both_text_encoders(tiny_xl_pipe):
    from bench.models import _hash_pipeline, fingerprint, tiny_random_xl_pipeline

    assert fingerprint(tiny_xl_pipe) == _hash_pipeline(tiny_random_xl_pipeline())
    for part in ("text_encoder", "text_encoder_2"):
        other = tiny_random_xl_pipeline()
        weights = dict(getattr(other, part).named_parameters())
        with torch.no_grad():
            next(w for k, w in weights.items() if k.endswith("final_layer_norm.weight"))[0] += 1e-3
        assert _hash_pipeline(other) != fingerprint(tiny_xl_pipe), part
    fps = {tiny_xl_pipe.text_encoder.bench_fingerprint, tiny_xl_pipe.text_encoder_2.bench_fingerprint}
    assert len(fps) == 2


def test_bench_generate_equals_the_pipeline(tmp_path, tiny_xl_pipe):
    from PIL import Image

    from bench.cli import main

    out = tmp_path / "doctor.png"
    code = main(["generate", "--model", "tiny-random-xl", "--prompt", PROMPT, "--seed", "3",
                 "--steps", "6", "--out", str(out)])
    assert code in (0, None)
    ours = np.asarray(Image.open(out)).astype(int)
    gen = torch.Generator().manual_seed(3)
    ref = tiny_xl_pipe(PROMPT, num_inference_steps=6, guidance_scale=7.5, generator=gen,
                       output_type="pil").images[0]  # native size: 32 px
    ref = np.asarray(ref).astype(int)
    assert ours.shape == ref.shape == (32, 32, 3)
    assert np.abs(ours - ref).max() <= 1  # 1e-4 in [0, 1] may round to the next 8-bit level


def test_guidance_rescale_run_option_in_manifest_and_key_only_when_on(tmp_path, tiny_xl_pipe):
    """`bench run --guidance-rescale 0.7` on tiny-random-xl: the PNG equals the pipeline's, the
    manifest records the option; off, spec dicts and cache keys are as before the option."""
    import hashlib
    import json

    import pandas as pd
    from PIL import Image

    from bench.cli import main
    from bench.grid import cache_key
    from bench.spec import RunSpec, SamplerSpec, SpecError

    (tmp_path / "p.txt").write_text("a nurse\n")
    (tmp_path / "run.yaml").write_text("timing_rounds: 0\n")
    out = tmp_path / "run"
    main(["run", "--config", str(tmp_path / "run.yaml"), "--model", "tiny-random-xl",
          "--metrics", "none", "--steps", "4", "--samples", "1", "--quiet", "--prompt-set",
          str(tmp_path / "p.txt"), "--guidance-rescale", "0.7", "--out", str(out)])
    row = pd.read_parquet(out / "images.parquet").iloc[0]
    ours = np.asarray(Image.open(out / row["file"])).astype(int)
    gen = torch.Generator().manual_seed(int(row["seed"]))
    ref = tiny_xl_pipe("a nurse", num_inference_steps=4, guidance_scale=7.5, generator=gen,
                       guidance_rescale=0.7, output_type="pil").images[0]
    assert np.abs(ours - np.asarray(ref).astype(int)).max() <= 1
    gen = torch.Generator().manual_seed(int(row["seed"]))
    unscaled = tiny_xl_pipe("a nurse", num_inference_steps=4, guidance_scale=7.5, generator=gen,
                            output_type="pil").images[0]
    assert np.abs(ours - np.asarray(unscaled).astype(int)).max() > 1  # the option reached it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["sampler"]["guidance_rescale"] == 0.7

    assert "guidance_rescale" not in RunSpec().to_dict()["sampler"]
    plain = SamplerSpec(steps=4)
    old = hashlib.sha256(json.dumps(["fp", "baseline", "p", 1, [4, 7.5, 32, 32, None, ""]],
                                    sort_keys=True).encode()).hexdigest()[:24]
    assert cache_key("fp", "baseline", "p", 1, 7.5, plain, 32, 32) == old
    assert cache_key("fp", "baseline", "p", 1, 7.5, SamplerSpec(steps=4, guidance_rescale=0.7),
                     32, 32) != old
    for bad in (1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(SpecError, match="guidance_rescale"):
            SamplerSpec(guidance_rescale=bad)
