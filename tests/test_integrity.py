"""Damaged caches on disk: checksums find flipped bytes, the cheap check finds truncation and foreign
shards, every refusal is one line that says what to do, resume recomputes just the bad shard, and
caches written before checksums still read. Also readers of an incomplete cache, and unwritable or
vanished cache folders."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TINY_TIMM

from embedpipe import open_cache
from embedpipe.cache import DamagedShard, atomic_h5, unfinished_shards, verify_cache
from embedpipe.cache.writer import STR
from embedpipe.cli import main
from embedpipe.core.errors import EmbedpipeError
from embedpipe.core.locking import exclusive
from embedpipe.extract import run_extract


def _extract(data: Path, weights: str, cache_dir: Path):  # type: ignore[no-untyped-def]
    return run_extract(str(data), TINY_TIMM, weights=weights, cache_dir=cache_dir, precision="fp32",
                       num_workers=0, batch_size=8, shard_size=8, progress=False)


@pytest.fixture
def cache_dir(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> Path:
    """A finished cache of 24 images in 3 shards of 8 rows."""
    return _extract(image_folder, tiny_timm_weights, tmp_path / "c")[0].path


def _features(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted((path / "shards").iterdir()):
        with h5py.File(p, "r") as f:
            out[p.name] = f["features/pooled"][()].tobytes() + f["ok"][()].tobytes()
    return out


def _data_offset(file: Path, name: str) -> int:
    with h5py.File(file, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


def _flip(file: Path, offset: int) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def _info(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["info", *args])
    return code, capsys.readouterr().err.strip()


def test_flipped_feature_byte_found_by_reader_and_verify(
    cache_dir: Path, image_folder: Path, tiny_timm_weights: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _features(cache_dir)
    shard = cache_dir / "shards" / "00001.h5"
    _flip(shard, _data_offset(shard, "features/pooled") + 5)
    cache = open_cache(cache_dir)  # the cheap check passes: only the checksum can see this
    with pytest.raises(DamagedShard, match=r"^shard shards/00001.h5 of .* is damaged \(checksum mismatch.*delete that file and re-run"):
        cache.load("train")
    assert verify_cache(cache_dir) == [(1, verify_cache(cache_dir)[0][1])] and len(verify_cache(cache_dir)) == 1
    code, err = _info(capsys, "--cache", str(cache_dir), "--verify")
    assert code == 1 and len(err.splitlines()) == 1 and "shards/00001.h5" in err and "delete" in err
    shard.unlink()  # what the message says to do
    _, stats = _extract(image_folder, tiny_timm_weights, tmp_path / "c")
    assert stats.embedded == 8 and _features(cache_dir) == before
    assert main(["info", "--cache", str(cache_dir), "--verify"]) == 0
    assert "every checksum matches" in capsys.readouterr().out


def test_truncated_shard_named_and_recomputed(
    cache_dir: Path, image_folder: Path, tiny_timm_weights: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _features(cache_dir)
    shard = cache_dir / "shards" / "00002.h5"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(DamagedShard, match=r"^shard shards/00002.h5 of .* is damaged \(.*\); re-run the same extract command to recompute it$"):
        open_cache(cache_dir)
    code, err = _info(capsys, "--cache", str(cache_dir))
    assert code == 1 and err.startswith("embedpipe: error: shard shards/00002.h5 of") and "\n" not in err
    assert unfinished_shards(cache_dir, 3, _key(cache_dir)) == [2]
    _, stats = _extract(image_folder, tiny_timm_weights, tmp_path / "c")
    assert stats.embedded == 8 and _features(cache_dir) == before


def _key(path: Path) -> str:
    with h5py.File(path / "meta.h5", "r") as f:
        return str(f.attrs["key"])


def test_shard_from_another_cache_refused_then_recomputed(
    cache_dir: Path, image_folder: Path, tiny_timm_weights: str, tmp_path: Path
) -> None:
    before = _features(cache_dir)
    other = _extract(image_folder, tiny_timm_weights, tmp_path / "other")[0].path
    with h5py.File(other / "shards" / "00000.h5", "a") as f:
        f.attrs["key"] = "0" * 64
    shutil.copy(other / "shards" / "00000.h5", cache_dir / "shards" / "00000.h5")
    with pytest.raises(DamagedShard, match=r"00000.h5 .*belongs to another cache.*re-run the same extract command"):
        open_cache(cache_dir)
    _, stats = _extract(image_folder, tiny_timm_weights, tmp_path / "c")
    assert stats.embedded == 8 and _features(cache_dir) == before


def test_every_flipped_byte_is_found_or_harmless(cache_dir: Path) -> None:
    """Flip bytes all over one shard: each flip is either detected (cheap check or checksum) or leaves
    every value the reader returns unchanged (padding, unused header space)."""
    shard = cache_dir / "shards" / "00000.h5"
    good = shard.read_bytes()
    want = open_cache(cache_dir)
    X0, ok0, failed0 = want.load(None), want.ok.copy(), want.failed
    offsets = random.Random(0).sample(range(len(good)), min(len(good), 150))
    silent = []
    for off in offsets:
        shard.write_bytes(good)
        _flip(shard, off)
        if verify_cache(cache_dir):
            continue
        try:
            c = open_cache(cache_dir)
            X, ok, failed = c.load(None), c.ok, c.failed
        except EmbedpipeError:
            continue
        if not (np.array_equal(X[0], X0[0]) and np.array_equal(ok, ok0) and failed == failed0):
            silent.append(off)
    shard.write_bytes(good)
    assert silent == [], f"flips at {silent} changed the data without being detected"


def test_cache_without_checksums_still_reads(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Caches written before checksums (contiguous datasets, no sha256) read as before; verify says so."""
    X0 = open_cache(cache_dir).load(None)
    for p in (cache_dir / "shards").iterdir():
        with h5py.File(p, "r") as f:
            attrs = {k: f.attrs[k] for k in ("start", "stop", "key")}
            feats, ok, errors = f["features/pooled"][()], f["ok"][()], list(f["errors"].asstr()[()])
        with h5py.File(p, "w") as f:  # the layout of the earlier writer
            f.attrs.update(attrs)
            f.create_group("features").create_dataset("pooled", data=feats)
            f.create_dataset("ok", data=ok)
            f.create_dataset("errors", data=np.array(errors, dtype=object), dtype=STR)
    cache = open_cache(cache_dir)
    np.testing.assert_array_equal(cache.load(None)[0], X0[0])
    assert not cache.checksummed and verify_cache(cache_dir) == []
    assert main(["info", "--cache", str(cache_dir), "--verify"]) == 0
    assert "without checksums" in capsys.readouterr().out


def test_reader_of_incomplete_cache_counts_rows_and_sees_the_writer(cache_dir: Path) -> None:
    (cache_dir / "shards" / "00002.h5").unlink()
    (cache_dir / "shards" / "00002.h5.tmp").write_bytes(b"half a shard")  # never opened
    with pytest.raises(EmbedpipeError, match=r"incomplete: 1 of 3 shards missing \(8 of 24 rows.*re-run the same extract"):
        open_cache(cache_dir)
    with exclusive(cache_dir / ".lock", str(cache_dir)), pytest.raises(
            EmbedpipeError, match=r"\(8 of 24 rows.*still writing it: wait"):
        open_cache(cache_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_root(image_folder: Path, tiny_timm_weights: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        code = main(["extract", "--data", str(image_folder), "--backbone", TINY_TIMM, "--weights", tiny_timm_weights,
                     "--cache-dir", str(root), "--quiet", "--workers", "0"])
    finally:
        root.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert code == 1 and "cannot write to cache folder" in err and "\n" not in err


def test_cache_root_is_a_file_or_vanished(image_folder: Path, tiny_timm_weights: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["extract", "--data", str(image_folder), "--backbone", TINY_TIMM, "--weights", tiny_timm_weights,
                 "--cache-dir", str(blocker), "--quiet", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "cannot write to cache folder" in err and "\n" not in err
    code, err = _info(capsys, "--cache", str(tmp_path / "gone"))
    assert code == 1 and "does not exist" in err
    # the cache folder vanishes while a run writes: the shard write fails with one line, nothing recreated
    gone = tmp_path / "gone" / "cache"
    with pytest.raises(EmbedpipeError, match=r"writing shards/00000.h5 failed \(No such file or directory\) in cache folder"), \
            atomic_h5(gone / "shards" / "00000.h5") as f:
        f.attrs["x"] = 1
    assert not gone.exists()
