"""Executors: where a run's generation and scoring batches run, behind one interface.

`Executor` is what the runner calls; `LocalExecutor` (this process) is the reference and
`bench.executor_ray.RayExecutor` runs the same batches on Ray actors. Other executors (sharded,
Ray) must produce the same images for the same items, which holds because every image's latents
come from its own seed, and the same scores, which holds because they score the same batches.
"""
from __future__ import annotations

import abc
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from bench.adapter import Adapter, Batch
from bench.grid import WorkItem, batches, prompt_sha256
from bench.planning import RunPlan
from bench.sampler import NonFiniteError, sample, to_uint8
from bench.scoring import ScoringJob, chunks, score_rows
from bench.spec import SamplerSpec
from bench.store import RunStore


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    sampler: SamplerSpec
    height: int
    width: int
    batch_size: int
    dtype: str = "float32"  # resolved on the driver: workers on other devices use the same
    options: tuple[str, ...] = ()  # RunSpec.gpu_options(), for workers that load their own pipeline
    vae: str | None = None  # RunSpec.vae, for the same workers


class Executor(abc.ABC):
    """The runner's view of an executor: `with executor:` spans the stages that share its
    resources (a Ray session), inside which it generates, times and scores."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abc.abstractmethod
    def generate(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> int | None:
        """Store every planned image (`p.items`) the store lacks. Returns how many were written,
        None when the executor does not count them."""

    @abc.abstractmethod
    def time(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> None:
        """The timing phase (`time_phase`: RUN/timing.parquet), where this executor can time."""

    @abc.abstractmethod
    def score(self, jobs: Sequence[ScoringJob], store: RunStore,
              batch_size: int) -> Iterator[pd.DataFrame]:
        """Each job's scored rows (`scoring.score_rows` over `scoring.chunks` of its rows, so
        every executor scores the same batches), one frame per job, in the jobs' order."""


class LocalExecutor(Executor):
    """Generation, timing and scoring in this process, on the plan's pipeline."""

    def __init__(self, device: str | None = None, quiet: bool = False) -> None:
        self.device = device  # where scorers load; generation runs where the plan's pipe is
        self.quiet = quiet

    def generate(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> int:
        return generate(p.pipe, p.items, p.adapters, store, settings, quiet=self.quiet)

    def time(self, p: RunPlan, store: RunStore, settings: GenerationSettings) -> None:
        time_phase(p.pipe, p.grid, p.adapters, store, settings, p.spec.timing_rounds)

    def score(self, jobs: Sequence[ScoringJob], store: RunStore,
              batch_size: int) -> Iterator[pd.DataFrame]:
        for job in jobs:
            scorer = job.scorer_cls(device=self.device, **job.params)
            parts = []
            with tqdm(total=len(job.rows), desc=f"score {job.name}", unit="img",
                      disable=self.quiet) as bar:
                for rows in chunks(job.rows, batch_size):
                    parts.append(score_rows(scorer, job.name, store, rows))
                    bar.update(len(rows))
            yield pd.concat(parts, ignore_index=True)


def generate(pipe: Any, items: Sequence[WorkItem], adapters: dict[str, list[Adapter]],
             store: RunStore, settings: GenerationSettings, quiet: bool = False) -> int:
    """Generate every item not already in the store. Returns the number written."""
    todo = pending(items, store, settings.batch_size)
    bar = tqdm(total=sum(len(c) for c in todo), desc="generate", unit="img",
               disable=quiet or not todo)  # every image cached: no "generate: 0img" bar
    active: list[Adapter] = []
    written = 0
    if todo:
        warm_up(pipe, todo[0], settings)
    with Writer(store, depth=2 * settings.batch_size) as writer:
        for chunk in todo:
            method_adapters = adapters[chunk[0].method]
            if method_adapters is not active:  # weight-patching methods own the pipe one at a time
                swap(pipe, active, method_adapters)
                active = method_adapters
            written += write_batch(pipe, method_adapters, chunk, store, settings, writer=writer)
            bar.update(len(chunk))
        swap(pipe, active, [])
    bar.close()
    return written


class Writer:
    """Stores images on background threads while the next batch generates, so a GPU never
    waits on PNG encoding, fsyncs or the disk. At most `depth` images wait or are being written:
    `put` blocks beyond that (backpressure), so a SIGKILL loses at most the batch generating and
    the `depth` images queued, and each image is still stored PNG first, record last, atomically.
    The first error a write raises is raised again, unchanged (a full disk stays an OSError
    ENOSPC, which the CLI reports in one line), by the next `put` or on leaving the block."""

    def __init__(self, store: RunStore, depth: int, threads: int | None = None) -> None:
        # zlib and file writes release the GIL: two threads keep up with 0.1 s/image on 2 cores.
        self.store = store
        self._pool = ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="bench-writer",
                                        initializer=yield_cpu)
        self._slots = threading.BoundedSemaphore(max(1, depth))
        self._futures: set[Future] = set()

    def put(self, key: str, image: np.ndarray, rec: dict) -> None:
        """Queue one image: (H, W, 3) uint8, or float in [0, 1] as the sampler returns it, then
        converted to 8 bits (`to_uint8`) on a writer thread."""
        self._raise_first_error()
        self._slots.acquire()
        try:
            self._futures.add(self._pool.submit(self._put, key, image, rec))
        except BaseException:
            self._slots.release()
            raise

    def _put(self, key: str, image: np.ndarray, rec: dict) -> None:
        try:
            self.store.put(key, image if image.dtype == np.uint8 else to_uint8(image), rec)
        finally:
            self._slots.release()

    def _raise_first_error(self) -> None:
        done = {f for f in self._futures if f.done()}
        self._futures -= done
        for f in done:
            f.result()  # raises the write's exception in the generating thread

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Queued images are whole: finish writing them even when generation failed.
        self._pool.shutdown(wait=True)
        if exc_type is None:
            self._raise_first_error()


WRITER_NICENESS = 10  # added to the writer threads' nice value: lower priority than generation


def yield_cpu() -> None:
    """Lower the calling thread's CPU priority (Linux: nice is per thread), so that on a busy
    machine the thread feeding the GPU runs first and PNG encoding takes what is left; the queue's
    backpressure keeps the writers from falling behind for long. Elsewhere nice is per process:
    left alone."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS)


def time_phase(pipe: Any, grid: Sequence[WorkItem], adapters: dict[str, list[Adapter]],
               store: RunStore, settings: GenerationSettings, rounds: int) -> None:
    """Time every method interleaved (bench/timing.py) on one batch of the grid's first prompts,
    storing nothing but RUN/timing.parquet. Weight swaps are outside the timed call. A run of
    one method skips it: at GPU speed its rounds + warm-up would add 5 batches to the run."""
    from bench import timing

    batches = timing.timing_batches(grid, list(adapters), settings.batch_size)
    if not rounds or sum(1 for b in batches.values() if b) < 2:
        return  # one method has nothing to be interleaved with: its generation times serve
    active: list[Adapter] = []

    def run_batch(method: str) -> float:
        nonlocal active
        swap(pipe, active, adapters[method])
        active = adapters[method]
        chunk = batches[method]
        return sample(pipe, active, to_batch(chunk), steps=settings.sampler.steps,
                      height=settings.height, width=settings.width,
                      negative_prompt=settings.sampler.negative_prompt,
                      guidance_rescale=settings.sampler.guidance_rescale).seconds

    warm_up(pipe, next(b for b in batches.values() if b), settings)
    table = timing.time_methods(run_batch, batches, rounds)
    swap(pipe, active, [])
    store.write_timing(table)


def warm_up(pipe: Any, chunk: Sequence[WorkItem], settings: GenerationSettings) -> None:
    """Two plain steps on the first batch's shape, stored nowhere: first calls pay for kernel
    selection and lazy initialisation, which would otherwise be billed to the first method's
    latency (and make every other method look faster than the baseline)."""
    try:
        sample(pipe, [], to_batch(chunk), steps=2, height=settings.height, width=settings.width,
               negative_prompt=settings.sampler.negative_prompt)
    except NonFiniteError as exc:
        raise exc.naming("baseline (warm-up)", [(w.prompt.id, w.seed) for w in chunk],
                         settings.dtype) from None


def to_batch(chunk: Sequence[WorkItem]) -> Batch:
    return Batch(prompts=[w.prompt.text for w in chunk], seeds=[w.seed for w in chunk],
                 metadata=[dict(w.prompt.metadata) for w in chunk], guidance=chunk[0].guidance)


def pending(items: Sequence[WorkItem], store: RunStore, size: int) -> list[list[WorkItem]]:
    """The batches with an image missing. A batch is regenerated whole (its missing images
    written), never re-formed from the missing items alone: same company, same floats."""
    todo = [c for c in batches(items, size) if not all([store.has(w.key) for w in c])]  # all checked
    store.report_damaged("regenerated")
    return todo


def write_batch(pipe: Any, adapters: Sequence[Adapter], chunk: Sequence[WorkItem],
                store: RunStore, settings: GenerationSettings,
                on_write: Callable[[], None] | None = None, writer: Writer | None = None) -> int:
    """Sample one batch and store the images not stored yet (through `writer` when given:
    queued, not yet on disk). Returns how many were written or queued."""
    try:  # a non-finite image stops the run before anything of its batch is stored
        result = sample(pipe, adapters, to_batch(chunk), steps=settings.sampler.steps,
                        height=settings.height, width=settings.width,
                        negative_prompt=settings.sampler.negative_prompt,
                        guidance_rescale=settings.sampler.guidance_rescale)
        # Through the writer, the 8-bit conversion runs on its threads, off the generating one
        # (sample() has already refused non-finite pixels).
        pixels = result.images if writer is not None else to_uint8(result.images)
    except NonFiniteError as exc:
        raise exc.naming(chunk[0].method, [(w.prompt.id, w.seed) for w in chunk],
                         settings.dtype) from None
    written = 0
    for n, item in enumerate(chunk):
        if not store.has(item.key):  # at-least-once executors: never write an image twice
            rec = record(item, settings, result, len(chunk))
            if result.filtered is not None:  # a filter ran: whether it replaced this image
                rec["filtered"] = bool(result.filtered[n])
            if writer is None:
                store.put(item.key, pixels[n], rec)
            else:
                writer.put(item.key, pixels[n], rec)
            written += 1
            if on_write:
                on_write()
    return written


def swap(pipe: Any, old: Sequence[Adapter], new: Sequence[Adapter]) -> None:
    for a in reversed(old):
        a.release(pipe)
    for a in new:
        a.prepare(pipe)


def record(item: WorkItem, settings: GenerationSettings, result: Any, batch_len: int) -> dict:
    """How one image was made. Its grid position, prompt text and metadata are not here: an
    image may serve several positions, and images.parquet takes them from the current grid and
    prompts at consolidation (so an edited metadata field shows without regenerating)."""
    return {
        "key": item.key, "method": item.method, "seed": item.seed, "guidance": item.guidance,
        "prompt_sha256": prompt_sha256(item.prompt.text), "steps": settings.sampler.steps,
        "height": settings.height, "width": settings.width, "model": settings.model,
        "seconds": result.seconds / batch_len, "unet_evals": result.unet_evals,
        "step_seconds": result.step_seconds, "peak_memory_mb": result.peak_memory_mb,
        "batch_size": batch_len,
    }
