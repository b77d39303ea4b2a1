"""The run manifest as a typed record: written by the runner, read by reproduce, bundle, compare
and report.

On disk it stays the JSON every bench wrote (`RUN/manifest.json`, a bundle's `manifest.json`):
`Manifest.to_json()` of a manifest read from a file gives that file's bytes back, key for key,
so the runner writes what it always wrote and a rewrite (the last shard completing the grid,
`bench reproduce` adding `reproduces`) changes only what it means to. Keys written only by newer
benches (`png`, `protocol`, `method_warnings`, `git_dirty`, `model.dtype`) may be absent in an
older manifest; an absent key is read as unknown and not written back. Keys this bench does not
know are kept as they are.

A damaged or mis-typed manifest is one `ManifestError` line naming the file, the key and the fix.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.spec import RunSpec, SpecError

VERSION = 1
# The fix a user can apply to a run directory's manifest; a bundle's is rebuilt instead.
RERUN = ("rerun the `bench run` command that made this run after moving the file away (its "
         "finished images are verified and reused)")


class ManifestError(SpecError):
    """A manifest that cannot be read: one line naming the file, the key and the fix."""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    fingerprint: str
    scheduler: str | None = None
    dtype: str | None = None  # None: a manifest from before dtypes were recorded


@dataclass(frozen=True)
class AdapterRecord:
    """One component of a method chain as it resolved: its registered name and every parameter
    (defaults filled in), as JSON values."""
    name: str
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class PromptSetRecord:
    name: str
    source: str
    prompts: int
    sha256: str


@dataclass(frozen=True)
class GridRecord:
    images: int  # the whole run's grid positions, in any shard
    shard: str | None
    done: int | None = None  # set once every position is done (the last shard consolidated)


@dataclass(frozen=True)
class ProtocolRecord:
    name: str
    deviations: tuple[str, ...]


@dataclass(frozen=True)
class Reproduction:
    """What `bench reproduce` adds to the manifest of the run it made."""
    source: str
    created: str | None
    git_commit: str | None
    model_fingerprint: str
    prompt_sets: Mapping[str, str]  # rewritten entry -> the original's
    differences: tuple[str, ...]
    allow_drift: bool


@dataclass(frozen=True)
class Manifest:
    created: str
    spec: RunSpec
    model: ModelRecord
    height: int
    width: int
    methods: Mapping[str, tuple[AdapterRecord, ...]]  # canonical method -> its components
    skipped_methods: Mapping[str, str]  # canonical method -> why it did not run
    prompt_sets: tuple[PromptSetRecord, ...]
    grid: GridRecord
    device: str
    versions: Mapping[str, str]
    git_commit: str | None
    png_compress_level: int | None = None
    protocol: ProtocolRecord | None = None
    method_warnings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    git_dirty: bool | None = None
    reproduces: Reproduction | None = None
    # torch's intra-op threads: on the CPU they split the kernels' sums, so images and scores
    # depend on them in their last bits (measured on the reference run); None: not recorded
    threads: int | None = None
    version: int = VERSION
    extras: Mapping[str, Any] = field(default_factory=dict)  # keys this bench does not know
    absent: frozenset[str] = frozenset()  # optional keys the file did not hold

    @property
    def dtype(self) -> str:
        """The dtype the run computed in; manifests from before dtypes were recorded ran float16
        on cuda and float32 elsewhere."""
        return self.model.dtype or ("float16" if self.device.startswith("cuda") else "float32")

    def method_names(self) -> tuple[str, ...]:
        """Every method the run resolved, run or skipped."""
        return (*self.methods, *self.skipped_methods)

    # --- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        optional = {
            "png": lambda: {"compress_level": self.png_compress_level},
            "protocol": lambda: (None if self.protocol is None else
                                 {"name": self.protocol.name,
                                  "deviations": list(self.protocol.deviations)}),
            "method_warnings": lambda: {m: list(w) for m, w in self.method_warnings.items()},
            "git_dirty": lambda: self.git_dirty,
            "threads": lambda: self.threads,
        }
        model = {"name": self.model.name, "fingerprint": self.model.fingerprint}
        model.update({k: v for k, v in (("scheduler", self.model.scheduler),
                                        ("dtype", self.model.dtype)) if v is not None})
        grid = {"images": self.grid.images, "shard": self.grid.shard}
        if self.grid.done is not None:
            grid["done"] = self.grid.done
        plain = {
            "bench_manifest": self.version,
            "created": self.created,
            "spec": self.spec.to_dict(),
            "model": model,
            "size": {"height": self.height, "width": self.width},
            "png": None,
            "methods": {m: [a.to_dict() for a in ads] for m, ads in self.methods.items()},
            "protocol": None,
            "skipped_methods": dict(self.skipped_methods),
            "method_warnings": None,
            "prompt_sets": [dataclasses.asdict(s) for s in self.prompt_sets],
            "grid": grid,
            "device": self.device,
            "threads": None,
            "versions": dict(self.versions),
            "git_commit": self.git_commit,
            "git_dirty": None,
        }
        for key, make in optional.items():
            if key in self.absent:
                del plain[key]
            else:
                plain[key] = make()
        if self.reproduces is not None:  # only `bench reproduce` writes it
            plain["reproduces"] = _reproduction_dict(self.reproduces)
        return {**plain, **self.extras}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, default=str).encode()

    @classmethod
    def read(cls, path: Path, fix: str = RERUN) -> "Manifest":
        """A run directory's manifest.json (FileNotFoundError when there is none)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path.parent} is not a run directory (no manifest.json); "
                                    f"run `bench run --out {path.parent}` first") from None
        return cls.from_json(raw, str(path), fix)

    @classmethod
    def from_json(cls, raw: bytes | str, where: str, fix: str = RERUN) -> "Manifest":
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{where} is damaged ({_short(exc)}); {fix}") from None
        return cls.from_dict(data, where, fix)

    @classmethod
    def from_dict(cls, data: Any, where: str, fix: str = RERUN) -> "Manifest":
        return _Reader(data, where, fix).manifest()


OPTIONAL_KEYS = ("png", "protocol", "method_warnings", "git_dirty", "threads")
KNOWN_KEYS = ("bench_manifest", "created", "spec", "model", "size", "methods", "skipped_methods",
              "prompt_sets", "grid", "device", "versions", "git_commit", "reproduces",
              *OPTIONAL_KEYS)


def _reproduction_dict(r: Reproduction | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {**dataclasses.asdict(r), "prompt_sets": dict(r.prompt_sets),
            "differences": list(r.differences)}


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:157] + "..." if len(text) > 160 else text) or type(exc).__name__


_TYPES: dict[type, str] = {str: "a string", int: "a whole number", bool: "true or false",
                           dict: "a mapping", list: "a list"}


class _Reader:
    """Checks each key's type as it is read, so a bad value is named with its key."""

    def __init__(self, data: Any, where: str, fix: str) -> None:
        self.data, self.where, self.fix = data, where, fix

    def fail(self, key: str, value: Any, expected: str) -> ManifestError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ManifestError(f"{self.where}: key '{key}' is {shown}, expected {expected}; {self.fix}")

    def get(self, obj: Any, key: str, kind: type, path: str, optional: bool = False) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(path.rpartition(".")[0] or path, obj, "a mapping")
        value = obj.get(key)
        if value is None and optional:
            return None
        if type(value) is not kind and not (kind is float and type(value) is int):
            if key not in obj:
                raise ManifestError(f"{self.where}: key '{path}' is missing; {self.fix}")
            raise self.fail(path, value, _TYPES.get(kind, kind.__name__))
        return value

    def mapping(self, obj: Any, key: str, path: str, each: Callable[[Any, str], Any],
                optional: bool = False) -> dict[str, Any]:
        value = self.get(obj, key, dict, path, optional) or {}
        return {k: each(v, f"{path}.{k}") for k, v in value.items()}

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, value, "a string")
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, value, "a list of strings")
        return tuple(self.string(v, f"{path}[{i}]") for i, v in enumerate(value))

    def manifest(self) -> Manifest:
        d = self.data
        if not isinstance(d, dict) or not isinstance(d.get("spec"), dict):
            raise ManifestError(f"{self.where} is not a bench manifest (no spec); {self.fix}")
        size = self.get(d, "size", dict, "size")
        png = self.get(d, "png", dict, "png", optional=True)
        return Manifest(
            version=self.get(d, "bench_manifest", int, "bench_manifest"),
            created=self.get(d, "created", str, "created"),
            spec=self.spec(d["spec"]),
            model=self.model(self.get(d, "model", dict, "model")),
            height=self.get(size, "height", int, "size.height"),
            width=self.get(size, "width", int, "size.width"),
            png_compress_level=None if png is None else self.get(png, "compress_level", int,
                                                                  "png.compress_level", True),
            methods=self.mapping(d, "methods", "methods", self.adapters),
            protocol=self.protocol(d.get("protocol")),
            skipped_methods=self.mapping(d, "skipped_methods", "skipped_methods", self.string),
            method_warnings=self.mapping(d, "method_warnings", "method_warnings", self.strings,
                                         optional=True),
            prompt_sets=tuple(self.prompt_set(s, f"prompt_sets[{i}]") for i, s in
                              enumerate(self.get(d, "prompt_sets", list, "prompt_sets"))),
            grid=self.grid(self.get(d, "grid", dict, "grid")),
            device=self.get(d, "device", str, "device"),
            threads=self.get(d, "threads", int, "threads", optional=True),
            versions=self.mapping(d, "versions", "versions", self.string),
            git_commit=self.get(d, "git_commit", str, "git_commit", optional=True),
            git_dirty=self.get(d, "git_dirty", bool, "git_dirty", optional=True),
            reproduces=self.reproduction(d.get("reproduces")),
            extras={k: v for k, v in d.items() if k not in KNOWN_KEYS},
            absent=frozenset(k for k in OPTIONAL_KEYS if k not in d),
        )

    def spec(self, data: dict[str, Any]) -> RunSpec:
        try:
            return RunSpec.from_dict(data)
        except SpecError as exc:
            raise ManifestError(f"{self.where}: key 'spec': {exc}; {self.fix}") from None
        except TypeError as exc:  # a sampler that is not a mapping of its keys
            raise ManifestError(f"{self.where}: key 'spec': {_short(exc)}; {self.fix}") from None

    def model(self, d: dict[str, Any]) -> ModelRecord:
        return ModelRecord(self.get(d, "name", str, "model.name"),
                           self.get(d, "fingerprint", str, "model.fingerprint"),
                           self.get(d, "scheduler", str, "model.scheduler", optional=True),
                           self.get(d, "dtype", str, "model.dtype", optional=True))

    def adapters(self, value: Any, path: str) -> tuple[AdapterRecord, ...]:
        if not isinstance(value, list):
            raise self.fail(path, value, "a list of {name, params}")
        return tuple(AdapterRecord(self.get(a, "name", str, f"{path}[{i}].name"),
                                   self.get(a, "params", dict, f"{path}[{i}].params"))
                     for i, a in enumerate(value))

    def protocol(self, d: Any) -> ProtocolRecord | None:
        if d is None:
            return None
        return ProtocolRecord(self.get(d, "name", str, "protocol.name"),
                              self.strings(self.get(d, "deviations", list, "protocol.deviations"),
                                           "protocol.deviations"))

    def prompt_set(self, d: Any, path: str) -> PromptSetRecord:
        return PromptSetRecord(self.get(d, "name", str, f"{path}.name"),
                               self.get(d, "source", str, f"{path}.source"),
                               self.get(d, "prompts", int, f"{path}.prompts"),
                               self.get(d, "sha256", str, f"{path}.sha256"))

    def grid(self, d: dict[str, Any]) -> GridRecord:
        return GridRecord(self.get(d, "images", int, "grid.images"),
                          self.get(d, "shard", str, "grid.shard", optional=True),
                          self.get(d, "done", int, "grid.done", optional=True))

    def reproduction(self, d: Any) -> Reproduction | None:
        if d is None:
            return None
        p = "reproduces"
        return Reproduction(
            self.get(d, "source", str, f"{p}.source"),
            self.get(d, "created", str, f"{p}.created", optional=True),
            self.get(d, "git_commit", str, f"{p}.git_commit", optional=True),
            self.get(d, "model_fingerprint", str, f"{p}.model_fingerprint"),
            self.mapping(d, "prompt_sets", f"{p}.prompt_sets", self.string),
            self.strings(self.get(d, "differences", list, f"{p}.differences"), f"{p}.differences"),
            self.get(d, "allow_drift", bool, f"{p}.allow_drift"))
