"""Custom prompt files: CSV, JSONL and one-prompt-per-line TXT (schema in docs/prompt-sets.md).

Every problem is a `PromptSetError` with one line `FILE:LINE: what is wrong; the fix`, raised
while loading, i.e. before any image is generated. Prompt text is kept verbatim (untrusted data).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.prompt_sets.base import Prompt, PromptMeta, PromptSet, PromptSetError
from bench.prompt_sets.options import limit_option

RESERVED = ("id", "prompt", "seed")  # columns/keys that are not metadata


@dataclass
class _Row:
    line: int  # 1-based line where the record starts
    id: Any
    text: Any
    seed: Any
    metadata: dict[str, Any]


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped), or an error naming the first bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptSetError(f"{path}: cannot read prompt file ({exc.strerror}); check the "
                             f"path") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptSetError(
            f"{path}:{line}: byte 0x{data[exc.start]:02x} is not valid UTF-8; re-save the file as "
            "UTF-8"
        ) from None


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on U+2028 and other characters a prompt may contain.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_txt(path: Path, text: str) -> list[_Row]:
    rows = []
    for n, raw in enumerate(_lines(text), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(_Row(n, None, line, None, {}))
    return rows


def _read_jsonl(path: Path, text: str) -> list[_Row]:
    rows = []
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSetError(
                f"{path}:{n}: malformed JSON ({exc.msg} at column {exc.colno}); write one JSON "
                "object per line"
            ) from None
        if not isinstance(obj, dict) or "prompt" not in obj:
            raise PromptSetError(f'{path}:{n}: expected a JSON object with a "prompt" key; write '
                                 f'{{"prompt": "..."}}')
        meta = obj.get("metadata", {})
        if not isinstance(meta, dict):
            raise PromptSetError(f'{path}:{n}: "metadata" is not a JSON object; write "metadata": '
                                 f'{{"key": "value"}}')
        extra = {k: v for k, v in obj.items() if k not in (*RESERVED, "metadata")}
        row = _Row(n, obj.get("id"), obj["prompt"], obj.get("seed"), {**extra, **meta})
        _check_json_row(path, row)
        rows.append(row)
    return rows


SCALARS = (str, int, float, bool, type(None))  # what a table column and a PNG text chunk hold


def _check_json_row(path: Path, row: _Row) -> None:
    """Metadata values are scalars, and every string is encodable Unicode: JSON can spell a lone
    surrogate (\\ud800) that the tokenizer and the parquet writer reject after the model loads."""
    for key, value in row.metadata.items():
        if not isinstance(value, SCALARS):
            kind = "array" if isinstance(value, list) else "object"
            raise PromptSetError(
                f"{path}:{row.line}: metadata {key!r} is a JSON {kind}, not a string, number, "
                "true/false or null; flatten it (e.g. a comma-separated string)"
            )
        if isinstance(value, int) and not -2**63 <= value < 2**63:  # a table column is int64
            raise PromptSetError(f"{path}:{row.line}: metadata {key!r}={value} does not fit "
                                 "in 64 bits; write it as a string")
    texts = [("prompt", row.text), ("id", row.id), *(("metadata key", k) for k in row.metadata),
             *((f"metadata {k!r}", v) for k, v in row.metadata.items())]
    for what, text in texts:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise PromptSetError(
                    f"{path}:{row.line}: {what} holds {text[exc.start]!r}, a lone UTF-16 surrogate "
                    "that is not Unicode text; remove the \\ud8xx-\\udfxx escape"
                ) from None


def _read_csv(path: Path, text: str) -> list[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[_Row] = []
    start = 1  # where the record being read starts: an unclosed quote runs on to the file's end
    try:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            return rows
        if "prompt" not in header:
            raise PromptSetError(
                f"{path}:1: missing column 'prompt' (found {', '.join(map(repr, header))}); "
                "add a header row naming a 'prompt' column"
            )
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:  # a blank line
                continue
            if len(record) != len(header):
                raise PromptSetError(
                    f"{path}:{line}: {len(record)} fields but the header has {len(header)}; "
                    "quote fields that contain commas"
                )
            row = dict(zip(header, record))
            meta = {k: (v if v != "" else None) for k, v in row.items() if k not in RESERVED}
            rows.append(_Row(line, row.get("id"), row["prompt"], row.get("seed"), meta))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise PromptSetError(
                f"{path}:{start}: a quote opened in this record is never closed; close it or "
                "double quotes inside quoted fields (\"\")"
            ) from None
        raise PromptSetError(
            f"{path}:{reader.line_num}: malformed CSV ({exc}); quote fields with commas, quotes or "
            "newlines"
        ) from None
    return rows


READERS: dict[str, Callable[[Path, str], list[_Row]]] = {
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".txt": _read_txt,
}


def _seed(path: Path, row: _Row) -> int | None:
    value = row.seed
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\+?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise PromptSetError(
            f"{path}:{row.line}: seed {row.seed!r} is not an integer in [0, 2**64); "
            "write a whole number or leave the seed empty"
        )
    return value


def _prompts(path: Path, rows: list[_Row]) -> list[Prompt]:
    if not rows:
        raise PromptSetError(f"{path}:1: empty prompt file, no prompts found; add at least one "
                             "prompt")
    seen: dict[str, int] = {}
    prompts = []
    for row in rows:
        if not isinstance(row.text, str) or not row.text.strip():
            raise PromptSetError(f"{path}:{row.line}: empty prompt; write the prompt text or "
                                 "delete the line")
        given = "" if row.id is None else str(row.id).strip()
        pid = given or f"line-{row.line}"
        if pid in seen:
            raise PromptSetError(
                f"{path}:{row.line}: duplicate id {pid!r} (also on line {seen[pid]}); give every "
                "prompt a unique id"
            )
        seen[pid] = row.line
        PromptMeta.of(row.metadata, f"{path}:{row.line}")  # a bad value named at its line
        prompts.append(Prompt(pid, row.text, _seed(path, row), row.metadata))
    return prompts


def load_prompt_file(path: str | Path, limit: str | None = None) -> PromptSet:
    """A custom prompt file; `limit=N` keeps its first N prompts (the whole file is checked)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise PromptSetError(f"{path}: unsupported prompt file type '{path.suffix}'; use .csv, "
                             ".jsonl or .txt")
    prompts = _prompts(path, reader(path, read_text(path)))
    n = limit_option(str(path), limit)
    return PromptSet(path.stem, tuple(prompts[:n]), source=str(path))
