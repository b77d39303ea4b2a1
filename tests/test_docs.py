"""The adapter in docs/adding-a-method.md and the metric in docs/adding-a-metric.md are complete:
they run as written."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def test_documented_adapter_is_short_and_runs(tmp_path, prompt_file, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) < 40
    from bench.registry import METHODS

    METHODS.names()  # load the built-ins first: a copy taken before them would empty the registry
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # undo the registration
    exec(compile(code, str(DOC), "exec"), {"__name__": "adding_a_method_doc"})
    prompts = prompt_file(["a photo of a butcher"])
    out = tmp_path / "doc"
    args = ["run", "--model", "tiny-random", "--steps", "4", "--metrics", "none", "--quiet",
            "--prompt-set", str(prompts), "--samples", "1", "--out", str(out)]
    assert main([*args, "--methods", "baseline,avoid-concept:scale=2,warmup=2,"
                 "avoid-concept:warmup=99"]) == 0
    table = pd.read_parquet(out / "images.parquet").set_index("method")
    img = {m: np.asarray(Image.open(out / table.loc[m, "file"]), dtype=float) for m in table.index}
    assert np.abs(img["avoid-concept:scale=2,warmup=2"] - img["baseline"]).max() > 0
    # A warm-up longer than the run never applies the term: the image equals the baseline.
    assert np.array_equal(img["avoid-concept:warmup=99"], img["baseline"])


METRIC_DOC = DOC.with_name("adding-a-metric.md")


def test_documented_metric_is_short_and_reaches_the_leaderboard(tmp_path, prompt_file, monkeypatch):
    """docs/adding-a-metric.md: scorer + aggregator + suite in under 40 lines; a run naming the
    suite scores with that scorer only and its boards hold both metrics, as computed by hand."""
    from bench.registry import METRICS
    from bench.suites import SUITES

    code = re.search(r"```python\n(.*?)```", METRIC_DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) < 40
    for reg in (METRICS, SUITES):
        reg.names()  # load the built-ins first (see above)
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    exec(compile(code, str(METRIC_DOC), "exec"), {"__name__": "adding_a_metric_doc"})
    prompts = prompt_file(["a photo of a red apple", "a grey wall"])
    out = tmp_path / "doc"
    assert main(["run", "--model", "tiny-random", "--steps", "4", "--quiet", "--samples", "2",
                 "--prompt-set", str(prompts), "--suite", "colour", "--methods",
                 "baseline,sld-max", "--out", str(out)]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert [c for c in scores if not c.startswith("_") and c != "key"] == ["saturation.mean"]
    images = pd.read_parquet(out / "images.parquet")
    rgb = [np.asarray(Image.open(out / f), dtype=float) for f in images["file"]]
    hi, lo = [x.max(-1) for x in rgb], [x.min(-1) for x in rgb]
    sat = pd.Series([np.where(h > 0, (h - low) / np.maximum(h, 1), 0).mean()
                     for h, low in zip(hi, lo)], index=images["method"])  # HSV S by hand
    board = pd.read_csv(out / "leaderboard.csv").set_index(["method", "metric"])["value"]
    for method in ("baseline", "sld-max"):
        assert board[method, "saturation"] == pytest.approx(sat[method].mean(), abs=2 / 255)
        assert board[method, "grey_rate"] == (sat[method] < 0.1).mean()
    head = (out / "headline.md").read_text()
    assert "| saturation ↑ | grey_rate ↓ |" in head and "grey_rate: saturation under 0.1" in head
