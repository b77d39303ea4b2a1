"""FID and KID: Inception-v3 pool features per image (a scorer) and the distances per method (an
aggregator), with bootstrap intervals over images.

The network and the statistics are torch-fidelity's (docs/metrics.md says why not clean-fid or
torchmetrics): `FeatureExtractorInceptionV3` with its published state dict
`weights-inception-2015-12-05-6726825d.pth`, `fid_statistics_to_metric`'s FID formula
(evaluated in an exactly equal, symmetric form), `kernel_mmd`/`mmd2` for KID. Resizing follows
clean-fid's "clean" mode (PIL bicubic with antialiasing, per channel in float), not
torch-fidelity's or torchmetrics' unantialiased bilinear: images reach the network at 299x299,
where its own resize is the identity.

Features are stored per image as 2048 float32 (8 KiB) in a binary column of scores.parquet,
`<scorer>.feature`, so `bench report` recomputes the distances without rescoring.
"""
from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.metrics.aggregators import BASELINE, PAIR_KEYS, _Bootstrapped
from bench.metrics.base import Aggregate, Cell, MetricInfo, Scorer

FILENAME = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FILENAME}"
ENV = "BENCH_INCEPTION_WEIGHTS"
SIZE = 299
DIM = 2048
# Two keys whose shapes identify the published network (first conv, 1008-way TF classifier).
SIGNATURE = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, DIM)}


def default_weights() -> Path:
    """Where torch-fidelity itself caches the file: torch hub's checkpoints directory."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def download_hint(target: Path) -> str:
    return f"`curl -L --create-dirs -o {target} {URL}`"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict, never unpickling code; ValueError naming what the file holds instead."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a torch state dict ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    for key, shape in SIGNATURE.items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            raise ValueError(f"{path}: not torch-fidelity's Inception-v3 ({FILENAME}): {key} is "
                             f"{got or 'missing'}, expected {shape}")
    return state


@lru_cache(maxsize=2)
def load_inception(path: str, device: str) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity calls torch.load(weights_only=False); hand it bytes re-saved from tensors
    # that loaded with weights_only=True, so no pickled code can reach it.
    buffer = io.BytesIO()
    torch.save(read_state(Path(path)), buffer)
    buffer.seek(0)
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=buffer)
    except RuntimeError as e:  # strict load_state_dict: missing/unexpected keys, shapes
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{path}: does not load into torch-fidelity's Inception-v3 "
                         f"({first})") from None
    return net.eval().to(device)


def clean_resize(image: Image.Image) -> np.ndarray:
    """clean-fid's "clean" resize: each channel as 32-bit float, PIL bicubic (antialiased) to
    299x299, then rounded to uint8 because torch-fidelity's network takes uint8 (clean-fid keeps
    the floats: at most 0.5/255 apart)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [np.asarray(Image.fromarray(rgb[..., c], mode="F").resize((SIZE, SIZE),
                                                                         Image.BICUBIC))
                for c in range(3)]
    return np.clip(np.rint(np.stack(channels, 0)), 0, 255).astype(np.uint8)


def to_bytes(features: np.ndarray) -> list[bytes]:
    return [row.astype("<f4").tobytes() for row in features]


def from_bytes(column: pd.Series, dim: int = DIM) -> np.ndarray:
    """The stored features as an (n, dim) float64 array; ValueError on a missing or short one."""
    rows = [np.frombuffer(b, dtype="<f4") if isinstance(b, (bytes, bytearray)) else None
            for b in column]
    bad = [i for i, r in enumerate(rows) if r is None or r.size != dim]
    if bad:
        raise ValueError(f"{column.name}: row {bad[0]} holds no {dim}-float feature; rescore with "
                         f"`bench report --metrics {str(column.name).split('.')[0]}`")
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, dim))


class InceptionFeatures(Scorer):
    """Per-image Inception-v3 pool3 features for `fid_baseline` / `kid_baseline`."""

    name: ClassVar[str] = "fid-baseline"
    aggregators: ClassVar[tuple[tuple[str, dict], ...]] = (
        ("fid-to-baseline", {"column": "fid-baseline.feature"}),)
    description: ClassVar[str] = ("Inception-v3 pool features (torch-fidelity weights) for FID/KID "
                                  "of each method against the baseline's images, same prompts and "
                                  "seeds")

    def __init__(self, weights: str | None = None, device: str | None = None) -> None:
        self.weights = Path(weights or os.environ.get(ENV) or default_weights()).expanduser()
        self.device = device or "cpu"

    def available(self) -> str | None:
        if self.weights.is_file():
            return None
        return (f"Inception weights not found at {self.weights}: download them with "
                f"{download_hint(self.weights)}, or pass {self.name}:weights=PATH / set {ENV}")

    def check(self) -> None:
        if self.weights.is_file():
            read_state(self.weights)

    def manifest(self) -> dict[str, str]:
        from importlib.metadata import version

        from bench.metrics.clip_models import file_sha256

        return {"package": f"torch-fidelity {version('torch-fidelity')}",
                "weights": str(self.weights), "weights_sha256": file_sha256(self.weights),
                "resize": "clean-fid clean mode (PIL bicubic, float) to 299x299, uint8"}

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        net = load_inception(str(self.weights), self.device)
        batch = torch.from_numpy(np.stack([clean_resize(im) for im in images])).to(self.device)
        with torch.no_grad():
            out = net(batch)[0].double().cpu().numpy()
        if not np.isfinite(out).all():
            raise ValueError(f"{self.weights}: Inception features are not finite")
        return out

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({f"{self.name}.feature": to_bytes(self.features(images))})


# --- statistics --------------------------------------------------------------------------------

MIN_N = 50  # fewer images: refused (docs/metrics.md: FID's bias at small n)
KID_BLOCK = 1000  # images per KID block, torch-fidelity's and clean-fid's subset size
KID_OPTIONS = {"kid_kernel": "poly", "kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None,
               "kid_kernel_poly_coef0": 1}


def fid_library(x: np.ndarray, y: np.ndarray) -> float:
    """FID by torch-fidelity's formula (eigenvalues of sigma1 sigma2)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    stats = [{"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)} for f in (x, y)]
    return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])


def _psd_sqrt(gram: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(gram)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_fast(x: np.ndarray, y: np.ndarray) -> float:
    """The same FID, exactly: tr sqrt(S1 S2) = ||A1 A2^T||_* / (n - 1) for centred A (n x d),
    computed on the smaller of the n x n and d x d sides (symmetric eigh/SVD, no sqrtm)."""
    a, b = x - x.mean(0), y - y.mean(0)
    c1, c2 = len(x) - 1, len(y) - 1
    if min(len(x), len(y)) <= x.shape[1]:
        nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        nuclear = np.linalg.svd(_psd_sqrt(a.T @ a) @ _psd_sqrt(b.T @ b), compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (a * a).sum() / c1 + (b * b).sum() / c2
                 - 2 * nuclear / np.sqrt(c1 * c2))


def fid_cell(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int) -> Cell:
    """FID with a percentile bootstrap CI over paired images. The value is `fid_fast`, equal to
    torch-fidelity's formula to its float error and exact at n < d, where the library's
    non-symmetric eigenvalues of a rank-deficient product are off by ~1e-7 of the trace."""
    n = len(x)
    value = fid_fast(x, y)
    reps = [fid_fast(x[i], y[i]) for i in (rng.integers(0, n, n) for _ in range(n_boot))]
    return Cell(value, *shifted_interval(reps, value), n)


def shifted_interval(reps: Sequence[float], value: float) -> tuple[float, float]:
    """The 95% percentile interval shifted by the bootstrap's bias estimate, mean(reps) - value.
    A resample repeats images, which inflates FID like a smaller n does, so the plain
    percentile interval lies above its own point (docs/metrics.md)."""
    if len(reps) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [2.5, 97.5]) - (np.mean(reps) - value)
    return float(lo), float(hi)


def kid_cell(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int) -> Cell:
    """KID = unbiased MMD^2 with the cubic polynomial kernel (torch-fidelity), lo/hi = +-1.96 SE.

    Up to 2 blocks' worth of images: one estimate on all of them, SE by bootstrap over paired
    images (kernel matrices computed once). More: disjoint blocks of KID_BLOCK images after a
    seeded shuffle, mean over blocks, SE = std / sqrt(blocks) (the blocks are independent)."""
    from torch_fidelity.metric_kid import kernel_mmd, kernel_poly, mmd2

    n = len(x)
    blocks = n // KID_BLOCK
    if blocks >= 2:
        order = rng.permutation(n)[:blocks * KID_BLOCK].reshape(blocks, KID_BLOCK)
        values = np.array([kernel_mmd(x[i], y[i], **KID_OPTIONS) for i in order])
        value, se = float(values.mean()), float(values.std(ddof=1) / np.sqrt(blocks))
    else:
        k = {"xx": kernel_poly(x, x, **KID_OPTIONS), "yy": kernel_poly(y, y, **KID_OPTIONS),
             "xy": kernel_poly(x, y, **KID_OPTIONS)}
        value = float(mmd2(k["xx"], k["xy"], k["yy"]))
        reps = []
        for _ in range(n_boot):
            i = rng.integers(0, n, n)
            reps.append(mmd2(k["xx"][np.ix_(i, i)], k["xy"][np.ix_(i, i)], k["yy"][np.ix_(i, i)]))
        se = float(np.std(reps, ddof=1)) if len(reps) > 1 else float("nan")
    return Cell(value, value - 1.96 * se, value + 1.96 * se, n)


# --- aggregator --------------------------------------------------------------------------------

class FIDToBaseline(_Bootstrapped):
    """FID and KID of each method's images against the baseline's images of the same prompts and
    seeds (pairs on prompt_id/seed/sample): the cost of a method relative to the model it
    modifies."""

    def __init__(self, column: str, baseline: str = BASELINE, n_boot: int = 100, seed: int = 0,
                 min_n: int = MIN_N) -> None:
        super().__init__(n_boot=n_boot, seed=seed)
        self.column, self.baseline, self.min_n = column, baseline, min_n
        self.infos = (
            MetricInfo("fid_baseline", "", False,
                       "FID of the method's images to the baseline's (same prompts and seeds); "
                       "95% bias-shifted percentile bootstrap CI over image pairs"),
            MetricInfo("kid_baseline", "", False,
                       "KID (unbiased MMD^2, cubic kernel) to the baseline's images; lo/hi = "
                       "+-1.96 standard errors"))

    def applies(self, table: pd.DataFrame) -> bool:
        return _present(table, self.column)

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = self._prepare(table, [self.column])
        base = df[df["method"] == self.baseline]
        if base.empty:
            return Aggregate({}, [f"fid_baseline: no '{self.baseline}' images in this prompt set"])
        notes: list[str] = []
        keys = [c for c in PAIR_KEYS if c in df.columns]
        result: dict[str, dict[str, Cell]] = {}
        for method, g in df[df["method"] != self.baseline].groupby("method", sort=False):
            pairs = g.merge(base, on=keys, suffixes=("", "_b"))
            pairs = pairs[pairs[self.column].notna() & pairs[self.column + "_b"].notna()]
            n = len(pairs)
            if n < self.min_n:
                notes.append(f"fid_baseline {method}: refused, {n} image pairs < {self.min_n} "
                             "(FID is biased at small n; docs/metrics.md)")
                continue
            x, y = from_bytes(pairs[self.column]), from_bytes(pairs[self.column + "_b"])
            result[str(method)] = {
                "fid_baseline": fid_cell(x, y, self._rng(str(method), "fid"), self.n_boot),
                "kid_baseline": kid_cell(x, y, self._rng(str(method), "kid"), self.n_boot)}
            notes.append(f"fid_baseline/kid_baseline {method}: n = {n} image pairs; FID is "
                         "biased upwards at small n, compare methods at equal n only")
        return Aggregate(result, notes)


def _present(table: pd.DataFrame, column: str) -> bool:
    return column in table and bool(table[column].notna().any())


def unpaired_cells(x: np.ndarray, ref: np.ndarray, rng: np.random.Generator, n_boot: int,
                   suffix: str) -> dict[str, Cell]:
    """FID (bootstrap over both sets, unpaired) and KID (on seeded equal-size subsets of
    min(n, reference) images); n is the method's images."""
    reps = [fid_fast(x[rng.integers(0, len(x), len(x))], ref[rng.integers(0, len(ref), len(ref))])
            for _ in range(n_boot)]
    value = fid_fast(x, ref)
    fid_value = Cell(value, *shifted_interval(reps, value), len(x))
    m = min(len(x), len(ref))  # KID pairs equal-size sets: a seeded subset of the larger
    kid = kid_cell(x[rng.permutation(len(x))[:m]], ref[rng.permutation(len(ref))[:m]], rng, n_boot)
    return {f"fid_{suffix}": fid_value, f"kid_{suffix}": Cell(kid.value, kid.lo, kid.hi, len(x))}


# --- against a folder of real images (fid:reference=DIR) -----------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def reference_files(folder: Path) -> list[Path]:
    """The folder's images (recursively, sorted), or ValueError naming the folder."""
    if not folder.is_dir():
        raise ValueError(f"fid: reference={folder} is not a directory; pass a folder of real "
                         "images (e.g. COCO 2014 val for the COCO-30k protocol)")
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < MIN_N:
        raise ValueError(f"fid: reference={folder} holds {len(files)} images "
                         f"(.png/.jpg/.webp/.bmp); FID needs at least {MIN_N}")
    return files


def reference_cache(folder: Path, files: Sequence[Path], weights: Path) -> Path:
    """Cache file of the folder's features, keyed by its files (names, sizes, mtimes) and
    weights."""
    import hashlib
    import json

    from bench.metrics.clip_models import file_sha256

    listing = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps([listing, file_sha256(weights), "clean-299-uint8"]).encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bench" / "fid-reference" / f"{key.hexdigest()[:24]}.npy"


class InceptionReference(InceptionFeatures):
    """Inception features of the run's images, and of a folder of real images once (cached)."""

    name: ClassVar[str] = "fid"
    description: ClassVar[str] = ("Inception-v3 features for FID/KID against a folder of real "
                                  "images (fid:reference=DIR, e.g. COCO 2014 val)")

    def __init__(self, reference: str | None = None, weights: str | None = None,
                 device: str | None = None, batch_size: str = "32") -> None:
        super().__init__(weights=weights, device=device)
        self.reference = Path(reference).expanduser() if reference else None
        self.batch_size = int(batch_size)

    opt_in: ClassVar[bool] = True  # needs the user's folder: not in `--metrics all`
    aggregators: ClassVar[tuple[tuple[str, dict], ...]] = (
        ("fid-to-reference", {"column": "fid.feature"}),)

    def available(self) -> str | None:
        if self.reference is None:
            return ("fid needs reference=DIR, a folder of real images (fid:reference=DIR); for "
                    "the cost relative to the baseline use fid-baseline")
        return super().available()

    def check(self) -> None:
        """A given reference folder must hold enough readable-looking images: a typo found at
        scoring would cost the whole generation."""
        if self.reference is not None:
            reference_files(self.reference)
        super().check()

    def manifest(self) -> dict[str, str]:
        return {**super().manifest(), "reference": str(self.reference)}

    def reference_features(self) -> Path:
        """The cache file of the reference folder's features, computed when missing."""
        assert self.reference is not None  # check() ran before generation
        files = reference_files(self.reference)
        path = reference_cache(self.reference, files, self.weights)
        if not path.is_file():
            parts = []
            for i in range(0, len(files), self.batch_size):
                parts.append(self.features([_open(p) for p in files[i:i + self.batch_size]]))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part.npy")
            np.save(tmp, np.concatenate(parts).astype(np.float32), allow_pickle=False)
            tmp.replace(path)
        return path

    def score(self, images: Sequence[Image.Image], rows: pd.DataFrame) -> pd.DataFrame:
        ref = str(self.reference_features())
        return pd.DataFrame({f"{self.name}.feature": to_bytes(self.features(images)),
                             f"{self.name}.reference": [ref] * len(images)})


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e}); remove it from the reference "
                         f"folder") from None


class FIDToReference(_Bootstrapped):
    """FID and KID of each method's images to the reference folder's (unpaired)."""

    def __init__(self, column: str = "fid.feature", n_boot: int = 100, seed: int = 0,
                 min_n: int = MIN_N) -> None:
        super().__init__(n_boot=n_boot, seed=seed)
        self.column, self.min_n = column, min_n
        self.ref_column = column.rsplit(".", 1)[0] + ".reference"
        self.infos = (
            MetricInfo("fid_reference", "", False,
                       "FID to the reference folder's real images; 95% bias-shifted percentile "
                       "bootstrap CI over both sets' images"),
            MetricInfo("kid_reference", "", False,
                       "KID to the reference folder's images; lo/hi = +-1.96 SE"))

    def applies(self, table: pd.DataFrame) -> bool:
        return _present(table, self.column)

    def compute(self, table: pd.DataFrame) -> Aggregate:
        df = self._prepare(table, [self.column, self.ref_column])
        result: dict[str, dict[str, Cell]] = {}
        notes: list[str] = []
        for method, g in df.groupby("method", sort=False):
            g = g[g[self.column].notna()]
            refs = g[self.ref_column].dropna().unique()
            if len(refs) != 1:
                notes.append(f"fid_reference {method}: images scored against {len(refs)} "
                             "reference folders; rescore with one fid:reference=DIR")
                continue
            if not Path(refs[0]).is_file():
                notes.append(f"fid_reference {method}: reference features {refs[0]} missing; "
                             "rerun `bench report --metrics fid:reference=DIR`")
                continue
            if len(g) < self.min_n:
                notes.append(f"fid_reference {method}: refused, {len(g)} images < {self.min_n} "
                             "(FID is biased at small n; docs/metrics.md)")
                continue
            ref = np.load(refs[0], allow_pickle=False).astype(np.float64)
            result[str(method)] = unpaired_cells(from_bytes(g[self.column]), ref,
                                                 self._rng(str(method), "reference"), self.n_boot,
                                                 "reference")
            notes.append(f"fid_reference {method}: n = {len(g)} images against {len(ref)} "
                         "reference images")
        return Aggregate(result, notes)
