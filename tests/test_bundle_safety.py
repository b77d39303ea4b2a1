"""Hostile bundles: every one is refused in one line (exit 2) before anything is written, by
`bench reproduce`, `bench report` and `bench compare` alike."""
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from bench import bundle
from bench.cli import main

HEADER = {"bundle.json": json.dumps({"bench_bundle": 1, "prompt_files": []}), "manifest.json": "{}"}


def make_zip(path: Path, entries: dict[str, bytes | str], **kw) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, **kw) as z:
        for name, data in {**HEADER, **entries}.items():
            z.writestr(name, data)
    return path


def refused_everywhere(tmp_path: Path, evil: Path, capsys, expected: str) -> None:
    for args in (["reproduce", str(evil), "--out", str(tmp_path / "o")], ["report", str(evil)],
                 ["compare", str(evil), str(evil)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.splitlines()) == 1, (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not evil.with_suffix("").exists()


def test_zip_bomb_entry_is_refused_by_its_ratio(tmp_path, capsys):
    # 8 MiB of zeros deflate to ~8 KiB (1000:1); a real bundle's entries stay under ~10:1.
    evil = make_zip(tmp_path / "bomb.zip", {"prompts/0/p.txt": b"\0" * (8 << 20)})
    info = zipfile.ZipFile(evil).getinfo("prompts/0/p.txt")
    assert info.file_size > bundle.MAX_RATIO * info.compress_size
    refused_everywhere(tmp_path, evil, capsys, "entry 'prompts/0/p.txt' expands")


def test_total_size_cap_is_enforced_and_adjustable(tmp_path, capsys, monkeypatch):
    import os

    data = os.urandom(5000)  # incompressible: only the total cap can refuse it
    evil = make_zip(tmp_path / "big.zip", {"images/a.png": data, "images/b.png": data})
    total = sum(i.file_size for i in zipfile.ZipFile(evil).infolist())
    monkeypatch.setenv(bundle.MAX_BYTES_ENV, str(total - 1))
    refused_everywhere(tmp_path, evil, capsys,
                       f"would expand to {total:,} bytes, over the {total - 1:,}-byte cap")
    monkeypatch.setenv(bundle.MAX_BYTES_ENV, str(total))  # at the cap: accepted
    assert bundle.extract(evil, tmp_path / "x").joinpath("images/a.png").read_bytes() == data
    monkeypatch.setenv(bundle.MAX_BYTES_ENV, "4G")
    with pytest.raises(bundle.BundleError, match="write a whole number of bytes"):
        bundle.open_zip(evil)


def test_default_cap_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "reproducibility.md").read_text()
    assert bundle.DEFAULT_MAX_BYTES == 4 << 30 and "4 GiB" in text
    assert bundle.MAX_BYTES_ENV in text and f"{bundle.MAX_RATIO}:1" in text


def _shrink_declared_size(path: Path, name: str, size: int) -> None:
    """Rewrite the entry's uncompressed size in its local and central headers: a lying header."""
    raw = bytearray(path.read_bytes())
    encoded = name.encode()
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := raw.find(sig, start)) >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if raw[name_at:name_at + len(encoded)] == encoded:
                struct.pack_into("<I", raw, at + offset, size)
            start = at + 4
    path.write_bytes(bytes(raw))


def test_entry_longer_than_its_declared_size_is_not_written(tmp_path, capsys):
    evil = make_zip(tmp_path / "liar.zip", {"prompts/0/p.txt": b"a cat\n" * 50_000})
    _shrink_declared_size(evil, "prompts/0/p.txt", 10)
    assert zipfile.ZipFile(evil).getinfo("prompts/0/p.txt").file_size == 10
    with pytest.raises(bundle.BundleError, match="entry 'prompts/0/p.txt'") as err:
        bundle.extract(evil, tmp_path / "x")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x" / "prompts" / "0" / "p.txt").exists()  # nothing partial left
    # The same check on a budget: the bytes written count, whatever the header says.
    with zipfile.ZipFile(make_zip(tmp_path / "ok.zip", {"p.txt": b"x" * 100})) as z:
        with pytest.raises(bundle.BundleError, match="more than the 50 bytes allowed"):
            bundle._extract_entry(tmp_path / "ok.zip", z, z.getinfo("p.txt"), tmp_path / "p.txt", 50)
    assert not (tmp_path / "p.txt").exists()


@pytest.mark.parametrize("entries, expected", [
    ({"prompts/0/p.txt": "a cat\n", "prompts/0/p.txt/inner": "x"},
     "'prompts/0/p.txt' is both a file and a directory"),
    ({"prompts": "x", "prompts/0/p.txt": "a cat\n"}, "'prompts' is both a file and a directory"),
    ({"images/k.png": "x", "images/k.png/": ""}, "'images/k.png' is both a file and a directory"),
    ({"prompts/0/p.txt": "a", "prompts/./0/p.txt": "b"}, "entry 'prompts/./0/p.txt' appears twice"),
])
def test_colliding_entries_are_refused(tmp_path, capsys, entries, expected):
    evil = make_zip(tmp_path / "collide.zip", entries)
    refused_everywhere(tmp_path, evil, capsys, expected)


def test_duplicate_entry_names_are_refused(tmp_path, capsys):
    evil = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(evil, {}, )
        with zipfile.ZipFile(evil, "a") as z:
            z.writestr("manifest.json", '{"spec": {}}')
    refused_everywhere(tmp_path, evil, capsys, "entry 'manifest.json' appears twice")


def test_world_bundle_is_within_the_caps():
    with zipfile.ZipFile(Path(__file__).resolve().parents[1] / "results/world/bundle.zip") as z:
        infos = z.infolist()
    assert sum(i.file_size for i in infos) < bundle.DEFAULT_MAX_BYTES
    assert max(i.file_size / max(i.compress_size, 1) for i in infos) < 10


def test_corrupt_entry_read_is_one_line(tmp_path, capsys):
    evil = make_zip(tmp_path / "liar.zip", {"images.parquet": b"x" * 5000, "leaderboard.csv": ""})
    _shrink_declared_size(evil, "images.parquet", 10)  # CRC no longer matches what is read
    assert main(["compare", str(evil), str(evil)]) == 2
    err = capsys.readouterr().err
    assert "entry 'images.parquet' is corrupt" in err and len(err.splitlines()) == 1


def test_many_small_bomb_entries_are_refused_by_the_total_ratio(tmp_path, capsys):
    # 40 entries of 512 KiB zeros: each under the 1 MiB per-entry floor, 20 MiB from ~20 KiB.
    evil = make_zip(tmp_path / "bombs.zip", {f"images/{i}.png": b"\0" * (512 << 10) for i in range(40)})
    refused_everywhere(tmp_path, evil, capsys, "its entries expand")
