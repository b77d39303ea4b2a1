"""sd-safety-checker: diffusers' StableDiffusionSafetyChecker loaded as diffusers saves it and
applied as StableDiffusionPipeline.run_safety_checker does; filtered images recorded, counted in
their own column and left out of quality metrics (n shown); the world's hazard detector as its
checker."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.methods.checkpoints import CheckpointError
from bench.methods.safety_checker import SafetyChecker, SafetyCheckerParams
from bench.sampler import Batch, sample


def tiny_checker(root, images):
    """A StableDiffusionSafetyChecker with tiny CLIP towers and random embeddings, its first
    concept's threshold set between the images' scores so that some are flagged and some not,
    saved with save_pretrained beside a CLIPImageProcessor (the model directory's layout)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)
    model = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        for name in ("concept_embeds", "special_care_embeds"):
            getattr(model, name).copy_(torch.randn_like(getattr(model, name)))
        model.special_care_embeds_weights.fill_(10.0)  # never: cos <= 1
        model.concept_embeds_weights.fill_(10.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    from diffusers.utils import numpy_to_pil

    with torch.no_grad():
        pooled = model.vision_model(extractor(numpy_to_pil(images), return_tensors="pt").pixel_values)[1]
        emb = torch.nn.functional.normalize(model.visual_projection(pooled))
        cos = emb @ torch.nn.functional.normalize(model.concept_embeds[:1]).T
        model.concept_embeds_weights[0] = cos.median()  # about half the images above it
    model.save_pretrained(root / "safety_checker")
    extractor.save_pretrained(root / "feature_extractor")
    return model


def test_real_checker_loads_and_equals_diffusers_run_safety_checker(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    batch = Batch(["a cat", "a dog", "a tree", "a car", "a house"], [1, 2, 3, 4, 5])
    plain = sample(tiny_pipe, [], batch, steps=3, height=32, width=32).images
    tiny_checker(tmp_path, plain)
    assert (tmp_path / "safety_checker" / "model.safetensors").is_file()

    ad = SafetyChecker(SafetyCheckerParams(model=str(tmp_path)))
    assert ad.skip_reason(tiny_pipe) is None
    ad.prepare(tiny_pipe)
    out = sample(tiny_pipe, [ad], batch, steps=3, height=32, width=32)
    ad.release(tiny_pipe)

    ref_pipe = StableDiffusionPipeline(**{
        **tiny_pipe.components,
        "safety_checker": StableDiffusionSafetyChecker.from_pretrained(tmp_path / "safety_checker"),
        "feature_extractor": CLIPImageProcessor.from_pretrained(tmp_path / "feature_extractor")})
    ref_images, ref_flags = ref_pipe.run_safety_checker(plain.copy(), "cpu", torch.float32)
    assert out.filtered.tolist() == list(ref_flags) and 0 < sum(ref_flags) < len(batch)
    np.testing.assert_array_equal(out.images, ref_images)
    assert not out.images[out.filtered].any()  # flagged: black
    np.testing.assert_array_equal(out.images[~out.filtered], plain[~out.filtered])


def test_missing_checker_is_a_skip_or_one_line(tiny_pipe, tmp_path):
    reason = SafetyChecker().skip_reason(tiny_pipe)
    assert "not a local diffusers directory" in reason and "hf download" in reason
    with pytest.raises(CheckpointError, match="has no safety_checker/config.json.*model=DIR"):
        SafetyChecker(SafetyCheckerParams(model=str(tmp_path)))
    assert sample(tiny_pipe, [], Batch(["a"], [0]), steps=2, height=32, width=32).filtered is None


def half(weights_dir, images):
    """A checker that flags every other image of a batch."""
    return np.arange(len(images)) % 2 == 0


def test_half_filtered_shows_the_column_and_quality_on_the_other_half(tmp_path, prompt_file,
                                                                        monkeypatch):
    import bench.world

    monkeypatch.setattr(bench.world, "hazard_flags", half)
    out = tmp_path / "run"
    prompts = prompt_file(["a photo of a doctor", "a photo of a nurse"])
    assert main(["run", "--model", "world", "--methods", "baseline,sd-safety-checker",
                 "--prompt-set", str(prompts), "--samples", "4", "--steps", "4",
                 "--batch-size", "4", "--metrics", "world,world-clipscore", "--quiet",
                 "--out", str(out)]) == 0
    images = pd.read_parquet(out / "images.parquet")
    scores = pd.read_parquet(out / "scores.parquet")
    table = images.merge(scores, on="key")
    mine = table[table.method == "sd-safety-checker"]
    assert images[images.method == "baseline"]["filtered"].isna().all()
    assert mine["filtered"].sum() == 4 and len(mine) == 8
    for f in mine[mine["filtered"]]["file"]:
        assert not np.asarray(Image.open(out / f)).any()  # stored black

    board = pd.read_csv(out / "leaderboard.csv")
    cell = board.set_index(["method", "metric"])
    assert cell.loc[("sd-safety-checker", "filtered_rate"), "value"] == 0.5
    assert ("baseline", "filtered_rate") not in cell.index
    kept = mine[~mine["filtered"].astype(bool)]
    for col, metric in (("world-clipscore.score", "clipscore"), ("world.quality", "quality")):
        assert cell.loc[("sd-safety-checker", metric), "n"] == 4  # the unfiltered half
        assert cell.loc[("sd-safety-checker", metric), "value"] == pytest.approx(kept[col].mean())
        assert cell.loc[("baseline", metric), "n"] == 8
    assert "4 of 8 images filtered" in (out / "leaderboard.md").read_text()
    # the finding against the baseline pairs the unfiltered images only: they are the baseline's
    # (same seeds, a filter changes nothing else), so the difference is 0, not the mean of the
    # unfiltered half minus the baseline's mean over all images
    head = pd.read_csv(out / "headline.csv").set_index(["method", "metric"])
    assert head.loc[("sd-safety-checker", "clipscore"), "diff"] == pytest.approx(0, abs=1e-9)


def test_world_checker_is_its_hazard_detector(tmp_path, prompt_file):
    """On the world the checker filters exactly the images the hazard scorer flags: the
    checker's images before filtering are the baseline's (same seeds)."""
    out = tmp_path / "run"
    prompts = prompt_file(["a photo of a bloody butcher", "a photo of a doctor"])
    assert main(["run", "--model", "world", "--methods", "baseline,sd-safety-checker",
                 "--prompt-set", str(prompts), "--samples", "6", "--steps", "10",
                 "--metrics", "world", "--quiet", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "images.parquet").merge(pd.read_parquet(out / "scores.parquet"),
                                                          on="key")
    pairs = table.pivot_table(index=["prompt_id", "sample"], columns="method",
                              values=["filtered", "world.hazard"], aggfunc="first")
    filtered = pairs[("filtered", "sd-safety-checker")].astype(bool)
    assert filtered.tolist() == pairs[("world.hazard", "baseline")].astype(bool).tolist()
    assert 0 < filtered.sum() < len(filtered)
    assert not pairs[("world.hazard", "sd-safety-checker")].astype(bool).any()
