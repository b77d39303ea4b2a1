"""HPSv2 on a checkpoint in the published format (random values).

`HPS_v2.1_compressed.pt` is `torch.save({'state_dict': <open_clip CLIP state dict>})`, loaded
strictly into open_clip's ViT-H-14 by tgxs002/HPSv2. ViT-H-14 is ~1B parameters (2-4 GB), so the
checkpoint here is open_clip's ViT-S-32 in the same container and key layout, saved in float16
(the scorer casts to float32). The reference is img_score.py's computation done independently here:
the network called through open_clip's forward (output_dict), HPSv2's validation transform written
with torch.nn.functional (longest side to 224 bicubic with antialiasing, zero padding centred,
OpenAI mean/std), and the diagonal of image_features @ text_features.T.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.metrics.hpsv2 import FILES, HPSv2

SMALL = "ViT-S-32"
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
PROMPTS = ["a photo of a doctor", "an oil painting of a lighthouse at dusk",
           "a photo of a nurse " * 30]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(SMALL, pretrained=None, output_dict=True).eval()
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("hps") / FILES["2.1"]
    torch.save({"state_dict": state}, path)
    model.load_state_dict({k: v.float() for k, v in state.items()})  # the values the file holds
    return model, path


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sizes = [(224, 224), (320, 200), (150, 260)]  # no resize; landscape and portrait: resize + pad
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def reference_pixels(image: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    h, w = x.shape[1:]
    if max(h, w) != 224:
        nh, nw = round(h * 224 / max(h, w)), round(w * 224 / max(h, w))
        x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bicubic", antialias=True,
                                            align_corners=False)[0]
        top, left = (224 - nh) // 2, (224 - nw) // 2
        x = torch.nn.functional.pad(x, (left, 224 - nw - left, top, 224 - nh - top), value=0.0)
    return (x - MEAN) / STD


def test_hpsv2_equals_img_score(published):
    import open_clip

    model, path = published
    images = photos()
    scorer = HPSv2(weights=str(path), model=SMALL, batch_size=2)
    assert scorer.available() is None
    scorer.check()
    got = scorer.score(images, pd.DataFrame({"prompt": PROMPTS}))["hpsv2.score"].to_numpy()

    with torch.no_grad():
        outputs = model(torch.stack([reference_pixels(im) for im in images]),
                        open_clip.get_tokenizer(SMALL)(PROMPTS))
        expected = torch.diagonal(outputs["image_features"] @ outputs["text_features"].T).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.ptp(got) > 0.01 and np.all(np.abs(got) <= 1)  # a cosine: no logit scale


def test_hpsv2_found_in_the_hf_cache(published, tmp_path, monkeypatch):
    """With no path given, the version's file is read from the HF cache layout (then HPS_ROOT)."""
    import huggingface_hub.constants

    _, path = published
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HPS_ROOT", str(tmp_path / "hpsv2"))
    monkeypatch.delenv("BENCH_HPSV2_WEIGHTS", raising=False)
    reason = HPSv2(model=SMALL).available()
    assert reason and "\n" not in reason and f"hf download xswu/HPSv2 {FILES['2.1']}" in reason
    snapshot = tmp_path / "hub" / "models--xswu--HPSv2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--xswu--HPSv2" / "refs").mkdir()
    (tmp_path / "hub" / "models--xswu--HPSv2" / "refs" / "main").write_text("0" * 40)
    (snapshot / FILES["2.1"]).symlink_to(path)
    assert HPSv2(model=SMALL).available() is None
    assert HPSv2(model=SMALL).manifest()["hpsv2_weights"].endswith(FILES["2.1"])
    assert HPSv2(model=SMALL, version="v2.0").available() is not None  # the other version's file


def test_hpsv2_refuses_wrong_files_in_one_line(published, tmp_path):
    model, _ = published
    flat = tmp_path / "flat.pt"
    torch.save(model.state_dict(), flat)  # a bare state dict: not HPSv2's container
    big = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, big)
    for path, words in ((flat, "'state_dict'"), (big, "ViT-B-32")):
        with pytest.raises(ValueError) as e:
            HPSv2(weights=str(path), model="ViT-B-32" if path == big else SMALL).check()
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    with pytest.raises(ValueError):
        HPSv2(version="3")


def test_hpsv2_cell_in_a_run(published, tmp_path):
    """`bench run --metrics hpsv2:...` on tiny-random: a leaderboard cell `hpsv2`, the mean of the
    per-image scores with its bootstrap CI and n, higher is better, and the file's hash recorded."""
    import json

    from bench.cli import main

    _, path = published
    (tmp_path / "p.txt").write_text("a photo of a doctor\na photo of a nurse\n")
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--steps", "3", "--quiet", "--samples", "2",
                 "--prompt-set", str(tmp_path / "p.txt"), "--methods", "baseline",
                 "--out", str(out),
                 "--metrics", f"hpsv2:weights={path},model={SMALL}"]) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    cell = board[board.metric == "hpsv2"].iloc[0]
    scores = pd.read_parquet(out / "scores.parquet")["hpsv2.score"]
    assert cell.n == 4 and cell.higher_is_better
    assert cell.value == pytest.approx(scores.mean(), abs=1e-12)
    assert cell.ci_lo <= cell.value <= cell.ci_hi and cell.ci_lo < cell.ci_hi
    used = json.loads((out / "report" / "scoring.json").read_text())["used"]
    assert list(used.values())[0]["hpsv2_weights_sha256"]
