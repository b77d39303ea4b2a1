"""RS-Corrector: training R, the latent update, per-image targets and sampling (tiny-random)."""
import json
import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from bench.adapter import Step
from bench.sampler import Batch, sample
from bench.methods.fair_mapping import CheckpointError, get_spec
from bench.methods.rs_corrector import (RSCorrector, RSCorrectorParams, draw_target,
                                  latent_input_scale, parse_distribution)
from bench.methods.rs_corrector_train import _Recorder, collect, load_classifier, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs")
    (root / "occ.txt").write_text("doctor\nnurse\n")
    argv = ["--model", "tiny-random", "--attribute", "skin", "--occupations", str(root / "occ.txt"),
            "--out", str(root / "ckpt"), "--steps", "150", "--samples", "2", "--sample-steps", "5",
            "--batch-size", "32", "--width", "16", "--device", "cpu"]
    assert main(argv) == 0
    return root / "ckpt"


def corrector(path, pipe=None, **kw):
    a = RSCorrector(RSCorrectorParams(checkpoint=str(path), **kw))
    if pipe is not None:
        a.prepare(pipe)
    return a


def n_timesteps(pipe, steps):
    s = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    s.set_timesteps(steps)
    return len(s.timesteps)


def test_training_loss_falls_and_card(checkpoint, tiny_pipe):
    card = json.loads((checkpoint / "card.json").read_text())
    assert card["labels"] == ["light", "medium", "dark", "distorted"]
    assert card["phrases"][2] == "with dark skin" and card["classifier"] is None
    assert card["requested"] == card["kept"] == {"light": 4, "medium": 4, "dark": 4}
    # Every step of every trajectory; images 4 and 9 (of 0..11) are held out.
    assert card["latents"] == 10 * n_timesteps(tiny_pipe, 5)
    assert card["validation"]["latents"] == 2 * n_timesteps(tiny_pipe, 5)
    assert 0 <= card["validation"]["group_accuracy"] <= 1
    loss = card["loss"]
    assert len(loss) == 150
    # Batches of 32 clean + 10 distorted: a model ignoring its input has the label prior's
    # entropy (about ln 4); R must do clearly better, and better than at the start.
    prior = np.array([32 / 3] * 3 + [10]) / 42
    entropy = -(prior * np.log(prior)).sum()
    assert np.mean(loss[-10:]) < 0.75 * entropy
    assert np.mean(loss[-10:]) < 0.7 * np.mean(loss[:10])
    # Held out, R does not call clean latents distorted (no memorised training noise).
    assert card["validation"]["clean_called_distorted"] < 0.5


def test_classifier_keeps_only_agreeing_trajectories(tiny_pipe):
    seen = []

    def classify(images):  # says "dark" for every image
        seen.append(images.shape)
        return ["dark"] * len(images)

    data = collect(tiny_pipe, get_spec("skin"), ["doctor"], samples=2, sample_steps=3,
                   guidance=7.5, seed=0, classify=classify, batch_size=4)
    assert seen == [(4, 32, 32, 3), (2, 32, 32, 3)]
    assert data.requested == {"light": 2, "medium": 2, "dark": 2}
    assert data.kept == {"light": 0, "medium": 0, "dark": 2}
    assert data.labels.tolist() == [2] * (2 * n_timesteps(tiny_pipe, 3))
    with pytest.raises(RuntimeError, match="agreed with no requested group"):
        collect(tiny_pipe, get_spec("skin"), ["doctor"], 1, 2, 7.5, 0, lambda im: ["?"] * len(im))


def mid_trajectory(pipe, seeds, step=2):
    """Real z_t: the latents before step `step` of a 5-step run, and that step's context (the
    pipeline's PNDM scheduler, as a step context at index 0)."""
    rec = _Recorder()
    sample(pipe, [rec], Batch(["a photo of the face of a doctor"] * len(seeds), seeds),
           steps=5, height=32, width=32)
    return rec.latents[step].float(), at(pipe, torch.tensor(rec.timesteps[step]))


def at(pipe, t, i=0):
    return Step(pipe.scheduler, i, t, 7.5, 5)


def test_latent_update_raises_log_prob_of_target(checkpoint, tiny_pipe):
    seeds = [11, 12, 13, 14, 15, 16]
    z, step = mid_trajectory(tiny_pipe, seeds)
    a = corrector(checkpoint, tiny_pipe, eta=0.2, k=3, stop=10)
    state = a.init_state(Batch(["x"] * len(seeds), seeds))
    before = a.log_prob(z, step, state.targets)
    with torch.enable_grad():
        moved = a.on_step(z, step, state)
    after = a.log_prob(moved, step, state.targets)
    print("log p before", before.tolist(), "after", after.tolist())
    assert (after > before).all()
    # Outside [start, stop) the latents pass through untouched.
    assert torch.equal(a.on_step(z, at(tiny_pipe, step.t, i=10), state), z)


def test_update_is_eta_times_gradient_by_finite_differences(checkpoint, tiny_pipe):
    """One inner step moves z by eta * grad log p: check the directional derivative along the move
    against a central finite difference of log p (no autograd in the reference)."""
    z, step = mid_trajectory(tiny_pipe, [21, 22])
    eta = 0.1
    a = corrector(checkpoint, tiny_pipe, eta=eta, k=1, normalize=False, keep_norm=False)
    state = a.init_state(Batch(["x", "x"], [21, 22]))
    with torch.enable_grad():
        d = a.on_step(z, step, state) - z
    h = 1e-2
    with torch.no_grad():
        fd = (a.log_prob(z + h * d, step, state.targets) - a.log_prob(z - h * d, step, state.targets)) / (2 * h)
    expected = (d ** 2).flatten(1).sum(1) / eta  # grad . d = |d|^2 / eta
    assert torch.allclose(fd, expected, rtol=0.05)


def test_normalised_update_has_rms_eta_along_the_gradient(checkpoint, tiny_pipe):
    """normalize=true: each image moves by exactly eta RMS, in the raw gradient's direction."""
    z, step = mid_trajectory(tiny_pipe, [21, 22])
    state = corrector(checkpoint, tiny_pipe).init_state(Batch(["x", "x"], [21, 22]))
    with torch.enable_grad():
        raw = corrector(checkpoint, tiny_pipe, eta=1.0, k=1, normalize=False,
                        keep_norm=False).on_step(z, step, state) - z
        unit = corrector(checkpoint, tiny_pipe, eta=0.3, k=1, keep_norm=False).on_step(z, step, state) - z
    rms = unit.flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.3), rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity(raw.flatten(1), unit.flatten(1))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_keep_norm_rescales_the_stepped_latent_to_its_norm(checkpoint, tiny_pipe):
    """keep_norm=true: the normalised step, then each image scaled back to its latent's norm."""
    z, step = mid_trajectory(tiny_pipe, [21, 22])
    state = corrector(checkpoint, tiny_pipe).init_state(Batch(["x", "x"], [21, 22]))
    with torch.enable_grad():
        free = corrector(checkpoint, tiny_pipe, eta=0.3, k=1, keep_norm=False).on_step(z, step, state)
        kept = corrector(checkpoint, tiny_pipe, eta=0.3, k=1, keep_norm=True).on_step(z, step, state)
    norm = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
    assert torch.allclose(norm(kept), norm(z), rtol=1e-5)
    assert not torch.allclose(norm(free), norm(z), rtol=1e-3)  # the step alone changes the norm
    expected = free * (norm(z) / norm(free)).view(-1, 1, 1, 1)
    assert torch.allclose(kept, expected, atol=1e-6)


def test_targets_deterministic_in_seed_and_batch_independent(checkpoint, tiny_pipe):
    a = corrector(checkpoint, tiny_pipe)
    seeds = list(range(100, 140))
    together = a.targets(Batch(["p"] * len(seeds), seeds))
    alone = [a.targets(Batch(["p"], [s]))[0] for s in seeds]
    reversed_ = a.targets(Batch(["p"] * len(seeds), seeds[::-1]))[::-1]
    assert together == alone == reversed_
    assert set(together) == {0, 1, 2}
    # A prompt that requests a group of this attribute keeps it; other attributes do not count.
    meta = [{"attribute": "skin", "group": "dark"}, {"attribute": "gender", "group": "male"}]
    assert a.targets(Batch(["p", "p"], [100, 101], meta)) == [2, together[1]]


def test_draw_target_follows_distribution():
    probs = parse_distribution("0.2/0.3/0.5", ["light", "medium", "dark"])
    draws = [draw_target(s, probs) for s in range(6000)]
    counts = np.bincount(draws, minlength=3)
    assert chisquare(counts, np.array(probs) * len(draws)).pvalue > 1e-3
    # Inverse CDF by hand for a few seeds.
    for s in range(20):
        u = random.Random(f"rs-corrector:{s}").random()
        assert draw_target(s, probs) == (0 if u < 0.2 else 1 if u < 0.5 else 2)
    assert parse_distribution("", ["a", "b"]) == [0.5, 0.5]
    for bad in ("0.5/0.5", "0.2/0.3/0.6", "a/b/c", "-0.2/0.7/0.5"):
        with pytest.raises(ValueError, match="one per group light/medium/dark"):
            parse_distribution(bad, ["light", "medium", "dark"])


def test_latent_input_scale_matches_scale_model_input(tiny_pipe):
    from diffusers import EulerDiscreteScheduler

    assert latent_input_scale(tiny_pipe.scheduler, torch.tensor(501)) == 1.0  # PNDM
    euler = EulerDiscreteScheduler.from_config(tiny_pipe.scheduler.config)
    euler.set_timesteps(10)
    x = torch.randn(1, 4, 4, 4)
    for t in euler.timesteps[[0, 4, 9]]:
        euler._step_index = None  # else it keeps the first call's index (only step() advances)
        ref = euler.scale_model_input(x, t)
        assert torch.allclose(x * latent_input_scale(euler, t), ref, rtol=2e-2)


def test_sampling_end_to_end(checkpoint, tiny_pipe):
    batch = Batch(["a photo of the face of a nurse", "a photo of a chef"], [5, 6])
    plain = sample(tiny_pipe, [], batch, steps=5, height=32, width=32).images
    still = sample(tiny_pipe, [corrector(checkpoint, tiny_pipe, eta=0.0)], batch, steps=5,
                   height=32, width=32).images
    assert np.abs(still - plain).max() == 0
    never = sample(tiny_pipe, [corrector(checkpoint, tiny_pipe, start=50, stop=60)], batch, steps=5,
                   height=32, width=32).images
    assert np.abs(never - plain).max() == 0
    moved = sample(tiny_pipe, [corrector(checkpoint, tiny_pipe, eta=0.5, k=2, stop=3)], batch,
                   steps=5, height=32, width=32)
    assert np.isfinite(moved.images).all()
    assert np.abs(moved.images - plain).max() > 1e-3
    assert moved.unet_evals == 2 * n_timesteps(tiny_pipe, 5)  # R costs no UNet evaluations


def test_bad_parameters_and_missing_checkpoint(checkpoint, tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="need k >= 0"):
        RSCorrector(RSCorrectorParams(start=5, stop=2))
    with pytest.raises(ValueError, match="distribution"):
        corrector(checkpoint, tiny_pipe, distribution="0.5/0.5")
    assert "bench train rs-corrector" in RSCorrector().skip_reason(tiny_pipe)
    with pytest.raises(CheckpointError, match="no card.json"):
        corrector(tmp_path, tiny_pipe)
    with pytest.raises(ValueError, match="module:callable"):
        load_classifier("no_colon")


def test_warnings_name_settings_off_the_checkpoint(checkpoint, tiny_pipe):
    from bench.models import fingerprint

    fp = fingerprint(tiny_pipe)
    a = corrector(checkpoint)
    assert a.warnings(tiny_pipe, fp, (7.5,), 5) == []  # the card's own settings
    off = a.warnings(tiny_pipe, "0123abcd", (1.0, 7.5), 10)
    assert len(off) == 3
    assert "guidance-7.5" in off[0] and "guidance 1;" in off[0] and str(checkpoint) in off[0]
    assert "5-step" in off[1] and "10 steps" in off[1]
    assert "0123abcd" in off[2] and "bench train rs-corrector" in off[2]
    assert RSCorrector().warnings(tiny_pipe, fp, (1.0,), 10) == []  # skipped: nothing to warn


def test_run_records_warnings_in_manifest_and_leaderboard(checkpoint, tmp_path, capsys):
    from bench import planning, runner
    from bench.spec import RunSpec, SamplerSpec

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a nurse\n")
    spec = RunSpec(model="tiny-random", methods=("baseline", f"rs-corrector:checkpoint={checkpoint}"),
                   prompt_sets=(str(prompts),), samples=1, guidance=(3.0,),
                   sampler=SamplerSpec(steps=5), metrics=("none",), out=str(tmp_path / "run"))
    assert "warning: rs-corrector" in planning.dry_run_summary(planning.plan(spec))
    out = runner.run(spec)
    manifest = json.loads((out / "manifest.json").read_text())
    (method, found), = manifest["method_warnings"].items()
    assert method.startswith("rs-corrector") and "guidance 3" in found[0] and len(found) == 1
    assert found[0] in capsys.readouterr().out
    assert "guidance 3" in (out / "leaderboard.md").read_text()
    assert "Warnings" in (out / "report" / "index.html").read_text()
