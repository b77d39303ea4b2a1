"""Scorer weight files in their publishers' exact containers, keys, shapes and dtypes.

Each file is built here as its publisher writes it (random values): Q16's `prompts.p` (a pickle of
a float16 numpy array, `save_prompts` in ml-research/Q16), the three LAION aesthetic heads
(LAION-AI/aesthetic-predictor's `nn.Linear(768, 1)`, christophschuhmann/improved-aesthetic-
predictor's `nn.Sequential` with and without ReLUs), OpenAI's TorchScript CLIP archive and an
open_clip state dict. Each either scores as the publisher's code computes (the reference is that
code's formula or module, built here) or is refused in one line before generation.

CLIP archives are built for open_clip's ViT-S-32 rather than ViT-L-14 (~900 MB): the loading code
is the same for every architecture (the archive's sha256 is looked up, its tensors load into
open_clip's model of the named architecture), so the pinned-hash table is patched to list the
small archive as OpenAI's ViT-S-32.
"""
from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.special import softmax

skimage_data = pytest.importorskip("skimage.data")

SMALL_CLIP = "ViT-S-32"


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(f()) for f in (skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea)]


def rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt": ["a photo"] * n})


@pytest.fixture(scope="module")
def clip_ref(tmp_path_factory):
    """A random ViT-S-32 (open_clip's config, GELU) and the same weights as a safetensors file."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(SMALL_CLIP, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), preprocess, str(path)


def embed(model: torch.nn.Module, preprocess, images) -> np.ndarray:
    with torch.no_grad():
        e = model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images]))
    return torch.nn.functional.normalize(e.float(), dim=-1).numpy()


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text, text
    return text


# ---- Q16: prompts.p as shipped ------------------------------------------------------------------

def write_q16_pickle(path: Path, prompts: np.ndarray) -> None:
    """Q16's `save_prompts`: pickle.dump(embeddings.numpy()). The shipped ViT-L-14 file is
    protocol 3 and names numpy 1.x's `numpy.core.multiarray._reconstruct`; numpy 2 writes
    `numpy._core`, so the module name is put back to what the shipped file holds."""
    data = pickle.dumps(prompts, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def test_q16_pickle_is_built_like_the_shipped_file(tmp_path):
    write_q16_pickle(tmp_path / "prompts.p", np.zeros((2, 768), np.float16))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops((tmp_path / "prompts.p").read_bytes())]
    # The opcodes of ml-research/Q16's data/ViT-L-14/prompts.p (3,231 bytes).
    assert [a for n, a in ops if n == "GLOBAL"] == [
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]
    assert ops[0] == ("PROTO", 3) and ("BINUNICODE", "f2") in ops
    assert (tmp_path / "prompts.p").stat().st_size == 3231


def test_q16_reads_prompts_p_and_scores_as_q16(photos, clip_ref, tmp_path):
    from bench.metrics.q16 import Q16, load_prompts

    emb = embed(clip_ref[0], clip_ref[1], photos)
    # Row 1 ("inappropriate") = the astronaut's embedding, row 0 = the coffee's, in float16.
    prompts = (np.stack([emb[1], emb[0]]) * 3.0).astype(np.float16)
    write_q16_pickle(tmp_path / "prompts.p", prompts)
    assert torch.equal(load_prompts(tmp_path / "prompts.p"), torch.from_numpy(prompts).float())
    # Q16's formula: torch.HalfTensor(pickle.load(f)), then softmax(100 * cos(image, prompt)).
    half = torch.HalfTensor(pickle.load(open(tmp_path / "prompts.p", "rb"))).float().numpy()
    probs = softmax(100 * emb @ (half / np.linalg.norm(half, axis=1, keepdims=True)).T, axis=1)
    scorer = Q16(weights=str(tmp_path / "prompts.p"), model=SMALL_CLIP, pretrained=clip_ref[2], device="cpu")
    assert scorer.available() is None
    scorer.check()
    out = scorer.score(photos, rows(3))
    assert out["q16.flag"].tolist()[:2] == [True, False]
    assert out["q16.flag"].tolist() == (probs.argmax(1) == 1).tolist()
    np.testing.assert_allclose(out["q16.prob"], probs[:, 1], atol=1e-4)


class _Hostile:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


MARKER = Path("/tmp") / f"q16-hostile-{os.getpid()}"


@pytest.mark.parametrize("payload", [
    lambda: pickle.dumps(_Hostile(), protocol=3),
    lambda: pickle.dumps(_Hostile(), protocol=5),
    lambda: b"cbuiltins\neval\n(Vprint(1)\ntR.",  # GLOBAL builtins.eval, REDUCE
    lambda: pickle.dumps({"inappropriate": [0.0] * 4}, protocol=3),  # no globals: not an array
])
def test_q16_refuses_any_other_pickle_without_running_it(payload, clip_ref, tmp_path):
    from bench.scoring import check_scorers
    from bench.spec import SpecError
    from bench.metrics.q16 import Q16

    MARKER.unlink(missing_ok=True)
    path = tmp_path / "prompts.p"
    path.write_bytes(payload())
    with pytest.raises(ValueError, match=r"prompts.p: ") as e:
        Q16(weights=str(path), model=SMALL_CLIP, pretrained=clip_ref[2]).check()
    one_line(e)
    with pytest.raises(SpecError, match="prompts.p: ") as e:  # bench run's plan, before generation
        check_scorers([f"q16:weights={path},model={SMALL_CLIP},pretrained={clip_ref[2]}"], "cpu")
    one_line(e)
    assert not MARKER.exists()


def test_q16_system_call_is_named(tmp_path):
    from bench.metrics.q16 import load_prompts

    path = tmp_path / "prompts.p"
    path.write_bytes(pickle.dumps(_Hostile(), protocol=3))
    with pytest.raises(ValueError, match=r"refers to (posix|os|nt)\.system, which is not numpy"):
        load_prompts(path)


def test_q16_npy_never_unpickles_and_wrong_width_fails_before_generation(clip_ref, tmp_path):
    from bench.scoring import check_scorers
    from bench.spec import SpecError

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(SpecError, match="objects.npy.*allow_pickle") as e:
        check_scorers([f"q16:weights={tmp_path / 'objects.npy'},model={SMALL_CLIP},pretrained={clip_ref[2]}"], "cpu")
    write_q16_pickle(tmp_path / "prompts.p", np.zeros((2, 768), np.float16))  # ViT-L-14's width
    with pytest.raises(SpecError, match="prompts are 768-d but ViT-S-32 embeddings are 384-d") as e:
        check_scorers([f"q16:weights={tmp_path / 'prompts.p'},model={SMALL_CLIP},pretrained={clip_ref[2]}"], "cpu")
    one_line(e)
    check_scorers(["q16:weights=/nonexistent/prompts.p"], "cpu")  # missing: a skip, not an error


def test_missing_weights_stay_a_skip_in_the_plan(monkeypatch):
    from bench.registry import METRICS
    from bench.scoring import check_scorers
    from bench.metrics.base import Scorer

    for env in ("BENCH_FAIRFACE_WEIGHTS", "BENCH_Q16_WEIGHTS", "BENCH_AESTHETIC_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    names = [n for n, c in METRICS.items() if isinstance(c, type) and issubclass(c, Scorer)]
    check_scorers(names, "cpu")  # every registered scorer, none of the weights present here
    check_scorers(["fairface:weights=/nonexistent.pt", "aesthetic:weights=/nonexistent.pth",
                   "clipscore:pretrained=/nonexistent.pt"], "cpu")


# ---- LAION aesthetic heads ----------------------------------------------------------------------

def publisher_head(layout: str, dim: int = 768) -> torch.nn.Module:
    """The publishers' modules: LAION-AI/aesthetic-predictor's nn.Linear(768, 1);
    improved-aesthetic-predictor's MLP.layers (train_predictor.py) without and with its ReLUs."""
    nn = torch.nn
    if layout == "linear":
        return nn.Linear(dim, 1)
    relu = (lambda: [nn.ReLU()]) if layout == "relu-mlp" else (lambda: [])
    return nn.Sequential(
        nn.Linear(dim, 1024), *relu(), nn.Dropout(0.2),
        nn.Linear(1024, 128), *relu(), nn.Dropout(0.2),
        nn.Linear(128, 64), *relu(), nn.Dropout(0.1),
        nn.Linear(64, 16), *relu(),
        nn.Linear(16, 1))


def save_head(module: torch.nn.Module, layout: str, path: Path) -> None:
    """As published: `torch.save(model.state_dict())`, the MLPs under the attribute `layers`."""
    state = module.state_dict()
    torch.save(state if layout == "linear" else {f"layers.{k}": v for k, v in state.items()}, path)


PUBLISHED = {"linear": ("sa_0_4_vit_l_14_linear.pth", ["weight", "bias"]),
             "mlp": ("sac+logos+ava1-l14-linearMSE.pth", [0, 2, 4, 6, 7]),
             "relu-mlp": ("ava+logos-l14-reluMSE.pth", [0, 3, 6, 9, 11])}


@pytest.mark.parametrize("layout", list(PUBLISHED))
def test_aesthetic_heads_equal_the_publishers_modules(layout, tmp_path):
    from bench.metrics.aesthetics import load_head

    torch.manual_seed(3)
    ref = publisher_head(layout).eval()
    with torch.no_grad():  # make the ReLUs bite: without them the relu-mlp output would differ
        for p in ref.parameters():
            p.mul_(4)
    path = tmp_path / PUBLISHED[layout][0]
    save_head(ref, layout, path)
    state = torch.load(path, weights_only=True)
    names = PUBLISHED[layout][1]
    expected = set(names) if layout == "linear" else {f"layers.{i}.{p}" for i in names for p in ("weight", "bias")}
    assert set(state) == expected and all(v.dtype == torch.float32 for v in state.values())
    # The publisher: embeddings L2-normalised (its `normalized`), then the module in float32.
    x = torch.nn.functional.normalize(torch.randn(16, 768), dim=-1)
    head = load_head(path, 768)
    with torch.no_grad():
        got, want = head(x), ref(x)
        assert (got - want).abs().max().item() <= 1e-6
        if layout == "relu-mlp":  # the layout matters: the same weights as a linear chain differ
            linear = publisher_head("mlp").eval()
            linear.load_state_dict({f"{j}.{p}": getattr(ref[i], p) for p in ("weight", "bias")
                                    for i, j in zip([0, 3, 6, 9, 11], [0, 2, 4, 6, 7])})
            assert (linear(x) - want).abs().max().item() > 1e-2


def test_aesthetic_scorer_runs_each_layout_on_the_clip_embedding(photos, clip_ref, tmp_path):
    from bench.metrics.aesthetics import LAIONAesthetic

    emb = torch.from_numpy(embed(clip_ref[0], clip_ref[1], photos))
    for layout, (name, _) in PUBLISHED.items():
        torch.manual_seed(4)
        ref = publisher_head(layout, dim=384).eval()  # ViT-S-32's width
        save_head(ref, layout, tmp_path / name)
        scorer = LAIONAesthetic(weights=str(tmp_path / name), model=SMALL_CLIP, pretrained=clip_ref[2], device="cpu")
        scorer.check()
        out = scorer.score(photos, rows(3))["aesthetic.score"].to_numpy()
        with torch.no_grad():
            np.testing.assert_allclose(out, ref(emb)[:, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("state, message", [
    ({f"layers.{i}.{p}": torch.zeros(1) for i in (0, 2, 4, 6) for p in ("weight", "bias")},
     r"not a published LAION aesthetic head layout .* it holds layers\.0\.bias, layers\.0\.weight"),
    ({"head.weight": torch.zeros(1, 768), "head.bias": torch.zeros(1)}, "it holds head.bias, head.weight"),
    ({**{f"layers.{i}.{p}": torch.zeros(1) for i in (0, 3, 6, 9, 11) for p in ("weight", "bias")},
      "layers.0.weight": torch.zeros(1024, 768)}, r"relu-mlp head tensor 0\.bias is .* \(1,\), expected floating \(1024,\)"),
    ({"weight": torch.zeros(1, 384), "bias": torch.zeros(1)}, "head maps 384 -> 1, the CLIP model gives 768-d"),
    ({"weight": torch.zeros(1, 768, dtype=torch.long), "bias": torch.zeros(1)}, "weight is torch.int64"),
])
def test_other_aesthetic_layouts_are_refused_before_generation(state, message, tmp_path):
    from bench.scoring import check_scorers
    from bench.spec import SpecError

    path = tmp_path / "head.pth"
    torch.save(state, path)
    with pytest.raises(SpecError, match=message) as e:
        check_scorers([f"aesthetic:weights={path}"], "cpu")
    one_line(e)
    path.write_bytes(b"not a torch file")
    with pytest.raises(SpecError, match="head.pth: not a torch state dict") as e:
        check_scorers([f"aesthetic:weights={path}"], "cpu")
    one_line(e)


# ---- CLIP given as a path -----------------------------------------------------------------------

def openai_archive(path: Path, seed: int = 0) -> None:
    """An archive laid out like OpenAI's ViT-L-14.pt: torch.jit.save of their CLIP module (open_clip's
    CLIP keeps OpenAI's parameter names), weights in float16 as shipped, the attention mask a plain
    attribute, and the three scalar buffers OpenAI's archives carry."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(SMALL_CLIP, pretrained=None, force_quick_gelu=True).eval()
    open_clip.model.convert_weights_to_lp(model, torch.float16)
    model.attn_mask = model._buffers.pop("attn_mask")
    for key, value in {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}.items():
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), str(path))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("openai") / "ViT-S-32.pt"
    openai_archive(path)
    return path


def pin(monkeypatch, path: Path, arch: str = SMALL_CLIP) -> None:
    import bench.metrics.clip_models as cm

    table = {**cm.openai_archives(), cm.file_sha256(path): arch}
    monkeypatch.setattr(cm, "openai_archives", lambda: table)


def test_openai_torchscript_archive_scores_as_openais_loader(photos, archive, monkeypatch):
    import open_clip

    from bench.metrics.clip_models import check_weights, load_clip, encode_images

    pin(monkeypatch, archive)
    check_weights(SMALL_CLIP, str(archive))
    clip = load_clip(SMALL_CLIP, str(archive), "cpu")
    assert clip.quick_gelu
    # The publisher's loader (openai/CLIP `clip.load(path, jit=False)` on cpu, as open_clip's
    # load_openai_model reimplements it): jit.load, build from its state dict, QuickGELU, float32.
    with pytest.warns(FutureWarning):
        ref = open_clip.load_openai_model(str(archive), precision="fp32", device="cpu").eval()
    got = encode_images(clip, photos).numpy()
    np.testing.assert_allclose(got, embed(ref, clip.preprocess, photos), atol=1e-6)
    gelu = open_clip.create_model(SMALL_CLIP, pretrained=None).eval()
    gelu.load_state_dict(clip.model.state_dict())
    assert np.abs(got - embed(gelu, clip.preprocess, photos)).max() > 1e-4  # the activation matters


def test_other_torchscript_archives_are_refused_unopened(archive, tmp_path, monkeypatch):
    from bench.scoring import check_scorers
    from bench.spec import SpecError

    def no_jit(*a, **k):
        raise AssertionError("an unpinned archive was opened")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    with pytest.raises(SpecError, match=r"ViT-S-32.pt is a TorchScript archive but not one of OpenAI's "
                                        r"published CLIP archives \(sha256 [0-9a-f]{16}") as e:
        check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={archive}"], "cpu")
    one_line(e)
    pin(monkeypatch, archive)
    with pytest.raises(SpecError, match="is OpenAI's ViT-S-32 archive but the CLIP model is ViT-B-32; pass model=ViT-S-32"):
        check_scorers([f"clipscore:model=ViT-B-32,pretrained={archive}"], "cpu")
    for scorer in ("clipscore", "clip-attributes", "aesthetic", "q16"):  # every CLIP scorer takes it
        with pytest.raises(SpecError, match="quickgelu=false contradicts .* which needs QuickGELU"):
            check_scorers([f"{scorer}:model={SMALL_CLIP},pretrained={archive},quickgelu=false"], "cpu")


def test_open_clip_state_dicts_load_with_the_stated_activation(photos, clip_ref, tmp_path, monkeypatch):
    import open_clip

    from bench.scoring import check_scorers
    from bench.spec import SpecError
    from bench.metrics.clip_models import encode_images, load_clip

    model, preprocess, safetensors = clip_ref
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    gelu_ref = embed(model, preprocess, photos)
    for path in (safetensors, str(tmp_path / "open_clip_pytorch_model.bin")):
        check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={path}"], "cpu")  # GELU: not OpenAI's
        clip = load_clip(SMALL_CLIP, path, "cpu")
        assert not clip.quick_gelu
        np.testing.assert_allclose(encode_images(clip, photos).numpy(), gelu_ref, atol=1e-6)

    # For an architecture OpenAI published, a state dict does not say which activation it needs.
    pin(monkeypatch, tmp_path / "open_clip_pytorch_model.bin")  # any hash: ViT-S-32 counts as OpenAI's
    with pytest.raises(SpecError, match=r"state dict for ViT-S-32, which OpenAI published with QuickGELU "
                                        r"and others \(LAION\) with GELU: say which with quickgelu=true") as e:
        check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={safetensors}"], "cpu")
    one_line(e)
    check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={safetensors},quickgelu=false"], "cpu")
    quick = load_clip(SMALL_CLIP, safetensors, "cpu", quickgelu="true")
    assert quick.quick_gelu
    quick_ref = open_clip.create_model(SMALL_CLIP, pretrained=None, force_quick_gelu=True).eval()
    quick_ref.load_state_dict(model.state_dict())
    got = encode_images(quick, photos).numpy()
    np.testing.assert_allclose(got, embed(quick_ref, preprocess, photos), atol=1e-6)
    assert np.abs(got - gelu_ref).max() > 1e-4
    assert np.abs(encode_images(load_clip(SMALL_CLIP, safetensors, "cpu", "false"), photos).numpy()
                  - gelu_ref).max() <= 1e-6


def test_a_state_dict_that_does_not_fit_fails_before_generation(clip_ref, tmp_path):
    from bench.scoring import check_scorers
    from bench.spec import SpecError

    state = {k: v for k, v in clip_ref[0].state_dict().items() if k != "text_projection"}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(SpecError, match=r"partial.pt do not fit open_clip ViT-S-32: RuntimeError: .*text_projection") as e:
        check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={tmp_path / 'partial.pt'}"], "cpu")
    one_line(e)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SpecError, match="junk.pt do not fit open_clip ViT-S-32") as e:
        check_scorers([f"clipscore:model={SMALL_CLIP},pretrained={tmp_path / 'junk.pt'}"], "cpu")
    one_line(e)


def test_bench_run_refuses_a_malformed_scorer_file_before_loading_the_model(tmp_path, prompt_file, capsys, monkeypatch):
    from bench.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("bench.planning.load_pipeline", no_model)
    path = tmp_path / "prompts.p"
    path.write_bytes(pickle.dumps(_Hostile(), protocol=3))
    args = ["run", "--model", "tiny-random", "--steps", "2", "--quiet", "--samples", "1",
            "--prompt-set", str(prompt_file(["a photo of a cat"])), "--out", str(tmp_path / "run"),
            "--metrics", f"q16:weights={path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prompts.p: not a pickled numpy array" in err, err
    assert not (tmp_path / "run" / "images.parquet").exists()


def test_manifests_fingerprint_the_weight_files_so_compare_names_a_changed_one(clip_ref, tmp_path):
    import hashlib

    from bench.compare import scorer_differences
    from bench.metrics.aesthetics import LAIONAesthetic
    from bench.metrics.q16 import Q16

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    q16, head = tmp_path / "prompts.p", tmp_path / "sa_0_4_vit_s_32_linear.pth"
    options = {"model": SMALL_CLIP, "pretrained": clip_ref[2], "device": "cpu"}
    setups = []
    for value in (0.0, 1.0):
        write_q16_pickle(q16, np.full((2, 384), value, np.float16))
        torch.save({"weight": torch.full((1, 384), value), "bias": torch.zeros(1)}, head)
        manifests = {"q16": Q16(weights=str(q16), **options).manifest(),
                     "aesthetic": LAIONAesthetic(weights=str(head), **options).manifest()}
        assert manifests["q16"]["q16_prompts_sha256"] == sha(q16)
        assert manifests["aesthetic"]["aesthetic_head_sha256"] == sha(head)
        assert manifests["q16"]["clip_weights_sha256"] == sha(Path(clip_ref[2]))
        setups.append({"used": manifests, "skipped": {}})
    diffs = scorer_differences(*setups)
    assert sorted((d.kind, d.text.split(":")[0]) for d in diffs) == [
        ("weights", "aesthetic aesthetic_head_sha256"), ("weights", "q16 q16_prompts_sha256")]
