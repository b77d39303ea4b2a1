"""Scale-out: `--executor ray` on a private two-worker Ray bound to 127.0.0.1 gives the local
executor's images, tables and scores; a worker SIGKILLed mid-run is restarted, its batch retried,
and nothing it wrote is lost or rewritten; two shards run concurrently as separate processes
against one run directory equal one run. The Ray tests skip when Ray is not installed."""
import os

# Read by Ray when it is first imported: every Ray process then binds 127.0.0.1 (single node).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from bench import executor_ray, planning, runner  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.executor import GenerationSettings, LocalExecutor, generate  # noqa: E402
from bench.models import ModelError  # noqa: E402
from bench.spec import RunSpec, SamplerSpec, SpecError  # noqa: E402
from bench.grid import grid_tables  # noqa: E402
from bench.store import RunStore  # noqa: E402
from bench.metrics.base import Scorer  # noqa: E402

pytestmark = pytest.mark.timeout(300)
FAST = ["--model", "tiny-random", "--steps", "3", "--quiet"]
SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "slurm-example.sh"
TIMING = ["seconds", "step_seconds", "peak_memory_mb"]  # differ run to run


class Brightness(Scorer):
    """Mean of one channel, and the scoring process's pid (proves where it ran)."""

    name = "brightness"

    def __init__(self, device=None, channel="0"):
        self.channel = int(channel)

    def score(self, images, rows):
        means = [float(np.asarray(im, dtype=float)[..., self.channel].mean()) for im in images]
        return pd.DataFrame({"brightness.mean": means, "brightness.pid": os.getpid()},
                            index=rows.index)


class KillingWorker(executor_ray.GenerationWorker):
    """The first worker to store its `AT`-th image creates `MARKER` (listing every record then
    in the store with its mtime) and SIGKILLs its own process; the restarted actor finds the
    marker and lives. Set AT and MARKER on a subclass (the actor is pickled by value)."""

    AT: int = 0
    MARKER: str = ""

    def wrote(self) -> None:
        super().wrote()
        if self.written != self.AT:
            return
        try:
            with open(self.MARKER, "x") as f:  # "x": exactly one worker dies, once
                records = (self.store.root / "records").glob("*.json")
                json.dump({p.stem: p.stat().st_mtime_ns for p in records}, f)
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # Workers import this module's Brightness by value: tests/ is not on their sys.path.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread():
    """The local references run one torch thread, as Ray's one-CPU workers do: on CPU an image's
    floats depend on the intra-op thread count (one uint8 level here and there at 1 vs 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prompts(prompt_file):
    return prompt_file(["a photo of a doctor", "a photo of a nurse", "a photo of a chef"])


@pytest.fixture
def brightness(monkeypatch):
    from bench.registry import METRICS

    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))  # undone after the test
    METRICS.register("brightness", Brightness)


def pngs(run: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((run / "images").glob("*.png"))}


def assert_same_images(a: Path, b: Path) -> None:
    """Same files, same pixels: every image is computed in the same batch, with the same thread
    count, on both sides."""
    ia, ib = pngs(a), pngs(b)
    assert ia and list(ia) == list(ib)
    for name in ia:
        assert np.array_equal(ia[name], ib[name]), name


def table(run: Path) -> pd.DataFrame:
    t = pd.read_parquet(run / "images.parquet")
    return t.drop(columns=[c for c in TIMING if c in t])


def test_ray_run_equals_local_run(ray_local, tmp_path, prompts, brightness):
    common = [*FAST, "--methods", "baseline,sld-weak", "--prompt-set", str(prompts),
              "--samples", "2", "--batch-size", "2", "--metrics", "brightness:channel=1"]
    assert main(["run", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["run", *common, "--executor", "ray", "--workers", "2",
                 "--out", str(tmp_path / "ray")]) == 0
    assert_same_images(tmp_path / "local", tmp_path / "ray")
    local, ray = table(tmp_path / "local"), table(tmp_path / "ray")
    assert len(local) == 12
    pd.testing.assert_frame_equal(local, ray)
    s_local = pd.read_parquet(tmp_path / "local" / "scores.parquet").set_index("key").sort_index()
    s_ray = pd.read_parquet(tmp_path / "ray" / "scores.parquet").set_index("key").sort_index()
    assert (s_local["brightness.pid"] == os.getpid()).all()
    assert not (s_ray["brightness.pid"] == os.getpid()).any()  # scored in the Ray workers
    pd.testing.assert_series_equal(s_local["brightness.mean"], s_ray["brightness.mean"])
    # Reference for the column itself: channel 1's mean of the stored PNG.
    key = s_ray.index[0]
    png = np.asarray(Image.open(tmp_path / "ray" / "images" / f"{key}.png"), dtype=float)
    assert s_ray.loc[key, "brightness.mean"] == pytest.approx(png[..., 1].mean())
    assert (tmp_path / "ray" / "report" / "index.html").exists()


def test_scoring_spreads_over_workers(ray_local, tmp_path, prompts, brightness):
    spec = RunSpec(model="tiny-random", prompt_sets=(str(prompts),), samples=2,
                   sampler=SamplerSpec(steps=3), metrics=("none",), out=str(tmp_path / "r"))
    runner.run(spec, quiet=True)
    store = RunStore(spec.out)
    with executor_ray.RayExecutor(workers=2, quiet=True) as ray_executor:
        out = runner.score(store, ["brightness"], None, ray_executor, batch_size=1)
    assert out == {"used": {"brightness": {}}, "skipped": {}}
    scores = store.scores()
    assert len(scores) == 6 and scores["_scored.brightness"].all()
    assert scores["brightness.pid"].nunique() == 2  # both workers took batches
    # Already scored: the scoring stage gives the executor no job.
    sent = []
    local = LocalExecutor(quiet=True)
    local.score = lambda jobs, store, batch_size: sent.extend(jobs) or iter(())
    assert runner.score(store, ["brightness"], None, local)["used"] == {"brightness": {}}
    assert sent == [] and store.scores()["brightness.pid"].equals(scores["brightness.pid"])


def test_killed_worker_is_restarted_and_loses_nothing(ray_local, tmp_path, prompt_file,
                                                      monkeypatch):
    prompts = prompt_file([f"a photo of person number {i}" for i in range(4)])
    spec = RunSpec(model="tiny-random", methods=("baseline",), prompt_sets=(str(prompts),),
                   samples=2, sampler=SamplerSpec(steps=3), batch_size=2, metrics=("none",))
    p = planning.plan(spec)
    settings = GenerationSettings("tiny-random", spec.sampler, p.height, p.width, 2)
    generate(p.pipe, p.items, p.adapters, RunStore(tmp_path / "local"), settings, quiet=True)
    marker = tmp_path / "killed.json"
    # The first worker to write its 3rd image (the first of its 2nd batch) SIGKILLs itself.
    killer = type("Killer", (KillingWorker,), {"AT": 3, "MARKER": str(marker)})
    monkeypatch.setattr(executor_ray, "GenerationWorker", killer)
    store = RunStore(tmp_path / "ray")
    store.write_grid(*grid_tables(p.grid, p.prompt_sets))  # what bench run writes first
    assert executor_ray.generate(p.pipe, p.items, p.adapters, store, settings, quiet=True,
                                 workers=2, model_fp=p.model_fp, chains=p.chains) == 8
    written_before_kill = json.loads(marker.read_text())
    assert 3 <= len(written_before_kill) < 8, "the kill must land mid-run"
    for key, mtime in written_before_kill.items():  # kept, not regenerated by the retry
        assert store.record_path(key).stat().st_mtime_ns == mtime
    store.consolidate()
    assert (store.images()["batch_size"] == 2).all()  # the retried batch was recomputed whole
    assert_same_images(tmp_path / "local", tmp_path / "ray")
    assert sorted(store.images()["key"]) == sorted(w.key for w in p.items)
    assert not list(store.root.rglob("*.tmp"))


def test_worker_with_other_weights_stops_the_run_in_one_line(ray_local, tmp_path, prompts):
    """A node whose model differs from the driver's would file images under wrong cache keys."""
    spec = RunSpec(model="tiny-random", prompt_sets=(str(prompts),), samples=1,
                   sampler=SamplerSpec(steps=3), metrics=("none",))
    p = planning.plan(spec)
    settings = GenerationSettings("tiny-random", spec.sampler, p.height, p.width, 2)
    store = RunStore(tmp_path / "r")
    with pytest.raises(ModelError, match=rf"has fingerprint {p.model_fp}, the driver's has 0+; "):
        executor_ray.generate(p.pipe, p.items, p.adapters, store, settings, quiet=True,
                              workers=1, model_fp="0" * 16, chains=p.chains)
    assert not (store.root / "records").exists()


def test_worker_count_beyond_the_cluster_is_one_line(ray_local):
    with pytest.raises(SpecError, match=r"^--workers 3: the Ray cluster has 2 CPUs; ask for 1 to"):
        executor_ray.worker_plan(ray_local, 3, None)
    with pytest.raises(SpecError, match=r"^--workers 0: "):
        executor_ray.worker_plan(ray_local, 0, None)
    count, options, device = executor_ray.worker_plan(ray_local, None, None)
    assert (count, options["num_gpus"], options["num_cpus"], device) == (1, 0, 1, "cpu")
    assert options["max_restarts"] > 0 and options["max_task_retries"] > 0


def test_without_ray_the_flag_says_how_to_install(tmp_path, prompts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "r"
    assert main(["run", *FAST, "--prompt-set", str(prompts), "--samples", "1", "--metrics",
                 "none", "--executor", "ray", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        'bench: error: --executor ray needs Ray, an optional extra: pip install -e ".[ray]"')
    assert not out.exists()
    assert main(["run", *FAST, "--prompt-set", str(prompts), "--workers", "2", "--out",
                 str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench: error: --workers 2: only --executor ray has workers")


def test_concurrent_shards_equal_one_run(tmp_path, prompts):
    """Two array tasks of docs/slurm-example.sh, run at the same time against one directory."""
    spec = [*FAST, "--methods", "baseline,sld-weak", "--prompt-set", str(prompts),
            "--samples", "2", "--metrics", "none"]
    assert main(["run", *spec, "--out", str(tmp_path / "whole")]) == 0
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RUN": str(shared),
           "BENCH_ARGS": " ".join(spec),  # no spaces inside these arguments
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    procs = [subprocess.Popen(["bash", str(SLURM_SCRIPT)],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
    manifest = json.loads((shared / "manifest.json").read_text())
    assert manifest["spec"]["shard"] is None  # the whole run once both shards are in
    assert manifest["grid"]["images"] == manifest["grid"]["done"] == 12
    assert main(["report", str(shared), "--quiet"]) == 0
    assert_same_images(tmp_path / "whole", shared)
    pd.testing.assert_frame_equal(table(tmp_path / "whole"), table(shared))
    assert not list(shared.rglob("*.tmp"))
