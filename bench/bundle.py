"""`bench bundle`: a run's results as one shareable, byte-reproducible zip.

    manifest.json                     the run's manifest, unchanged
    bundle.json                       what the bundle holds: image sample, bundled prompt files
    images.parquet, scores.parquet    the per-image tables
    leaderboard.{md,csv,tex}          the leaderboards (every metric)
    headline.{md,csv,tex}             the headline metrics and the findings against the baseline
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
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from bench.manifest import Manifest
from bench.spec import NamedOptions, SpecError
from bench.store import RunStore, readable_mode

INFO = "bundle.json"
TABLES = ("manifest.json", "images.parquet", "scores.parquet", "timing.parquet", "leaderboard.md",
          "leaderboard.csv", "leaderboard.tex", "headline.md", "headline.csv", "headline.tex")
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
    keys = sorted(set(store.images()["key"]))  # consolidates a run whose table was never written
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
    for i, entry in enumerate(manifest.spec.prompt_sets):
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
    registered set. Mirrors `bench.prompt_sets.resolve.load_prompt_set`."""
    from bench.prompt_sets.resolve import _is_path

    if Path(entry).is_file():
        return Path(entry), ""
    parsed = NamedOptions.parse(entry, "prompt-set spec")
    if not _is_path(parsed.name):
        return None
    return Path(parsed.name), str(NamedOptions("", parsed.params))


def _check_prompt_file(entry: str, path: Path, manifest: Manifest) -> None:
    """The file must still hold the prompts the run used, or the bundle would carry others."""
    from bench import planning

    spec = dataclasses.replace(manifest.spec, prompt_sets=(entry,))
    if not path.is_file():
        raise BundleError(f"prompt file {path} (prompt set '{entry}') not found; run "
                          "`bench bundle` from the directory the run was started in")
    current = planning.load_prompt_sets(spec)[0]
    recorded = {s.name: s.sha256 for s in manifest.prompt_sets}
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
# Bundles are untrusted: what they may expand to is capped before anything is read. A bench
# bundle's entries (PNG, parquet, JSON, HTML) compress at most ~10:1 (the reference bundle:
# 1.3:1 overall, 4.9:1 at most), so an entry expanding more than 100:1 is a zip bomb. The total
# cap can be raised for `--images all` bundles of large runs.
MAX_BYTES_ENV = "BENCH_BUNDLE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB uncompressed
MAX_RATIO = 100
_RATIO_FLOOR = 1 << 20  # entries below 1 MiB may compress better (a run of blanks in a table)


def max_bytes() -> int:
    text = os.environ.get(MAX_BYTES_ENV, "")
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isdigit():
        raise BundleError(f"{MAX_BYTES_ENV}={text!r}: write a whole number of bytes, e.g. "
                          f"{8 << 30} for 8 GiB")
    return int(text)


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a bundle and reject it whole, before anything is read, if an entry name could escape
    an extraction directory (zip-slip), two entries collide, or it would expand past the caps."""
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a readable zip bundle ({exc}); rebuild it with "
                          "`bench bundle RUN_DIR --out FILE.zip`") from None
    try:
        _check_names(path, z.namelist())
        _check_sizes(path, z.infolist())
    except BundleError:
        z.close()
        raise
    if INFO not in z.namelist() or "manifest.json" not in z.namelist():
        z.close()
        raise BundleError(f"{path}: not a bench bundle (no {INFO} or manifest.json); build one "
                          "with `bench bundle RUN_DIR --out FILE.zip`")
    return z


def _check_names(path: Path, names: list[str]) -> None:
    """No entry outside the bundle, none twice, none both a file and a directory (`a` and `a/b`:
    extraction would fail half-way, and readers would see one or the other)."""
    files: set[str] = set()
    dirs: set[str] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            raise BundleError(f"{path}: entry '{name}' points outside the bundle (absolute path or "
                              "'..'); refusing to read this bundle")
        norm = "/".join(parts)
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if name.endswith("/"):
            dirs.add(norm)
        elif norm in files:
            raise BundleError(f"{path}: entry '{name}' appears twice; refusing an ambiguous bundle "
                              "(rebuild it with `bench bundle`)")
        else:
            files.add(norm)
    both = sorted(files & dirs)
    if both:
        raise BundleError(f"{path}: '{both[0]}' is both a file and a directory in this bundle; "
                          "refusing it (rebuild it with `bench bundle`)")


def _check_sizes(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Declared sizes against the caps; `extract` also counts the bytes it actually writes."""
    cap = max_bytes()
    total = sum(i.file_size for i in infos)
    if total > cap:
        raise BundleError(f"{path}: would expand to {total:,} bytes, over the {cap:,}-byte cap for "
                          f"bundles; if you trust it, raise the cap with {MAX_BYTES_ENV}=BYTES")
    for i in infos:
        if i.file_size > _RATIO_FLOOR and i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise BundleError(f"{path}: entry '{i.filename}' expands {i.compress_size:,} -> "
                              f"{i.file_size:,} bytes (over {MAX_RATIO}:1, a zip bomb, not "
                              "bench output); refusing this bundle")
    packed = sum(i.compress_size for i in infos)
    if total > _RATIO_FLOOR and total > MAX_RATIO * max(packed, 1):  # many small bombs
        raise BundleError(f"{path}: its entries expand {packed:,} -> {total:,} bytes (over "
                          f"{MAX_RATIO}:1, a zip bomb, not bench output); refusing this bundle")


def read_entry(path: Path, z: zipfile.ZipFile, name: str) -> bytes:
    """One entry's bytes (sizes already capped by `open_zip`); a corrupt entry is one line."""
    try:
        return z.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"{path}: entry '{name}' is corrupt ({exc}); rebuild the bundle with "
                          "`bench bundle`") from None


def read_bundle(path: Path) -> tuple[Manifest, dict[str, Any]]:
    """(manifest, bundle.json) of a bundle, with the bundled prompt-file entries checked."""
    with open_zip(path) as z:
        try:
            info = json.loads(read_entry(path, z, INFO))
            files = [f["file"] for f in info["prompt_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: unreadable {INFO} ({exc}); rebuild the "
                              "bundle with `bench bundle`") from None
        bad = [f for f in files if not (str(f).startswith("prompts/") and f in z.namelist())]
        if bad:
            raise BundleError(f"{path}: {INFO} names prompt file '{bad[0]}', which is not a "
                              "prompts/ entry of the bundle; rebuild the bundle with `bench bundle`")
        return read_manifest(path, z), info


def read_manifest(path: Path, z: zipfile.ZipFile) -> Manifest:
    return Manifest.from_json(read_entry(path, z, "manifest.json"), f"{path}: manifest.json",
                              "rebuild the bundle with `bench bundle`")


def extract(path: Path, dest: Path, prefix: str = "") -> Path:
    """Extract the entries under `prefix` (all by default) into `dest`, counting the bytes written
    against the declared sizes and the cap (a header may lie about its size)."""
    with open_zip(path) as z:
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        targets = {i.filename: (i, (root / i.filename).resolve()) for i in z.infolist()
                   if i.filename.startswith(prefix) and not i.filename.endswith("/")}
        for name, (_, target) in targets.items():  # all checked before anything is written
            if not target.is_relative_to(root):  # e.g. a symlinked directory inside dest
                raise BundleError(f"{path}: entry '{name}' would be written outside {dest}; "
                                  "refusing to extract")
        budget = max_bytes()
        for name, (info, target) in targets.items():
            budget -= _extract_entry(path, z, info, target, budget)
    return dest


def _extract_entry(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                   budget: int) -> int:
    """Write one entry, stopping at its declared size or the remaining budget; bytes written."""
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size or written > budget:
                    raise BundleError(f"{path}: entry '{info.filename}' holds more than the "
                                      f"{min(info.file_size, budget):,} bytes allowed (declared "
                                      "size or the bundle cap); refusing to extract it")
                dst.write(chunk)
    except BundleError:
        target.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        target.unlink(missing_ok=True)
        raise BundleError(f"{path}: entry '{info.filename}' is corrupt ({exc}); rebuild the "
                          "bundle with `bench bundle`") from None
    except OSError as exc:
        raise BundleError(f"cannot extract '{info.filename}' of {path} to {target}: "
                          f"{exc.strerror or exc}") from None
    return written


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
