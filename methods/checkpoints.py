"""Checkpoints of trained methods: where they are found and how they are checked.

A checkpoint is a directory holding `card.json` (what it was trained for) and its weights. A
method takes `checkpoint=DIR`, or uses the one the model ships: a model's loader may set
`pipe.bench_checkpoints_dir`, under which `<method>-<attribute>/` directories live.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from bench.models import ModelError
from bench.adapter import Adapter, is_sdxl

CARD = "card.json"


class CheckpointError(ModelError):
    """A checkpoint that is missing, malformed or trained for another model (one-line message)."""


def shipped_checkpoints(pipe: Any, method: str) -> list[Path]:
    """`<pipe.bench_checkpoints_dir>/<method>-*/` directories with a card (a model's
    loader may set `bench_checkpoints_dir`; most models ship none)."""
    base = getattr(pipe, "bench_checkpoints_dir", None)
    if not base:
        return []
    return [d for d in sorted(Path(base).glob(f"{method}-*")) if (d / CARD).is_file()]


def default_checkpoint(pipe: Any, method: str, attribute: str | None = None) -> Path | None:
    """The checkpoint the model ships for `method`: `<method>-<attribute>/`, or without an
    attribute the only `<method>-*` one; None if there is none (or several and no attribute)."""
    found = shipped_checkpoints(pipe, method)
    if attribute:
        found = [d for d in found if d.name == f"{method}-{attribute}"]
    return found[0] if len(found) == 1 else None


def resolve_checkpoint(method: str, checkpoint: str, attribute: str, pipe: Any) -> Path | None:
    """The explicit `checkpoint=DIR` (which must exist) or the model's default."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not (path / CARD).is_file():
            raise CheckpointError(f"{method}: checkpoint={checkpoint} has no {CARD}; pass a "
                                  f"directory written by `bench train {method}`")
        return path
    return default_checkpoint(pipe, method, attribute or None)


def no_checkpoint_reason(pipe: Any, method: str, attribute: str) -> str:
    shipped = [d.name[len(method) + 1:] for d in shipped_checkpoints(pipe, method)]
    if len(shipped) > 1 and not attribute:
        return (f"the model ships {method} checkpoints for attributes {', '.join(shipped)}; "
                f"choose one with {method}:attribute=A")
    which = f" for attribute {attribute}" if attribute else ""
    what = TRAIN_ARGS.get(method, "--attribute A")
    return (f"the model ships no {method} checkpoint{which}; train one with `bench train {method} "
            f"--model M {what} --out DIR` and pass {method}:checkpoint=DIR")


# What each trainer needs besides --model and --out, for the hint above.
TRAIN_ARGS = {"uce": "--mode erase --concepts C", "esd": "--concept C"}


ARCHITECTURES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL"}


def architecture(pipe: Any) -> str:
    """What a trainer writes into its card's "architecture": "sdxl" or "sd"."""
    return "sdxl" if is_sdxl(pipe) else "sd"


def check_architecture(path: Path, card: dict[str, Any], pipe: Any, method: str) -> None:
    """A checkpoint serves only the architecture it was made on (cards from before SDXL carry no
    "architecture": they are SD's). Other weights of the same architecture are a warning or a
    fingerprint check, as each method decides."""
    made, mine = card.get("architecture", "sd"), architecture(pipe)
    if made != mine:
        raise CheckpointError(f"{method}: {path} was made on {ARCHITECTURES.get(made, made)}, this "
                              f"model is {ARCHITECTURES[mine]}; make one for it with `bench train "
                              f"{method} --model M ...` and pass {method}:checkpoint=DIR")


def read_card(path: Path, method: str) -> dict[str, Any]:
    try:
        card = json.loads((path / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / CARD}: unreadable ({exc}); retrain with `bench train {method}`") from None
    if card.get("method") != method:
        raise CheckpointError(f"{path / CARD}: a '{card.get('method')}' checkpoint, not '{method}'")
    return card


def check_weights(path: Path, method: str, files: tuple[str, ...]) -> None:
    """Each weights file present and a safetensors file whose header covers it (a header read,
    no tensors loaded), so a damaged checkpoint stops the plan, not this method's turn."""
    from safetensors import SafetensorError, safe_open

    for name in files:
        try:
            with safe_open(str(path / name), framework="pt"):
                pass
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path / name}: not a readable safetensors file ({exc}); "
                                  f"retrain with `bench train {method}`") from None


class CheckpointedAdapter(Adapter):
    """An adapter whose Params have `checkpoint` and `attribute`: skipped with a reason when the
    model ships no checkpoint and none is given."""

    WEIGHTS: tuple[str, ...] = ()  # the checkpoint's safetensors files, checked at planning

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        if self.params.checkpoint:  # an explicit directory: checked before the model loads
            self.check(resolve_checkpoint(self.name, self.params.checkpoint, "", None))

    def check(self, path: Path) -> None:
        """The card and the weights' headers, so a damaged checkpoint stops the plan instead of
        failing when this method's turn comes, after the methods before it generated."""
        read_card(path, self.name)
        check_weights(path, self.name, self.WEIGHTS)

    def skip_reason(self, pipe: Any) -> str | None:
        p = self.params
        path = resolve_checkpoint(self.name, p.checkpoint, p.attribute, pipe)
        if path is None:
            return no_checkpoint_reason(pipe, self.name, p.attribute)
        self.check(path)  # the model's own checkpoint (an explicit one was checked in __init__)
        check_architecture(path, read_card(path, self.name), pipe, self.name)
        return None

    def load_card(self, pipe: Any) -> tuple[Path, dict[str, Any]]:
        p = self.params
        path = resolve_checkpoint(self.name, p.checkpoint, p.attribute, pipe)
        if path is None:
            raise CheckpointError(f"{self.name}: {no_checkpoint_reason(pipe, self.name, p.attribute)}")
        card = read_card(path, self.name)
        check_architecture(path, card, pipe, self.name)
        return path, card


DELTA = "delta.safetensors"


@dataclass(frozen=True)
class DeltaParams:
    """What every weight-delta method (uce, esd) takes; subclasses set `method`."""
    checkpoint: str = ""  # a directory written by `bench train <method>`
    attribute: str = ""  # which shipped <method>-<attribute>/ checkpoint (e.g. hazard)
    scale: float = 1.0  # multiplies the deltas (0 = the original model)
    method: ClassVar[str] = "delta"

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale <= 10.0:
            raise ValueError(f"{self.method}:scale={self.scale} is out of range [0, 10]")


class DeltaAdapter(CheckpointedAdapter):
    """A checkpoint of additive deltas, `delta.safetensors` (`<parameter name>` -> W - W_old for
    some of the UNet's tensors, as `bench train uce|esd` write it): added, times `params.scale`,
    in `prepare`; the original tensors copied back in `release`, bit for bit."""

    WEIGHTS = (DELTA,)
    TARGETS = "parameters"  # names what `targets` returns, for the error line

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live tensor, original copy)

    def targets(self, unet: Any) -> dict[str, torch.Tensor]:
        """The tensors a delta may name, by parameter name."""
        return dict(unet.named_parameters())

    def skip_reason(self, pipe: Any) -> str | None:
        reason = super().skip_reason(pipe)
        if reason is None:
            self._deltas(pipe)  # names and shapes against this UNet, at planning
        return reason

    def _deltas(self, pipe: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from safetensors.torch import load_file

        path, _ = self.load_card(pipe)
        deltas = load_file(str(path / DELTA))
        own = self.targets(pipe.unet)
        out = []
        for key, d in deltas.items():
            if key not in own or own[key].shape != d.shape or not torch.isfinite(d).all():
                raise CheckpointError(f"{path / DELTA}: {key} is not a finite delta for one of "
                                      f"this UNet's {self.TARGETS} (another model?)")
            out.append((own[key], d))
        return out

    def warnings(self, pipe: Any, model_fp: str, guidance: Sequence[float], steps: int) -> list[str]:
        path, card = self.load_card(pipe)
        if card.get("model_fingerprint") not in (None, model_fp):
            return [f"{self.name}: {path} was made from a pipeline with fingerprint "
                    f"{card['model_fingerprint']}, this one is {model_fp} (other weights)"]
        return []

    @torch.no_grad()
    def prepare(self, pipe: Any) -> None:
        for live, delta in self._deltas(pipe):
            self._saved.append((live, live.detach().clone()))
            live.copy_((live.double() + self.params.scale * delta.double().to(live.device)).to(live.dtype))

    @torch.no_grad()
    def release(self, pipe: Any) -> None:
        for live, original in reversed(self._saved):
            live.copy_(original)
        self._saved.clear()


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a zero-step run would write a NaN checkpoint)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number >= 0")
    return value


class TrainingError(ModelError):
    """A training run that cannot go on (a non-finite loss): one line naming the step and the
    fix."""


def check_finite(method: str, value: float, what: str, fix: str) -> None:
    """Stops training at the first NaN/inf, before anything is written: a NaN checkpoint would
    load and silently draw black (or noise) images."""
    if not math.isfinite(value):
        raise TrainingError(f"{method}: {what} is {value}; {fix}")


def add_dtype(ap: argparse.ArgumentParser, trained: str) -> None:
    """`--dtype`, as `bench run` takes it: the frozen model's dtype. `trained` says what stays
    float32 whatever it is (the trainer's own help)."""
    from bench.spec import DTYPES

    ap.add_argument("--dtype", choices=DTYPES, default=None,
                    help=f"dtype of the frozen model, as `bench run --dtype` (None: float16 on "
                         f"cuda, float32 elsewhere); {trained}; the card records it")


def trainer_parser(prog: str, doc: str, occupations_default: str) -> argparse.ArgumentParser:
    """The flags every `bench train METHOD` shares; the trainer adds its own."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="model name, alias, hub id or diffusers dir")
    ap.add_argument("--attribute", required=True, choices=["race", "gender", "skin"])
    ap.add_argument("--occupations", type=Path, help="file, one occupation a line (default: "
                    f"{occupations_default}; a model's own list where it declares one)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    return ap
