"""`bench run --executor ray`: generation and scoring on a Ray cluster (`RayExecutor`).

One actor per worker, each holding one pipeline (`num_gpus=1` per actor when the cluster has GPUs,
else `num_cpus=1`). The driver computes the work grid and cache keys exactly as the local executor
does and hands out batches of work items (method spec strings, prompts, seeds); each actor rebuilds
the method's adapters, samples with `bench.sampler.sample` and writes images and records straight
into the shared run store. Images equal the local executor's because every image's latents come
from its own seed, whatever batch or worker it lands in.

Failures: a dead actor is restarted (`max_restarts`) and the batches it held are resubmitted
(`max_task_retries`), so delivery is at-least-once. The store is content-addressed and written
atomically, and a worker skips items whose record exists, so a repeat is harmless and a killed
worker loses nothing it already wrote.

Without RAY_ADDRESS (and no Ray already initialised in this process) a private single-node Ray is
started on 127.0.0.1 and shut down at the end; set RAY_ADDRESS to use a cluster (docs/scaling.md).
"""
from __future__ import annotations

import os
import socket
import sys
from collections import deque
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import pandas as pd
from tqdm import tqdm

from bench.executor import Executor, GenerationSettings, pending, swap, warm_up, write_batch
from bench.grid import WorkItem
from bench.models import ModelError
from bench.planning import RunPlan, build_adapters
from bench.adapter import Adapter
from bench.scoring import ScoringJob, chunks, score_rows
from bench.spec import MethodChain, SpecError
from bench.store import RunStore

INSTALL_HINT = '--executor ray needs Ray, an optional extra: pip install -e ".[ray]"'
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is 127.0.0.1
MAX_RESTARTS = 3  # per actor; each restart reloads the pipeline
MAX_TASK_RETRIES = 3  # per batch, on actor death
IN_FLIGHT = 2  # batches queued per actor, so a worker never idles waiting for the driver


def import_ray() -> Any:
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        # A private instance needs no network: Ray otherwise advertises the host's address and
        # listens on wildcard ports. Read once, when Ray is first imported.
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise SpecError(INSTALL_HINT) from None
    return ray


@contextmanager
def session(workers: int | None, quiet: bool = False) -> Iterator[Any]:
    """Ray for the duration of a stage: the one already initialised, the cluster at RAY_ADDRESS,
    or a private local instance (then shut down on exit)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started and os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=not quiet)
    elif started:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers or 1),
                 include_dashboard=False, log_to_driver=not quiet)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def worker_plan(ray: Any, workers: int | None, device: str | None) -> tuple[int, dict, str]:
    """(actor count, actor options, device inside the actors): one GPU per actor when the
    cluster has GPUs (and the run is not forced onto the CPU), else one CPU per actor."""
    resources = ray.cluster_resources()
    gpus = 0 if (device or "").startswith("cpu") else int(resources.get("GPU", 0))
    have = gpus or int(resources.get("CPU", 0))
    count = max(gpus, 1) if workers is None else workers
    if count < 1 or count > have:
        unit = "GPUs" if gpus else "CPUs"
        raise SpecError(f"--workers {count}: the Ray cluster has {have} {unit}; "
                        f"ask for 1 to {have}")
    options = {"num_cpus": 1, "num_gpus": 1 if gpus else 0, "max_restarts": MAX_RESTARTS,
               "max_task_retries": MAX_TASK_RETRIES}
    return count, options, "cuda" if gpus else "cpu"


class GenerationWorker:
    """A Ray actor: one pipeline, loaded once by model name; writes what it generates."""

    def __init__(self, device: str, root: str, settings: GenerationSettings, model_fp: str,
                 chains: dict[str, MethodChain]) -> None:
        from bench.models import apply_options, fingerprint, load_pipeline

        self.error: Exception | None = None  # raised by every call, so it reaches the driver whole
        self.pipe: Any = None
        try:
            self.pipe = load_pipeline(settings.model, device, settings.dtype,
                                      settings.sampler.scheduler, settings.vae)
            if fingerprint(self.pipe) != model_fp:  # cache keys would name other weights' images
                raise ModelError(
                    f"Ray worker on {socket.gethostname()}: model '{settings.model}' has "
                    f"fingerprint {fingerprint(self.pipe)}, the driver's has {model_fp}; install "
                    f"the same weights and library versions on every node")
            apply_options(self.pipe, settings.options)
        except Exception as exc:  # noqa: BLE001 - re-raised from generate()
            self.error = exc
        self.store = RunStore(root)
        self.settings = settings
        self.chains = chains  # canonical method string -> the parsed chain, from the driver
        self.method: str | None = None
        self.adapters: list[Adapter] = []
        self.written = 0

    def ready(self) -> str:
        """Returns once the pipeline is loaded (or raises why it is not): where this worker runs."""
        if self.error:
            raise self.error
        return f"{socket.gethostname()} {self.pipe.device}"

    def generate(self, items: Sequence[WorkItem]) -> list[str]:
        """One batch of the driver's `pending()`, regenerated whole: a retried batch has the same
        company as its first try, so its images are bit-equal to the local executor's."""
        self.ready()
        if all(self.store.has(w.key) for w in items):  # a retry after everything was written
            return []
        if self.method is None:
            warm_up(self.pipe, items, self.settings)
        if items[0].method != self.method:  # weight-patching methods own the pipe one at a time
            new = build_adapters(self.chains[items[0].method])
            swap(self.pipe, self.adapters, new)
            self.method, self.adapters = items[0].method, new
        write_batch(self.pipe, self.adapters, items, self.store, self.settings, self.wrote)
        return [w.key for w in items]

    def wrote(self) -> None:
        """Called after each image this worker stores (tests override it to kill the worker)."""
        self.written += 1


class ScoringWorker:
    """A Ray actor: scorer instances built once per worker, fed batches of rows."""

    def __init__(self, device: str, root: str) -> None:
        self.store = RunStore(root)
        self.device = device
        self.scorers: dict[str, Any] = {}

    def score(self, job: tuple[str, type, dict[str, str], pd.DataFrame]) -> pd.DataFrame:
        name, cls, params, rows = job
        if name not in self.scorers:
            self.scorers[name] = cls(device=self.device, **params)
        return score_rows(self.scorers[name], name, self.store, rows)


def generate(pipe: Any, items: Sequence[WorkItem], adapters: dict[str, list[Adapter]],
             store: RunStore, settings: GenerationSettings, quiet: bool = False, *,
             workers: int | None = None, device: str | None = None,
             model_fp: str | None = None, chains: dict[str, MethodChain]) -> int:
    """The local `generate()` contract on Ray: every item not already in the store is generated
    and written. `adapters` are rebuilt inside the workers from `chains` (the plan's).
    Returns the number of items that were missing."""
    import_ray()
    todo = pending(items, store, settings.batch_size)
    if not todo:
        return 0
    missing_images = sum(not store.has(w.key) for c in todo for w in c)
    if model_fp is None:
        from bench.models import fingerprint

        model_fp = fingerprint(pipe)
    missing = sorted({c[0].method for c in todo} - (set(adapters) & set(chains)))
    if missing:
        raise SpecError(f"no adapters planned for method(s) {missing}")
    root = str(store.root.resolve())  # a path every node sees: a shared filesystem
    with session(workers, quiet) as ray, actor_pool(
            ray, GenerationWorker, workers, device, root, settings, model_fp, chains) as pool, \
            tqdm(total=sum(len(c) for c in todo), desc=f"generate ({len(pool)} ray workers)", unit="img",
                 disable=quiet) as bar:
        dispatch(ray, pool, "generate", todo, lambda job: bar.update(len(job)))
    return missing_images


def score(jobs: Sequence[ScoringJob], store: RunStore, batch_size: int = 32,
          quiet: bool = False, *, workers: int | None = None,
          device: str | None = None) -> Iterator[pd.DataFrame]:
    """`Executor.score` on Ray: the same batches as the local executor (so the same numbers),
    scored by actors that build each scorer once; each job's rows once all its batches are in."""
    if not jobs:
        return
    with session(workers, quiet) as ray, actor_pool(
            ray, ScoringWorker, workers, device, str(store.root.resolve())) as pool:
        for job in jobs:
            batches_ = [(job.name, job.scorer_cls, job.params, rows)
                        for rows in chunks(job.rows, batch_size)]
            with tqdm(total=len(job.rows), desc=f"score {job.name} (ray)", unit="img",
                      disable=quiet) as bar:
                parts = dispatch(ray, pool, "score", batches_, lambda b: bar.update(len(b[3])))
            yield pd.concat(parts, ignore_index=True)


@contextmanager
def actor_pool(ray: Any, worker: type, workers: int | None, device: str | None,
               *args: Any) -> Iterator[list]:
    """Start the workers (`worker(actor_device, *args)`); kill them on exit, whatever happened."""
    count, options, actor_device = worker_plan(ray, workers, device)
    cls = ray.remote(worker).options(**options)
    pool = [cls.remote(actor_device, *args) for _ in range(count)]
    try:
        yield pool
    finally:
        for actor in pool:
            ray.kill(actor)


def dispatch(ray: Any, pool: list, method: str, jobs: Sequence[Any], done: Any) -> list:
    """Hand jobs to actors as they free up (IN_FLIGHT each). Returns the results in completion
    order."""
    queue = deque(jobs)
    running: dict[Any, tuple[Any, Any]] = {}
    results: list = []

    def submit(actor: Any) -> None:
        if queue:
            job = queue.popleft()
            running[getattr(actor, method).remote(job)] = (actor, job)

    for actor in pool:
        for _ in range(IN_FLIGHT):
            submit(actor)
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        actor, job = running.pop(ref)
        results.append(_get(ray, ref))
        done(job)
        submit(actor)
    return results


def _get(ray: Any, ref: Any) -> Any:
    from bench.errors import USER_ERRORS

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the worker's own exception
        if isinstance(exc.cause, USER_ERRORS):
            raise exc.cause from None  # one line on the command line, as with the local executor
        raise
    except ray.exceptions.RayActorError as exc:
        raise RuntimeError(
            f"a Ray worker died {MAX_RESTARTS + 1} times; finished images are kept, rerun the "
            f"same command to resume. Cause: {str(exc).splitlines()[0]}") from exc


class RayExecutor(Executor):
    """Generation and scoring on Ray actors, one Ray session for both stages. No timing phase:
    the workers hold the devices (latency then comes from the records' per-image seconds)."""

    def __init__(self, workers: int | None = None, device: str | None = None,
                 quiet: bool = False) -> None:
        import_ray()  # without Ray: the one-line install hint, before the run writes anything
        self.workers, self.device, self.quiet = workers, device, quiet
        self._session = ExitStack()

    def __enter__(self) -> "RayExecutor":
        self._session.enter_context(session(self.workers, self.quiet))
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.close()

    def generate(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> None:
        if p.pipe.device.type == "cuda":  # the workers hold the GPUs; the driver only planned
            import torch

            p.pipe.to("cpu")
            torch.cuda.empty_cache()
        generate(p.pipe, p.items, p.adapters, store, settings, self.quiet, workers=self.workers,
                 device=self.device, model_fp=p.model_fp, chains=p.chains)
        return None  # what the workers wrote is not counted (a retried batch repeats)

    def time(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> None:
        return None

    def score(self, jobs: Sequence[ScoringJob], store: RunStore,
              batch_size: int) -> Iterator[pd.DataFrame]:
        return score(jobs, store, batch_size, self.quiet, workers=self.workers,
                     device=self.device)
