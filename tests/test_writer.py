"""The background writer (bench/executor.py Writer): backpressure, errors surfacing whole, and a
SIGKILL while its queue is full losing at most the images in flight, corrupting none."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from bench.executor import Writer
from bench.store import RunStore

IMAGE = np.zeros((8, 8, 3), np.uint8)


class SlowStore:
    """Stands in for RunStore.put: blocks until released, counting what is being written."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started: list[str] = []

    def put(self, key, image, record) -> None:
        self.started.append(key)
        self.gate.wait(10)


def test_put_blocks_when_depth_images_are_queued():
    store = SlowStore()
    writer = Writer(store, depth=3, threads=1)
    for k in "abc":
        writer.put(k, IMAGE, {})
    fourth = threading.Thread(target=writer.put, args=("d", IMAGE, {}))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive()  # backpressure: the generator waits for the writer
    store.gate.set()
    fourth.join(10)
    with writer:
        pass
    assert store.started == list("abcd")


def test_float_images_are_stored_as_the_sampler_rounds_them(tmp_path):
    """A float image is converted on the writer's thread exactly as to_uint8 (diffusers'
    rounding) converts it on the generating one."""
    from bench.sampler import to_uint8

    rng = np.random.default_rng(0)
    image = rng.random((8, 8, 3), dtype=np.float32)
    image[0, 0] = [0.0, 1.0, 127.5 / 255]
    store = RunStore(tmp_path / "r")
    with Writer(store, depth=2, threads=1) as writer:
        writer.put("k", image, {"key": "k"})
    stored = np.asarray(store.load_image("k"))
    assert np.array_equal(stored, to_uint8(image))
    assert stored[0, 0].tolist() == [0, 255, int(np.round(np.float32(127.5 / 255) * 255))]


def test_a_write_error_is_raised_whole_in_the_generating_thread(tmp_path):
    class FullDisk(RunStore):
        def put(self, key, image, record):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.image_path(key)))

    with pytest.raises(OSError) as info:
        with Writer(FullDisk(tmp_path / "r"), depth=2) as writer:
            writer.put("k0", IMAGE, {})
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("k0.png")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")
def test_writer_threads_yield_the_cpu_to_the_generating_thread():
    """On a busy machine the thread feeding the GPU runs first: writers are WRITER_NICENESS nicer."""
    from bench.executor import WRITER_NICENESS

    class NiceStore:
        def put(self, key, image, record) -> None:
            self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    store, mine = NiceStore(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with Writer(store, depth=1, threads=1) as writer:
        writer.put("k", IMAGE, {})
    assert store.nice == min(19, mine + WRITER_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # caller unchanged


CHILD = textwrap.dedent("""
    import sys, time
    import bench.executor as ex
    import bench.store as st
    from bench import runner
    from bench.spec import RunSpec, SamplerSpec

    real_write, real_sample = st.atomic_write, ex.sample

    def slow_write(path, data):  # a disk far slower than generation: the queue fills
        time.sleep(0.25)
        real_write(path, data)

    def counted_sample(*args, **kwargs):
        result = real_sample(*args, **kwargs)
        with open(sys.argv[2], "a") as f:
            f.write(f"{len(result.images)}\\n")
        return result

    st.atomic_write, ex.sample = slow_write, counted_sample
    spec = RunSpec(model="tiny-random", prompt_sets=(sys.argv[3],), samples=4, batch_size=2,
                   sampler=SamplerSpec(steps=2), metrics=("none",), out=sys.argv[1])
    runner.run(spec, quiet=True)
""")


def test_kill_with_a_full_writer_queue_loses_only_images_in_flight(tmp_path, prompt_file):
    prompts = prompt_file([f"a photo of person number {i}" for i in range(10)])
    out, sampled = tmp_path / "run", tmp_path / "sampled.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(sampled), str(prompts)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    batch, depth = 2, 4  # generate() queues at most 2 x batch_size images
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        records = len(list((out / "records").glob("*.json"))) if out.exists() else 0
        made = sum(map(int, sampled.read_text().split())) if sampled.exists() else 0
        if records >= 2 and made - records >= depth:  # the writer is at least `depth` behind
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    made = sum(map(int, sampled.read_text().split()))
    store = RunStore(out)
    keys = [p.stem for p in (out / "records").glob("*.json")]
    assert all(store.record(k) is not None for k in keys) and not store.damaged  # nothing corrupt
    assert made - len(keys) <= depth + batch  # the queue, and the batch waiting to enter it
    assert made - len(keys) >= depth  # the kill did land with the queue full
    pngs = {p.stem for p in (out / "images").glob("*.png")}
    assert set(keys) <= pngs and len(pngs - set(keys)) <= 4  # PNGs whose record was cut off (a writer thread each)
