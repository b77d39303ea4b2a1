"""World-FID: FID/KID in the world's CLIP image space against its clean renders ranks corrupted
renders (noise, blur) worse than clean ones, with separated intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from bench.world import WEIGHTS_DIR
from bench.world import fid

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "clip_head.safetensors").is_file(),
                                reason="world weights absent: `bench world build`")


def noisy(images: np.ndarray, sd: float) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.clip(images + rng.normal(0, sd, images.shape), 0, 255).astype(np.uint8)


def blurred(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius)))
                     for im in images])


def test_world_fid_ranks_corrupted_renders_worse() -> None:
    from bench.world.corpus import make_eval_set

    weights = str(WEIGHTS_DIR)
    ref = fid.world_reference(weights)
    assert ref.shape == (fid.WORLD_REF_N, fid.WORLD_DIM)
    clean, _ = make_eval_set(300, 7, p_face=1.0, p_hazard=0.0)  # other seed than the reference
    sets = {"clean": clean, "noise": noisy(clean, 40), "blur": blurred(clean, 1.5)}
    cells = {k: fid.world_cells(fid.world_features(weights, v), ref, np.random.default_rng(0), 50)
             for k, v in sets.items()}
    for bad in ("noise", "blur"):
        assert cells["clean"]["fid_world"].hi < cells[bad]["fid_world"].lo, bad
        assert cells["clean"]["kid_world"].hi < cells[bad]["kid_world"].lo, bad
    assert cells["clean"]["fid_world"].n == 300


def test_world_fid_aggregator_reads_the_feature_column() -> None:
    from bench.world.corpus import make_eval_set

    weights = str(WEIGHTS_DIR)
    clean, _ = make_eval_set(60, 8, p_face=1.0, p_hazard=0.0)
    rows = []
    for method, ims in (("baseline", clean), ("noisy", noisy(clean, 60))):
        for i, f in enumerate(fid.world_features(weights, ims)):
            rows.append({"method": method, "prompt_id": f"p{i}", "seed": i, "sample": 0,
                         "world-fid.feature": f.astype("<f4").tobytes()})
    table = pd.DataFrame(rows)
    # Found through the world-fid scorer's declared aggregators, registered by entry point.
    [agg] = feature_aggregators(table)
    assert isinstance(agg, fid.WorldFID) and agg.column == "world-fid.feature"
    cells = agg.compute(table)
    assert cells["baseline"]["fid_world"].value < cells["noisy"]["fid_world"].value
    assert cells["baseline"]["fid_world"].n == 60


def test_world_fid_is_opt_in() -> None:
    from bench.scoring import scorer_names

    assert "world-fid" not in scorer_names("world", [])
    assert "world-clipscore" in scorer_names("world", [])
    assert scorer_names("world", ["world-fid"]) == ["world-fid"]


def feature_aggregators(table: pd.DataFrame) -> list:
    """The aggregators a custom prompt set's board gets for the table, latency aside: the
    feature scorer's own (Scorer.aggregators)."""
    from bench.metrics.aggregators import Latency
    from bench.report.boards import plan
    from bench.suites import SUITES

    return [a for a in plan(table, SUITES.get("fairness")).aggregators if not isinstance(a, Latency)]
