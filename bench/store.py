"""The run store: one directory per run, written so that a killed run loses nothing.

    RUN/manifest.json          resolved spec, versions, git commit, device, prompt-set hashes
    RUN/images/<key>.png       one image per work item; prompt, seed, method in PNG text chunks
    RUN/records/<key>.json     the image's per-image row, written after its PNG
    RUN/images.parquet         all records as one table (rebuilt from records/)
    RUN/scores.parquet         scorer columns by key

Every file is written to a temporary name and renamed, so a half-written PNG is never seen. An
image counts as done when its record exists; shards and reruns write disjoint or identical files.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once: atomic_write runs for every image


def readable_mode(fd: int) -> None:
    """mkstemp creates 0600 files; results in a shared run directory must be readable like any
    file the user writes (0666 less the umask)."""
    os.fchmod(fd, _FILE_MODE)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        readable_mode(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.manifest_path, json.dumps(manifest, indent=2, default=str).encode())

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            raise FileNotFoundError(
                f"{self.root} is not a run directory (no manifest.json); run `bench run --out {self.root}` first")
        return json.loads(self.manifest_path.read_text())

    # --- images and records ---------------------------------------------------------------
    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def record_path(self, key: str) -> Path:
        return self.root / "records" / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.record_path(key).exists() and self.image_path(key).exists()

    def put(self, key: str, image: np.ndarray, record: dict[str, Any]) -> None:
        """Store one image (uint8 HxWx3) and its record; the record last, so it marks completion."""
        info = PngInfo()
        for field in ("prompt", "seed", "method", "key"):
            info.add_text(f"bench.{field}", str(record.get(field, "")))
        import io

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
        atomic_write(self.image_path(key), buf.getvalue())
        record = {**record, "file": f"images/{key}.png"}
        atomic_write(self.record_path(key), json.dumps(record, default=str).encode())

    def load_image(self, key: str) -> Image.Image:
        with Image.open(self.image_path(key)) as im:
            return im.convert("RGB")

    # --- tables ---------------------------------------------------------------------------
    def consolidate(self) -> pd.DataFrame:
        """Rebuild images.parquet from every record (all shards)."""
        if not (self.root / "records").is_dir() and (self.root / "images.parquet").exists():
            return pd.read_parquet(self.root / "images.parquet")  # a bundle: the table is the record
        rows = [json.loads(p.read_text()) for p in sorted((self.root / "records").glob("*.json"))]
        table = pd.DataFrame(rows)
        if not table.empty:
            table = table.sort_values(["method", "guidance", "prompt_set", "prompt_id", "sample"],
                                      kind="stable").reset_index(drop=True)
        _write_parquet(table, self.root / "images.parquet")
        return table

    def images(self) -> pd.DataFrame:
        path = self.root / "images.parquet"
        return pd.read_parquet(path) if path.exists() else self.consolidate()

    def scores(self) -> pd.DataFrame:
        path = self.root / "scores.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame({"key": []})

    def write_scores(self, scores: pd.DataFrame) -> None:
        _write_parquet(scores, self.root / "scores.parquet")


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    import io

    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(path, buf.getvalue())
