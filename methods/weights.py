"""Released weights of other methods through one adapter: a UNet or text-encoder state dict, or a
LoRA in diffusers/peft format, written into the shared pipeline in `prepare` and undone in
`release`, so the methods after it in the same run see the original weights bit for bit.

    weights:unet=esd-nudity.safetensors          a (partial) UNet state dict, diffusers key names
    weights:text_encoder=advunlearn-nudity.bin   a (partial) CLIPTextModel state dict
    weights:lora=pytorch_lora_weights.safetensors,lora_scale=0.8
    weights:preset=esd-u-nudity                  a named release (PRESETS); file looked up in dir=

Files load with safetensors or torch.load(weights_only=True) only. A state dict replaces the
tensors it names (the original of each is kept and copied back); a LoRA is merged,
W += lora_scale * (alpha / r) * B @ A, the same function diffusers' unmerged peft layers compute.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.adapter import Adapter, is_sdxl
from bench.methods.checkpoints import CheckpointError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # LoRA prefixes; the last is SDXL's
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Preset:
    """A card: where a released checkpoint comes from and what it is."""
    name: str
    component: str  # "unet", "text_encoder" or "lora"
    file: str  # the file name looked for in `dir`
    source: str  # where to download it
    format: str  # container and key layout
    note: str  # what is verified and what is not


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("esd-u-nudity", "unet", "diffusers-nudity-ESDu1-UNET.pt",
           "https://erasing.baulab.info/weights/esd_models/ (linked from rohitgandikota/erasing's "
           "README, 'Fine-tuned Weights')",
           "torch.save of a diffusers UNet2DConditionModel state dict (SD 1.4)",
           "site and SD 1.4 base from the README; the file name and that the keys are diffusers' "
           "are unverified here (the site was unreachable); the current ESD code saves "
           "safetensors of the trained parameters only, which this adapter also reads"),
    Preset("safegen", "unet", "diffusion_pytorch_model.safetensors",
           "LetterLiGo/SafeGen_CCS2024 (SafeGen, Li et al., CCS 2024): train with its "
           "run_adjust_SD.sh or ask the authors; take unet/ of the saved pipeline",
           "a diffusers pipeline directory (the README loads it with "
           "StableDiffusionPipeline.from_pretrained); SafeGen tunes the UNet's self-attention only",
           "the README (stored copy) links no downloadable weights; the unet/ file name is "
           "diffusers' default, unverified"),
    Preset("advunlearn-nudity", "text_encoder", "model.safetensors",
           "HF OPTML-Group/AdvUnlearn, subfolder nudity_unlearned/ (AdvUnlearn, Zhang et al., "
           "NeurIPS 2024; base CompVis/stable-diffusion-v1-4)",
           "a transformers CLIPTextModel directory (the README loads it with "
           "CLIPTextModel.from_pretrained(..., subfolder='nudity_unlearned'))",
           "repository and subfolder from OPTML-Group/AdvUnlearn's README; the weight file name "
           "(model.safetensors or pytorch_model.bin) is unverified"),
    Preset("finetune-fair-gender", "lora", "text_encoder_lora_EMA.pth",
           "sail-sg/finetune-fair-diffusion (Shen et al., ICLR 2024): exp-1-checkpoints.zip "
           "(Google Drive link in exp-1-debias-gender/README.md), "
           "from-paper_finetune-text-encoder_09190215/checkpoint-9800_exported/",
           "a .pth of text-encoder LoRA layers (rank 50, SD 1.5) exported by the authors' script, "
           "written with diffusers' pre-peft LoRA classes",
           "path and file name from the README; the key layout is unverified and probably "
           "diffusers' pre-peft one (lora_linear_layer.down/up), which this adapter refuses "
           "naming the key: convert it to peft layout (lora_A/lora_B) first"),
)}


@dataclass(frozen=True)
class WeightsParams:
    unet: str = ""  # a UNet state dict file
    text_encoder: str = ""  # a text-encoder state dict file
    lora: str = ""  # a LoRA file in diffusers/peft format (unet. / text_encoder. / text_encoder_2.)
    lora_scale: float = 1.0
    preset: str = ""  # a name in PRESETS
    dir: str = ""  # where preset files are looked for (default $BENCH_WEIGHTS_DIR or ~/.cache/bench/weights)

    def __post_init__(self) -> None:
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"weights:preset={self.preset!r} is not a preset; choose one of "
                             f"{', '.join(PRESETS)}")
        if not 0.0 <= self.lora_scale <= 10.0:
            raise ValueError(f"weights:lora_scale={self.lora_scale} is out of range [0, 10]")


def weights_dir(given: str) -> Path:
    return Path(given or os.environ.get("BENCH_WEIGHTS_DIR", "~/.cache/bench/weights")).expanduser()


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A flat name -> tensor mapping and the safetensors metadata; one-line CheckpointError for
    anything else (other containers, pickled objects, nested dicts, non-finite values)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        elif path.suffix in TORCH_SUFFIXES:
            meta, tensors = {}, torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; give a "
                                  f".safetensors or {'/'.join(TORCH_SUFFIXES)} file")
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors, pickle (weights_only refusal) and OS errors alike
        raise CheckpointError(f"{path}: not a readable weights file "
                              f"({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(tensors, dict) or not tensors or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CheckpointError(f"{path}: not a flat state dict of tensors (a training checkpoint? "
                              f"save model.state_dict())")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[0]}")
    return tensors, meta


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if all(k.startswith(prefix) for k in tensors):
        return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _targets(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def match_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                prefix: str) -> dict[str, torch.Tensor]:
    """The file's tensors keyed as `module`'s, every key known and every shape equal."""
    tensors = _strip(tensors, prefix + ".")
    own = _targets(module)
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} keys are not {prefix} keys (first: "
                              f"{unknown[0]!r}); give a state dict in diffusers/transformers names")
    shape = [k for k, v in tensors.items() if v.shape != own[k].shape]
    if shape:
        k = shape[0]
        raise CheckpointError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, the model's "
                              f"{tuple(own[k].shape)} (another model's weights?)")
    return tensors


def lora_deltas(module: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                prefix: str, path: Path) -> dict[str, torch.Tensor]:
    """`<module>.weight` -> (alpha / r) * B @ A for the file's LoRA pairs under `prefix.`."""
    mine = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    config = _lora_config(meta, prefix, path)
    own = _targets(module)
    deltas = {}
    for key, a in mine.items():
        if not key.endswith(".lora_A.weight"):
            continue
        base = key[:-len(".lora_A.weight")]
        b = mine.get(base + ".lora_B.weight")
        target = base + ".weight"
        if b is None or target not in own:
            raise CheckpointError(f"{path}: {prefix}.{key} has no lora_B pair or no "
                                  f"{prefix} weight {target!r}")
        r = a.shape[0]
        scale = float(config.get("lora_alpha", r)) / r
        if b.shape[0] * a[0].numel() != own[target].numel() or b.shape[1] != r:
            raise CheckpointError(f"{path}: {prefix}.{key} and its lora_B give a "
                                  f"{b.shape[0]}x{a[0].numel()} update, the model's {target} is "
                                  f"{tuple(own[target].shape)} (another model's LoRA?)")
        delta = (b.flatten(1).double() @ a.flatten(1).double()).reshape(own[target].shape)
        deltas[target] = scale * delta
    return deltas


def _lora_config(meta: dict[str, str], prefix: str, path: Path) -> dict[str, Any]:
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}  # diffusers then uses alpha = r (scale 1)
    config = {k[len(prefix) + 1:]: v for k, v in json.loads(raw).items() if k.startswith(prefix + ".")}
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise CheckpointError(f"{path}: per-module alpha_pattern/rank_pattern LoRAs are not "
                              f"supported; merge it with diffusers and pass the state dict")
    return config


class Weights(Adapter):
    name = "weights"
    description = ("Released weights of other methods: a UNet or text-encoder state dict or a "
                   "diffusers/peft LoRA (preset= names ESD, SafeGen, AdvUnlearn, fair fine-tuning).")
    Params = WeightsParams
    SDXL_SKIP = ("presets are SD 1.x releases (skipped on SDXL); unet=, text_encoder= and lora= "
                 "(with text_encoder_2 layers) files are checked against the SDXL model's modules")

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live tensor, original copy)
        for path in self._explicit():  # explicit files are read now: a bad one stops the plan
            if not path.is_file():
                raise CheckpointError(f"weights: {path} does not exist")
            read_tensors(path)

    def _explicit(self) -> list[Path]:
        p = self.params
        return [Path(v).expanduser() for v in (p.unet, p.text_encoder, p.lora) if v]

    def files(self) -> list[tuple[str, Path]]:
        """(component or 'lora', path) pairs to apply, explicit ones then the preset's."""
        p = self.params
        out = [(c, Path(v).expanduser()) for c, v in
               (("unet", p.unet), ("text_encoder", p.text_encoder), ("lora", p.lora)) if v]
        if p.preset:
            card = PRESETS[p.preset]
            out.append((card.component, weights_dir(p.dir) / card.file))
        return out

    def skip_reason(self, pipe: Any) -> str | None:
        files = self.files()
        if not files:
            return "no weights given: pass weights:unet=FILE, text_encoder=FILE, lora=FILE or preset=NAME"
        if self.params.preset and is_sdxl(pipe):
            return (f"preset {self.params.preset} is a release for SD 1.x "
                    f"({PRESETS[self.params.preset].format}); SDXL's UNet and encoders differ")
        for component, path in files:
            if not path.is_file():
                card = PRESETS[self.params.preset]
                return (f"preset {card.name}: {path} is missing; download {card.file} from "
                        f"{card.source} into {path.parent} (or pass weights:dir=DIR)")
            self._updates(pipe, component, path)  # keys and shapes checked against the model
        return None

    def _updates(self, pipe: Any, component: str, path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(live tensor, new value) pairs for one file."""
        tensors, meta = read_tensors(path)
        if component != "lora":
            module = getattr(pipe, component)
            new = match_state(module, tensors, path, component)
            own = _targets(module)
            return [(own[k], v) for k, v in new.items()]
        stray = [k for k in tensors if not (k.split(".", 1)[0] in COMPONENTS
                                           and (".lora_A." in k or ".lora_B." in k))]
        if stray:
            raise CheckpointError(f"{path}: not a diffusers/peft LoRA (key {stray[0]!r}; expected "
                                  f"unet.<module>.lora_A.weight / lora_B.weight)")
        pairs = []
        for comp in COMPONENTS:
            module = getattr(pipe, comp, None)
            if module is None:  # SD has no text_encoder_2
                if any(k.startswith(comp + ".") for k in tensors):
                    raise CheckpointError(f"{path}: has {comp} LoRA layers but this model has no "
                                          f"{comp} (an SDXL LoRA on an SD model?)")
                continue
            own = _targets(module)
            for k, d in lora_deltas(module, tensors, meta, comp, path).items():
                w = own[k]
                pairs.append((w, (w.double() + self.params.lora_scale * d).to(w.dtype)))
        return pairs

    @torch.no_grad()
    def prepare(self, pipe: Any) -> None:
        for component, path in self.files():
            for live, value in self._updates(pipe, component, path):
                self._saved.append((live, live.detach().clone()))
                live.copy_(value.to(live.dtype))

    @torch.no_grad()
    def release(self, pipe: Any) -> None:
        for live, original in reversed(self._saved):
            live.copy_(original)
        self._saved.clear()
