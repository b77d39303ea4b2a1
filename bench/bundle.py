"""`bench bundle`: a run's results as one shareable, byte-reproducible zip.

    manifest.json                     the run's manifest, unchanged
    bundle.json                       what the bundle holds: image sample, bundled prompt files
    images.parquet, scores.parquet    the per-image tables
    leaderboard.{md,csv,tex}          the leaderboards
    report/...                        the HTML report and plots
    images/<key>.png                  a deterministic sample: the first N cache keys, sorted
    prompts/<i>/<file>                copies of the custom prompt files (spec.prompt_sets[i])

Entries are sorted and carry a fixed timestamp and mode, so the same run always gives the same
bytes. Bundles are untrusted input: every entry name is checked before anything is extracted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from bench.spec import MethodSpec, RunSpec, SpecError
from bench.store import RunStore, readable_mode

INFO = "bundle.json"
TABLES = ("manifest.json", "images.parquet", "scores.parquet", "leaderboard.md", "leaderboard.csv",
          "leaderboard.tex")
DEFAULT_IMAGES = 16
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


class BundleError(SpecError):
    """A bundle that cannot be written or read; the message names the file and the fix."""


# --- writing ---------------------------------------------------------------------------------
def bundle(run_dir: Path, out: Path, images: int | None = DEFAULT_IMAGES) -> dict[str, Any]:
    """Write the bundle of `run_dir` to `out`; `images=None` includes every image. Returns the
    bundle.json contents."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    keys = sorted(store.images()["key"])  # consolidates a run whose table was never written
    if not (store.root / "leaderboard.csv").exists():
        raise BundleError(f"{run_dir} has no leaderboard.csv; run `bench report {run_dir}` first")
    files: dict[str, Path] = {n: store.root / n for n in TABLES if (store.root / n).exists()}
    report = store.root / "report"
    for path in sorted(report.rglob("*")) if report.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):  # skip atomic-write temp files
            files[path.relative_to(store.root).as_posix()] = path
    present = [k for k in keys if store.image_path(k).exists()]
    sample = present if images is None else present[:images]
    files.update({f"images/{k}.png": store.image_path(k) for k in sample})
    prompt_files = []
    for i, entry in enumerate(manifest["spec"].get("prompt_sets") or []):
        found = prompt_file(entry)
        if found:
            path, options = found
            _check_prompt_file(entry, path, manifest)
            name = f"prompts/{i}/{path.name}"
            files[name] = path
            prompt_files.append({"entry": entry, "file": name, "options": options})
    info = {"bench_bundle": 1, "prompt_files": prompt_files,
            "images": {"in_run": len(keys), "included": len(sample),
                       "selection": "all" if images is None else f"first {images} keys, sorted"}}
    _write_zip(out, files, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
    return info


def prompt_file(entry: str) -> tuple[Path, str] | None:
    """A `spec.prompt_sets` entry naming a prompt file -> (path, ':options' or ''); None for a
    registered set. Mirrors `prompt_sets.resolve.load_prompt_set`."""
    from prompt_sets.resolve import _is_path

    if Path(entry).is_file():
        return Path(entry), ""
    parsed = MethodSpec.parse(entry)
    if not _is_path(parsed.name):
        return None
    return Path(parsed.name), str(MethodSpec("", parsed.params))


def _check_prompt_file(entry: str, path: Path, manifest: dict[str, Any]) -> None:
    """The file must still hold the prompts the run used, or the bundle would carry others."""
    from bench import runner

    spec = dataclasses.replace(RunSpec.from_dict(manifest["spec"]), prompt_sets=(entry,))
    if not path.is_file():
        raise BundleError(f"prompt file {path} (prompt set '{entry}') not found; run "
                          "`bench bundle` from the directory the run was started in")
    current = runner.load_prompt_sets(spec)[0]
    recorded = {s["name"]: s["sha256"] for s in manifest.get("prompt_sets", [])}
    if recorded.get(current.name) != current.content_hash():
        raise BundleError(f"prompt file {path} (prompt set '{current.name}') changed since the "
                          "run (its content hash differs from the manifest); restore it before "
                          "bundling")


def _write_zip(out: Path, files: dict[str, Path], info: bytes) -> None:
    """Sorted entries, fixed time and mode: byte-identical for identical inputs. Streamed to a
    temporary file and renamed, so large image samples never sit in memory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        readable_mode(fd)
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as z:
            for name in sorted([*files, INFO]):
                entry = zipfile.ZipInfo(name, date_time=_EPOCH)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                entry.create_system = 3  # Unix; the default depends on the writing platform
                with z.open(entry, "w") as dst:
                    if name == INFO:
                        dst.write(info)
                    else:
                        with files[name].open("rb") as src:
                            shutil.copyfileobj(src, dst)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading ---------------------------------------------------------------------------------
def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a bundle and reject it whole if any entry name could escape an extraction directory
    (zip-slip: absolute paths, drive letters, backslashes, '..')."""
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable zip bundle ({exc}); rebuild it with "
                          "`bench bundle RUN_DIR --out FILE.zip`") from None
    for name in z.namelist():
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            z.close()
            raise BundleError(f"{path}: entry '{name}' points outside the bundle (absolute path or "
                              "'..'); refusing to read this bundle")
    if INFO not in z.namelist() or "manifest.json" not in z.namelist():
        z.close()
        raise BundleError(f"{path}: not a bench bundle (no {INFO} or manifest.json); build one "
                          "with `bench bundle RUN_DIR --out FILE.zip`")
    return z


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, bundle.json) of a bundle, with the bundled prompt-file entries checked."""
    with open_zip(path) as z:
        try:
            manifest, info = (json.loads(z.read(n)) for n in ("manifest.json", INFO))
            files = [f["file"] for f in info["prompt_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: unreadable manifest.json or {INFO} ({exc}); rebuild the "
                              "bundle with `bench bundle`") from None
        bad = [f for f in files if not (str(f).startswith("prompts/") and f in z.namelist())]
    if bad:
        raise BundleError(f"{path}: {INFO} names prompt file '{bad[0]}', which is not a prompts/ "
                          "entry of the bundle; rebuild the bundle with `bench bundle`")
    return manifest, info


def extract(path: Path, dest: Path, prefix: str = "") -> Path:
    """Extract the entries under `prefix` (all by default) into `dest`."""
    with open_zip(path) as z:
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        targets = {n: (root / n).resolve() for n in z.namelist()
                   if n.startswith(prefix) and not n.endswith("/")}
        for name, target in targets.items():  # all checked before anything is written
            if not target.is_relative_to(root):  # e.g. a symlinked directory inside dest
                raise BundleError(f"{path}: entry '{name}' would be written outside {dest}; "
                                  "refusing to extract")
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


def for_report(path: Path, metrics: str | None) -> Path:
    """`bench report BUNDLE.zip`: extract beside the bundle (BUNDLE/) and report from the stored
    scores, since a bundle holds only a sample of the images the scorers would need."""
    if metrics:
        raise BundleError(f"{path}: a bundle holds only a sample of images, so it cannot be "
                          "rescored; drop --metrics (its scores.parquet is used)")
    dest = path.with_suffix("")
    if dest.exists() and not (dest / INFO).exists():
        raise BundleError(f"{dest} exists and is not an extracted bundle; move it away to report "
                          f"on {path}")
    return extract(path, dest)
