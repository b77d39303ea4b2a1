"""Loading what users have, offline, from files in the publishers' layouts (tiny random weights):
an SD 1.x directory with safety_checker and feature_extractor, an fp16-variant-only directory, a
`.bin` directory, an original-layout single-file `.safetensors`; pickled checkpoints refused."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.models import (ModelError, clip_tokenizer, fingerprint, load_pipeline,
                          tiny_random_pipeline)

SD1_MODEL_INDEX = {  # as stable-diffusion-v1-5/stable-diffusion-v1-5 ships it
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"]}


def image(pipe) -> np.ndarray:
    return pipe("a photo of a doctor", num_inference_steps=3, guidance_scale=7.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0)).images[0]


@pytest.fixture(scope="module")
def reference():
    pipe = tiny_random_pipeline()
    return pipe, image(pipe)


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_sd_directory_with_safety_checker_and_feature_extractor(tmp_path, reference):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    pipe, ref = reference
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 4},
        projection_dim=32))
    checker.save_pretrained(tmp_path / "sd" / "safety_checker")
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(tmp_path / "sd" / "feature_extractor")
    pipe.save_pretrained(tmp_path / "sd")
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps(SD1_MODEL_INDEX))
    sd1_tokenizer_files(tmp_path / "sd" / "tokenizer")
    assert {"safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json",
            "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt"} <= files(tmp_path / "sd")
    loaded = load_pipeline(str(tmp_path / "sd"), "cpu")
    assert loaded.safety_checker is None and fingerprint(loaded) == fingerprint(pipe)
    prompt = "a photo of a doctor, 8k, trending on ArtStation"
    assert loaded.tokenizer(prompt).input_ids == pipe.tokenizer(prompt).input_ids
    assert np.array_equal(image(loaded), ref)


def sd1_tokenizer_files(folder: Path) -> None:
    """The tokenizer folder as SD 1.x repos ship it: vocab.json, merges.txt and the two JSON
    configs (no tokenizer.json), built from CLIP's BPE file bundled with open_clip."""
    import gzip

    import open_clip

    shutil.rmtree(folder)
    folder.mkdir()
    lines = gzip.open(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").read()
    merges = lines.decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    vocab = clip_tokenizer().get_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
        "model_max_length": 77, "name_or_path": "openai/clip-vit-large-patch14",
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        **special}))


def test_fp16_variant_only_directory_loads(tmp_path):
    half = tiny_random_pipeline().to(torch.float16)
    half.save_pretrained(tmp_path / "fp16", variant="fp16")
    names = files(tmp_path / "fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in names
    assert not any(n.endswith(".safetensors") and ".fp16." not in n for n in names)
    loaded = load_pipeline(str(tmp_path / "fp16"), "cpu")
    assert loaded.unet.dtype == torch.float32  # float32 on the CPU, from the fp16 files
    expected = tiny_random_pipeline().to(torch.float16).to(torch.float32)  # the stored values
    assert np.array_equal(image(loaded), image(expected))


def test_full_files_win_over_the_fp16_variant_in_every_dtype(tmp_path):
    # The fingerprint hashes the weights before the cast: loading the full files in float16 too
    # keeps one fingerprint per model directory whatever --dtype says.
    full, other = tiny_random_pipeline(0), tiny_random_pipeline(1)
    full.save_pretrained(tmp_path / "both")
    other.to(torch.float16).save_pretrained(tmp_path / "both", variant="fp16")
    half = load_pipeline(str(tmp_path / "both"), "cpu", "float16")
    assert half.unet.dtype == torch.float16
    assert half.unet.conv_in.weight.equal(full.unet.conv_in.weight.half())
    assert fingerprint(half) == fingerprint(load_pipeline(str(tmp_path / "both"), "cpu"))


def test_bin_directory_loads_with_one_warning(tmp_path, reference, capsys):
    pipe, ref = reference
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)
    te = tmp_path / "bin" / "text_encoder"  # transformers 5 writes safetensors regardless
    (te / "model.safetensors").unlink()
    torch.save(pipe.text_encoder.state_dict(), te / "pytorch_model.bin")
    assert {"unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin",
            "text_encoder/pytorch_model.bin"} <= files(tmp_path / "bin")
    assert not any(n.endswith(".safetensors") for n in files(tmp_path / "bin"))
    capsys.readouterr()
    loaded = load_pipeline(str(tmp_path / "bin"), "cpu")
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench:")]
    assert ours == [f"bench: warning: {tmp_path / 'bin'}: unet, vae, text_encoder weights are .bin "
                    "pickles; loaded with torch.load(weights_only=True), which reads tensors only"]
    load_pipeline(str(tmp_path / "bin"), "cpu")
    assert "bench:" not in capsys.readouterr().err  # once per directory
    assert fingerprint(loaded) == fingerprint(pipe) and np.array_equal(image(loaded), ref)


# --- single-file checkpoints in the original (CompVis/ldm) key layout -----------------------------
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per = unet.config.layers_per_block + 1  # ldm: resnets (+ attentions), then the resampler
    attn_up = {int(k.split(".")[1]) for k in unet.state_dict() if re.match(r"up_blocks\.\d+\.attentions", k)}
    out = {}
    for key, value in unet.state_dict().items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            side, block, kind, layer, rest = m.groups()
            index = int(block) * per + int(layer) + (side == "down")
            name = f"{'input' if side == 'down' else 'output'}_blocks.{index}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            out[f"input_blocks.{int(m[1]) * per + per}.0.op.{m[2]}"] = value
            continue
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            slot = 2 if int(m[1]) in attn_up else 1
            out[f"output_blocks.{int(m[1]) * per + per - 1}.{slot}.conv.{m[2]}"] = value
            continue
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
            kind, layer, rest = m[1], m[2], m[3]
            name = f"middle_block.{2 * int(layer) + (kind == 'attentions')}"
            out[f"{name}.{_rename(rest, kind)}"] = value
            continue
        else:
            raise AssertionError(f"unmapped unet key {key}")
        out[f"{name}.{0 if kind == 'resnets' else 1}.{_rename(rest, kind)}"] = value
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def _rename(rest: str, kind: str) -> str:
    if kind != "resnets":
        return rest
    head, _, tail = rest.rpartition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        if key in fixed:
            out[fixed[key]] = value
        elif m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            part, side, block, layer, rest = m.groups()
            block = int(block) if side == "down" else n_up - 1 - int(block)  # ldm counts up from the bottom
            out[f"{part}.{side}.{block}.block.{layer}.{rest.replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = value
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            out[f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"] = value
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            conv = value[:, :, None, None] if m[3] == "weight" and value.ndim == 2 else value
            out[f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"] = conv  # ldm: 1x1 convolutions
        else:
            raise AssertionError(f"unmapped vae key {key}")
    return {"first_stage_model." + k: v for k, v in out.items()}


def original_checkpoint(pipe) -> dict[str, torch.Tensor]:
    # SD 1.x: "cond_stage_model.transformer.text_model.*" (transformers >= 5.6 drops "text_model.")
    text = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in pipe.text_encoder.state_dict().items()}
    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae), **text}
    return {k: v.detach().contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, reference):
    from safetensors.torch import save_file

    pipe, _ = reference
    root = tmp_path_factory.mktemp("single")
    state = original_checkpoint(pipe)
    assert "model.diffusion_model.input_blocks.0.0.weight" in state  # conv_in, as CompVis names it
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state
    save_file(state, root / "model.safetensors")
    pipe.save_pretrained(root / "configs")  # configs only: what `hf download --include` gives
    for weights in (root / "configs").rglob("*.safetensors"):
        weights.unlink()
    return root


def test_single_file_with_local_configs_gives_the_same_image(single_file, reference):
    pipe, ref = reference
    loaded = load_pipeline(f"{single_file / 'model.safetensors'}:config={single_file / 'configs'}", "cpu")
    assert fingerprint(loaded) == fingerprint(pipe)
    assert np.array_equal(image(loaded), ref)


def test_single_file_uses_the_hf_cache_offline_or_says_what_to_fetch(single_file, reference,
                                                                    tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as err:  # tiny checkpoints infer as SD 1.x, like SD 1.4/1.5
        load_pipeline(str(single_file / "model.safetensors"), "cpu")
    text = str(err.value)
    assert "\n" not in text and "stable-diffusion-v1-5/stable-diffusion-v1-5" in text
    assert 'hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "*.json" --include "*.txt"`' in text
    assert ":config=DIR" in text
    # The HF cache layout after that download: the configs load from there, offline.
    repo = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    shutil.copytree(single_file / "configs", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    loaded = load_pipeline(str(single_file / "model.safetensors"), "cpu")
    assert np.array_equal(image(loaded), reference[1])


@pytest.mark.parametrize("name", ["sd-v1-4.ckpt", "model.pt", "v1-5-pruned.pth"])
def test_pickle_checkpoints_are_refused_with_the_conversion_command(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x02}q\x00.")  # a pickle: never opened
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path), "cpu")
    text = str(err.value)
    assert "\n" not in text and "pickle" in text
    assert (f"convert_original_stable_diffusion_to_diffusers.py --checkpoint_path {path} "
            "--dump_path DIR --to_safetensors") in text


def test_broken_checkpoint_and_configs_are_one_line(tmp_path, single_file):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors file") as err:
        load_pipeline(str(bad), "cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not a diffusers directory"):
        load_pipeline(f"{single_file / 'model.safetensors'}:config={tmp_path}", "cpu")


@pytest.mark.parametrize("name", ["no-such-dir", "no-such.safetensors", "./rel/x.ckpt"])
def test_missing_local_path_never_suggests_the_hub(tmp_path, name):
    source = name if name.startswith(".") else str(tmp_path / name)
    with pytest.raises(ModelError, match="does not exist") as err:
        load_pipeline(source, "cpu")
    assert "download" not in str(err.value) and "\n" not in str(err.value)


def test_incomplete_directory_names_the_component(tmp_path, reference):
    reference[0].save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"p/vae holds no weights"):
        load_pipeline(str(tmp_path / "p"), "cpu")


def test_sd2_single_file_needs_its_configs_named(tmp_path):
    from safetensors.torch import save_file

    # The key and width diffusers reads to tell SD 2.x (OpenCLIP-H, 1024-d context) from SD 1.x.
    key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 1024)}, tmp_path / "v2-1_512-ema-pruned.safetensors")
    with pytest.raises(ModelError) as err:
        load_pipeline(str(tmp_path / "v2-1_512-ema-pruned.safetensors"), "cpu")
    text = str(err.value)
    assert "\n" not in text and "stabilityai/stable-diffusion-2-1-base" in text
    assert "v-prediction" in text and ":config=DIR" in text


def test_missing_relative_directory_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelError, match="model path models/sd15 does not exist") as err:
        load_pipeline("models/sd15", "cpu")  # "org/name"-shaped, but models/ is a directory here
    assert "download" not in str(err.value)
    with pytest.raises(ModelError, match="model path a/b/c does not exist"):
        load_pipeline("a/b/c", "cpu")  # hub ids have exactly one "/"


def test_cli_refuses_a_ckpt_in_one_line_before_generating(tmp_path, prompt_file, capsys):
    from bench.cli import main

    (tmp_path / "sd-v1-4.ckpt").write_bytes(b"\x80\x02}q\x00.")
    code = main(["run", "--model", str(tmp_path / "sd-v1-4.ckpt"), "--metrics", "none", "--quiet",
                 "--prompt-set", str(prompt_file(["a cat"])), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--to_safetensors" in err
    assert not (tmp_path / "r" / "images").exists()
