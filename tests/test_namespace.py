"""One namespace: methods/, metrics/ and prompt_sets/ install as bench.methods, bench.metrics and
bench.prompt_sets, so nothing generic lands in site-packages (issue 17)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("methods", "metrics", "prompt_sets")
BARE_IMPORT = re.compile(rf"^\s*(from|import)\s+({'|'.join(TOP)})\b", re.M)


def test_no_source_file_imports_the_bare_top_level_names() -> None:
    # In the source tree `import methods` would still work (the root is on sys.path) and load a
    # second copy of every module beside bench.methods: two registries, two classes.
    files = [p for d in ("bench", *TOP, "tests", "benchmarks", "docs")
             for p in (ROOT / d).rglob("*.py")]
    offenders = [f"{p.relative_to(ROOT)}" for p in files if BARE_IMPORT.search(p.read_text())]
    assert files and offenders == []


def test_installed_wheel_exposes_them_under_bench_only(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes bench.egg-info into the tree it builds, and a stale
    # one in the checkout would shadow the installed entry points for every later run there.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("bench", *TOP):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("bench-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    tops = {Path(n).parts[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"bench"}
    # The licence as PEP 639 writes it: an SPDX expression and the file itself.
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(meta).decode().split("\n\n")[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers and "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith("License:")]  # the deprecated field
    assert meta.replace("METADATA", "licenses/LICENSE") in zipfile.ZipFile(wheel).namelist()
    # A fresh interpreter outside the source tree: the checkout's editable hook and root removed,
    # the unpacked wheel first on the path (its dependencies still come from this environment).
    probe = f"""
import os, sys
root = {str(ROOT)!r}
sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__]
sys.path = [{str(site)!r}] + [p for p in sys.path if p and os.path.realpath(p) != root]
import bench.methods, bench.metrics, bench.prompt_sets
assert bench.methods.__file__.startswith({str(site)!r}), bench.methods.__file__
from bench.registry import METHODS
assert METHODS.get('baseline').__module__ == 'bench.methods.baseline'
# The world is a plugin: it arrives through the wheel's entry points, as a third party's would.
from bench.registry import METRICS, MODELS, PROMPT_SETS
assert METRICS.get('world').__module__ == 'bench.world.scorers'
assert PROMPT_SETS.get('world-hazard').__module__ == 'bench.world.prompt_sets'
assert MODELS.get('world').__module__ == 'bench.world'
for name in {TOP!r}:
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit('importable: ' + name)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
