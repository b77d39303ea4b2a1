"""`bench reproduce`: re-run exactly what a manifest describes, after listing every way this
machine differs from the one that made it.

Blocking differences (refused without `--allow-drift`, because the images would not be the same
experiment): a prompt set whose content hash differs, a different model fingerprint, a method that
resolves to other parameters (changed defaults) or is skipped here; and, because the tables would
not measure the same way, a scorer whose recorded weight fingerprint differs or that is skipped
here (from `report/scoring.json`). Warnings: other scorer fields, library versions,
the git commit, the device type and the dtype, which change pixels but not the experiment; `bench compare`
then says whether the tables still agree.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bundle, provenance, rundir, runner
from bench.registry import METRICS
from bench.scoring import scorer_names
from bench.manifest import Manifest, Reproduction
from bench.models import dtype_name
from bench.planning import RunPlan, plan
from bench.spec import NamedOptions, RunSpec, SpecError
from bench.store import RunStore

VERSION_KEYS = ("bench", "python", "torch", "diffusers", "transformers", "open_clip_torch", "numpy")


class DriftError(SpecError):
    """The current setup differs from the manifest in a way that changes the experiment."""


@dataclass(frozen=True)
class Difference:
    message: str
    blocking: bool


def read_source(path: Path) -> tuple[Manifest, dict[str, Any] | None]:
    """(manifest, bundle info or None) from a run directory, a manifest.json or a bundle."""
    if path.suffix == ".zip":
        return bundle.read_bundle(path)
    path = rundir.resolve(path)  # runs/latest as a pointer file
    if path.is_dir():
        return RunStore(path).manifest(), None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run directory, manifest or bundle")
    return Manifest.from_json(path.read_bytes(), str(path), "pass a run directory, its "
                              "manifest.json or a bundle .zip"), None


def default_out(source: Path) -> Path:
    base = source.parent if source.name == "manifest.json" else source.with_suffix("")
    return base.with_name(base.name + "-reproduced")


def reproduced_dtype(manifest: Manifest, spec_dtype: str | None,
                     device: str | None) -> str | None:
    """The spec's dtype as written, unless it was the device default (None) and this device's
    default differs from what the run computed in: then that dtype, pinned."""
    from bench.models import resolve_device, resolve_dtype

    recorded = manifest.dtype
    here = str(resolve_dtype(None, resolve_device(device))).removeprefix("torch.")
    return spec_dtype or (None if recorded == here else recorded)


def reproduce_spec(manifest: Manifest, out: Path, device: str | None,
                   prompt_files: dict[str, str], dtype: str | None = None) -> RunSpec:
    """The manifest's spec with the method list and prompt sets pinned to what the run resolved
    (so `all` or a model's default sets mean the same here), bundled prompt files substituted,
    the whole grid (no shard), the run's dtype unless `dtype` is given, and this machine's
    output directory and device."""
    spec = manifest.spec
    methods = manifest.method_names()
    sets = tuple(prompt_files.get(e, e) for e in spec.prompt_sets) or tuple(
        s.name for s in manifest.prompt_sets)
    return dataclasses.replace(spec, methods=methods or spec.methods, prompt_sets=sets,
                               out=str(out), device=device, shard=None,
                               executor="local", workers=None,
                               dtype=dtype or reproduced_dtype(manifest, spec.dtype, device))


def differences(manifest: Manifest, p: RunPlan) -> list[Difference]:
    out: list[Difference] = []
    recorded = {s.name: s for s in manifest.prompt_sets}
    for s in p.prompt_sets:
        rec = recorded.pop(s.name, None)
        if rec is None:
            out.append(Difference(f"prompt set '{s.name}' is not in the manifest", True))
        elif rec.sha256 != s.content_hash():
            out.append(Difference(
                f"prompt set '{s.name}' changed: content hash {rec.sha256[:12]} in the "
                f"manifest, {s.content_hash()[:12]} here ({len(s)} prompts, {rec.prompts} recorded; "
                f"source {s.source})", True))
    out += [Difference(f"prompt set '{n}' is in the manifest but not loaded here", True)
            for n in recorded]
    model = manifest.model
    if model.fingerprint != p.model_fp:
        out.append(Difference(f"model '{model.name}': fingerprint {model.fingerprint} in the "
                              f"manifest, {p.model_fp} here (other weights, config or scheduler)",
                              True))
    out += _method_differences(manifest, p)
    was_dtype, now_dtype = manifest.dtype, dtype_name(p.pipe)
    if was_dtype != now_dtype:  # the same weights and experiment, computed at another precision
        out.append(Difference(f"dtype {was_dtype} in the manifest, {now_dtype} here: pixels and "
                              "cache keys differ, figures may move within their CIs", False))
    was, now = manifest.device.split(":")[0], str(p.pipe.device).split(":")[0]
    if was != now:
        out.append(Difference(f"device type {was} in the manifest, {now} here: pixels may differ",
                              False))
    current = provenance.versions()
    for key in VERSION_KEYS:
        a, b = manifest.versions.get(key), current.get(key)
        if a != b:
            out.append(Difference(f"{key} {a or 'absent'} in the manifest, {b or 'absent'} here",
                                  False))
    commit = provenance.git_commit()
    if manifest.git_commit and commit and manifest.git_commit != commit:
        out.append(Difference(f"bench git commit {manifest.git_commit[:12]} in the manifest, "
                              f"{commit[:12]} here", False))
    if manifest.git_dirty:
        out.append(Difference(f"the run was made from uncommitted changes on top of bench git "
                              f"commit {str(manifest.git_commit)[:12]}: that commit alone "
                              "may not reproduce it", False))
    return out


def pin_threads(manifest: Manifest, device: str) -> str | None:
    """A CPU run reproduced on the CPU computes with the thread count it recorded: torch splits
    the UNet's and the scorers' sums by thread, so at another count a few 8-bit values of the
    images and the last digits of scores differ (measured on the reference run). Returns the
    note."""
    import torch

    recorded, here = manifest.threads, torch.get_num_threads()
    cpu = manifest.device.startswith("cpu") and device.startswith("cpu")
    if not cpu or recorded is None or recorded == here:
        return None
    torch.set_num_threads(recorded)
    return (f"torch threads {here} here, {recorded} in the manifest: set to {recorded}, as images "
            f"and scores depend on it in their last bits")


def scorer_drift(source: Path, p: RunPlan) -> list[Difference]:
    """The original run's scorer set-ups (`report/scoring.json`) against this machine's, for the
    scorers it recorded: another weight fingerprint, or a scorer it used that is skipped here,
    changes the measured tables (blocking); other fields (paths, versions) are warnings."""
    from bench.compare import RunFiles, scorer_differences, scoring_summary

    root = source.parent if source.name == "manifest.json" else source
    try:
        files = RunFiles(root)
    except FileNotFoundError:  # a lone manifest.json: no scoring record beside it
        return []
    try:
        recorded = scoring_summary(files)
    finally:
        files.close()
    wanted = set(scorer_names(p.spec.model, p.spec.metrics, [s.name for s in p.prompt_sets],
                              p.spec.suites)) & (
        set(recorded["used"]) | set(recorded["skipped"]))
    current = scoring_setups(sorted(wanted), p.spec.device)
    out = []
    for d in scorer_differences(recorded, current, ("the original run", "this setup")):
        note = " (other weights: the same images would score differently)" if d.kind == "weights" else ""
        out.append(Difference(f"scorer {d.text}{note}", d.kind in ("weights", "only_a")))
    return out


def scoring_setups(names: list[str], device: str | None) -> dict[str, dict[str, Any]]:
    """What `report/scoring.json` would record for these scorers here, without scoring."""
    used: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        spec = NamedOptions.parse(name, "metric spec")
        scorer = METRICS.get(spec.name)(device=device, **spec.param_dict())
        reason = scorer.available()
        if reason:
            skipped[name] = reason
        else:
            used[name] = json.loads(json.dumps(scorer.manifest(), default=str))
    return {"used": used, "skipped": skipped}


def _method_differences(manifest: Manifest, p: RunPlan) -> list[Difference]:
    out = []
    recorded = {m: [a.to_dict() for a in ads] for m, ads in manifest.methods.items()}
    for method, adapters in p.adapters.items():
        now = json.loads(json.dumps([{"name": a.name, "params": dataclasses.asdict(a.params)}
                                     for a in adapters], default=str))
        if method not in recorded:
            out.append(Difference(f"method '{method}' was skipped in the original run "
                                  f"({manifest.skipped_methods.get(method)}) and runs "
                                  "here", False))
        elif now != recorded[method]:
            changes = [f"{k} {was['params'].get(k)} -> {v}"
                       for was, cur in zip(recorded[method], now)
                       for k, v in cur["params"].items() if was["params"].get(k) != v]
            out.append(Difference(f"method '{method}' resolves to other parameters here: "
                                  f"{', '.join(changes) or 'components differ'} (its defaults "
                                  "changed)", True))
    out += [Difference(f"method '{m}' ran in the original run but is skipped here: {reason}", True)
            for m, reason in p.skipped.items() if m in recorded]
    return out


def reproduce(source: Path, out: Path | None = None, allow_drift: bool = False,
              device: str | None = None, quiet: bool = False, dtype: str | None = None) -> Path:
    manifest, info = read_source(source)
    out = out or default_out(source)
    origin = source.parent if source.name == "manifest.json" else source
    if out.resolve() == origin.resolve():
        raise SpecError(f"--out {out} is the run being reproduced: its cached images would be "
                        "reused, not regenerated; pass another --out")
    prompt_files: dict[str, str] = {}
    if info:  # the bundle's copies of custom prompt files, so reproduction works anywhere
        bundle.extract(source, out, prefix="prompts/")
        prompt_files = {f["entry"]: str((out / f["file"]).resolve()) + f["options"]
                        for f in info["prompt_files"]}
    p = plan(reproduce_spec(manifest, out, device, prompt_files, dtype))
    found = differences(manifest, p) + scorer_drift(source, p)
    blocking = [d for d in found if d.blocking]
    for d in found:
        kind = "error" if d.blocking and not allow_drift else "warning"
        print(f"bench: {kind}: {d.message}", file=sys.stderr)
    if blocking and not allow_drift:
        raise DriftError(f"{len(blocking)} difference(s) above change the experiment; restore the "
                         "original inputs or rerun with --allow-drift")
    if not found and not quiet:
        print("prompt sets, model, methods, scorers, versions and device match the manifest",
              file=sys.stderr)
    note = pin_threads(manifest, str(p.pipe.device))
    if note:
        print(f"bench: note: {note}", file=sys.stderr)
    runner.execute(p, quiet=quiet)
    store = RunStore(out)
    store.write_manifest(dataclasses.replace(store.manifest(), reproduces=Reproduction(
        str(source), manifest.created, manifest.git_commit, manifest.model.fingerprint,
        {new: old for old, new in prompt_files.items()},  # rewritten -> original
        tuple(d.message for d in found), allow_drift)))
    return out
