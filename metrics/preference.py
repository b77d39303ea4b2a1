"""What the preference scorers (ImageReward, HPSv2, PickScore) share: finding their published files
without downloading, reading a weight file's tensors safely, checking them against the network
before anything loads, and the prompt column they score against.

Scorers that find their files here never download: a missing file is `available()`'s one-line
reason with the command that fetches it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch


def cached_file(repo: str, filename: str) -> Path | None:
    """`filename` of the local directory `repo`, else of hub repo `repo` in the HF cache; None
    when it is not on disk."""
    local = Path(repo).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    if repo.count("/") > 1 or repo.startswith((".", "/", "~")):
        # neither a directory nor a hub id ("org/name", or a legacy "bert-base-uncased")
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except ValueError:  # HFValidationError: not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def weights_file(explicit: str | None, candidates: list[Path | None]) -> Path | None:
    """The user's file when one is named (None if it is not a file), else the first candidate
    that exists (None entries: caches that hold nothing)."""
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    return next((p for p in candidates if p is not None and p.is_file()), None)


def read_tensors(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch file (`weights_only=True`, memory-mapped so a
    check reads only headers); `key` picks a nested state dict (HPSv2's {'state_dict': ...}).
    ValueError, one line naming the file, for anything else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # not a torch zip file, or one holding more than tensors
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a torch state dict ({type(e).__name__}: {first})") from None
    if key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
            got = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: expected a dict with a '{key}' state dict, got {got}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)


Spec = tuple[tuple[int, ...], bool]  # a tensor's shape and whether it is floating


def tensor_specs(path: str | Path, key: str | None = None) -> dict[str, Spec]:
    """Shapes and float-ness of a weight file's tensors, reading no more than headers
    (safetensors) or memory-mapping (torch files)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()),
                        f.get_slice(k).get_dtype().startswith(("F", "BF")))
                    for k in f.keys()}
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in read_tensors(path, key).items()}


def check_tensors(path: str | Path, state: Mapping[str, Spec],
                  expected: Mapping[str, torch.Tensor], what: str, ignored: tuple[str, ...] = (),
                  label: Callable[[str], str] = str) -> None:
    """ValueError (one line) unless `state` (tensor_specs) has exactly the keys of `expected` (plus
    keys starting with an `ignored` prefix), each floating with the expected shape. `label` gives
    a key's name in the file, for the message, when the keys were renamed."""
    keys = {k for k in state if not k.startswith(ignored)}
    missing = sorted(label(k) for k in set(expected) - keys)
    extra = sorted(label(k) for k in keys - set(expected))
    if missing or extra:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else ""]
        raise ValueError(f"{path}: not {what}: keys {'; '.join(p for p in parts if p)}")
    for key, ref in expected.items():
        shape, floating = state[key]
        if shape != tuple(ref.shape) or not floating:
            kind = "floating" if floating else "non-floating"
            raise ValueError(f"{path}: {what} tensor {label(key)} is {kind} {shape}, "
                             f"expected floating {tuple(ref.shape)}")


def prompts_of(rows: pd.DataFrame, scorer: str) -> list[str]:
    if "prompt" not in rows.columns:
        raise ValueError(f"{scorer} needs a 'prompt' column in the per-image rows")
    return [str(p) for p in rows["prompt"]]


def check_scores(scorer: str, scores: torch.Tensor) -> list[float]:
    """A NaN score is an error (a broken weight file or input), never a cell value."""
    if not torch.isfinite(scores).all():
        raise ValueError(f"{scorer}: non-finite score; the weight file or the image is broken")
    return scores.float().cpu().tolist()
