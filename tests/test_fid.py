"""FID/KID: closed forms on injected features, torch-fidelity's own numbers on images through
random weights in its published state-dict format, and `bench run ... --metrics fid-baseline`."""
from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from PIL import Image

from bench.metrics import fid

COCO = Path(__file__).resolve().parents[2] / "shared/data/coco_30k.csv"


def exact_gaussian(rng: np.random.Generator, n: int, mean: np.ndarray,
                   cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and (n-1)-normalised covariance are exactly mean and cov."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample cov = I
    return mean + z @ np.linalg.cholesky(cov).T


def closed_form(m1, s1, m2, s2) -> float:
    root = scipy.linalg.sqrtm(scipy.linalg.sqrtm(s1) @ s2 @ scipy.linalg.sqrtm(s1)).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_same_sets_give_zero() -> None:
    x = np.random.default_rng(0).normal(size=(300, 64))
    assert abs(fid.fid_library(x, x)) < 1e-8 and abs(fid.fid_fast(x, x)) < 1e-8
    big = np.random.default_rng(1).normal(size=(40, 512))  # n < d: the n x n path
    assert abs(fid.fid_fast(big, big)) < 1e-8
    # the library's eigenvalues of a rank-deficient product: float error ~1e-7 of the trace
    assert abs(fid.fid_library(big, big)) < 1e-6 * np.trace(np.cov(big, rowvar=False))


def test_gaussians_match_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    d = 6
    # commuting covariances: FID = |dm|^2 + sum (sqrt a - sqrt b)^2, by hand
    m1, m2 = np.zeros(d), np.arange(d, dtype=float) / 2
    a, b = np.array([1, 2, 3, 4, 5, 6.0]), np.array([4, 2, 1, 9, 5, 0.5])
    x, y = exact_gaussian(rng, 500, m1, np.diag(a)), exact_gaussian(rng, 400, m2, np.diag(b))
    hand = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.fid_library(x, y) == pytest.approx(hand, abs=1e-4)
    assert fid.fid_fast(x, y) == pytest.approx(hand, abs=1e-4)
    # general covariances against scipy's sqrtm
    q1, q2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = q1 @ q1.T + np.eye(d), q2 @ q2.T + 0.1 * np.eye(d)
    x, y = exact_gaussian(rng, 700, m1, s1), exact_gaussian(rng, 700, m2, s2)
    want = closed_form(m1, s1, m2, s2)
    assert fid.fid_library(x, y) == pytest.approx(want, abs=1e-4)
    assert fid.fid_fast(x, y) == pytest.approx(want, abs=1e-4)


def test_fast_formula_equals_the_library_on_both_sides() -> None:
    rng = np.random.default_rng(3)
    for n, d in [(40, 128), (300, 32)]:  # n < d and n > d
        x, y = rng.normal(size=(n, d)), rng.normal(0.3, 1.5, size=(n, d))
        assert fid.fid_fast(x, y) == pytest.approx(fid.fid_library(x, y), rel=1e-7)


def test_kid_is_torch_fidelitys_unbiased_mmd_and_its_se_covers() -> None:
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(120, 16)), rng.normal(0.2, 1.0, size=(120, 16))
    cell = fid.kid_cell(x, y, np.random.default_rng(0), 200)
    lib = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1,
                                 kid_subset_size=120, verbose=False)
    assert cell.value == pytest.approx(lib["kernel_inception_distance_mean"], rel=1e-9)
    assert cell.lo < cell.value < cell.hi and cell.n == 120
    # blocks: mean over disjoint blocks of 1000, SE from their spread
    x, y = rng.normal(size=(3000, 8)), rng.normal(size=(3000, 8))
    cell = fid.kid_cell(x, y, np.random.default_rng(0), 0)
    assert cell.lo < 0 < cell.hi  # same distribution: 0 inside +-1.96 SE


# --- the network, with random weights in torch-fidelity's published format ----------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A state dict with exactly the keys and shapes of weights-inception-2015-12-05-6726825d.pth
    (the module's own, built without loading), random He-normal convolutions so features are
    O(1)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3 as Net

    with mock.patch.object(Net, "load_state_dict", lambda self, sd: None), \
            mock.patch("torch.load", lambda *a, **k: {}):
        net = Net("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key.endswith("fc.weight"):
            value = torch.randn(value.shape, generator=gen) * 0.01
        state[key] = value
    path = tmp_path_factory.mktemp("inception") / fid.FILENAME
    torch.save(state, path)
    return path


def images(seed: int, n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3))
    return [Image.fromarray(np.clip(base + rng.integers(-60, 60, (size, size, 3)), 0, 255)
                            .astype(np.uint8)) for _ in range(n)]


def test_matches_torch_fidelity_calculate_metrics(weights: Path, tmp_path: Path) -> None:
    import torch_fidelity

    sets = {"a": images(0, 6, fid.SIZE), "b": images(1, 6, fid.SIZE)}
    for name, ims in sets.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(ims):
            im.save(tmp_path / name / f"{i}.png")
    lib = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, kid=True, cuda=False,
        cache=False, verbose=False, kid_subsets=1, kid_subset_size=6,
        feature_extractor_weights_path=str(weights), save_cpu_ram=True)
    scorer = fid.InceptionFeatures(weights=str(weights))
    x, y = scorer.features(sets["a"]), scorer.features(sets["b"])
    assert np.abs(x).mean() > 1e-3  # the random network does not collapse the features
    assert fid.fid_library(x, y) == pytest.approx(lib["frechet_inception_distance"], rel=1e-4)
    kid = fid.kid_cell(x, y, np.random.default_rng(0), 0)
    # the library's kernel sums run in float32 (KID is a small difference of large sums); ours in
    # float64, so the two agree to float32's cancellation error, not further
    assert kid.value == pytest.approx(lib["kernel_inception_distance_mean"], rel=5e-3)


def test_clean_resize_is_antialiased_bicubic() -> None:
    # a 1-pixel checkerboard averages to grey when antialiased; unantialiased bilinear aliases
    board = (np.indices((598, 598)).sum(0) % 2 * 255).astype(np.uint8)
    out = fid.clean_resize(Image.fromarray(board).convert("RGB"))
    assert out.shape == (3, 299, 299) and out.dtype == np.uint8
    assert abs(out[:, 5:-5, 5:-5].astype(float).mean() - 127.5) < 2 and out[:, 5:-5, 5:-5].std() < 3


def test_missing_and_bad_weights(tmp_path: Path) -> None:
    scorer = fid.InceptionFeatures(weights=str(tmp_path / "none.pth"))
    reason = scorer.available()
    assert reason.startswith(f"Inception weights not found at {tmp_path / 'none.pth'}")
    assert fid.URL in reason and "curl" in reason and "\n" not in reason
    scorer.check()  # a missing file is available()'s to report
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, bad)
    with pytest.raises(ValueError, match=r"bad.pth: not torch-fidelity's Inception-v3 .*"
                                         r"Conv2d_1a_3x3.conv.weight is missing"):
        fid.InceptionFeatures(weights=str(bad)).check()


# --- the aggregator and the CLI -----------------------------------------------------------------

def feature_table(n: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(n, fid.DIM)).astype(np.float32)
    rows = []
    for method, feats in [("baseline", base), ("same", base), ("moved", base + shift)]:
        for i, f in enumerate(feats):
            rows.append({"method": method, "prompt_id": f"p{i}", "seed": i, "sample": 0,
                         "fid-baseline.feature": f.astype("<f4").tobytes()})
    return pd.DataFrame(rows)


def test_aggregator_pairs_with_the_baseline_and_refuses_small_n() -> None:
    table = feature_table(60, 0.5)
    agg = fid.FIDToBaseline("fid-baseline.feature", n_boot=20)
    cells = agg.compute(table)
    assert set(cells) == {"same", "moved"}
    assert abs(cells["same"]["fid_baseline"].value) < 1e-6 and cells["same"]["fid_baseline"].n == 60
    moved = cells["moved"]["fid_baseline"]
    assert moved.value == pytest.approx(0.25 * fid.DIM, rel=1e-4)  # pure shift: |dm|^2
    assert moved.lo <= moved.value <= moved.hi
    assert cells["moved"]["kid_baseline"].value > cells["same"]["kid_baseline"].value
    small = fid.FIDToBaseline("fid-baseline.feature", n_boot=5).compute(feature_table(10, 0.5))
    assert small == {}


def test_aggregator_notes_the_refusal() -> None:
    agg = fid.FIDToBaseline("fid-baseline.feature", n_boot=5)
    out = agg.compute(feature_table(10, 0.5))
    assert any("refused, 10 image pairs < 50" in n for n in out.notes)


def test_bench_run_coco30k_writes_fid_to_baseline_cells(weights: Path, tmp_path: Path) -> None:
    if not COCO.is_file():
        pytest.skip(f"real COCO-30k file absent: {COCO}")
    from bench.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--steps", "2", "--quiet",
                 "--methods", "baseline,sld-max", "--samples", "1",
                 "--prompt-set", f"coco-30k:path={COCO},sample=64",
                 "--metrics", f"fid-baseline:weights={weights}", "--out", str(out)]) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    rows = board[board["metric"].isin(["fid_baseline", "kid_baseline"])]
    assert set(rows["method"]) == {"sld-max"}
    assert set(rows["metric"]) == {"fid_baseline", "kid_baseline"}
    assert (rows["n"] == 64).all()
    assert ((rows["ci_lo"] <= rows["value"]) & (rows["value"] <= rows["ci_hi"])).all()
    assert (rows.loc[rows["metric"] == "fid_baseline", "value"] > 0).all()
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["fid-baseline.feature"].map(len).eq(fid.DIM * 4).all()


# --- against a folder of real images ------------------------------------------------------------

def test_reference_scorer_caches_the_folders_features(weights: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fid, "MIN_N", 3)
    folder = tmp_path / "real"
    (folder / "sub").mkdir(parents=True)
    ims = images(2, 3, 64)
    for i, im in enumerate(ims):
        im.save(folder / ("sub" if i == 2 else "") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    scorer = fid.InceptionReference(reference=str(folder), weights=str(weights))
    assert scorer.available() is None
    scorer.check()
    out = scorer.score(ims[:2], pd.DataFrame({"key": ["a", "b"]}))
    cache = Path(out["fid.reference"].iloc[0])
    assert cache.parent == tmp_path / "cache" / "bench" / "fid-reference"
    ref = np.load(cache, allow_pickle=False)
    # sorted files: 0.png, 1.png, sub/2.png
    assert np.allclose(ref, scorer.features(ims), atol=1e-5)
    assert np.allclose(fid.from_bytes(out["fid.feature"]), ref[:2], atol=1e-5)


def test_reference_errors_and_skip(tmp_path: Path) -> None:
    assert "reference=DIR" in fid.InceptionReference().available()
    with pytest.raises(ValueError, match=r"reference=.*nowhere is not a directory"):
        fid.InceptionReference(reference=str(tmp_path / "nowhere")).check()
    (tmp_path / "few").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "few" / "a.png")
    with pytest.raises(ValueError, match=r"holds 1 images .* at least 50"):
        fid.InceptionReference(reference=str(tmp_path / "few")).check()


def test_reference_aggregator_same_images_give_zero(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(80, fid.DIM)).astype(np.float32)
    path = tmp_path / "ref.npy"
    np.save(path, ref)
    rows = [{"method": m, "prompt_id": f"p{i}", "seed": i, "sample": 0,
             "fid.feature": (f + shift).astype("<f4").tobytes(), "fid.reference": str(path)}
            for m, shift in (("baseline", 0.0), ("moved", 0.5)) for i, f in enumerate(ref)]
    table = pd.DataFrame(rows)
    [agg] = feature_aggregators(table)
    cells = agg.compute(table)
    assert abs(cells["baseline"]["fid_reference"].value) < 1e-6
    assert cells["moved"]["fid_reference"].value == pytest.approx(0.25 * fid.DIM, rel=1e-4)
    assert cells["moved"]["kid_reference"].lo > cells["baseline"]["kid_reference"].hi
    assert cells["moved"]["fid_reference"].n == 80


def feature_aggregators(table: pd.DataFrame) -> list:
    """The aggregators a custom prompt set's board gets for the table, latency aside: the
    feature scorer's own (Scorer.aggregators)."""
    from bench.metrics.aggregators import Latency
    from bench.report.boards import plan
    from bench.suites import SUITES

    return [a for a in plan(table, SUITES.get("fairness")).aggregators
            if not isinstance(a, Latency)]
