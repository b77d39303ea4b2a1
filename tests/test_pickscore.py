"""PickScore on files in the published formats (random values).

`yuvalkirstain/PickScore_v1` is a transformers CLIPModel directory (config.json + model.safetensors)
and the processor `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` a CLIP image processor + tokenizer. The
full ViT-H/14 is 3.9 GB, so the model here is a CLIPModel of the same class and file layout with a
small config (width 64, 2 layers, 224 px, patch 32); the tokenizer is the real CLIP BPE. The
reference is the model card's formula computed here: PIL bicubic resize of the shortest side to
224 and centre crop done by hand, the network called directly, logit_scale.exp() * cos.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.metrics.pickscore import PickScore, load_pickscore

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
PROMPTS = ["a photo of a doctor", "a watercolor of a red fox in the snow", "a photo of a nurse"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A small CLIPModel saved as PickScore_v1 is (safetensors) and a processor directory."""
    from transformers import CLIPConfig, CLIPModel
    from bench.models import clip_tokenizer

    root = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=49408, max_position_embeddings=77,
                         hidden_act="gelu"),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=224, patch_size=32,
                           hidden_act="gelu"),
        projection_dim=32, logit_scale_init_value=4.6052)
    net = CLIPModel(config).eval().requires_grad_(False)
    net.save_pretrained(root / "model", safe_serialization=True)
    clip_tokenizer().save_pretrained(root / "processor")
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessor_config.json is in the legacy format
    # (integer size and crop_size, CLIPFeatureExtractor): written so, it must read as shortest side
    # 224 and a 224 x 224 crop.
    (root / "processor" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": MEAN.tolist(),
        "image_std": STD.tolist(), "resample": 3, "size": 224}))
    return net, root


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(256, 256), (300, 200), (180, 320)]  # square, landscape, portrait: resize + crop paths
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def reference_pixels(image: Image.Image) -> torch.Tensor:
    """CLIP's preprocessing by hand: shortest side -> 224 (bicubic, PIL), centre 224 crop, OpenAI
    mean/std."""
    w, h = image.size
    size = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    resized = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float64) / 255
    return torch.tensor(((crop - MEAN) / STD).transpose(2, 0, 1), dtype=torch.float32)


def test_pickscore_equals_the_model_card_formula(published):
    net, root = published
    images = photos()
    scorer = PickScore(model=str(root / "model"), processor=str(root / "processor"), batch_size=2)
    assert scorer.available() is None
    scorer.check()
    got = scorer.score(images, pd.DataFrame({"prompt": PROMPTS}))["pickscore.score"].to_numpy()

    from bench.models import clip_tokenizer

    tokens = clip_tokenizer()(PROMPTS, padding=True, truncation=True, max_length=77,
                              return_tensors="pt")
    with torch.no_grad():
        pixels = torch.stack([reference_pixels(im) for im in images])
        image_emb = net.vision_model(pixel_values=pixels).pooler_output
        image_emb = net.visual_projection(image_emb)
        text_emb = net.text_projection(net.text_model(**tokens).pooler_output)
    cos = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
    expected = (net.logit_scale.exp() * cos).detach().numpy()
    assert abs(float(net.logit_scale.exp()) - 100.0) < 0.01  # the published scale, ~100
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # measured 4e-6
    assert np.ptp(got) > 0.05  # the images and prompts give different scores


def test_pickscore_processor_is_the_pil_one(published):
    _, root = published
    _, processor, _ = load_pickscore(str(root / "model"), str(root / "processor"), "cpu")
    for image in photos():
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        assert (pixels - reference_pixels(image)).abs().max() < 1e-4


def test_pickscore_skips_when_absent_and_refuses_a_wrong_file(published, tmp_path):
    reason = PickScore(model=str(tmp_path / "nowhere"), processor=str(tmp_path)).available()
    assert reason and "\n" not in reason and "hf download yuvalkirstain/PickScore_v1" in reason
    assert "pickscore" in __import__("bench.registry", fromlist=["METRICS"]).METRICS.names()
    # A weights file that does not fit config.json is refused before generation, in one line.
    _, root = published
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((root / "model" / "config.json").read_text())
    config["projection_dim"] = 16
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError) as e:
        PickScore(model=str(bad), processor=str(root / "processor")).check()
    assert "\n" not in str(e.value) and "projection" in str(e.value)
