"""Model resolution: aliases, missing weights, local directories, fingerprints."""
import pytest

from bench.cli import main
from bench.models import ALIASES, ModelError, fingerprint, load_pipeline, tiny_random_pipeline


def test_missing_hub_weights_name_the_id_and_download_command():
    with pytest.raises(ModelError) as err:
        load_pipeline("sd15", "cpu")
    text = str(err.value)
    assert ALIASES["sd15"] in text and "hf download" in text
    assert "\n" not in text


def test_cli_reports_missing_model_in_one_line(tmp_path, prompt_file, capsys):
    code = main(["run", "--model", "some-org/no-such-model", "--metrics", "none", "--quiet",
                 "--prompt-set", str(prompt_file(["a cat"])), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "some-org/no-such-model" in err and len(err.splitlines()) == 1


def test_local_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelError, match="model_index.json"):
        load_pipeline(str(tmp_path), "cpu")


def test_missing_local_directory_is_named_not_sent_to_the_hub(tmp_path):
    missing = str(tmp_path / "no-such-pipeline")
    with pytest.raises(ModelError, match=f"model path {missing} does not exist"):
        load_pipeline(missing, "cpu")


@pytest.mark.parametrize("device, expected", [("gpu", "is not a torch device"),
                                              ("cuda:99", "cuda:99")])
def test_unusable_device_is_one_line(device, expected, monkeypatch):
    import torch

    # cuda:99 must fail whether or not this machine has GPUs: at most 1 here.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: min(1, torch.cuda.device_count()))
    with pytest.raises(ModelError, match=expected) as err:
        load_pipeline("tiny-random", device)
    assert "\n" not in str(err.value)


def test_saved_pipeline_round_trips_with_same_fingerprint(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = load_pipeline(str(tmp_path / "pipe"), "cpu")
    assert fingerprint(loaded) == fingerprint(tiny_pipe)
    assert loaded.tokenizer("a photo of a doctor").input_ids == \
        tiny_pipe.tokenizer("a photo of a doctor").input_ids


def test_fingerprint_is_stable_and_sensitive(tiny_pipe):
    import torch

    other = tiny_random_pipeline()
    assert fingerprint(other) == fingerprint(tiny_pipe)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    assert fingerprint(other) != fingerprint(tiny_pipe)


def test_real_clip_tokenizer_ids(tiny_pipe):
    # Token ids of the original CLIP BPE vocabulary: "a"=320, "photo"=1125, "of"=539, "doctor"=5547.
    assert tiny_pipe.tokenizer("a photo of a doctor").input_ids == [49406, 320, 1125, 539, 320,
                                                                      5547, 49407]
    assert tiny_pipe.tokenizer.model_max_length == 77


def test_download_command_fetches_the_component_safetensors_only():
    """The suggested `hf download` patterns, applied as huggingface_hub applies them, to the file
    list of stable-diffusion-v1-5/stable-diffusion-v1-5."""
    import shlex

    from huggingface_hub.utils import filter_repo_objects

    from bench.models import download_command

    repo_files = [
        "model_index.json", "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.ckpt",
        "v1-inference.yaml", "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json", "safety_checker/model.safetensors",
        "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
        "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    args = shlex.split(download_command("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    assert args[:3] == ["hf", "download", "stable-diffusion-v1-5/stable-diffusion-v1-5"]
    flags = args[3:]
    assert flags[::2] == ["--include"] * (len(flags) // 2)  # no bare pattern read as a file name
    got = set(filter_repo_objects(repo_files, allow_patterns=flags[1::2]))
    weights = {f for f in got if f.endswith(".safetensors")}
    assert weights == {"safety_checker/model.safetensors", "text_encoder/model.safetensors",
                       "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"}
    assert {"model_index.json", "tokenizer/merges.txt", "unet/config.json"} <= got
