"""`bench train ... --dtype`: every trainer runs its frozen model in float16/bfloat16, trains in
float32 (ESD's master weights keep Adam's steps that half precision rounds away), writes finite
float32 checkpoints that record the dtype, and stops at a non-finite loss in one line."""
import json

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.models import load_pipeline

HALF = ["float16", "bfloat16"]


@pytest.fixture
def occupations(tmp_path):
    path = tmp_path / "occ.txt"
    path.write_text("doctor\nnurse\n")
    return path


def argv(trainer, occupations, out, *extra):
    if trainer == "fair-mapping":
        args = ["--attribute", "gender", "--occupations", str(occupations), "--steps", "100",
                "--lam", "10"]
    elif trainer == "rs-corrector":
        args = ["--attribute", "skin", "--occupations", str(occupations), "--steps", "20",
                "--samples", "1", "--sample-steps", "3", "--batch-size", "8", "--width", "8"]
    elif trainer == "uce":
        args = ["--mode", "erase", "--concepts", "a cat;nudity", "--preserve", "a dog"]
    else:
        args = ["--concept", "a cat", "--iterations", "2", "--ddim-steps", "4", "--lr", "1e-3"]
    return ["train", trainer, "--model", "tiny-random", "--device", "cpu", *args, "--out", str(out),
            *extra]


WEIGHTS = {"fair-mapping": "mapping.safetensors", "rs-corrector": "preference.safetensors",
           "uce": "delta.safetensors", "esd": "delta.safetensors"}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("trainer", sorted(WEIGHTS))
def test_half_precision_training_writes_finite_float32_checkpoints_with_the_dtype(
        trainer, dtype, occupations, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(argv(trainer, occupations, out, "--dtype", dtype)) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["dtype"] == dtype
    tensors = load_file(str(out / WEIGHTS[trainer]))
    assert tensors and all(t.dtype == torch.float32 and torch.isfinite(t).all()
                           for t in tensors.values())
    assert any(t.abs().sum() > 0 for t in tensors.values())  # it trained something
    if trainer == "fair-mapping":  # and fit as in float32 (tests/test_fair_mapping.py's bound)
        assert card["loss"][-1] < 0.2 * card["loss"][0]


def test_default_dtype_is_recorded_as_float32_on_the_cpu(occupations, tmp_path):
    out = tmp_path / "ckpt"
    assert main(argv("uce", occupations, out)) == 0
    assert json.loads((out / "card.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("dtype", HALF)
def test_uce_edit_from_half_weights_is_the_float32_edit_within_their_rounding(dtype, occupations,
                                                                            tmp_path):
    deltas = {}
    for d in ("float32", dtype):
        assert main(argv("uce", occupations, tmp_path / d, "--dtype", d)) == 0
        deltas[d] = load_file(str(tmp_path / d / "delta.safetensors"))
    for key, ref in deltas["float32"].items():
        rel = float((deltas[dtype][key] - ref).norm() / ref.norm())
        # the closed form is solved in float64 from weights and embeddings rounded to the dtype
        # (relative rounding 2^-11 and 2^-8): the edit moves by about as much, not more
        # (measured: 0.0028 and 0.023 of its norm)
        assert rel < (0.01 if dtype == "float16" else 0.08), (key, rel)


@pytest.mark.parametrize("dtype", HALF)
def test_esd_keeps_adam_steps_that_half_weights_would_round_away(dtype):
    """One Adam step moves each parameter by at most lr, and by lr wherever the gradient is not
    tiny (tests/test_esd.py); at lr 1e-5 most of those steps are below the half-precision
    weights' resolution: the float32 master copy keeps them."""
    from bench.methods.esd import trainable
    from bench.methods.esd_train import ESDConfig, train

    pipe = load_pipeline("tiny-random", "cpu", dtype)
    lr = 1e-5
    deltas, losses = train(pipe, ESDConfig("a cat", "x", iterations=1, lr=lr, ddim_steps=4),
                           log_every=0)
    assert len(losses) == 1 and all(torch.isfinite(d).all() for d in deltas.values())
    moved = torch.cat([d.abs().flatten() for d in deltas.values()])
    assert moved.max() == pytest.approx(lr, rel=1e-2)
    frozen = trainable(pipe.unet, "x")
    lost = kept = 0
    for name, d in deltas.items():
        w = frozen[name].detach()
        rounded_away = ((w.double() + d.double()).to(w.dtype) == w) & (d.abs() > lr / 2)
        lost += int(rounded_away.sum())
        kept += int((d.abs() > lr / 2).sum())
    # In the pipeline's dtype most of these steps would not exist (measured: 29,777 of 36,724
    # in float16, 40,335 of 41,338 in bfloat16)
    assert kept > 0 and lost > kept / 2
    assert all(p.dtype == getattr(torch, dtype) for p in pipe.unet.parameters())  # frozen unchanged


@pytest.mark.parametrize("trainer", ["fair-mapping", "rs-corrector", "esd"])
def test_non_finite_loss_stops_in_one_line_naming_step_and_fix(trainer, occupations, tmp_path,
                                                               capsys):
    out = tmp_path / "ckpt"
    args = [a for a in argv(trainer, occupations, out)]
    if "--lr" in args:
        args[args.index("--lr") + 1] = "1e30"
    else:
        args += ["--lr", "1e30"]  # Adam's first step moves the weights by 1e30: inf on the next
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"bench: error: {trainer}: ") and "lower --lr (now 1e" in err
    assert " step " in err and (" is nan;" in err or " is inf;" in err), err
    assert not out.exists()  # no checkpoint


def test_non_finite_uce_edit_is_one_line(occupations, tmp_path, monkeypatch, capsys):
    import bench.methods.uce_train as uce_train

    real = uce_train.concept_embeddings
    monkeypatch.setattr(uce_train, "concept_embeddings",  # an overflowed text encoder
                        lambda pipe, texts: real(pipe, texts) * float("inf"))
    out = tmp_path / "ckpt"
    assert main(argv("uce", occupations, out, "--dtype", "float16")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "uce: the edit of" in err and "--dtype float32" in err
    assert not out.exists()
