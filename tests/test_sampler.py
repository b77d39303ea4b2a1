"""The harness loop against diffusers' own pipeline, and image independence from batching."""
import json

import numpy as np
import pytest
import torch

from bench.grid import image_seed
from bench.adapter import Adapter, Batch
from bench.sampler import sample
from bench.methods.baseline import Baseline
from bench.prompt_sets.base import Prompt


def diffusers_reference(pipe, prompt, seed, steps=8, guidance=7.5, size=32):
    gen = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size,
                width=size, generator=gen, output_type="np").images


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_baseline_equals_stable_diffusion_pipeline(tiny_pipe, guidance):
    ref = diffusers_reference(tiny_pipe, "a photo of a doctor", 3, guidance=guidance)
    ours = sample(tiny_pipe, [Baseline()], Batch(["a photo of a doctor"], [3], guidance=guidance),
                  steps=8, height=32, width=32)
    assert ref.std() > 0.01  # a blank image would match anything
    assert np.abs(ours.images - ref).max() <= 1e-4
    # PNDM (PLMS) repeats its first timestep: 8 steps are 9 UNet evaluations per branch.
    assert ours.unet_evals == (2 if guidance > 1 else 1) * 9


@pytest.mark.parametrize("scheduler, prediction", [
    ("DDIMScheduler", "epsilon"),
    ("DDIMScheduler", "v_prediction"),  # SD 2.x at 768 px predicts v
    ("EulerDiscreteScheduler", "epsilon"),  # init_noise_sigma != 1, scale_model_input
    ("DPMSolverMultistepScheduler", "v_prediction"),
])
def test_baseline_with_other_schedulers_matches(tiny_pipe, scheduler, prediction):
    import diffusers

    sched = getattr(diffusers, scheduler).from_config(tiny_pipe.scheduler.config, prediction_type=prediction)
    pipe = diffusers.StableDiffusionPipeline(**{**tiny_pipe.components, "scheduler": sched})
    ref = diffusers_reference(pipe, "a nurse", 11, steps=6)
    ours = sample(pipe, [], Batch(["a nurse"], [11]), steps=6, height=32, width=32)
    assert ref.std() > 0.01
    assert np.abs(ours.images - ref).max() <= 1e-4


def test_image_independent_of_batch_size_composition_and_order(tiny_pipe):
    prompts = ["a photo of a doctor", "a photo of a nurse", "a chef", "a pilot"]
    seeds = [5, 6, 7, 8]
    alone = [sample(tiny_pipe, [], Batch([p], [s]), steps=5, height=32, width=32).images[0]
             for p, s in zip(prompts, seeds)]
    together = sample(tiny_pipe, [], Batch(prompts, seeds), steps=5, height=32, width=32).images
    order = [2, 0, 3, 1]
    shuffled = sample(tiny_pipe, [], Batch([prompts[i] for i in order], [seeds[i] for i in order]),
                      steps=5, height=32, width=32).images
    for n in range(4):
        assert np.abs(together[n] - alone[n]).max() <= 1e-5
        assert np.abs(shuffled[order.index(n)] - alone[n]).max() <= 1e-5


def test_image_seed_is_stable_and_uses_prompt_seed():
    p = Prompt("p1", "text")
    # A fixed value: SHA-256 of [0, "set", "p1", 0], first 8 hex digits. Never Python's hash().
    import hashlib
    import json
    expected = int(hashlib.sha256(json.dumps([0, "set", "p1", 0]).encode()).hexdigest()[:8], 16)
    assert image_seed(0, "set", p, 0) == expected
    assert image_seed(0, "set", p, 1) != expected
    assert image_seed(0, "set", Prompt("i", "t", seed=1234), 2) == 1236


class Scale(Adapter):
    """Hooks (a)+(c)+(d): a test adapter touching every hook point."""
    name = "scale"

    def __init__(self):
        super().__init__()
        self.calls = {"encode": 0, "on_step": 0, "guide": 0}

    def encode(self, cond, batch):
        self.calls["encode"] += 1
        return cond * 1.0

    def extra_conditions(self, batch):
        return [["an empty room"] * len(batch)]

    def init_state(self, batch):
        return {"steps": 0, "seen": []}

    def guide(self, eps_u, eps_c, extras, step, state):
        self.calls["guide"] += 1
        state["steps"] += 1
        assert len(extras) == 1 and extras[0].shape == eps_c.shape
        state["seen"].append(("guide", step))
        return 0.0 * extras[0]

    def on_step(self, latents, step, state):
        assert torch.is_grad_enabled()
        self.calls["on_step"] += 1
        state["seen"].append(("on_step", step))
        self.state = state
        return latents


def test_hooks_called_and_neutral_hooks_leave_image_unchanged(tiny_pipe):
    a = Scale()
    base = sample(tiny_pipe, [], Batch(["a cat"], [1]), steps=4, height=32, width=32)
    hooked = sample(tiny_pipe, [a], Batch(["a cat"], [1]), steps=4, height=32, width=32)
    assert a.calls == {"encode": 1, "on_step": 5, "guide": 5}
    # The step context: this batch's own scheduler (a copy; PNDM's 4 steps are 5 entries), the
    # index into its timesteps, that timestep and the batch's guidance, before and after the UNet.
    seen = a.state["seen"]
    assert [(hook, s.i) for hook, s in seen] == [(h, i) for i in range(5) for h in ("on_step", "guide")]
    scheduler = seen[0][1].scheduler
    assert scheduler is not tiny_pipe.scheduler and type(scheduler) is type(tiny_pipe.scheduler)
    for _, s in seen:
        assert s.scheduler is scheduler and s.n == 5 and s.guidance == 7.5
        assert torch.equal(s.t, scheduler.timesteps[s.i])
    assert hooked.unet_evals == 3 * 5
    assert np.abs(hooked.images - base.images).max() <= 1e-5


def diffusers_images(pipe, prompt, seed, steps=6, guidance=7.5, size=32):
    """StableDiffusionPipeline's images in the pipeline's dtype. A float16 pipeline from
    load_pipeline keeps its VAE (force_upcast) in float32: decoded as diffusers' SDXL pipeline
    does, latents cast to the VAE's dtype."""
    gen = torch.Generator().manual_seed(seed)
    latents = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size,
                   width=size, generator=gen, output_type="latent").images
    with torch.no_grad():
        image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor,
                                return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()


def plan_from_cli(args, tmp_path, prompt_file):
    from bench import planning
    from bench.cli import parser, spec_from_args

    argv = ["run", "--model", "tiny-random", "--metrics", "none", "--steps", "6",
            "--prompt-set", str(prompt_file(["a nurse"])), "--out", str(tmp_path / "run"), *args]
    return planning.plan(spec_from_args(parser().parse_args(argv)))


SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
              "euler-a": "EulerAncestralDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler",
              "heun": "HeunDiscreteScheduler", "lms": "LMSDiscreteScheduler"}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_flag_runs_that_scheduler_as_diffusers_does(name, dtype, tmp_path, prompt_file):
    import diffusers

    from bench.models import load_pipeline

    p = plan_from_cli(["--scheduler", name, "--dtype", dtype], tmp_path, prompt_file)
    assert type(p.pipe.scheduler).__name__ == SCHEDULERS[name]
    assert str(p.pipe.unet.dtype) == f"torch.{dtype}"
    ref = load_pipeline("tiny-random", "cpu", dtype)  # the scheduler swap a diffusers user writes
    ref.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(ref.scheduler.config)
    expected = diffusers_images(ref, "a nurse", 11)
    ours = sample(p.pipe, [], Batch(["a nurse"], [11]), steps=6, height=32, width=32).images
    assert expected.std() > 0.01
    assert np.abs(ours - expected).max() <= 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_config_scheduler_gives_eulers_images_not_pndms(dtype, tmp_path, prompt_file):
    import diffusers

    from bench.models import load_pipeline

    config = tmp_path / "run.yaml"
    config.write_text(f"dtype: {dtype}\nsampler:\n  scheduler: EulerDiscreteScheduler\n")
    p = plan_from_cli(["--config", str(config)], tmp_path, prompt_file)
    assert type(p.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    ours = sample(p.pipe, [], Batch(["a nurse"], [11]), steps=6, height=32, width=32).images
    ref = load_pipeline("tiny-random", "cpu", dtype)
    pndm = diffusers_images(ref, "a nurse", 11)  # the model's own scheduler
    ref.scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    assert np.abs(ours - diffusers_images(ref, "a nurse", 11)).max() <= 1e-4
    assert np.abs(ours - pndm).max() > 0.05


def test_run_with_scheduler_config_stores_diffusers_euler_images(tmp_path, prompt_file):
    import diffusers
    import pandas as pd
    from PIL import Image

    from bench.cli import main
    from bench.models import load_pipeline

    config = tmp_path / "run.yaml"
    config.write_text("sampler:\n  scheduler: EulerDiscreteScheduler\n  steps: 6\n")
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--config", str(config), "--metrics", "none",
                 "--quiet", "--samples", "1", "--prompt-set", str(prompt_file(["a nurse"])),
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["scheduler"] == "EulerDiscreteScheduler"
    assert manifest["spec"]["sampler"]["scheduler"] == "EulerDiscreteScheduler"
    row = pd.read_parquet(out / "images.parquet").iloc[0]
    stored = np.asarray(Image.open(out / row["file"]), dtype=float)
    ref = load_pipeline("tiny-random", "cpu")
    ref.scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    gen = torch.Generator().manual_seed(int(row["seed"]))
    expected = np.asarray(ref("a nurse", num_inference_steps=6, height=32, width=32,
                              generator=gen).images[0], dtype=float)
    assert np.abs(stored - expected).max() <= 1  # PNG rounding of floats equal to 1e-4


@pytest.mark.parametrize("where", [["--scheduler", "eulr"], ["--config", "sched.yaml"]])
def test_unknown_scheduler_fails_in_one_line_before_the_model_loads(where, tmp_path, prompt_file,
                                                                     monkeypatch, capsys):
    from bench import models
    from bench.cli import main

    (tmp_path / "sched.yaml").write_text("sampler:\n  scheduler: FancyScheduler\n")
    where = [w.replace("sched.yaml", str(tmp_path / "sched.yaml")) for w in where]
    monkeypatch.setattr(models, "_from_pretrained", lambda *a: pytest.fail("model loaded"))
    monkeypatch.setattr(models.MODELS, "get", lambda *a: pytest.fail("model loaded"))
    code = main(["run", "--model", "tiny-random", "--metrics", "none", "--quiet", *where,
                 "--prompt-set", str(prompt_file(["a cat"])), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "scheduler" in err and "euler-a" in err  # names the choices
    if "eulr" in where:
        assert "did you mean EulerDiscreteScheduler" in err
    code = main(["generate", "--model", "tiny-random", "--scheduler", "eulr", "--prompt", "a cat",
                 "--out", str(tmp_path / "x.png")])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_scheduler_classes_are_diffusers_karras_schedulers():
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    from bench.spec import SCHEDULER_ALIASES, SCHEDULER_CLASSES, canonical_scheduler

    assert set(SCHEDULER_CLASSES) == {s.name for s in KarrasDiffusionSchedulers}
    assert set(SCHEDULER_ALIASES.values()) <= set(SCHEDULER_CLASSES)
    assert canonical_scheduler("Euler-A") == canonical_scheduler("eulerancestraldiscretescheduler") \
        == "EulerAncestralDiscreteScheduler"
