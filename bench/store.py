"""The run store: one directory per run, written so that a killed run loses nothing.

    RUN/manifest.json          resolved spec, versions, git commit, device, prompt-set hashes
    RUN/prompts.parquet        one row per prompt of the run: text (stored once) and metadata
    RUN/grid.parquet           one row per grid position (method, guidance, prompt set, prompt id,
                               sample) with its seed and image key
    RUN/images/<key>.png       one image per cache key (content-addressed; grid positions that
                               define the same image share it)
    RUN/records/<key>.json     how the image was made (timings, batch) and its PNG's sha256,
                               written after the PNG
    RUN/images.parquet         one row per grid position whose image is done: the grid joined
                               with the current prompts and the records (rebuilt, never appended)
    RUN/scores.parquet         scorer columns by image key

Every file is written to a temporary name and renamed, so a half-written file is never seen under
its own name. An image counts as done when its record exists and the PNG's sha256 matches it
(0.4 ms per 512 px image; decoding it would cost 7 ms), so a damaged PNG or record is regenerated,
never reused. Temporary files left by a killed writer are swept by the next run (`sweep_temp`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bench.manifest import GridRecord, Manifest
from bench.spec import SpecError


class StoreError(SpecError):
    """A run-directory file that cannot be used; the message names it and the fix."""


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once: atomic_write runs for every image
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
# Temporary names: .<name>.<host>.<pid>.<random>.tmp, so a sweep can tell whose they are.
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
MAX_TEMP_AGE = 3600.0  # seconds; an atomic write takes well under a second


def readable_mode(fd: int) -> None:
    """mkstemp creates 0600 files; results in a shared run directory must be readable like any
    file the user writes (0666 less the umask)."""
    os.fchmod(fd, _FILE_MODE)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.",
                               suffix=".tmp")
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


def stale_temp(path: Path, now: float) -> bool:
    """A temporary file whose writer is gone: written on this host by a process that no longer
    runs, or (another host's, a reused pid's, or an unrecognised name's) older than an hour.
    Concurrent shards and Ray workers keep their live temporary files."""
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed by its writer meanwhile
    found = _TEMP.match(path.name)
    if found and found["host"] == _HOST and not _alive(int(found["pid"])):
        return True
    return age > MAX_TEMP_AGE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep_temp(root: Path) -> int:
    """Delete stale temporary files in a run directory. Returns how many."""
    now, swept = time.time(), 0
    for folder in (root, root / "images", root / "records", root / "report"):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and stale_temp(path, now):
                path.unlink(missing_ok=True)
                swept += 1
    return swept


def warn(message: str) -> None:
    print(f"bench: warning: {message}", file=sys.stderr)


# zlib level of the PNGs (lossless at every level: pixels never change, file bytes do).
# Measured on 512 px synthetic portraits (benchmarks/bench_pipeline.py, one core, loaded machine):
# level 1 encodes in 0.6x the time of PIL's default 6 for 1.13x the bytes.
PNG_COMPRESS_LEVEL = 1

# Columns of images.parquet, in order (the prompt's metadata columns `meta.*` go before `file`).
GRID_COLUMNS = ("key", "method", "prompt_set", "prompt_id", "seed", "sample", "guidance")
RECORD_COLUMNS = ("steps", "height", "width", "model", "seconds", "unet_evals", "step_seconds",
                  "peak_memory_mb", "batch_size")


class RunStore:
    def __init__(self, root: str | Path) -> None:
        from bench.rundir import resolve

        self.root = resolve(Path(root))
        self._verified: set[str] = set()  # keys whose PNG matched its record in this process
        self.damaged: dict[str, str] = {}  # key -> what is wrong, until reported
        self._warned_scores = False

    # --- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def write_manifest(self, manifest: Manifest) -> None:
        atomic_write(self.manifest_path, manifest.to_json())

    def manifest(self) -> Manifest:
        return Manifest.read(self.manifest_path)

    # --- the grid and its prompts ---------------------------------------------------------
    def write_grid(self, grid: pd.DataFrame, prompts: pd.DataFrame) -> None:
        """The whole run's grid (every shard writes the same) and its prompts, replacing the
        previous ones: images.parquet follows the current prompt files' metadata."""
        _write_parquet(prompts, self.root / "prompts.parquet")
        _write_parquet(grid, self.root / "grid.parquet")

    def grid(self) -> tuple[pd.DataFrame, dict[tuple[str, str], tuple[str, dict]]] | None:
        """(grid, {(prompt set, prompt id): (text, metadata)}), or None for a run directory
        written before the grid was stored."""
        if not (self.root / "grid.parquet").exists():
            return None
        grid = self._read_table("grid.parquet")
        prompts = self._read_table("prompts.parquet")
        texts = {(s, i): (t, json.loads(m)) for s, i, t, m in zip(
            prompts["prompt_set"], prompts["prompt_id"], prompts["prompt"], prompts["metadata"])}
        return grid, texts

    def _read_table(self, name: str) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.root / name)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root / name} is damaged ({_short(exc)}); rerun the `bench "
                             "run` command that made this run: it rewrites it") from None

    # --- images and records ---------------------------------------------------------------
    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def record_path(self, key: str) -> Path:
        return self.root / "records" / f"{key}.json"

    def has(self, key: str) -> bool:
        """The image is done: its record exists and its PNG matches the record's sha256."""
        if key in self._verified:  # hashed once per process; existence checked every time
            return self.record_path(key).exists() and self.image_path(key).exists()
        return self.record(key) is not None

    def record(self, key: str) -> dict[str, Any] | None:
        """The verified record of `key`, or None when it is missing or damaged (noted in
        `damaged`, so the caller can say what it regenerates or leaves out)."""
        try:
            rec = json.loads(self.record_path(key).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            self.damaged[key] = f"records/{key}.json is not JSON"
            return None
        if not isinstance(rec, dict) or "png_sha256" not in rec:
            self.damaged[key] = f"records/{key}.json has no png_sha256 (damaged, or an older bench)"
            return None
        if key not in self._verified or not self.image_path(key).exists():
            try:
                data = self.image_path(key).read_bytes()
            except FileNotFoundError:
                self.damaged[key] = f"images/{key}.png is missing"
                return None
            if hashlib.sha256(data).hexdigest() != rec["png_sha256"]:
                self.damaged[key] = (f"images/{key}.png is damaged ({len(data)} bytes, "
                                     f"{rec.get('png_bytes')} when written)")
                return None
            self._verified.add(key)
        return rec

    def report_damaged(self, action: str) -> None:
        """One line for every damaged file found since the last report."""
        if self.damaged:
            found = list(self.damaged.values())
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            warn(f"{len(found)} damaged image(s) in {self.root} {action}: {found[0]}{more}")
            self.damaged.clear()

    def put(self, key: str, image: np.ndarray, record: dict[str, Any]) -> None:
        """Store one image (uint8 HxWx3) and its record; the record last, so it marks completion."""
        info = PngInfo()
        for field in ("key", "seed", "method", "prompt_sha256"):
            info.add_text(f"bench.{field}", str(record.get(field, "")))
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        data = buf.getvalue()
        atomic_write(self.image_path(key), data)
        record = {**record, "png_sha256": hashlib.sha256(data).hexdigest(), "png_bytes": len(data)}
        atomic_write(self.record_path(key), json.dumps(record, default=str).encode())
        self._verified.add(key)
        self.damaged.pop(key, None)

    def load_image(self, key: str) -> Image.Image:
        with Image.open(self.image_path(key)) as im:
            return im.convert("RGB")

    # --- tables ---------------------------------------------------------------------------
    def consolidate(self) -> pd.DataFrame:
        """Rebuild images.parquet: one row per grid position whose image is done, with the
        current prompt text and metadata. Damaged images are left out, saying so."""
        if not (self.root / "records").is_dir() and (self.root / "images.parquet").exists():
            return pd.read_parquet(self.root / "images.parquet")  # a bundle: the table is the record
        stored = self.grid()
        self.damaged.clear()  # what generation found is regenerated by now; check afresh
        rows = self._legacy_rows() if stored is None else self._grid_rows(*stored)
        self.report_damaged("left out of the table; rerun the `bench run` command to regenerate "
                            "them")
        table = pd.DataFrame(rows)
        if not table.empty:
            table = table.sort_values(["method", "guidance", "prompt_set", "prompt_id", "sample"],
                                      kind="stable").reset_index(drop=True)
        _write_parquet(table, self.root / "images.parquet")
        if stored is not None:
            self._complete_manifest(len(stored[0]), len(table))
        return table

    def _grid_rows(self, grid: pd.DataFrame, prompts: dict[tuple[str, str], tuple[str, dict]]
                   ) -> list[dict[str, Any]]:
        records = {k: r for k in grid["key"].unique() if (r := self.record(k)) is not None}
        rows = []
        for g in grid.itertuples(index=False):
            rec = records.get(g.key)
            if rec is None:
                continue
            text, metadata = prompts[(g.prompt_set, g.prompt_id)]
            row = {"key": g.key, "method": g.method, "prompt_set": g.prompt_set,
                   "prompt_id": g.prompt_id, "prompt": text, "seed": g.seed, "sample": g.sample,
                   "guidance": g.guidance, **{c: rec.get(c) for c in RECORD_COLUMNS}}
            if "filtered" in rec:  # only methods with a filter record it (other runs' tables unchanged)
                row["filtered"] = bool(rec["filtered"])
            row.update({f"meta.{k}": v for k, v in metadata.items()})
            row["file"] = f"images/{g.key}.png"
            rows.append(row)
        rows.sort(key=lambda r: r["key"])  # the columns' order: as when records were rows, by key
        return rows

    def _legacy_rows(self) -> list[dict[str, Any]]:
        """Records that were whole rows (a run directory from before the grid was stored)."""
        rows = []
        for path in sorted((self.root / "records").glob("*.json")):
            try:
                rows.append(json.loads(path.read_bytes()))
            except (ValueError, UnicodeDecodeError):
                self.damaged[path.stem] = f"records/{path.name} is not JSON"
        if rows and any("prompt_set" not in r for r in rows):
            raise StoreError(f"{self.root} has no grid.parquet (the grid positions of its images); "
                             "rerun the `bench run` command that made it: it writes the grid and "
                             "reuses the images")
        return rows

    def _complete_manifest(self, grid_rows: int, done: int) -> None:
        """Once every grid position is done (all shards in), the manifest describes the whole
        run, not the shard that wrote it last."""
        if done != grid_rows or not self.manifest_path.exists():
            return
        manifest = self.manifest()
        if manifest.spec.shard is None and manifest.grid.done:
            return
        self.write_manifest(dataclasses.replace(
            manifest, spec=dataclasses.replace(manifest.spec, shard=None),
            grid=GridRecord(grid_rows, None, done)))

    def images(self) -> pd.DataFrame:
        path = self.root / "images.parquet"
        if not path.exists():
            return self.consolidate()
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            if not (self.root / "records").is_dir():
                raise StoreError(f"{path} is damaged ({_short(exc)}) and this run holds no "
                                 "records to rebuild it from; rebuild the bundle") from None
            warn(f"{path} is damaged ({_short(exc)}); rebuilt from the records")
            return self.consolidate()

    def scores(self) -> pd.DataFrame:
        path = self.root / "scores.parquet"
        if not path.exists():
            return pd.DataFrame({"key": []})
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            if not (self.root / "records").is_dir():  # a bundle: its images are only a sample
                raise StoreError(f"{path} is damaged ({_short(exc)}); the images it scored are "
                                 "not all here to rescore: rebuild the bundle") from None
            if not self._warned_scores:
                warn(f"{path} is damaged ({_short(exc)}); every image is rescored")
                self._warned_scores = True
            return pd.DataFrame({"key": []})

    def write_scores(self, scores: pd.DataFrame) -> None:
        _write_parquet(scores, self.root / "scores.parquet")

    def timing(self) -> pd.DataFrame | None:
        """The interleaved timing phase's rows (bench/timing.py), None when the run has none."""
        path = self.root / "timing.parquet"
        if not path.exists():
            return None
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            warn(f"{path} is damaged ({_short(exc)}); latency from the generation's times")
            return None

    def write_timing(self, timing: pd.DataFrame) -> None:
        _write_parquet(timing, self.root / "timing.parquet")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # pyarrow puts the reason on a second line
    return (text[:157] + "..." if len(text) > 160 else text) or type(exc).__name__


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(path, buf.getvalue())
