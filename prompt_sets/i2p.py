"""`i2p`: the Inappropriate Image Prompts benchmark (Schramowski et al., CVPR 2023).

Read from `path=`, else $BENCH_I2P_PATH, else the Hugging Face dataset AIML-TUDA/i2p (needs the
`datasets` package and hub access). Each prompt keeps its own `sd_seed`, so images are
comparable with the paper's.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from bench.prompt_sets.base import Prompt, PromptSet, PromptSetError
from bench.prompt_sets.files import read_text
from bench.prompt_sets.options import bool_option, limit_option

HUB_ID = "AIML-TUDA/i2p"
ENV_VAR = "BENCH_I2P_PATH"
# The columns this loader uses; the rest of the I2P schema (prompt_toxicity, lexica_url, ...) and
# extra columns such as `idx` are tolerated.
REQUIRED = ("prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage",
            "q16_percentage", "sd_seed", "sd_guidance_scale")
FLOATS = ("inappropriate_percentage", "nudity_percentage", "q16_percentage", "sd_guidance_scale")
HOW_TO_GET = (
    f"pass i2p:path=FILE.csv or set {ENV_VAR}; get the file with "
    f"`hf download {HUB_ID} i2p_benchmark.csv --repo-type dataset --local-dir .`"
)


def _norm(label: str) -> str:
    """'Self_Harm ' -> 'self harm', so 'illegal-activity' matches 'illegal activity'."""
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def labels(categories: str) -> set[str]:
    return {_norm(c) for c in categories.split(",") if c.strip()}


def _read(path: str | None) -> tuple[pd.DataFrame, str]:
    path = path or os.environ.get(ENV_VAR)
    if path:
        text = read_text(Path(path))
        try:
            # Everything as text: a prompt such as "NA" or "null" must stay a prompt.
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False), path
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise PromptSetError(f"{path}: not a readable I2P CSV ({str(exc).strip()}); "
                                 f"{HOW_TO_GET}") from None
    try:
        import datasets  # optional; only for users with hub access
    except ImportError:
        raise PromptSetError(f"I2P data not found: {HOW_TO_GET}") from None
    try:
        frame = datasets.load_dataset(HUB_ID, split="train").to_pandas()
    except Exception as exc:  # offline, gated, renamed: all end in the same advice
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PromptSetError(f"cannot load {HUB_ID} from the hub ({reason}); "
                             f"{HOW_TO_GET}") from None
    return frame.astype(str), f"hf://datasets/{HUB_ID}"


def _numbers(frame: pd.DataFrame, column: str, source: str, integer: bool) -> pd.Series:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna() | ((values % 1 != 0) if integer else False)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        kind = "an integer" if integer else "a number"
        raise PromptSetError(
            f"{source}: data row {row + 1} (line {row + 2} if no field spans lines): "
            f"{column} {frame[column].iloc[row]!r} is not {kind}; fix or delete that row"
        )
    return values.astype("int64") if integer else values.astype(float)


def _category_filter(categories: pd.Series, category: str) -> pd.Series:
    """Rows with any wanted label; a wanted label that is not a label matches those containing
    it."""
    known = set().union(*map(labels, categories))
    wanted: set[str] = set()
    for want in filter(None, (_norm(c) for c in category.split("|"))):
        matches = {want} if want in known else {k for k in known if want in k}
        if not matches:
            raise PromptSetError(
                f"prompt set 'i2p': unknown category {want!r}; choose from "
                f"{', '.join(sorted(known))} "
                "(several: category=a|b)"
            )
        wanted |= matches
    return categories.map(lambda s: bool(labels(s) & wanted))


def load_i2p(path: str | None = None, category: str | None = None, hard: str = "0",
             limit: str | None = None) -> PromptSet:
    """I2P prompts with their sd_seed; filter by category (a|b|...), hard=1, limit=N."""
    frame, source = _read(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PromptSetError(f"{source}:1: missing I2P column(s) {', '.join(missing)}; "
                             f"{HOW_TO_GET}")
    idx = frame["idx"].str.strip() if "idx" in frame.columns else range(len(frame))
    ids = [f"i2p-{i}" for i in idx]
    table = pd.DataFrame({
        "id": ids,
        "prompt": frame["prompt"],
        "seed": _numbers(frame, "sd_seed", source, integer=True),
        "categories": frame["categories"].str.strip(),
        "hard": _numbers(frame, "hard", source, integer=True),
        **{c: _numbers(frame, c, source, integer=False) for c in FLOATS},
    })
    if table["id"].duplicated().any():
        row = int(table["id"].duplicated().to_numpy().argmax())
        raise PromptSetError(f"{source}: data row {row + 1}: duplicate idx {ids[row]!r}; make idx "
                             "unique")
    if category:
        table = table[_category_filter(table["categories"], category)]
    if bool_option("prompt set 'i2p'", "hard", hard):
        table = table[table["hard"] == 1]
    n = limit_option("prompt set 'i2p'", limit)
    table = table.head(n) if n else table
    prompts = tuple(
        Prompt(row.pop("id"), row.pop("prompt"), row.pop("seed"), {**row, "kind": "i2p"})
        for row in table.to_dict("records")
    )
    return PromptSet("i2p", prompts, source=source)


load_i2p.suite = "safety"  # type: ignore[attr-defined]  # what is measured: bench/suites.py
