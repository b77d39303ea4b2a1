"""The `skin_tone` scorer (bench.metrics.skin_tone) checked against the world's ground truth:
`python -m bench.world.skin_tone [N] [SIZE]` prints its accuracy on N world renders at SIZE px
(docs/metrics.md)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from PIL import Image

from bench.metrics.skin_tone import GROUPS, SkinTone


def world_accuracy(n: int = 600, seed: int = 20, size: int = 32) -> dict[str, object]:
    """Skin-group accuracy and confusion counts (rows true, columns predicted, order GROUPS) on n
    world renders with uniform Monk labels (`bench.world.corpus.make_eval_set`, faces only),
    resized to `size` px, scored with fallback="center". Renders without a label count as errors
    (their row's `unlabelled`)."""
    from bench.world.corpus import make_eval_set

    images, labels = make_eval_set(n, seed, p_face=1.0, p_hazard=0.0)
    pil = [Image.fromarray(a).resize((size, size), Image.BICUBIC) if size != 32 else
           Image.fromarray(a) for a in images]
    out = SkinTone(device="cpu", fallback="center").score(pil, None)  # type: ignore[arg-type]
    pred = out["skin_tone.skin"].tolist()
    counts = np.zeros((3, 4), int)  # last column: unlabelled
    for t, p in zip(labels["group"], pred):
        counts[int(t), 3 if pd.isna(p) else GROUPS.index(p)] += 1
    return {"n": n, "size": size, "accuracy": float(np.trace(counts[:, :3]) / n),
            "confusion": counts[:, :3].tolist(), "unlabelled": counts[:, 3].tolist(),
            "monk_accuracy": float(np.mean(out["skin_tone.monk"].to_numpy() == labels["mst"]))}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(world_accuracy(n=args[0] if args else 600, size=args[1] if len(args) > 1 else 32)))
