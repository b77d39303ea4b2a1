"""`coco-30k`: the COCO-30k captions the concept-erasure literature (ESD, UCE, MACE) generates to
measure quality preservation, each with its `evaluation_seed`.

Read from `path=`, else $BENCH_COCO30K_PATH, else the publisher's file (data/coco_30k.csv of the
GitHub repository rohitgandikota/erasing) downloaded once into the user cache. Each prompt keeps
its own seed, so images are the ones the papers generated (given the same model and sampler).
`sample=N` is a deterministic subset: the N image ids that come first when ordered by the
SHA-256 of the id's text (docs/prompt-sets.md); it does not depend on file order or machine.
"""
from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from pathlib import Path

import pandas as pd

from bench.prompt_sets.base import Prompt, PromptSet, PromptSetError
from bench.prompt_sets.files import read_text
from bench.prompt_sets.options import limit_option

ENV_VAR = "BENCH_COCO30K_PATH"
URL = "https://raw.githubusercontent.com/rohitgandikota/erasing/main/data/coco_30k.csv"
REQUIRED = ("image_id", "prompt", "evaluation_seed")
HOW_TO_GET = f"pass coco-30k:path=FILE.csv or set {ENV_VAR}; get the file with `curl -LO {URL}`"


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bench" / "coco_30k.csv"


def _download() -> Path:
    """The publisher's file, cached; one line with the manual command when it cannot be had."""
    target = cache_path()
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(URL, timeout=30) as response:
            data = response.read()
    except OSError as exc:  # offline, DNS, HTTP error: all end in the same advice
        raise PromptSetError(f"COCO-30k captions not found and {URL} unreachable "
                             f"({type(exc).__name__}); {HOW_TO_GET}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _read(path: str | None) -> tuple[pd.DataFrame, str]:
    source = Path(path or os.environ.get(ENV_VAR) or _download())
    text = read_text(source)
    try:
        # Everything as text: image ids are zero-padded, and a caption must stay a caption.
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PromptSetError(f"{source}: not a readable COCO-30k CSV ({str(exc).strip()}); "
                             f"{HOW_TO_GET}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PromptSetError(f"{source}:1: missing COCO-30k column(s) {', '.join(missing)}; "
                             f"{HOW_TO_GET}")
    return frame, str(source)


def _seeds(frame: pd.DataFrame, source: str) -> pd.Series:
    text = frame["evaluation_seed"].str.strip()
    bad = ~text.str.fullmatch(r"\d+")
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise PromptSetError(f"{source}: data row {row + 1} (line {row + 2} if no field spans "
                             f"lines): evaluation_seed {frame['evaluation_seed'].iloc[row]!r} is "
                             "not a non-negative integer; fix or delete that row")
    return text.astype("int64")


def sample_order(image_ids: pd.Series) -> pd.Series:
    """The sampling key of each image id: the hex SHA-256 of its UTF-8 text."""
    return image_ids.map(lambda i: hashlib.sha256(i.encode()).hexdigest())


def _sample_option(value: str | None) -> int | None:
    try:
        return limit_option("prompt set 'coco-30k'", value)
    except PromptSetError:
        raise PromptSetError(f"prompt set 'coco-30k': option sample={value!r} is not a positive "
                             "integer; write sample=N") from None


def load_coco30k(path: str | None = None, sample: str | None = None,
                 limit: str | None = None) -> PromptSet:
    """COCO-30k captions with their evaluation_seed; sample=N (SHA-256 subset), limit=N."""
    frame, source = _read(path)
    ids = frame["image_id"].str.strip()
    seeds = _seeds(frame, source)
    dup = ids.duplicated()
    if dup.any():
        row = int(dup.to_numpy().argmax())
        raise PromptSetError(f"{source}: data row {row + 1}: duplicate image_id {ids.iloc[row]!r}; "
                             "make image ids unique")
    table = pd.DataFrame({"image_id": ids, "prompt": frame["prompt"], "seed": seeds})
    n = _sample_option(sample)
    if n:  # the first N in SHA-256 order, then back to file order
        chosen = sample_order(table["image_id"]).sort_values(kind="stable").index[:n]
        table = table.loc[sorted(chosen)]
    n = limit_option("prompt set 'coco-30k'", limit)
    table = table.head(n) if n else table
    prompts = tuple(Prompt(f"coco-{r.image_id}", r.prompt, int(r.seed),
                           {"image_id": r.image_id, "kind": "coco"})
                    for r in table.itertuples(index=False))
    return PromptSet("coco-30k", prompts, source=source)
