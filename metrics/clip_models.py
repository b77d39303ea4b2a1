"""The one place that loads open_clip models (model + preprocess + tokenizer), device-aware and
cached, and encodes images and texts with them.

`pretrained` is an open_clip tag ("openai"), a weights file, or None/"none"/"random" for a randomly
initialised model of the same architecture (tests and benchmarks; it goes through the same code
path). `local-dir:` and `hf-hub:` model names work as in open_clip. A weights file is either

* a state dict (.safetensors, or .pt/.pth/.bin read by open_clip with `weights_only=True`), or
* one of OpenAI's TorchScript archives as published (`ViT-L-14.pt` from openaipublic, the file
  openai/CLIP and open_clip download). TorchScript can run code, so an archive is opened with
  `torch.jit.load` only when its sha256 is the one in OpenAI's download URL (open_clip's table);
  its tensors go into open_clip's model of the same architecture. Any other archive is refused.

Activation: OpenAI trained with QuickGELU, open_clip's configs (and LAION's weights) use GELU, and
nothing in a state dict tells them apart. Tags carry it (all "openai" tags force QuickGELU) and an
OpenAI archive implies it; for a state dict it is the `-quickgelu` model name
(`ViT-L-14-quickgelu`) or the `quickgelu=true|false` option. A state dict for an architecture OpenAI
published (ViT-L-14, ViT-B-32, RN50, ...) with neither is refused, never guessed; other
architectures use their config's activation. `check_clip()` runs all of this, plus a key and shape
check of the file against the model (built on the meta device), before generation.

Image embeddings are cached per process by image content, so CLIPScore, the aesthetic predictor
and Q16 on the same ViT-L/14 encode each image once.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from bench.metrics.base import file_sha256
from bench.metrics.faces import LRU, image_key, resolve_device

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
_RANDOM = ("", "none", "random")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # archive-only attributes
_EMBEDDINGS = LRU(50_000)  # (model, pretrained, image key) -> (embed_dim,) float32 tensor on cpu


def parse_pretrained(pretrained: str | None) -> str | None:
    return None if pretrained is None or pretrained.strip().lower() in _RANDOM else pretrained


@dataclass(frozen=True, eq=False)
class Clip:
    name: str
    pretrained: str | None
    model: Any  # open_clip CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    device: str
    embed_dim: int
    quick_gelu: bool = False

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _tag_cached(cfg: dict) -> bool:
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" -> default file names
        names = [filename] if filename else ["open_clip_model.safetensors",
                                             "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()


def weights_reason(name: str = DEFAULT_MODEL,
                   pretrained: str | None = DEFAULT_PRETRAINED) -> str | None:
    """None when `load_clip(name, pretrained)` can get its weights, else a one-line reason."""
    import open_clip

    if name.startswith("local-dir:"):  # config + weights in a folder: pretrained is ignored
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if (folder / "open_clip_config.json").is_file():
            return None
        return f"no open_clip_config.json in {folder}"
    if name.startswith("hf-hub:"):
        return None  # open_clip resolves config and weights from the hub itself
    if name not in open_clip.list_models():
        return (f"unknown open_clip model '{name}'; pick one of open_clip.list_models(), "
                f"e.g. ViT-L-14")
    tag = parse_pretrained(pretrained)
    if tag is None or Path(tag).expanduser().is_file():
        return None
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        return (f"open_clip pretrained '{tag}' for {name} is neither a file nor a known tag "
                f"({known})")
    if _hub_offline() and not _tag_cached(cfg):
        where = cfg.get("hf_hub") or cfg.get("url")
        return (f"open_clip {name}/{tag} weights ({where}) are not cached and HF_HUB_OFFLINE is "
                f"set; run once online or pass pretrained=PATH to a checkpoint")
    return None


def parse_quickgelu(value: bool | str | None) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"quickgelu={value}: expected true or false")


def base_name(name: str) -> str:
    return name.removesuffix("-quickgelu")


@lru_cache(maxsize=1)
def openai_archives() -> dict[str, str]:
    """sha256 -> open_clip model name of OpenAI's published TorchScript archives. The hash is part
    of each download URL, and openai/CLIP's downloader checks the file against it."""
    import open_clip

    out = {}
    for name in open_clip.list_models():
        url = (open_clip.get_pretrained_cfg(name, "openai") or {}).get("url", "")
        if "openaipublic" in url:
            out[url.rsplit("/", 2)[-2]] = base_name(name)
    return out


def is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive (it holds constants.pkl; torch.save zips do not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def openai_archive_model(path: Path, name: str) -> str:
    """The architecture of OpenAI's archive at `path`; ValueError unless it is one of OpenAI's
    published archives and `name` is its architecture."""
    digest = file_sha256(path)
    arch = openai_archives().get(digest)
    if arch is None:
        raise ValueError(f"{path} is a TorchScript archive but not one of OpenAI's published CLIP "
                         f"archives (sha256 {digest[:16]}...); TorchScript can run code, so only "
                         f"those are opened: pass the weights as a state dict (.safetensors) "
                         f"instead")
    if base_name(name) != arch:
        raise ValueError(f"{path} is OpenAI's {arch} archive but the CLIP model is {name}; "
                         f"pass model={arch}")
    return arch


def openai_archive_state(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI archive (checked by openai_archive_model) for `model`: open_clip's
    CLIP keeps OpenAI's names. Dropped: the archive's metadata scalars and buffers the model does
    not save (a scripted model lists its attention mask). Only pinned archives get here, and none
    of their methods is called."""
    saved = set(model.state_dict())
    unsaved = {name for name, _ in model.named_buffers()} - saved
    with warnings.catch_warnings():  # torch 2.x deprecates TorchScript; OpenAI still ships it
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return {k: v for k, v in module.state_dict().items()
            if k not in OPENAI_EXTRA_KEYS and k not in unsaved}


def resolve_quick_gelu(name: str, tag: str | None, quickgelu: bool | None) -> bool:
    """Whether the weights need QuickGELU; ValueError when a weights file leaves it open or an
    explicit quickgelu= contradicts what the weights are known to need."""
    import open_clip

    config = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    path = Path(tag).expanduser() if tag else None
    if path is None:
        known = config if quickgelu is None else quickgelu  # random weights: either is fine
    elif not path.is_file():  # a tag
        known = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
    elif is_torchscript(path):
        known = True  # only OpenAI's archives are read, and OpenAI trained with QuickGELU
    elif config:
        known = True  # the -quickgelu name says so
    elif quickgelu is not None:
        return quickgelu
    elif base_name(name) in set(openai_archives().values()):
        raise ValueError(f"CLIP weights {tag} are a state dict for {name}, which OpenAI published "
                         f"with QuickGELU and others (LAION) with GELU: say which with "
                         f"quickgelu=true (OpenAI's weights; or model={base_name(name)}-quickgelu) "
                         f"or quickgelu=false")
    else:
        known = False
    if quickgelu is not None and quickgelu != known:
        raise ValueError(f"quickgelu={str(quickgelu).lower()} contradicts CLIP {name} with "
                         f"pretrained={tag}, which needs {'QuickGELU' if known else 'GELU'}")
    return known


def model_embed_dim(name: str) -> int | None:
    """The embedding width from open_clip's config, without building the model (None when the
    config is not built in, e.g. hf-hub: and local-dir: names)."""
    import open_clip

    local = name.startswith(("hf-hub:", "local-dir:"))
    cfg = None if local else open_clip.get_model_config(name)
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def check_weights(name: str, pretrained: str | None, quickgelu: bool | str | None = None) -> None:
    """Before generation, cheaply: the activation is known and a weights file fits the model
    (OpenAI archive: its pinned hash; state dict: keys and shapes, loaded into a meta-device
    model). ValueError, one line, otherwise."""
    tag = parse_pretrained(pretrained)
    resolve_quick_gelu(name, tag, parse_quickgelu(quickgelu))
    path = Path(tag).expanduser() if tag else None
    if path is None or not path.is_file():
        return
    if is_torchscript(path):
        openai_archive_model(path, name)
        return
    import open_clip

    with warnings.catch_warnings():  # copying into meta tensors warns per parameter
        warnings.simplefilter("ignore")
        try:
            model = open_clip.create_model(name, pretrained=None, device="meta")
        except Exception:  # unknown name (available() says so) or a tower that needs the hub
            return
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as e:  # unreadable container, missing/unexpected keys, shapes
            raise ValueError(f"CLIP weights {path} do not fit open_clip {name}: "
                             f"{_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = " ".join(lines[:3])[:300] if lines else ""
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def load_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | None = None, quickgelu: bool | str | None = None) -> Clip:
    """The open_clip model, its eval preprocess and tokenizer; one instance per arguments."""
    tag = parse_pretrained(pretrained)
    if tag is not None and Path(tag).expanduser().is_file():
        tag = str(Path(tag).expanduser().resolve())
    quick = resolve_quick_gelu(name, tag, parse_quickgelu(quickgelu))
    return _load(name, tag, quick, resolve_device(device))


@lru_cache(maxsize=4)
def _load(name: str, tag: str | None, quick_gelu: bool, device: str) -> Clip:
    import open_clip

    archive = tag is not None and Path(tag).is_file() and is_torchscript(Path(tag))
    if archive:
        openai_archive_model(Path(tag), name)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None if archive else tag, device=device, force_quick_gelu=quick_gelu)
    if archive:
        model.load_state_dict(openai_archive_state(Path(tag), model), strict=True)
    model.eval().requires_grad_(False)
    embed_dim = getattr(model.visual, "output_dim", None)
    if embed_dim is None:  # timm towers do not record it: measure it
        with torch.inference_mode():
            probe = preprocess(Image.new("RGB", (8, 8)))[None].to(device)
            embed_dim = model.encode_image(probe).shape[-1]
    return Clip(name, tag, model, preprocess, open_clip.get_tokenizer(name), device, int(embed_dim),
                quick_gelu)


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens `text` needs, start/end tokens included."""
    if hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer (the CLIP BPE)
        return len(tokenizer.encode(text)) + 2
    return len(tokenizer.tokenizer(tokenizer.clean_fn(text))["input_ids"])  # HFTokenizer


def encode_texts(clip: Clip, texts: Sequence[str],
                 batch_size: int = 64) -> tuple[torch.Tensor, list[bool]]:
    """L2-normalised text embeddings (cpu, float32) and which texts were truncated.

    Texts longer than the context length are cut by the tokenizer to their first
    context_length - 2 tokens (plus start/end); the flags say which ones lost tokens."""
    truncated = [token_count(clip.tokenizer, t) > clip.context_length for t in texts]
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(clip.device)
            emb = clip.model.encode_text(tokens).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return (torch.cat(out) if out else torch.zeros(0, clip.embed_dim)), truncated


def encode_images(clip: Clip, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """L2-normalised image embeddings (cpu, float32), (n, embed_dim); cached by image content."""
    # A random model's embeddings are its own: key them by the instance, not the name.
    weights = clip.pretrained or f"random@{id(clip.model)}"
    keys = [(clip.name, weights, clip.quick_gelu, image_key(im)) for im in images]
    todo = [i for i, k in enumerate(keys) if _EMBEDDINGS.get(k) is None]
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            x = torch.stack([clip.preprocess(images[i].convert("RGB"))
                             for i in idx]).to(clip.device)
            emb = torch.nn.functional.normalize(clip.model.encode_image(x).float(), dim=-1).cpu()
            for i, e in zip(idx, emb):
                _EMBEDDINGS.put(keys[i], e)
    if not images:
        return torch.zeros(0, clip.embed_dim)
    return torch.stack([_EMBEDDINGS.get(k) for k in keys])


class ClipScorerBase:
    """Options shared by the scorers built on an open_clip model (mixed into a Scorer)."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 device: str | None = None, batch_size: int | str = 32,
                 quickgelu: bool | str | None = None) -> None:
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = int(batch_size)
        self.quickgelu = parse_quickgelu(quickgelu)

    def clip_reason(self) -> str | None:
        return weights_reason(self.model, self.pretrained)

    def check_clip(self) -> None:
        check_weights(self.model, self.pretrained, self.quickgelu)

    def check(self) -> None:
        self.check_clip()

    @property
    def clip(self) -> Clip:
        return load_clip(self.model, self.pretrained, self.device, self.quickgelu)

    def clip_manifest(self) -> dict[str, str]:
        out = {"clip_model": self.model, "clip_pretrained": str(parse_pretrained(self.pretrained))}
        if self.quickgelu is not None:
            out["clip_quickgelu"] = str(self.quickgelu).lower()
        tag = parse_pretrained(self.pretrained)
        # a file: its fingerprint, which compare checks
        if tag and Path(tag).expanduser().is_file():
            out["clip_weights_sha256"] = file_sha256(Path(tag).expanduser())[:16]
        return out
