"""`bench compare RUN_A RUN_B`: do two runs (directories or bundles) agree?

Images are matched by cache key and compared pixel by pixel (a bundle holds a sample: only images
present in both are compared). Leaderboard cells are matched by (table, method, metric) from
`leaderboard.csv`; a method spec present in only one run is paired with the other run's spec of
the same method name when that pairing is unambiguous (`sld-strong` vs `sld-strong:warmup=1`).

The verdict is about the tables: they disagree when a cell's 95% CIs do not overlap, or a cell is
measured in one run only. Wall-clock timing cells are noise across runs and are left out unless
asked for (`--include-latency`); `--strict` also requires every compared image within tolerance
and the same scorer set-up. Scorer set-ups (`report/scoring.json`: weight hashes, model names,
thresholds) are listed where both runs recorded a field and it differs. So are the keys of the
two runs' specs that define a run (bench/rundir.py), methods and prompt sets as resolved (names and
content hashes); `--strict` fails on either.
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image

from bench import bundle, rundir
from bench.escape import csv_uncell, md_code, md_text
from bench.manifest import RERUN, Manifest
from bench.spec import MethodChain, NamedOptions, SpecError

TIMING_METRICS = ("seconds_per_image", "latency_ratio")  # wall clock: differs run to run
CELL_KEYS = ("table", "method", "metric")
DISAGREE = ("outside CI", "one is NaN", "only in A", "only in B")


class RunFiles:
    """Read-only access to a run directory or a bundle."""

    def __init__(self, path: Path) -> None:
        path = rundir.resolve(path)  # runs/latest as a pointer file
        self.path = path
        if path.suffix == ".zip":
            self._zip: zipfile.ZipFile | None = bundle.open_zip(path)
            self._names = set(self._zip.namelist())
        elif (path / "manifest.json").is_file():
            self._zip = None
        else:
            raise FileNotFoundError(f"{path}: not a run directory (no manifest.json) or a bundle "
                                    ".zip")

    def read(self, name: str) -> bytes | None:
        if self._zip is not None:
            return bundle.read_entry(self.path, self._zip, name) if name in self._names else None
        file = self.path / name
        return file.read_bytes() if file.is_file() else None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def manifest(self) -> Manifest:
        where = f"{self.path}: manifest.json" if self._zip else str(self.path / "manifest.json")
        fix = "rebuild the bundle with `bench bundle`" if self._zip else RERUN
        return Manifest.from_json(self.need("manifest.json"), where, fix)

    def need(self, name: str) -> bytes:
        data = self.read(name)
        if data is None:
            raise FileNotFoundError(f"{self.path}: no {name}; run `bench report {self.path}` first")
        return data


@dataclass
class ImageSummary:
    tolerance: float  # as a fraction of full scale (1/255 = one level)
    compared: int = 0
    identical: int = 0
    within_tolerance: int = 0
    max_diff: int = 0  # in 0..255 levels, over all compared images
    mean_diff: float = 0.0  # mean absolute difference per channel value, over compared images
    only_in_a: int = 0  # keys in one run's table only
    only_in_b: int = 0
    not_compared: int = 0  # in both tables, but a file is missing (bundle sample)
    worst: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Comparison:
    a: str
    b: str
    images: ImageSummary
    cells: list[dict[str, Any]]
    paired_methods: dict[str, str]  # method in A -> its counterpart in B
    timing_cells_skipped: int
    scorers: list[str] = field(default_factory=list)  # scorer set-up differences, one line each
    specs: list[str] = field(default_factory=list)  # run-spec differences, one line each

    def disagreeing(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["status"] in DISAGREE]

    def images_match(self) -> bool:
        im = self.images
        return im.within_tolerance == im.compared and not im.only_in_a and not im.only_in_b

    def agrees(self, strict: bool = False) -> bool:
        return not self.disagreeing() and (not strict or (self.images_match() and not self.scorers
                                                           and not self.specs))

    def verdict(self, strict: bool = False) -> str:
        bad = self.disagreeing()
        if not bad:
            same = sum(c["status"] == "identical" for c in self.cells)
            line = (f"tables agree within CIs ({len(self.cells)} cells: {same} identical, "
                    f"{len(self.cells) - same} within CI)")
        else:
            line = f"tables disagree in {len(bad)} of {len(self.cells)} cells: " + "; ".join(
                f"{c['table']} / {c['method']} / {c['metric']} ({c['status']})" for c in bad)
        im = self.images
        if strict and not self.images_match():
            line += (f"; images differ: {im.compared - im.within_tolerance} of {im.compared} "
                     f"beyond the tolerance, {im.only_in_a + im.only_in_b} in one run only")
        if self.scorers:
            line += f"; scored differently: {'; '.join(self.scorers)}"
        if self.specs:
            line += f"; specs differ in {', '.join(d.split(':')[0] for d in self.specs)}"
        return line


# --- images ----------------------------------------------------------------------------------
def compare_images(a: RunFiles, b: RunFiles, tolerance: float, worst: int = 10) -> ImageSummary:
    ta, tb = (pd.read_parquet(io.BytesIO(r.need("images.parquet"))) for r in (a, b))
    out = ImageSummary(tolerance)
    keys_a, keys_b = set(ta["key"]), set(tb["key"])
    out.only_in_a, out.only_in_b = len(keys_a - keys_b), len(keys_b - keys_a)
    rows = ta.set_index("key")
    diffs = []
    for key in sorted(keys_a & keys_b):
        da, db = a.read(f"images/{key}.png"), b.read(f"images/{key}.png")
        if da is None or db is None:
            out.not_compared += 1
            continue
        x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.int16)
                for d in (da, db))
        diff = np.abs(x - y) if x.shape == y.shape else np.full(1, 255, dtype=np.int16)
        diffs.append((int(diff.max()), float(diff.mean()), key))
    out.compared = len(diffs)
    if diffs:
        out.identical = sum(d[0] == 0 for d in diffs)
        out.within_tolerance = sum(d[0] <= tolerance * 255 + 1e-9 for d in diffs)
        out.max_diff = max(d[0] for d in diffs)
        out.mean_diff = float(np.mean([d[1] for d in diffs]))
        rows = rows[~rows.index.duplicated()]  # positions sharing an image: name the first
        for mx, mean, key in sorted(diffs, reverse=True)[:worst]:
            if mx:
                row = rows.loc[key]
                out.worst.append({"key": key, "method": row["method"],
                                  "prompt_id": row["prompt_id"], "seed": int(row["seed"]),
                                  "max_diff": mx, "mean_diff": mean})
    return out


# --- cells -----------------------------------------------------------------------------------
def _cells(files: RunFiles) -> pd.DataFrame:
    data = files.need("leaderboard.csv")
    if not data.strip():
        return pd.DataFrame(columns=[*CELL_KEYS, "value", "ci_lo", "ci_hi", "n", "unit"])
    cells = pd.read_csv(io.BytesIO(data), dtype={"table": str, "method": str, "metric": str})
    for col in CELL_KEYS:  # undo the formula guard: "'=x" was written for "=x"
        cells[col] = cells[col].map(csv_uncell)
    return cells


def method_name(method: str) -> str:
    """A leaderboard's method column (a canonical chain) -> its names without options."""
    return MethodChain.parse(method).names


def scorer_name(scorer: str) -> str:
    return NamedOptions.parse(scorer, "scorer spec").name


def pair_methods(a: set[str], b: set[str],
                 base: Callable[[str], str] = method_name) -> dict[str, str]:
    """Unmatched specs of the same name(s), one on each side: B's spec -> A's."""
    only_a, only_b = a - b, b - a
    names = {m: base(m) for m in only_a | only_b}  # each parsed once
    pairs = {}
    for name in {names[m] for m in only_a}:
        ca = [m for m in only_a if names[m] == name]
        cb = [m for m in only_b if names[m] == name]
        if len(ca) == 1 and len(cb) == 1:
            pairs[cb[0]] = ca[0]
    return pairs


def is_timing(metric: str, unit: Any) -> bool:
    return metric in TIMING_METRICS or str(unit).startswith("s/") or str(unit) == "s"


def _status(r: pd.Series) -> tuple[str, bool | None]:
    a, b = r["value_a"], r["value_b"]
    if math.isnan(a) and math.isnan(b):
        return "identical", None
    if math.isnan(a) or math.isnan(b):
        return "one is NaN", None
    lo_a, hi_a = (r["ci_lo_a"], r["ci_hi_a"]) if not math.isnan(r["ci_lo_a"]) else (a, a)
    lo_b, hi_b = (r["ci_lo_b"], r["ci_hi_b"]) if not math.isnan(r["ci_lo_b"]) else (b, b)
    slack = 1e-9 * max(1.0, abs(a), abs(b))  # float noise in a recomputed statistic
    overlap = bool(lo_a <= hi_b + slack and lo_b <= hi_a + slack)
    if a == b:
        return "identical", overlap
    return ("within CI" if overlap else "outside CI"), overlap


def _drop_timing(cells: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    units = cells["unit"] if "unit" in cells else [""] * len(cells)
    timing = np.array([is_timing(m, u) for m, u in zip(cells["metric"], units)], dtype=bool)
    return cells[~timing], int(timing.sum())


def compare_cells(a: RunFiles, b: RunFiles, include_latency: bool
                  ) -> tuple[list[dict[str, Any]], dict[str, str], int]:
    ca, cb = _cells(a), _cells(b)
    pairs = pair_methods(set(ca["method"]), set(cb["method"]))
    cb = cb.assign(method_b=cb["method"], method=cb["method"].replace(pairs))
    skipped = 0
    if not include_latency:
        (ca, skipped), (cb, _) = _drop_timing(ca), _drop_timing(cb)
    cols = [*CELL_KEYS, "value", "ci_lo", "ci_hi", "n"]
    merged = ca[cols].merge(cb[[*cols, "method_b"]], on=list(CELL_KEYS), how="outer",
                            suffixes=("_a", "_b"), indicator=True)
    cells = []
    for _, r in merged.iterrows():
        row: dict[str, Any] = {k: r[k] for k in CELL_KEYS}
        if isinstance(r["method_b"], str) and r["method_b"] != r["method"]:
            row["method_b"] = r["method_b"]
        for side in ("a", "b"):
            row[side] = {k: _num(r[f"{k}_{side}"]) for k in ("value", "ci_lo", "ci_hi")}
            row[side]["n"] = None if pd.isna(r[f"n_{side}"]) else int(r[f"n_{side}"])
        if r["_merge"] != "both":
            row.update(status="only in A" if r["_merge"] == "left_only" else "only in B",
                       diff=None, ci_overlap=None)
        else:
            status, overlap = _status(r)
            row.update(status=status, diff=_num(r["value_b"] - r["value_a"]), ci_overlap=overlap)
        cells.append(row)
    return cells, {v: k for k, v in pairs.items()}, skipped


@dataclass(frozen=True)
class ScorerDiff:
    text: str  # one line, e.g. "q16 prompts.p: 6f67... (A) vs 0a1b... (B)"
    kind: str  # "weights" (a fingerprint), "field" (any other), "only_a" / "only_b" (skipped in the other)


_FINGERPRINT = re.compile(r"[0-9a-f]{12,64}")  # how scorers record weight files: hex digests


def scoring_summary(files: RunFiles) -> dict[str, dict[str, Any]]:
    """`report/scoring.json` of a run: {"used": {scorer: set-up}, "skipped": {scorer: reason}}."""
    raw = files.read("report/scoring.json")
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        raise SpecError(f"{files.path}: report/scoring.json is not JSON; rebuild it with "
                        f"`bench report {files.path}`") from None
    return {"used": data.get("used") or {}, "skipped": data.get("skipped") or {}}


def scorer_differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
                       labels: tuple[str, str] = ("A", "B")) -> list[ScorerDiff]:
    """Every field both runs recorded for a scorer with different values (a run made before a
    scorer recorded a field is not flagged for it), and every scorer used in one run and skipped
    in the other. Scorers pair by name, or by base name when their options differ
    (`q16:weights=/a/prompts.p` with `q16:weights=/b/prompts.p`) and the pairing is unambiguous."""
    (la, lb), (ua, ub) = labels, (a["used"], b["used"])
    pairs = [(n, n) for n in sorted(set(ua) & set(ub))]
    pairs += sorted((na, nb) for nb, na in pair_methods(set(ua), set(ub), scorer_name).items())
    out = []
    for na, nb in pairs:
        name = na if na == nb else f"{na} ({la}) / {nb} ({lb})"
        for key in sorted(set(ua[na]) & set(ub[nb])):
            va, vb = ua[na][key], ub[nb][key]
            if va != vb:
                kind = "weights" if all(_FINGERPRINT.fullmatch(str(v)) for v in (va, vb)) else "field"
                out.append(ScorerDiff(f"{name} {key}: {va} ({la}) vs {vb} ({lb})", kind))
    for used, skipped, kind, (here, there) in ((ua, b["skipped"], "only_a", (la, lb)),
                                               (ub, a["skipped"], "only_b", (lb, la))):
        out += [ScorerDiff(f"{n}: scored in {here}, skipped in {there} ({skipped[n]})", kind)
                for n in sorted(set(used) & set(skipped))]
    return out


def compare_scorers(a: RunFiles, b: RunFiles) -> list[str]:
    return [d.text for d in scorer_differences(scoring_summary(a), scoring_summary(b))]


def compare_specs(a: RunFiles, b: RunFiles) -> list[str]:
    """One line per run-defining spec key that differs, methods and prompt sets as each run
    resolved them (so `all` against its expansion, or a bundled prompt file's new path against
    the original, is no difference)."""
    sa, sb = (_resolved_spec(f) for f in (a, b))
    ia, ib = rundir.identity(sa), rundir.identity(sb)
    return [f"{k}: {_brief(ia.get(k))} (A) vs {_brief(ib.get(k))} (B)"
            for k in rundir.differing_keys(sa, sb)]


def _resolved_spec(files: RunFiles) -> dict[str, Any]:
    manifest = files.manifest()
    return {**manifest.spec.to_dict(), "methods": sorted(manifest.method_names()),
            "prompt_sets": [f"{s.name} (sha256 {s.sha256[:12]})" for s in manifest.prompt_sets]}


def _brief(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _num(x: Any) -> float | None:
    return None if pd.isna(x) else float(x)


# --- the command -----------------------------------------------------------------------------
def parse_tolerance(text: str) -> float:
    """'1/255' or '0.004' -> a fraction of full scale."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"--tolerance '{text}': write a fraction of full scale, e.g. 1/255 or "
                        "0.004") from None
    if not 0 <= value <= 1:
        raise SpecError(f"--tolerance '{text}': must be between 0 and 1 (full scale)")
    return value


def compare(path_a: Path, path_b: Path, tolerance: float = 1 / 255,
            include_latency: bool = False) -> Comparison:
    a, b = RunFiles(path_a), RunFiles(path_b)
    try:
        cells, paired, skipped = compare_cells(a, b, include_latency)
        images = compare_images(a, b, tolerance)
        scorers = compare_scorers(a, b)
        specs = compare_specs(a, b)
    finally:
        a.close()
        b.close()
    return Comparison(str(path_a), str(path_b), images, cells, paired, skipped, scorers, specs)


def to_json(c: Comparison, strict: bool = False) -> str:
    data = {"a": c.a, "b": c.b, "agree": c.agrees(strict), "verdict": c.verdict(strict),
            "images": asdict(c.images), "paired_methods": c.paired_methods,
            "timing_cells_skipped": c.timing_cells_skipped, "scorers": c.scorers, "specs": c.specs,
            "cells": c.cells}
    return json.dumps(data, indent=2, default=str) + "\n"


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.6g}"


def _cell_text(side: dict[str, Any]) -> str:
    if side["value"] is None:
        return "–"
    if side["ci_lo"] is None:
        return _fmt(side["value"])
    return f"{_fmt(side['value'])} [{_fmt(side['ci_lo'])}, {_fmt(side['ci_hi'])}]"


def markdown(c: Comparison, strict: bool = False) -> str:
    esc = md_text  # run paths, set names, method specs and prompt ids are user text
    im = c.images
    share = lambda k: f"{k} ({k / im.compared:.0%})" if im.compared else "0"  # noqa: E731
    lines = [f"# bench compare\n\nA: {md_code(c.a)}  \nB: {md_code(c.b)}\n", "## Images\n",
             f"- compared (same cache key, image in both): {im.compared}",
             f"- identical: {share(im.identical)}",
             f"- within tolerance {im.tolerance * 255:.3g}/255: {share(im.within_tolerance)}",
             f"- largest pixel difference: {im.max_diff}/255; mean absolute difference: "
             f"{im.mean_diff:.4g}/255",
             f"- only in A: {im.only_in_a}; only in B: {im.only_in_b}; in both but not compared "
             f"(image not in a bundle's sample): {im.not_compared}"]
    if im.worst:
        lines += ["", "| key | method | prompt | seed | max | mean |", "|---|---|---|---|---|---|"]
        lines += [f"| {w['key'][:12]} | {esc(w['method'])} | {esc(w['prompt_id'])} | {w['seed']} "
                  f"| {w['max_diff']} | {w['mean_diff']:.3g} |" for w in im.worst]
    lines += ["", "## Specs\n", *([f"- {esc(d)}" for d in c.specs] or
                                 ["- the same run spec (methods and prompt sets as resolved)"])]
    lines += ["", "## Scorers\n", *([f"- {esc(d)}" for d in c.scorers] or
                                   ["- same set-up wherever both runs recorded it"])]
    lines += ["", "## Leaderboard cells\n"]
    for a_method, b_method in c.paired_methods.items():
        lines.append(f"- paired by method name: {md_code(a_method)} (A) with "
                     f"{md_code(b_method)} (B)")
    if c.timing_cells_skipped:
        lines.append(f"- {c.timing_cells_skipped} wall-clock timing cells not compared "
                     "(`--include-latency` compares them)")
    lines += ["", "| table | method | metric | A [95% CI] | B [95% CI] | B − A | CIs overlap "
              "| status |", "|---|---|---|---|---|---|---|---|"]
    for r in c.cells:
        overlap = {True: "yes", False: "**no**", None: "–"}[r["ci_overlap"]]
        status = f"**{r['status']}**" if r["status"] in DISAGREE else r["status"]
        lines.append(f"| {esc(r['table'])} | {esc(r['method'])} | {esc(r['metric'])} | "
                     f"{_cell_text(r['a'])} | {_cell_text(r['b'])} | {_fmt(r['diff'])} | "
                     f"{overlap} | {status} |")
    lines += ["", "## Verdict\n", esc(c.verdict(strict))]
    return "\n".join(lines) + "\n"
