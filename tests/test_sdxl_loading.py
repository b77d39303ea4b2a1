"""SDXL models as users have them, offline: a directory in stabilityai's layout (two tokenizers,
two encoders, the VAE config with force_upcast), the `sdxl` alias through the HF cache, `--vae`,
float16/bfloat16 on the CPU, and one-line errors for broken directories (tiny random weights)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.models import (ModelError, fingerprint, load_pipeline, native_size,
                          tiny_random_xl_pipeline)
from bench.sampler import Batch, sample

SDXL_MODEL_INDEX = {  # as stabilityai/stable-diffusion-xl-base-1.0 ships it
    "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True, "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
PROMPT = "a photo of a doctor, 8k, trending on ArtStation"


def images(pipe, seed=0):
    return sample(pipe, [], Batch([PROMPT], [seed]), steps=3, height=32, width=32).images


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    """tiny-random-xl saved as the SDXL base repo lays it out: model_index.json as published,
    tokenizers as vocab.json + merges.txt + JSON configs (tokenizer_2 padding with "!")."""
    from test_loading import sd1_tokenizer_files

    root = tmp_path_factory.mktemp("sdxl") / "sdxl"
    tiny_random_xl_pipeline().save_pretrained(root)
    (root / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX))
    for folder in ("tokenizer", "tokenizer_2"):
        sd1_tokenizer_files(root / folder)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = root / "tokenizer_2" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token": "!"}))
    assert json.loads((root / "vae" / "config.json").read_text())["force_upcast"] is True
    return root


def copy_of(xl_dir, tmp_path):
    shutil.copytree(xl_dir, tmp_path / "xl")
    return tmp_path / "xl"


def test_sdxl_directory_loads_as_the_model_it_was_saved_from(xl_dir, tiny_xl_pipe):
    from diffusers import StableDiffusionXLPipeline

    loaded = load_pipeline(str(xl_dir), "cpu")
    assert isinstance(loaded, StableDiffusionXLPipeline) and loaded.watermark is None
    assert fingerprint(loaded) == fingerprint(tiny_xl_pipe)
    assert loaded.tokenizer_2.pad_token == "!"
    for tok in ("tokenizer", "tokenizer_2"):
        ours, ref = getattr(loaded, tok)(PROMPT, padding="max_length", max_length=77), \
            getattr(tiny_xl_pipe, tok)(PROMPT, padding="max_length", max_length=77)
        assert ours.input_ids == ref.input_ids
    assert native_size(loaded) == 32
    # Same weights (fingerprint); the pooled projection of loaded tensors rounds differently
    # (2.4e-7 measured), so not bit-equal.
    assert np.abs(images(loaded) - images(tiny_xl_pipe)).max() <= 1e-5


def test_cli_model_dir_generates_the_pipelines_image(xl_dir, tmp_path):
    from PIL import Image

    from bench.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "--model", str(xl_dir), "--prompt", PROMPT, "--seed", "2",
                 "--steps", "3", "--out", str(out)]) == 0
    pipe = load_pipeline(str(xl_dir), "cpu")
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, output_type="pil",
               generator=torch.Generator().manual_seed(2)).images[0]
    assert np.abs(np.asarray(Image.open(out)).astype(int) - np.asarray(ref).astype(int)).max() <= 1


def test_sdxl_alias_loads_from_the_hf_cache_or_says_what_to_fetch(xl_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLPipeline
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as err:
        load_pipeline("sdxl", "cpu")
    text = str(err.value)
    assert "\n" not in text
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include" in text
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    shutil.copytree(xl_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert isinstance(load_pipeline("sdxl", "cpu"), StableDiffusionXLPipeline)


def test_hub_path_picks_the_class_model_index_names(monkeypatch):
    """Not cached: model_index.json is fetched first and names StableDiffusionXLPipeline."""
    import diffusers

    from bench import models

    monkeypatch.setattr(models, "_cached_snapshot", lambda repo: None)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config",
                        classmethod(lambda cls, source: dict(SDXL_MODEL_INDEX)))
    calls = []

    def fake(cls, source, **kwargs):
        calls.append((cls.__name__, source, kwargs))
        return tiny_random_xl_pipeline()

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_pretrained", classmethod(fake))
    models._from_pretrained("org/some-sdxl", torch.float32)
    name, source, kwargs = calls[0]
    assert (name, source) == ("StableDiffusionXLPipeline", "org/some-sdxl")
    assert kwargs["add_watermarker"] is False and "safety_checker" not in kwargs


def test_native_size_of_sdxl_base_configs_is_1024(tiny_xl_pipe):
    """unet/config.json sample_size 128 x the VAE's scale (4 blocks: 8), as stabilityai ships."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512],
                            down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    unet = tiny_random_xl_pipeline().unet
    unet.register_to_config(sample_size=128)
    pipe = StableDiffusionXLPipeline(**{**tiny_xl_pipe.components, "unet": unet, "vae": vae})
    assert native_size(pipe) == 1024


def test_missing_text_encoder_2_is_one_line(xl_dir, tmp_path):
    root = copy_of(xl_dir, tmp_path)
    shutil.rmtree(root / "text_encoder_2")
    with pytest.raises(ModelError, match=r"xl/text_encoder_2 holds no weights") as err:
        load_pipeline(str(root), "cpu")
    assert "\n" not in str(err.value) and "fetch the directory again" in str(err.value)


@pytest.mark.parametrize("part, file", [("text_encoder_2", "model.safetensors"),
                                        ("unet", "diffusion_pytorch_model.safetensors")])
def test_wrong_shape_or_missing_key_is_one_line_naming_file_and_key(xl_dir, tmp_path, part, file):
    from safetensors.torch import load_file, save_file

    root = copy_of(xl_dir, tmp_path)
    state = load_file(root / part / file)
    key = sorted(state)[3]
    shape = list(state[key].shape)
    save_file({**state, key: torch.zeros([n + 1 for n in shape])}, root / part / file)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(root), "cpu")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{root / part / file}: {key} has shape {[n + 1 for n in shape]}")
    assert f"needs {shape}" in text and f"fetch {part}/ again" in text
    del state[key]  # a missing key: transformers would initialise it at random, silently
    save_file(state, root / part / file)
    with pytest.raises(ModelError, match=rf"{file}: no tensor {key}, which the model of {part}/"):
        load_pipeline(str(root), "cpu")


def save_vae(path, seed, force_upcast=False, latent_channels=4):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=latent_channels,
                        sample_size=32, scaling_factor=0.13025, force_upcast=force_upcast)
    vae.save_pretrained(path)
    return vae


def test_vae_override_replaces_the_vae_and_changes_the_fingerprint(tmp_path, tiny_xl_pipe):
    vae = save_vae(tmp_path / "fix", seed=7)  # as the fp16-fix VAE: force_upcast false
    pipe = load_pipeline("tiny-random-xl", "cpu", vae=str(tmp_path / "fix"))
    assert torch.equal(pipe.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    assert fingerprint(pipe) != fingerprint(tiny_xl_pipe)
    assert fingerprint(load_pipeline("tiny-random-xl", "cpu", "float16", vae=str(tmp_path / "fix"))) \
        == fingerprint(pipe)
    # the decode is the override's: same latents, its decoder
    ours = images(pipe)
    assert np.abs(ours - images(tiny_xl_pipe)).max() > 1e-2
    half = load_pipeline("tiny-random-xl", "cpu", "float16", vae=str(tmp_path / "fix"))
    assert half.vae.dtype == torch.float16  # no force_upcast: decodes in float16, as diffusers
    assert load_pipeline("tiny-random-xl", "cpu", "float16").vae.dtype == torch.float32


def test_vae_override_errors_are_one_line(tmp_path):
    save_vae(tmp_path / "eight", seed=0, latent_channels=8)
    with pytest.raises(ModelError, match="8 latent channels") as err:
        load_pipeline("tiny-random-xl", "cpu", vae=str(tmp_path / "eight"))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        load_pipeline("tiny-random-xl", "cpu", vae=str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no diffusion_pytorch_model.safetensors"):
        load_pipeline("tiny-random-xl", "cpu", vae=str(tmp_path / "empty"))


def test_run_records_the_vae_in_the_spec_and_the_fingerprint(tmp_path, prompt_file):
    from bench.cli import main

    save_vae(tmp_path / "fix", seed=7)
    runs = {}
    for name, extra in (("plain", []), ("vae", ["--vae", str(tmp_path / "fix")])):
        out = tmp_path / name
        assert main(["run", "--model", "tiny-random-xl", "--metrics", "none", "--steps", "2",
                     "--samples", "1", "--quiet", "--prompt-set", str(prompt_file(["a nurse"])),
                     "--out", str(out), *extra]) == 0
        runs[name] = json.loads((out / "manifest.json").read_text())
    assert "vae" not in runs["plain"]["spec"]
    assert runs["vae"]["spec"]["vae"] == str(tmp_path / "fix")
    assert runs["vae"]["model"]["fingerprint"] != runs["plain"]["model"]["fingerprint"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_the_cpu_gives_finite_images_near_float32(dtype, tiny_xl_pipe):
    """float16 keeps the force_upcast VAE in float32 (diffusers' upcast); bfloat16 casts it.
    The sampler equals StableDiffusionXLPipeline's latents in the same dtype, decoded alike."""
    pipe = load_pipeline("tiny-random-xl", "cpu", dtype)
    assert pipe.unet.dtype == getattr(torch, dtype)
    assert pipe.vae.dtype == (torch.float32 if dtype == "float16" else torch.bfloat16)
    ours = images(pipe, seed=4)
    assert np.isfinite(ours).all() and ours.std() > 0.01
    latents = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, height=32, width=32,
                   generator=torch.Generator().manual_seed(4), output_type="latent").images
    with torch.no_grad():
        ref = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor,
                              return_dict=False)[0]
    ref = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    assert np.abs(ours - ref).max() <= 1e-3
    assert np.abs(ours - images(tiny_xl_pipe, seed=4)).max() <= 0.05


def test_sdxl_single_file_needs_sdxl_configs_and_loads_as_sdxl(xl_dir, tmp_path, monkeypatch):
    """An original-layout SDXL checkpoint (sd_xl_base_1.0.safetensors: its OpenCLIP encoder's
    keys tell it apart): offline and uncached, one line naming the SDXL repo's configs; with
    configs, StableDiffusionXLPipeline.from_single_file (no watermarker) loads it."""
    import diffusers
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias":
               torch.zeros(1280)}, path)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path), "cpu")
    assert "\n" not in str(err.value)
    assert 'hf download stabilityai/stable-diffusion-xl-base-1.0 --include "*.json"' in str(err.value)
    calls = []

    def fake(cls, source, **kwargs):
        calls.append((cls.__name__, kwargs))
        return tiny_random_xl_pipeline()

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_single_file", classmethod(fake))
    load_pipeline(f"{path}:config={xl_dir}", "cpu")
    assert calls[0][0] == "StableDiffusionXLPipeline"
    assert calls[0][1]["add_watermarker"] is False and calls[0][1]["config"] == str(xl_dir)
