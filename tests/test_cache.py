"""The HDF5 cache through real extractions: keys, reuse, invalidation, growth, crash-resume, schema."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TINY_TIMM, make_image, make_image_folder

from embedpipe import EmbedpipeError, open_cache
from embedpipe.extract import run_extract

FAST = {"precision": "fp32", "num_workers": 0, "batch_size": 8, "progress": False}


def _extract(data: object, weights: str, cache_dir: Path, **kw: object):  # type: ignore[no-untyped-def]
    return run_extract(data, TINY_TIMM, weights=weights, cache_dir=cache_dir, **{**FAST, **kw})  # type: ignore[arg-type]


def test_extract_reuse_and_invalidation(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache, stats = _extract(str(image_folder), tiny_timm_weights, root, layers=("pooled", "block2"))
    assert stats.embedded == 24 and cache.path.parent == root / "shapes"
    X, _ = cache.load("train", "pooled")
    assert X.dtype == np.float32 and X.shape == (len(cache.rows("train")), cache.dims["pooled"])
    assert sorted(cache.counts().values()) == [3, 3, 18] and cache.label_names == ["class0", "class1", "class2"]
    # same inputs: same cache, nothing recomputed
    again, stats = _extract(str(image_folder), tiny_timm_weights, root, layers=("block2", "pooled"))
    assert again.path == cache.path and stats.embedded == 0 and stats.reused == 0
    # any change of what produced the numbers gives a new key
    changed = {
        _extract(str(image_folder), tiny_timm_weights, root, layers=("pooled",))[0].path,
        _extract(str(image_folder), tiny_timm_weights, root, layers=("pooled", "block2"), dtype="float32")[0].path,
        _extract(str(image_folder), tiny_timm_weights, root, layers=("pooled", "block2"), precision="bf16")[0].path,
    }
    assert len(changed) == 3 and cache.path not in changed
    # one image changes: new key, only that image is embedded again, the rest copied
    make_image(2, 99).save(image_folder / "class0" / "img001.png")
    edited, stats = _extract(str(image_folder), tiny_timm_weights, root, layers=("pooled", "block2"))
    assert edited.path != cache.path and (stats.embedded, stats.reused) == (1, 23)


def test_growing_dataset_embeds_only_new_images(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first, _ = _extract(str(image_folder), tiny_timm_weights, root, shard_size=5)
    for i in range(8, 12):
        make_image(1, i).save(image_folder / "class1" / f"img{i:03d}.png")
    grown, stats = _extract(str(image_folder), tiny_timm_weights, root, shard_size=5)
    assert (stats.embedded, stats.reused) == (4, 24)
    fresh, _ = _extract(str(image_folder), tiny_timm_weights, tmp_path / "fresh", shard_size=5)
    a, b = grown.load(None), fresh.load(None)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=1e-3)  # copied rows equal recomputed ones
    assert np.array_equal(a[1], b[1]) and list(grown.ids) == list(fresh.ids)
    assert first.path != grown.path


def test_schema_is_plain_h5py(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    cache, _ = _extract(str(image_folder), tiny_timm_weights, tmp_path / "c", shard_size=10, dtype="float16")
    with h5py.File(cache.path / "meta.h5") as f:
        ids = f["ids"].asstr()[()]
        assert f.attrs["schema_version"] == 2 and f.attrs["n_shards"] == 3 and len(ids) == 24
        assert f.attrs["source_kind"] == "folder" and f.attrs["source_root"] == str(image_folder.resolve())
        assert list(f["label_names"].asstr()[()]) == cache.label_names
        assert set(f["split"].asstr()[()]) == {"train", "val", "test"}
        for key in ("key", "feature_key", "backbone", "backbone_fingerprint", "versions", "created_at", "split_rule"):
            assert key in f.attrs
    with h5py.File(cache.path / "shards" / "00001.h5") as f:
        assert f["features/pooled"].dtype == np.float16 and f["features/pooled"].shape[0] == 10
        assert f.attrs["start"] == 10 and f["ok"][()].all()
    blocks = list(cache.iter_blocks("train"))
    assert len(blocks) == 3
    X, _ = cache.load("train")
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), X)


def test_reader_refuses_incomplete_cache(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    cache, _ = _extract(str(image_folder), tiny_timm_weights, tmp_path / "c", shard_size=10)
    (cache.path / "shards" / "00001.h5").unlink()
    with pytest.raises(EmbedpipeError, match=r"incomplete: 1 of 3 shards missing.*re-run"):
        open_cache(cache.path)
    with pytest.raises(EmbedpipeError, match="not an embedpipe cache"):
        open_cache(tmp_path)
    resumed, stats = _extract(str(image_folder), tiny_timm_weights, tmp_path / "c", shard_size=10)
    assert stats.embedded == 10 and resumed.path == cache.path


def test_corrupt_images_recorded_and_skipped(tmp_path: Path, tiny_timm_weights: str, capsys) -> None:  # type: ignore[no-untyped-def]
    root = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    (root / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "class1" / "empty.jpg").write_bytes(b"")
    cache, stats = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                               precision="fp32", num_workers=2, batch_size=4)
    assert stats.failed == 2 and dict(cache.failed).keys() == {"class0/broken.png", "class1/empty.jpg"}
    assert dict(cache.failed)["class1/empty.jpg"] == "empty file"
    assert sum(len(cache.rows(s)) for s in ("train", "val", "test")) == 12
    assert "skipped 2 unreadable" in capsys.readouterr().err


def _extract_cmd(cache_dir: Path, weights: str) -> list[str]:
    return [sys.executable, "-m", "embedpipe", "extract", "--data", "digits", "--backbone", TINY_TIMM,
            "--weights", weights, "--cache-dir", str(cache_dir), "--shard-size", "64", "--batch-size", "16",
            "--workers", "0", "--layers", "pooled,block3", "--quiet"]


def _wait_for_first_shard(proc: subprocess.Popen[bytes], cache_dir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(cache_dir.glob("digits/*/shards/00000.h5")):
            return
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.005)
    raise AssertionError("no shard appeared")


# SIGKILL at random moments is tests/test_faults.py's kill loop; here Ctrl-C: exit 130, finished shards kept.
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_killed_extraction_resumes_to_identical_cache(sig: int, tiny_timm_weights: str, tmp_path: Path) -> None:
    """A real subprocess is interrupted mid-extraction; the same command resumes; the result equals a clean run."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_extract_cmd(killed, tiny_timm_weights), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_first_shard(proc, killed)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"re-run the same command to resume" in err
        assert b"Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    (path,) = killed.glob("digits/*")
    n_shards = 29  # ceil(1797 / 64)
    done = len(list(path.glob("shards/*.h5")))
    assert 0 < done < n_shards, "the kill landed too late to test resume"
    with pytest.raises(EmbedpipeError, match="incomplete"):
        open_cache(path)
    assert not list(path.glob("shards/*.tmp"))  # or, if one was left mid-write, the reader never sees it
    resume = subprocess.run(_extract_cmd(killed, tiny_timm_weights), capture_output=True, timeout=300)
    assert resume.returncode == 0, resume.stderr.decode()[-2000:]
    assert resume.stdout.decode().strip() == str(path)
    clean = subprocess.run(_extract_cmd(tmp_path / "clean", tiny_timm_weights), capture_output=True, timeout=300)
    (clean_path,) = (tmp_path / "clean").glob("digits/*")
    assert clean_path.name == path.name  # same key
    a, b = open_cache(path), open_cache(clean_path)
    for layer in ("pooled", "block3"):
        xa, ya = a.load(None, layer)
        xb, yb = b.load(None, layer)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert clean.returncode == 0


def test_concurrent_writer_is_refused(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    import fcntl

    from embedpipe.backbones import create_backbone
    from embedpipe.cache import cache_key, cache_path, manifest_digest
    from embedpipe.data import SplitRule, resolve_source
    from embedpipe.extract import feature_key_for, prepare_records

    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32")
    src = resolve_source(str(image_folder))
    records, _ = prepare_records(src, SplitRule())
    key = cache_key(feature_key_for(bb, ["pooled"], "float16", "pil-draft"), manifest_digest(records))
    path = cache_path(tmp_path, src.name, bb.spec, key)
    path.mkdir(parents=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(EmbedpipeError, match="another embedpipe process"):
            run_extract(str(image_folder), bb, cache_dir=tmp_path, num_workers=0, progress=False)
    assert os.path.isdir(path)
