r"""Frozen run specifications. They serialise into the run directory's manifest and back.

Methods, scorers, prompt sets and bundled prompt files are named with options as
`name[:key=value,...]` (`sld-strong:warmup=5`, `q16:weights=prompts.p`; a comma inside a value is
written `\,`): `NamedOptions`. A method is a `MethodChain` of them joined by `+`, parsed once
where a spec enters; its canonical string (sorted keys) is part of every cache key, so equal
specs share cached images.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    pass


def split_unescaped(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` except where it is escaped as `\\,` (values such as SLD's concept hold commas)."""
    return re.split(r"(?<!\\)" + re.escape(sep), text)


def split_method_list(text: str) -> list[str]:
    """'all' or 'a,b:k=v,x=y,c' -> ['a', 'b:k=v,x=y', 'c']: a comma part containing '=' belongs
    to the spec before it."""
    specs: list[str] = []
    for part in filter(None, (p.strip() for p in split_unescaped(text))):
        if "=" in part and ":" not in part.split("=")[0] and specs:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


@dataclass(frozen=True)
class NamedOptions:
    """`name[:key=value,...]`: a method call, a scorer, a prompt set or a prompt file with its
    options, values as written (each component's own type converts them)."""
    name: str
    params: tuple[tuple[str, str], ...] = ()  # sorted (key, value-as-written) pairs

    @classmethod
    def parse(cls, text: str, what: str = "spec") -> "NamedOptions":
        """`what` names the kind in errors ("method spec", "scorer spec")."""
        name, _, rest = text.strip().partition(":")
        if not name:
            raise SpecError(f"empty {what} in '{text}'; write name[:key=value,...]")
        params: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in split_unescaped(rest))):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise SpecError(f"{what} '{text}': '{part}' is not key=value")
            params[key.strip()] = value.strip().replace("\\,", ",")
        return cls(name, tuple(sorted(params.items())))

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v.replace(',', chr(92) + ',')}"
                                          for k, v in self.params)

    def param_dict(self) -> dict[str, str]:
        return dict(self.params)


@dataclass(frozen=True)
class MethodChain:
    """A method as a run composes it: calls joined by `+` (`fair-mapping+sld-strong:warmup=5`),
    applied in order. Parsed once where a spec enters (`planning.expand_methods`, `bench
    generate`); the runner, the adapters and the Ray workers receive this object. Its canonical
    string names the method in cache keys, tables and manifests only."""
    calls: tuple[NamedOptions, ...]

    @classmethod
    def parse(cls, text: str) -> "MethodChain":
        # Split on every '+' as bench always has: the canonical string is part of cache keys.
        return cls(tuple(NamedOptions.parse(part, "method spec") for part in text.split("+")))

    def __str__(self) -> str:
        return "+".join(str(c) for c in self.calls)

    @property
    def names(self) -> str:
        """The registered names without options (`fair-mapping+sld-strong`)."""
        return "+".join(c.name for c in self.calls)


# The weights' dtypes a run can use (torch dtype names). None in a spec -> float16 on cuda,
# float32 elsewhere (bench.models.resolve_dtype).
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

# Short scheduler names -> diffusers classes, as the samplers are usually called.
SCHEDULER_ALIASES: dict[str, str] = {
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler",
    "heun": "HeunDiscreteScheduler", "lms": "LMSDiscreteScheduler",
}
# diffusers' KarrasDiffusionSchedulers: the classes StableDiffusionPipeline accepts (a test
# keeps this list equal to the installed diffusers'; listed here so a typo fails without
# importing diffusers).
SCHEDULER_CLASSES: tuple[str, ...] = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler", "EDMEulerScheduler")


# Boolean GPU options that can change pixels (bench/models.py apply_options), and all of them.
PIXEL_OPTIONS: tuple[str, ...] = ("compile", "vae_tiling")
GPU_OPTIONS: tuple[str, ...] = (*PIXEL_OPTIONS, "vae_slicing")


def check_dtype(name: str | None) -> str | None:
    if name is not None and name not in DTYPES:
        raise SpecError(f"dtype {name!r}: use one of {', '.join(DTYPES)} (default: float16 on "
                        "cuda, float32 elsewhere)")
    return name


def canonical_scheduler(name: str) -> str:
    """A short name or a diffusers class name (any case) -> the diffusers class name."""
    by_lower = {k.lower(): v for k, v in SCHEDULER_ALIASES.items()}
    by_lower.update({c.lower(): c for c in SCHEDULER_CLASSES})
    found = by_lower.get(str(name).strip().lower())
    if found is None:
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
        hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
        raise SpecError(f"scheduler {name!r}{hint}: use one of {', '.join(SCHEDULER_ALIASES)} or a "
                        f"diffusers class name ({', '.join(SCHEDULER_CLASSES)})")
    return found


@dataclass(frozen=True)
class SamplerSpec:
    steps: int = 25
    guidance: float = 7.5
    height: int | None = None  # None -> the model's native size
    width: int | None = None
    scheduler: str | None = None  # None -> the pipeline's own; else a short or diffusers class name
    negative_prompt: str = ""
    # diffusers' guidance_rescale (arXiv:2305.08891 section 3.4), in [0, 1]; 0 = off. Written to
    # to_dict and the cache key only when on, so SD runs keep their ids and keys.
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        # Stored as the class name, so `euler` and `EulerDiscreteScheduler` share cached images.
        if self.scheduler is not None:
            object.__setattr__(self, "scheduler", canonical_scheduler(self.scheduler))
        r = self.guidance_rescale
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
            raise SpecError(f"sampler.guidance_rescale={r!r}: give a number in [0, 1] (0: off; "
                            "0.7 is the paper's value)")


NEWLINE = b"\n"


def _yaml_error(path: str | Path, raw: bytes, exc: yaml.YAMLError) -> str:
    """One line `FILE:LINE[:COLUMN]: problem; fix` (PyYAML's own message spans several lines)."""
    if isinstance(exc, yaml.reader.ReaderError):  # not UTF-8/16, or a control character
        line = raw[:exc.position].count(NEWLINE) + 1
        return f"config {path}:{line}: {exc.reason} (byte {exc.position}); re-save it as UTF-8 text"
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    hint = ("config files hold plain values; remove the tag" if "tag" in problem
            else "fix the YAML syntax there")
    return f"config {where}: {problem}; {hint}"


_OPTIONAL = ("device", "shard", "out", "sampler.scheduler", "vae")  # string keys that may be None


@dataclass(frozen=True)
class RunSpec:
    # "" -> the model of the default run a plugin registers (bench.plugins); `plan` resolves it,
    # so a manifest records the model that ran.
    model: str = ""
    methods: tuple[str, ...] = ("baseline",)  # method spec strings; ("all",) expands at run time
    prompt_sets: tuple[str, ...] = ()  # registered names or file paths; () -> the model's default sets
    samples: int = 4  # images per prompt
    # Images per prompt by the prompt's `meta.kind` ("neutral": 32), or by "<set>.<kind>"
    # ("occupations.group": 2), over `samples`; None -> the counts of the model's registered
    # default run when its default prompt sets run (bench.plugins.DefaultRun), else none. `plan`
    # resolves None, so a manifest records the counts that ran.
    samples_by_kind: tuple[tuple[str, int], ...] | None = None
    seed: int = 0
    guidance: tuple[float, ...] = (7.5,)  # a list sweeps guidance scales
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    batch_size: int = 8
    device: str | None = None  # None -> cuda if available else cpu
    metrics: tuple[str, ...] = ("all",)
    limit: int | None = None  # max prompts per prompt set (after filtering)
    out: str | None = None  # None -> runs/<spec id> (bench/rundir.py)
    shard: str | None = None  # "i/n"
    executor: str = "local"  # "local" | "ray" (bench/executor_ray.py)
    workers: int | None = None  # Ray workers; None -> one per GPU in the cluster, else 1
    protocol: str | None = None  # a paper's setup (bench/protocols.py) under the given values
    dtype: str | None = None  # float32 | float16 | bfloat16; None -> float16 on cuda, else float32
    # A VAE directory or hub id replacing the model's (--vae); its weights enter the model
    # fingerprint. In to_dict only when set, so specs without it keep their ids.
    vae: str | None = None
    # Rounds of the interleaved timing phase after generation (bench/timing.py); 0: latency
    # from the generation's own times (methods one after another: load drift enters the ratios).
    timing_rounds: int = 4
    # Evaluation suites (bench/suites.py) for the prompt sets whose loaders name none, or that
    # they list; () -> each prompt set's own suite, else the generic fairness/safety suite.
    suites: tuple[str, ...] = ()
    # torch.compile of the UNet after loading (mode default, fullgraph=False): written to
    # to_dict, the cache key and the spec id only when on (PIXEL_OPTIONS).
    compile: bool = False
    # diffusers' VAE memory options: slicing decodes one image at a time (floats within ~2e-6,
    # like another batch size: in the spec id when on, not the cache key), tiling decodes
    # overlapping tiles (blended seams: in the cache key and spec id when on).
    vae_slicing: bool = False
    vae_tiling: bool = False

    def __post_init__(self) -> None:
        # Checked here so a config file and the flags fail alike, before anything is loaded.
        self._check_types()
        sampler = self.sampler
        counts = {"samples": self.samples, "batch_size": self.batch_size, "steps": sampler.steps,
                  "limit": self.limit, "workers": self.workers, "height": sampler.height,
                  "width": sampler.width}
        for key, value in counts.items():
            if value is not None and (type(value) is not int or value < 1):
                raise SpecError(f"{key}={value!r}: must be a whole number >= 1")
        if type(self.timing_rounds) is not int or self.timing_rounds < 0:
            raise SpecError(f"timing_rounds={self.timing_rounds!r}: must be a whole number >= 0")
        for kind, n in self.samples_by_kind or ():
            if type(n) is not int or n < 1:
                raise SpecError(f"samples_by_kind {kind}={n!r}: must be a whole number >= 1")
        bad = [g for g in self.guidance if isinstance(g, bool)
               or not (isinstance(g, (int, float)) and 0 <= g < float("inf"))]
        if bad or not self.guidance:
            raise SpecError(f"guidance={list(self.guidance)!r}: give one or more finite scales >= 0")
        if not any(split_method_list(m) for m in self.methods):  # e.g. --methods ',,'
            raise SpecError(f"methods={list(self.methods)!r}: no method named; give 'all' or "
                            f"a comma list such as baseline,sld-strong")
        if not any(split_method_list(m) for m in self.metrics):
            raise SpecError(f"metrics={list(self.metrics)!r}: no scorer named; give 'all', "
                            f"'none' or a comma list such as clipscore,fairface")
        if self.executor not in ("local", "ray"):
            raise SpecError(f"executor={self.executor!r}: use local or ray")
        if self.workers is not None and self.executor != "ray":
            raise SpecError(f"--workers {self.workers}: only --executor ray has workers")
        if self.out is not None and not self.out.strip():  # Path("") is the current directory
            raise SpecError("out='': give a run directory")
        check_dtype(self.dtype)

    def _check_types(self) -> None:
        """YAML can hold any type; a wrong one named here instead of a traceback later."""
        if not isinstance(self.sampler, SamplerSpec):
            raise SpecError(f"sampler={self.sampler!r}: write a mapping of sampler keys, e.g. "
                            f"sampler: {{steps: 25, scheduler: DDIMScheduler}}")
        text = {"model": self.model, "out": self.out, "executor": self.executor,
                "device": self.device, "shard": self.shard, "vae": self.vae,
                "sampler.scheduler": self.sampler.scheduler,
                "sampler.negative_prompt": self.sampler.negative_prompt}
        for key, value in text.items():
            if not (isinstance(value, str) or value is None and key in _OPTIONAL):
                raise SpecError(f"{key}={value!r}: must be a string")
        lists = {"methods": self.methods, "prompt_sets": self.prompt_sets, "metrics": self.metrics,
                 "suites": self.suites}
        for key, value in lists.items():
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{key}={value!r}: must be a list of strings")
        kinds = self.samples_by_kind
        if kinds is not None and not (isinstance(kinds, tuple) and all(
                isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], str) for k in kinds)):
            raise SpecError(f"samples_by_kind={kinds!r}: write a mapping of prompt kind to "
                            f"images per prompt, e.g. {{neutral: 32, group: 2}}")
        if type(self.seed) is not int:
            raise SpecError(f"seed={self.seed!r}: must be a whole number")
        for key in GPU_OPTIONS:
            if type(getattr(self, key)) is not bool:
                raise SpecError(f"{key}={getattr(self, key)!r}: must be true or false")
        if not isinstance(self.guidance, tuple):
            raise SpecError(f"guidance={self.guidance!r}: must be a list of numbers")

    def to_dict(self) -> dict[str, Any]:
        """Every key; `suites` only when some are named, so manifests, bundles and run ids from
        before suites existed stay byte-identical."""
        out = dataclasses.asdict(self)
        for key in ("suites", "vae", *GPU_OPTIONS):  # written when set: older specs keep their ids
            if not out[key]:
                del out[key]
        if not out["sampler"]["guidance_rescale"]:
            del out["sampler"]["guidance_rescale"]
        return out

    def pixel_options(self) -> tuple[str, ...]:
        """The options on that can change pixels: part of every cache key (bench.grid)."""
        return tuple(key for key in PIXEL_OPTIONS if getattr(self, key))

    def gpu_options(self) -> tuple[str, ...]:
        """Every GPU option that is on (bench.models.apply_options)."""
        return tuple(key for key in GPU_OPTIONS if getattr(self, key))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise SpecError(f"unknown run-spec key(s) {unknown}; valid keys: {sorted(known)}")
        data = dict(data)
        if "sampler" in data and isinstance(data["sampler"], dict):
            known_sampler = {f.name for f in dataclasses.fields(SamplerSpec)}
            unknown = sorted(set(data["sampler"]) - known_sampler, key=str)
            if unknown:
                raise SpecError(f"unknown sampler key(s) {unknown}; valid keys: {sorted(known_sampler)}")
            data["sampler"] = SamplerSpec(**data["sampler"])
        if isinstance(data.get("samples_by_kind"), (dict, list, str)):  # YAML mapping, JSON pairs
            data["samples_by_kind"] = parse_kind_samples(data["samples_by_kind"])
        for key in ("methods", "prompt_sets", "guidance", "metrics", "suites"):
            if key in data and data[key] is not None:
                value = data[key]
                data[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunSpec":
        return cls.from_dict(read_config(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_kind_samples(value: dict | list | str) -> tuple[tuple[str, int], ...]:
    """{kind: n}, [[kind, n], ...] or 'kind=n,kind=n' ('none': no per-kind counts) -> sorted
    pairs; a count that is not a whole number is refused here, a count < 1 by RunSpec."""
    if isinstance(value, str):
        if value.strip() == "none":
            return ()
        pairs: list = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            kind, eq, n = part.partition("=")
            if not eq or not kind.strip():
                raise SpecError(f"samples_by_kind '{value}': '{part}' is not kind=count; write "
                                f"e.g. neutral=32,group=2 (or none)")
            pairs.append((kind.strip(), n.strip()))
    else:
        try:
            pairs = list(value.items()) if isinstance(value, dict) else [tuple(p) for p in value]
        except TypeError:
            pairs = [value]
    out: dict[str, int] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise SpecError(f"samples_by_kind {value!r}: write a mapping such as {{neutral: 32}}")
        kind, n = pair
        try:
            count = int(n) if isinstance(n, str) else n
        except ValueError:
            count = n
        if type(count) is not int:
            raise SpecError(f"samples_by_kind {kind}={n!r}: must be a whole number >= 1")
        out[str(kind)] = count
    return tuple(sorted(out.items()))


def read_config(path: str | Path) -> dict[str, Any]:
    """A YAML run spec as a mapping, before defaults (a protocol goes under its keys)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read config {path} ({exc.strerror}); check the path") from None
    try:
        data = yaml.safe_load(raw) or {}  # safe_load: config is never code
    except yaml.YAMLError as exc:
        raise SpecError(_yaml_error(path, raw, exc)) from None
    if not isinstance(data, dict):
        raise SpecError(f"config {path}: expected a mapping of run-spec keys")
    return data
