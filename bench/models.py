"""Model loading: aliases, hub ids, local diffusers directories, and offline tiny models.

`load_pipeline(name)` returns a diffusers `StableDiffusionPipeline`, or a
`StableDiffusionXLPipeline` when the model's model_index.json names it, on the chosen device. The
sampler only uses its unet, vae, text encoder(s), tokenizer(s) and scheduler.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.registry import MODELS
from bench.spec import canonical_scheduler, check_dtype


class ModelError(RuntimeError):
    pass


# alias -> hub id. sd14 is the model the I2P paper evaluated.
ALIASES: dict[str, str] = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}

# Models built in code rather than loaded by id; registered lazily like every other entry.
MODELS.register("tiny-random", "bench.models:tiny_random_pipeline")
MODELS.register("tiny-random-xl", "bench.models:tiny_random_xl_pipeline")


def resolve_device(device: str | None) -> torch.device:
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: torch.cuda.is_available() is False here (no GPU, driver "
                         f"or CUDA build of torch {torch.__version__}); omit --device to run on the CPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def resolve_dtype(dtype: str | None, dev: torch.device) -> torch.dtype:
    """A dtype name (bench.spec.DTYPES) or None: float16 on cuda, float32 elsewhere."""
    if dtype is None:
        return torch.float16 if dev.type == "cuda" else torch.float32
    return getattr(torch, check_dtype(dtype) or "float32")


def dtype_name(pipe: Any) -> str:
    """The dtype the pipeline's UNet computes in, as written on the command line."""
    return str(pipe.unet.dtype).removeprefix("torch.")


def load_pipeline(name: str, device: str | None = None, dtype: str | None = None,
                  scheduler: str | None = None, vae: str | None = None) -> Any:
    """Load `name` (a registered model, an alias, a local diffusers directory or a hub id) in
    `dtype` (None: float16 on cuda, else float32), with `scheduler` (a short or diffusers class
    name; None: the model's own) and `vae` (a VAE directory or hub id replacing the model's,
    e.g. madebyollin/sdxl-vae-fp16-fix; None: the model's own). Fingerprints are taken on the
    weights as loaded (the replacement VAE's included), before the cast, so a model has one
    fingerprint in every dtype."""
    dev = resolve_device(device)
    target = resolve_dtype(dtype, dev)
    if scheduler is not None:
        scheduler = canonical_scheduler(scheduler)  # a typo fails before the weights load
    base, _, options = name.partition(":")
    if name in MODELS:
        pipe = MODELS.get(name)()
    elif options and "=" in options and base in MODELS:  # NAME:key=value,key=value
        pipe = MODELS.get(base)(**model_options(base, options))
    else:
        pipe = _from_pretrained(ALIASES.get(name, name), torch.float32)
    if vae is not None:
        replace_vae(pipe, vae)
    pipe.set_progress_bar_config(disable=True)
    record_fingerprints(pipe)
    # What diffusers does for VAEs that overflow in float16 (SD 2.x, SDXL): decode in float32
    # (`pipe.vae.to(torch.float32)`, the replacement of the deprecated upcast_vae). Here the VAE
    # is never cast, so it keeps its float32 weights rather than float16-rounded ones.
    keep_vae = target == torch.float16 and getattr(getattr(pipe.vae, "config", None),
                                                   "force_upcast", False)
    for part, module in _modules(pipe).items():  # cast first: half the bytes to move
        if part != "vae" or not keep_vae:
            _cast(module, target)
        torch.nn.Module.to(module, dev)
    if scheduler is not None:
        use_scheduler(pipe, scheduler)
    return pipe


def apply_options(pipe: Any, options: Sequence[str] = ()) -> None:
    """The run's GPU options (RunSpec.gpu_options()) on a loaded pipeline, after its
    fingerprint is taken. `vae_slicing`/`vae_tiling`: diffusers' AutoencoderKL decode options.
    `compile`: torch.compile of the UNet in place (`nn.Module.compile`, mode default,
    fullgraph=False), so `pipe.unet` stays the UNet: its config, hooks on the module itself and
    in-place weight edits (uce, weights) work as uncompiled; each new input shape or grad mode
    compiles again (the synthetic model: ~50 s on an idle CPU core)."""
    for name in ("slicing", "tiling"):
        if f"vae_{name}" in options:
            enable = getattr(pipe.vae, f"enable_{name}", None)
            if enable is None:
                raise ModelError(f"vae_{name}: this model's VAE ({type(pipe.vae).__name__}) has "
                                 f"no {name}; run without --vae-{name}")
            enable()
    if "compile" in options:
        pipe.unet.compile(fullgraph=False)


def _modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's torch modules (diffusers' `components`, or a stand-in's three parts)."""
    parts = getattr(pipe, "components", None) or {p: getattr(pipe, p) for p in COMPONENTS}
    return {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast as from_pretrained(torch_dtype=...) does: submodules a model lists in
    `_keep_in_fp32_modules` stay float32. (diffusers' `.to(dtype)` warns about that list even
    when it is empty.)"""
    torch.nn.Module.to(module, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, sub in module.named_modules():
        if any(k in name.split(".") for k in keep):
            sub.to(dtype=torch.float32)


def use_scheduler(pipe: Any, name: str) -> None:
    """Replace the pipeline's scheduler as diffusers users do: `Cls.from_config(old.config)`."""
    import diffusers

    cls = getattr(diffusers, canonical_scheduler(name))
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def model_options(name: str, text: str) -> dict[str, Any]:
    """`key=value,...` of a registered model, converted by its loader's keyword defaults."""
    import inspect

    params = inspect.signature(MODELS.get(name)).parameters
    options: dict[str, Any] = {}
    for part in text.split(","):
        key, _, raw = part.partition("=")
        if key not in params or params[key].default is inspect.Parameter.empty:
            known = [k for k, p in params.items() if p.default is not inspect.Parameter.empty]
            raise ModelError(f"--model {name}:{text}: '{key}' is not an option of {name}; "
                             f"options: {', '.join(known) or 'none'}")
        try:
            options[key] = type(params[key].default)(raw)
        except ValueError:
            raise ModelError(f"--model {name}:{text}: cannot read {key}={raw!r} as "
                             f"{type(params[key].default).__name__}") from None
    return options


def _from_pretrained(source: str, dtype: torch.dtype) -> Any:
    """A local diffusers directory or single-file checkpoint, or a hub id (from the HF cache, or
    downloaded). A path never falls through to the hub."""
    path_text, _, config = source.partition(":config=")  # FILE.safetensors:config=DIR
    local = Path(path_text).expanduser()
    if local.is_file():
        return _from_single_file(local, Path(config).expanduser() if config else None, dtype)
    if local.exists():
        return _from_directory(local, dtype)
    if _is_path(path_text):
        raise ModelError(f"model path {path_text} does not exist; pass a diffusers pipeline "
                         f"directory, a .safetensors checkpoint, a hub id or an alias "
                         f"({', '.join(ALIASES)}) or a registered model (`bench list models`)")
    cached = _cached_snapshot(source)
    if cached is not None:
        return _from_directory(cached, dtype)
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its "cannot reach the hub" warnings: our one line says it
    try:  # model_index.json first (a few hundred bytes): it names the pipeline class
        cls, kwargs = pipeline_class(DiffusionPipeline.load_config(source), source)
        return cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot fetch model '{source}' from the hub (not in the HF cache; offline, "
            f"unreachable or a wrong id): download it with `{download_command(source)}`, or pass "
            f"a local directory. Cause: {_first_line(exc)}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


# Weight files of the components the sampler uses (SDXL adds text_encoder_2); the safety
# checker is never loaded.
COMPONENTS = ("unet", "vae", "text_encoder")
XL_COMPONENTS = (*COMPONENTS, "text_encoder_2")


def pipeline_class(index: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    """The diffusers pipeline class a model_index.json names, and the keyword arguments bench
    loads it with: no safety checker (SD), no invisible watermark (SDXL: it changes pixels and
    bench never watermarks)."""
    import diffusers

    name = index.get("_class_name", "StableDiffusionPipeline")
    if name == "StableDiffusionXLPipeline":
        return diffusers.StableDiffusionXLPipeline, {"add_watermarker": False}
    if name != "StableDiffusionPipeline":
        raise ModelError(f"{where}: model_index.json names {name}; bench runs "
                         "StableDiffusionPipeline (SD 1.x/2.x) and StableDiffusionXLPipeline models")
    return diffusers.StableDiffusionPipeline, {"safety_checker": None,
                                               "requires_safety_checker": False}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_WARNED: set[str] = set()


def _is_path(text: str) -> bool:
    """Not a hub id ("org/name"): an explicit path, a checkpoint file name, more than one "/",
    or "dir/name" under a directory that exists here (a mistyped local path)."""
    if text.startswith((".", "/", "~")) or Path(text).suffix in SINGLE_FILE_SUFFIXES:
        return True
    return text.count("/") > 1 or ("/" in text and Path(text).parent.is_dir())


def download_command(repo: str) -> str:
    # One --include per pattern (a second bare pattern would be read as a file name). The
    # component files only: SD repos also hold multi-GB single files and .bin copies at the root.
    return (f'hf download {repo} --include "*.json" --include "*.txt" '
            '--include "*/diffusion_pytorch_model.safetensors" --include "*/model.safetensors"')


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _cached_snapshot(repo: str) -> Path | None:
    """The HF cache's snapshot of a hub id, if it was downloaded (so a cache holding only the
    fp16 files loads like a local directory); None otherwise."""
    from huggingface_hub import snapshot_download

    if repo.count("/") != 1:
        return None
    try:
        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached, or an id huggingface_hub rejects: from_pretrained says why
        return None
    return path if (path / "model_index.json").is_file() else None


def weight_kinds(folder: Path) -> set[str]:
    """Which weight files a component folder holds: 'safetensors', 'bin', and 'fp16.' variants
    (diffusers' variant naming, sharded files included: name.fp16-00001-of-00002.safetensors)."""
    kinds = set()
    for f in folder.glob("*") if folder.is_dir() else []:
        fmt = f.suffix.lstrip(".")
        if fmt in ("safetensors", "bin"):
            kinds.add(("fp16." if ".fp16" in f.name else "") + fmt)
    return kinds


def _from_directory(local: Path, dtype: torch.dtype) -> Any:
    """diffusers' `from_pretrained` on a directory, choosing the files it holds: the full-precision
    files whenever they are there, even for a float16 run (the fingerprint hashes the weights
    before the cast, so one model keeps one fingerprint in every dtype; loading costs twice the
    bytes), the fp16 variant when it is all there is; safetensors when every
    component has them, otherwise `.bin` files, which diffusers and transformers read with
    `torch.load(weights_only=True)` (tensors only), said once in a warning."""
    if not (local / "model_index.json").is_file():
        raise ModelError(f"{local} is not a diffusers pipeline directory (no model_index.json); "
                         "pass the directory that holds model_index.json, unet/ and vae/, or a "
                         ".safetensors checkpoint file")
    index = _read_index(local / "model_index.json")
    cls, extra = pipeline_class(index, str(local))
    parts = XL_COMPONENTS if cls.__name__ == "StableDiffusionXLPipeline" else COMPONENTS
    # An entry [null, null] is a component the model does not have (an SDXL refiner's text_encoder).
    kinds = {c: weight_kinds(local / c) for c in parts if (index.get(c) or [None])[0] is not None}
    empty = [c for c, k in kinds.items() if not k]
    if empty:
        raise ModelError(f"{local}/{empty[0]} holds no weights (*.safetensors or *.bin); the "
                         "download is incomplete: fetch the directory again")
    full = all(k & {"safetensors", "bin"} for k in kinds.values())
    fp16 = all(k & {"fp16.safetensors", "fp16.bin"} for k in kinds.values())
    variant = "fp16" if fp16 and not full else None
    prefix = "fp16." if variant else ""
    safe = all(prefix + "safetensors" in k for k in kinds.values())
    if not safe and str(local) not in _WARNED:
        _WARNED.add(str(local))
        pickled = ", ".join(c for c, k in kinds.items() if prefix + "safetensors" not in k)
        print(f"bench: warning: {local}: {pickled} weights are .bin pickles; loaded with "
              "torch.load(weights_only=True), which reads tensors only", file=sys.stderr)
    files = {"variant": variant, "use_safetensors": True if safe else None}
    loaded = {c: _load_component(local / c, index[c], dtype, files) for c in kinds}
    try:
        return cls.from_pretrained(str(local), dtype=dtype, **files, **extra, **loaded)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the diffusers directory {local}: "
                         f"{_first_line(exc)}") from None


def _load_component(folder: Path, entry: Sequence[str], dtype: torch.dtype,
                    files: dict[str, Any]) -> Any:
    """One weighted component, loaded by the class model_index.json names, refusing weights that
    do not fill its config's model: a key missing (transformers would initialise it at random,
    diffusers leave it empty) or of another shape is one line naming the file and the key."""
    import importlib

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    library, name = entry[0], entry[1]
    if library not in ("diffusers", "transformers"):
        raise ModelError(f"{folder.parent}/model_index.json: {folder.name} is a {library}.{name}; "
                         "bench loads diffusers and transformers components only")
    cls = getattr(importlib.import_module(library), name)
    kwargs: dict[str, Any] = {"dtype": dtype, "output_loading_info": True, **files}
    if library == "transformers":  # report mismatched shapes in `info` rather than raising
        kwargs["ignore_mismatched_sizes"] = True
    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # their multi-line reports: our one line says it
    transformers_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(_weights_problem(folder, files, exc)) from None
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        key, found, expected = mismatched[0]
        raise ModelError(_shape_problem(folder, files, key, tuple(found), tuple(expected)))
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(f"{_weight_file(folder, files)}: no tensor {missing[0]}{more}, which the "
                         f"model of {folder.name}/config.json needs; the file is incomplete or of "
                         f"another model: fetch {folder.name}/ again")
    return model


def _weight_file(folder: Path, files: dict[str, Any]) -> Path:
    """The weight file a component loads from (the first shard when sharded), for messages."""
    ext = "safetensors" if files["use_safetensors"] else "*"
    variant = f".{files['variant']}" if files["variant"] else ""
    found = sorted(f for f in folder.glob(f"*{variant}.{ext}")
                   if f.suffix in (".safetensors", ".bin") and (variant or ".fp16" not in f.name))
    return found[0] if found else folder


def _shape_problem(folder: Path, files: dict[str, Any], key: str, found: tuple,
                   expected: tuple) -> str:
    return (f"{_weight_file(folder, files)}: {key} has shape {list(found)}, the model of "
            f"{folder.name}/config.json needs {list(expected)}; the weights and the config are of "
            f"different models: fetch {folder.name}/ again")


def _weights_problem(folder: Path, files: dict[str, Any], exc: BaseException) -> str:
    """diffusers raises a shape mismatch as 'Cannot load <file> because KEY expected shape A,
    but got B. If you want ...': the same line as transformers' mismatches; else its first line."""
    import re

    text = _first_line(exc)
    found = re.search(r"because (\S+) expected shape (.+?), but got (.+?)\.( |$)", text)
    if found:
        sizes = [tuple(int(n) for n in re.findall(r"\d+", g)) for g in found.group(2, 3)]
        return _shape_problem(folder, files, found.group(1), sizes[1], sizes[0])
    return f"cannot load {folder}: {text}"


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({_first_line(exc)}); fetch the model "
                         "directory again") from None
    if not isinstance(index, dict):
        raise ModelError(f"{path}: expected a JSON object naming the pipeline's components")
    return index


def replace_vae(pipe: Any, source: str) -> None:
    """`--vae`: the pipeline's VAE replaced by a diffusers AutoencoderKL from a local directory
    (config.json and diffusion_pytorch_model.safetensors, or a pipeline directory's vae/) or a
    hub id (from the HF cache, else downloaded), e.g. madebyollin/sdxl-vae-fp16-fix, whose
    config has force_upcast false: it then decodes in float16 too."""
    from diffusers import AutoencoderKL

    if not hasattr(pipe, "register_modules"):
        raise ModelError(f"--vae {source}: this model has no diffusers VAE to replace; use --vae "
                         "with a Stable Diffusion or SDXL model")
    local = Path(source).expanduser()
    if not local.exists() and _is_path(source):
        raise ModelError(f"--vae {source} does not exist; pass a VAE directory (config.json and "
                         "diffusion_pytorch_model.safetensors) or a hub id")
    if local.is_dir() and not (local / "config.json").is_file() and (local / "vae").is_dir():
        local = local / "vae"
    if local.is_dir() and not weight_kinds(local) & {"safetensors", "fp16.safetensors"}:
        raise ModelError(f"--vae {local}: no diffusion_pytorch_model.safetensors there; pass a "
                         "diffusers VAE directory")
    where = str(local) if local.exists() else (_cached_vae(source) or source)
    try:
        vae = AutoencoderKL.from_pretrained(where, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        fetch = "" if local.exists() else (f"; download it with `hf download {source} --include "
                                           '"config.json" --include "diffusion_pytorch_model.safetensors"`')
        raise ModelError(f"--vae {source}: cannot load it as a diffusers AutoencoderKL "
                         f"({_first_line(exc)}){fetch}") from None
    old = pipe.vae.config
    if (vae.config.latent_channels, len(vae.config.block_out_channels)) != \
            (old.latent_channels, len(old.block_out_channels)):
        raise ModelError(f"--vae {source}: {vae.config.latent_channels} latent channels, "
                         f"{len(vae.config.block_out_channels)} blocks; the model's VAE has "
                         f"{old.latent_channels} and {len(old.block_out_channels)}: not a VAE of "
                         "this model family")
    pipe.register_modules(vae=vae.to(torch.float32))


def _cached_vae(repo: str) -> str | None:
    from huggingface_hub import snapshot_download

    if repo.count("/") != 1:
        return None
    try:
        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached
        return None
    return str(path) if (path / "config.json").is_file() else None


def _from_single_file(path: Path, config: Path | None, dtype: torch.dtype) -> Any:
    """`from_single_file` on an original-layout `.safetensors` checkpoint, of the pipeline class
    its configs' model_index.json names (SD or SDXL). Its configs (model_index.json, component
    configs, tokenizers) come from `config` (a diffusers directory of the same architecture;
    weights not needed), else from the HF cache of the architecture's reference repo, else from
    the hub unless offline."""
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(
            f"{path} is a pickle checkpoint, which can run code when loaded; bench reads only "
            f".safetensors. Convert it once where you trust it: `python scripts/"
            f"convert_original_stable_diffusion_to_diffusers.py --checkpoint_path {path} "
            f"--dump_path DIR --to_safetensors` (from the diffusers repository), then --model DIR")
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: not a checkpoint bench can load; pass a .safetensors file or a "
                         "diffusers pipeline directory")
    repo = _single_file_repo(path)
    if config is not None and not (config / "model_index.json").is_file():
        raise ModelError(f"{path}:config={config}: not a diffusers directory (no "
                         "model_index.json); pass the configs of the checkpoint's architecture")
    fetch = (f'fetch them once with `hf download {repo} --include "*.json" --include "*.txt"`, or pass '
             f"--model {path}:config=DIR with a diffusers directory of that architecture")
    if config is None and repo in AMBIGUOUS_SINGLE_FILE:
        raise ModelError(f"{path}: {AMBIGUOUS_SINGLE_FILE[repo]}; pass --model "
                         f"{path}:config=DIR with the diffusers directory of the matching one")
    if config is None:
        config = _cached_configs(repo)
    if config is None and hf_offline():
        raise ModelError(f"{path}: a single-file checkpoint needs the diffusers configs of its "
                         f"architecture ({repo}), not in the HF cache and the hub is offline "
                         f"(HF_HUB_OFFLINE): {fetch}")
    if config is not None:
        cls, extra = pipeline_class(_read_index(config / "model_index.json"), str(config))
    else:  # configs from the hub: the architecture diffusers inferred from the keys
        xl = "stable-diffusion-xl" in repo
        cls, extra = pipeline_class({"_class_name": "StableDiffusionXLPipeline" if xl
                                     else "StableDiffusionPipeline"}, repo)
    try:
        return cls.from_single_file(str(path), config=str(config) if config else None, dtype=dtype,
                                    local_files_only=config is not None, **extra)
    except Exception as exc:  # diffusers raises many types here; all mean "cannot load"
        hint = "" if config else f" (the configs of {repo} could not be fetched: {fetch})"
        raise ModelError(f"cannot load the checkpoint {path}: {_first_line(exc)}{hint}") from None


# Architectures whose original checkpoints share key names and shapes but not their configs, so
# diffusers' guess from the keys alone could pick the wrong scheduler (silently wrong images).
AMBIGUOUS_SINGLE_FILE = {
    "stabilityai/stable-diffusion-2-1": "an SD 2.x checkpoint is either 512 px epsilon-prediction "
    "(stabilityai/stable-diffusion-2-1-base) or 768 px v-prediction "
    "(stabilityai/stable-diffusion-2-1), which its keys cannot tell apart"}


def _single_file_repo(path: Path) -> str:
    """The reference repo diffusers takes an original checkpoint's configs from (SD 1.x: SD 1.5,
    SD 2.x: SD 2.1), inferred from key names and shapes alone."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    if not any(k.startswith("model.diffusion_model.") for k in meta):
        raise ModelError(f"{path}: not an original-layout Stable Diffusion checkpoint (no "
                         "model.diffusion_model.* keys); pass a diffusers directory instead")
    return fetch_diffusers_config(meta)["pretrained_model_name_or_path"]


def _cached_configs(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, local_files_only=True, allow_patterns=["*.json", "*.txt"]))
    except Exception:  # not cached
        return None
    return path if (path / "model_index.json").is_file() else None


def record_fingerprints(pipe: Any) -> None:
    """Hash the weights now (as loaded, before any dtype cast or scheduler swap) and keep the
    hashes on the pipeline: `fingerprint` and `text_encoder_fingerprint` return these."""
    pipe.bench_fingerprint = _hash_pipeline(pipe)
    for encoder in _text_encoders(pipe):
        encoder.bench_fingerprint = _hash_text_encoder(encoder)


def _text_encoders(pipe: Any) -> list[Any]:
    """text_encoder, and SDXL's text_encoder_2 (an SDXL refiner has only the second)."""
    return [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
            if e is not None]


def fingerprint(pipe: Any) -> str:
    """A short stable hash of the pipeline's weights and configs: two runs share cached images
    only when this matches. The hash recorded by `load_pipeline` (the weights as loaded, so
    the same in every dtype), else computed on the float32 weights in hand."""
    if getattr(pipe, "bench_fingerprint", None):
        return pipe.bench_fingerprint
    _require_float32(pipe.unet, pipe.vae, *_text_encoders(pipe))
    return _hash_pipeline(pipe)


def text_encoder_fingerprint(text_encoder: Any) -> str:
    """Hash of the text encoder alone: what Fair Mapping checkpoints are trained against."""
    if getattr(text_encoder, "bench_fingerprint", None):
        return text_encoder.bench_fingerprint
    _require_float32(text_encoder)
    return _hash_text_encoder(text_encoder)


def _require_float32(*modules: Any) -> None:
    # A half-precision copy has lost the float32 values the recorded fingerprints hash.
    if any(t.dtype != torch.float32 for m in modules for t in m.parameters()):
        raise ModelError("fingerprint of a model cast from float32 after loading: load it with "
                         "bench.models.load_pipeline(name, device, dtype), which hashes it first")


def _hash_pipeline(pipe: Any) -> str:
    """Hashes every tensor's bytes (as float32) for small models, and shapes plus a strided
    sample of values for large ones (hashing 1 GB of SD weights takes seconds)."""
    h = hashlib.sha256()
    # text_encoder_2 (SDXL) only where present: SD fingerprints stay as they were.
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    for part in [p for p in parts if getattr(pipe, p, None) is not None]:
        module = getattr(pipe, part)
        h.update(json.dumps(_config_dict(module), sort_keys=True, default=str).encode())
        for key, tensor in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(_sampled(tensor))
    h.update(json.dumps(_config_dict(pipe.scheduler), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _hash_text_encoder(text_encoder: Any) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(text_encoder.state_dict().items()):
        h.update(key.encode())
        h.update(_sampled(tensor))
    return h.hexdigest()[:16]


def _sampled(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().float().flatten().cpu()
    if flat.numel() > 4096:
        flat = flat[:: max(1, flat.numel() // 4096)]
    return flat.numpy().tobytes()


def _config_dict(obj: Any) -> dict[str, Any]:
    config = obj.config
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # "_"-keys are bookkeeping (diffusers stores a set there, whose order varies per process);
    # transformers adds the others when a model is saved: none of them changes the model.
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in _VOLATILE_KEYS}


_VOLATILE_KEYS = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version",
                            "name_or_path"})


@lru_cache(maxsize=2)
def clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:
    """The real CLIP BPE tokenizer, built offline from open_clip's bundled vocabulary. SDXL's
    second tokenizer (OpenCLIP bigG's) is the same with pad_token "!"."""
    import open_clip
    from transformers import CLIPTokenizer

    vocab_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(vocab_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1: 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return _make_tokenizer(CLIPTokenizer, vocab, merges, pad_token=pad_token)


def _make_tokenizer(cls: Any, vocab: dict[str, int], merges: list[tuple[str, ...]],
                    **extra: Any) -> Any:
    import inspect
    import tempfile

    if "vocab" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        return cls(vocab=vocab, merges=merges, model_max_length=77, **extra)
    tmp = Path(tempfile.mkdtemp(prefix="bench-clip-tok-"))
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return cls(vocab_file=str(tmp / "vocab.json"), merges_file=str(tmp / "merges.txt"),
               model_max_length=77, **extra)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_random_pipeline(seed: int = 0) -> Any:
    """A Stable-Diffusion-architecture pipeline small enough for CPU tests (32 px, ~2M params),
    random weights seeded for reproducibility, the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=32, attention_head_dim=8)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        sample_size=32)
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_random_xl_pipeline(seed: int = 0) -> Any:
    """An SDXL-architecture pipeline for CPU tests (32 px): two text encoders of different widths
    (32 + 64: a wrong concatenation order changes shapes), the second with a projection (the
    pooled embedding), a UNet with SDXL's "text_time" added conditioning, linear projections
    and 1/2 transformer layers per block (after diffusers' own SDXL fast tests), the real CLIP
    tokenizers (the second padding with "!" as SDXL's), Euler as SDXL base ships it, and
    force_zeros_for_empty_prompt. No watermarker (bench never watermarks)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    time_dim, projection = 8, 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        cross_attention_dim=32 + 64, norm_num_groups=32)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        sample_size=32, scaling_factor=0.13025, force_upcast=True)
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")

    def encoder_config(width: int, layers: int, pad: int) -> Any:
        return CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=pad, hidden_size=width,
            intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
            num_hidden_layers=layers, vocab_size=len(tokenizer), max_position_embeddings=77,
            projection_dim=projection, hidden_act="gelu")

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(encoder_config(32, 3, 49407))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(encoder_config(64, 3, tokenizer_2.pad_token_id))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False)


def native_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
