"""The adapter in docs/adding-a-method.md is complete: it runs as written."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
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
