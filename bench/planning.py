"""Planning: a run spec resolved into the work grid, and `bench run --dry-run`'s summary of it.

Everything that can fail before the first image is checked here (`plan`), so a typo costs seconds,
not a generation; the dry run counts the grid and its UNet cost, loading the model only when its
weights are present.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench import rundir
from bench.grid import WorkItem, build_grid, prompt_samples, shard, unique_images
from bench.models import (ModelError, apply_options, dtype_name, fingerprint, load_pipeline,
                          native_size)
from bench.plugins import default_model, default_run
from bench.registry import METHODS
from bench.adapter import Adapter, Batch
from bench.scoring import check_scorers, scorer_names
from bench.spec import MethodChain, RunSpec, SpecError, split_method_list
from bench.suites import check_suites
from bench.prompt_sets.base import PromptSet, check_metadata_types

# With no --prompt-set and no default run registered for the model (bench.plugins).
FALLBACK_PROMPT_SETS: tuple[str, ...] = ("occupations",)


def resolve_defaults(spec: RunSpec) -> RunSpec:
    """The spec with its model and `samples_by_kind` explicit, as its manifest records them: no
    model -> the registered default run's; no counts -> those of the model's default run when
    its default prompt sets run, else none (`bench reproduce` pins the prompt sets, so a None
    there would mean no per-kind counts)."""
    if spec.model and spec.samples_by_kind is not None:
        return spec
    model = spec.model or default_model()
    kinds = spec.samples_by_kind
    if kinds is None:
        run = None if spec.prompt_sets else default_run(model)
        kinds = run.samples_by_kind if run else ()
    return dataclasses.replace(spec, model=model, samples_by_kind=kinds)


def expand_methods(methods: Sequence[str]) -> list[MethodChain]:
    """The spec's method strings ('all', 'a,b:k=v') parsed, once, into distinct chains."""
    out: list[MethodChain] = []
    for m in methods:
        for spec in split_method_list(m):
            names = METHODS.names() if spec == "all" else [spec]
            out.extend(MethodChain.parse(n) for n in names)
    return list(dict.fromkeys(out))


def build_adapters(chain: MethodChain) -> list[Adapter]:
    adapters = []
    for call in chain.calls:
        cls = METHODS.get(call.name)
        try:
            adapters.append(cls.from_strings(call.param_dict()))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"method '{call}': {exc}") from exc
    negatives = [a.name for a in adapters if a.has_hook("negative")]
    if len(negatives) > 1:
        raise SpecError(f"method '{chain}': {' and '.join(negatives)} both set the negative "
                        f"prompt; compose at most one of them")
    return adapters


def unet_evals_per_image(pipe: Any, adapters: Sequence[Adapter], steps: int,
                         guidance: float) -> int:
    """Branches x timesteps, as the sampler will count them (PNDM adds one timestep, order-2
    schedulers double them)."""
    probe = Batch(["a photo of a person"], [0], [{}], guidance)
    branches = (2 if guidance > 1 else 1) + sum(len(a.extra_conditions(probe)) for a in adapters)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    return branches * len(scheduler.timesteps)


@dataclass
class RunPlan:
    spec: RunSpec
    pipe: Any
    model_fp: str
    height: int
    width: int
    prompt_sets: list[PromptSet]
    adapters: dict[str, list[Adapter]]  # by canonical method string (cache keys, tables)
    chains: dict[str, MethodChain] = field(default_factory=dict)  # every method, run or skipped
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    grid: list[WorkItem] = field(default_factory=list)  # every position of the whole run
    items: list[WorkItem] = field(default_factory=list)  # the images this process generates
    cost: dict[str, int] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)  # from spec.protocol's pinned values
    unloaded: str | None = None  # dry run only: why the model is not loaded (cost unknown)
    written: int | None = None  # images this process generated (None: not known, e.g. Ray)


def plan(spec: RunSpec, dry_run: bool = False) -> RunPlan:
    """Resolve everything that can fail before any image is generated. A dry run plans the grid
    without the model when its weights are absent (its UNet cost is then unknown)."""
    spec = resolve_defaults(spec)
    deviations = _protocol_deviations(spec)  # a refused prompt set fails before anything loads
    if spec.shard:
        parse_shard(spec.shard)  # these before the prompt sets and the model load
    check_out_dir(rundir.out_dir(spec))
    sets = load_prompt_sets(spec)
    chains = {str(c): c for c in expand_methods(spec.methods)}
    adapters = {m: build_adapters(c) for m, c in chains.items()}
    check_suites(spec.suites)
    check_scorers(scorer_names(spec.model, spec.metrics, [s.name for s in sets], spec.suites),
                  spec.device)
    try:
        pipe = load_pipeline(spec.model, spec.device, spec.dtype, spec.sampler.scheduler, spec.vae)
    except ModelError as exc:
        if not dry_run:
            raise
        return _plan_unloaded(spec, sets, adapters, chains, deviations, str(exc))
    check_compile(spec, adapters)
    apply_options(pipe, spec.gpu_options())
    size = native_size(pipe)
    height, width = spec.sampler.height or size, spec.sampler.width or size
    check_size(pipe, height, width)
    skipped: dict[str, str] = {}
    for m, ads in list(adapters.items()):
        reason = next((r for a in ads if (r := a.skip_reason(pipe))), None)
        if reason:
            skipped[m] = reason
            del adapters[m]
    p = RunPlan(spec, pipe, fingerprint(pipe), height, width, sets, adapters, chains, skipped)
    p.warnings = {m: found for m, ads in adapters.items()
                  if (found := [w for a in ads
                                for w in a.warnings(pipe, p.model_fp, spec.guidance, spec.sampler.steps)]
                                + _negative_override(ads, spec.sampler.negative_prompt))}
    p.grid = build_grid(p.model_fp, list(adapters), sets, spec.samples, spec.seed,
                        spec.guidance, spec.sampler, height, width, dtype_name(pipe),
                        by_kind=dict(spec.samples_by_kind or ()), options=spec.pixel_options())
    p.items = unique_images(p.grid)
    p.cost = {m: unet_evals_per_image(pipe, a, spec.sampler.steps, max(spec.guidance))
              for m, a in adapters.items()}
    if spec.shard:
        i, n = parse_shard(spec.shard)
        p.items = shard(p.items, i, n, p.cost, spec.batch_size)
    p.deviations = deviations
    return p


def check_compile(spec: RunSpec, adapters: dict[str, list[Adapter]]) -> None:
    """Hooks registered on the UNet's blocks after torch.compile are not seen by the compiled
    graph (dynamo skips guards on module hooks): a skip_features method would silently not run."""
    users = [a.name for ads in adapters.values() for a in ads if a.has_hook("skip_features")]
    if spec.compile and users:
        raise SpecError(f"compile: {', '.join(dict.fromkeys(users))} edits the UNet's skip "
                        f"connections through module hooks, which a compiled UNet skips; "
                        f"run it without --compile")


def _negative_override(adapters: Sequence[Adapter], run_negative: str) -> list[str]:
    return [f"{a.name} replaces the run's negative prompt {run_negative!r} with its own"
            for a in adapters if run_negative and a.has_hook("negative")]


def _protocol_deviations(spec: RunSpec) -> list[str]:
    if not spec.protocol:
        return []
    from bench import protocols

    return protocols.get(spec.protocol).deviations(spec)


def _plan_unloaded(spec: RunSpec, sets: list[PromptSet], adapters: dict[str, list[Adapter]],
                   chains: dict[str, MethodChain], deviations: list[str], reason: str) -> RunPlan:
    """The grid a dry run can count without weights: no fingerprint (cache keys are
    placeholders), no skip reasons or warnings, no UNet cost; the size only if the spec gives it."""
    height, width = spec.sampler.height or 0, spec.sampler.width or 0
    p = RunPlan(spec, None, "model-not-loaded", height, width, sets, adapters, chains,
                deviations=deviations, unloaded=reason)
    p.grid = build_grid(p.model_fp, list(adapters), sets, spec.samples, spec.seed,
                        spec.guidance, spec.sampler, height, width,
                        by_kind=dict(spec.samples_by_kind or ()), options=spec.pixel_options())
    p.items = unique_images(p.grid)
    if spec.shard:
        i, n = parse_shard(spec.shard)
        p.items = shard(p.items, i, n, None, spec.batch_size)
    return p


def check_out_dir(out: Path) -> None:
    """The run directory, or its nearest existing ancestor, is a writable directory: otherwise
    the first write fails after the model load."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SpecError(f"--out {out}: {existing} is a file, not a directory; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"--out {out}: {existing} is not writable (permissions or a read-only "
                        f"file system); choose another --out")


def check_size(pipe: Any, height: int, width: int) -> None:
    """The latents are (height, width) / the VAE's scale factor: another size would silently
    give smaller images than the manifest records."""
    factor = int(pipe.vae_scale_factor)
    if height % factor or width % factor:
        near = max(factor, round(height / factor) * factor)
        raise SpecError(f"resolution {height}x{width}: must be a multiple of {factor} for this "
                        f"model (its VAE's scale factor), e.g. --resolution {near}")


def load_prompt_sets(spec: RunSpec) -> list[PromptSet]:
    """The spec's prompt sets as the run uses them (after `limit`): what the manifest hashes."""
    from bench.prompt_sets.resolve import load_prompt_set

    run = None if spec.prompt_sets else default_run(spec.model)
    names = spec.prompt_sets or (run.prompt_sets if run else FALLBACK_PROMPT_SETS)
    sets = [load_prompt_set(n) for n in names]
    if spec.limit:
        sets = [dataclasses.replace(s, prompts=s.prompts[: spec.limit]) for s in sets]
    check_metadata_types(sets)
    return sets


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard '{text}': write i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise SpecError(f"--shard '{text}': need 0 <= i < n")
    return i, n


def dry_run_summary(p: RunPlan) -> str:
    size = f"{p.height}x{p.width}" if p.height else "the model's native size"
    evals = "unknown UNet evaluations (model not loaded)" if p.unloaded else \
        f"{sum(p.cost[w.method] for w in p.items)} UNet evaluations"
    positions = p.items if p.spec.shard else p.grid
    by_kind = dict(p.spec.samples_by_kind or ())
    per_kind = "".join(f", {k}: {n}" for k, n in by_kind.items())
    lines = [f"{len(positions)} images ({len(p.adapters)} methods x {len(p.prompt_sets)} prompt sets, "
             f"{p.spec.samples} samples/prompt{per_kind}, guidance {list(p.spec.guidance)}), "
             f"{evals} at {size}, {p.spec.sampler.steps} steps"
             + (f" ({type(p.pipe.scheduler).__name__}, {dtype_name(p.pipe)})" if p.pipe else "")]
    for s in p.prompt_sets:
        counts = [prompt_samples(s, q, p.spec.samples, by_kind) for q in s.prompts]
        shape = (f"{len(s):,} prompts x {p.spec.samples} images" if len(set(counts)) <= 1
                 and not set(counts) - {p.spec.samples} else f"{len(s):,} prompts, "
                 + ", ".join(f"{counts.count(n)} x {n}" for n in sorted(set(counts), reverse=True))
                 + " images")
        lines.append(f"  {s.name}: {shape} = {sum(counts):,} images per method and guidance")
    if len(p.items) < len(positions):
        lines.append(f"  {len(positions) - len(p.items)} of them repeat another's text, seed and "
                     f"settings (duplicate prompts): {len(p.items)} are generated, each row kept")
    if p.unloaded:
        lines.append(f"  model not loaded, so its UNet cost, skipped methods and warnings are not "
                     f"known: {p.unloaded}")
    if p.spec.protocol:
        lines.append(f"  protocol {p.spec.protocol}: published figures in `bench list protocols`"
                     + (f"; {len(p.deviations)} deviation(s) printed above" if p.deviations else ""))
    for m, c in p.cost.items():
        lines.append(f"  {m}: {c} UNet evaluations per image")
    for m, r in p.skipped.items():
        lines.append(f"  skipped {m}: {r}")
    lines += [f"  warning: {w}" for ws in p.warnings.values() for w in ws]
    return "\n".join(lines)
