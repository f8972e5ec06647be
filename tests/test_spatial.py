"""Spatial caches: block<k>:map layers stored unpooled (float16, chunked per shard), their shapes in
meta.h5, the disk-size estimate before extracting and the size and shapes `embedpipe info` shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, TINY_TIMM

from embedpipe.backbones import create_backbone
from embedpipe.cache import open_cache
from embedpipe.cache.writer import CHUNK_BYTES, chunk_rows
from embedpipe.core.errors import EmbedpipeError
from embedpipe.extract import run_extract


def test_maps_are_the_unpooled_blocks(tiny_timm_weights: str, tiny_clip_weights: str) -> None:
    timm_bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32", device="cpu")
    size = timm_bb.preprocess["input_size"][-1]  # shapes are measured at the backbone's own input size
    x = torch.randn(2, 3, size, size)
    out = timm_bb.embed(x, ["block2", "block2:map"])
    assert out["block2:map"].ndim == 4 and timm_bb.shapes["block2:map"] == out["block2:map"].shape[1:]
    np.testing.assert_allclose(out["block2:map"].mean(axis=(2, 3)), out["block2"], rtol=1e-5, atol=1e-6)
    assert timm_bb.dims["block2:map"] == int(np.prod(timm_bb.shapes["block2:map"]))
    clip_bb = create_backbone(TINY_CLIP, weights=tiny_clip_weights, precision="fp32", device="cpu")
    tokens = clip_bb.shapes["block0:map"]
    assert len(tokens) == 2 and tokens[1] == clip_bb.dims["block0"]  # (L, C) token sequence


def test_map_cache_round_trip_and_info(image_folder: Path, tiny_timm_weights: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cache, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                           num_workers=0, precision="fp32", shard_size=10, layers=("pooled", "block1:map"))
    err = capsys.readouterr().err
    shape = cache.shapes["block1:map"]
    per_row = 2 * cache.dims["pooled"] + 2 * int(np.prod(shape))
    assert f"cache size estimate: 24 rows x {per_row:,} B/row" in err
    again, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                           num_workers=0, precision="fp32", shard_size=10, layers=("pooled", "block1:map"))
    err = capsys.readouterr().err
    assert again.path == cache.path and "size estimate" not in err and "cache up to date" in err
    X, y = cache.load("train", "block1:map")
    assert X.shape == (len(y), *shape) and X.dtype == np.float32
    blocks = list(cache.iter_blocks(None, "block1:map"))
    assert all(b.shape[1:] == shape for b, _ in blocks)
    with h5py.File(cache.path / "shards/00000.h5") as f:
        ds = f["features/block1:map"]
        # Checksummed like every dataset, in chunks of whole maps (at most 1 MiB each).
        assert ds.dtype == np.float16 and ds.fletcher32 and ds.chunks == (chunk_rows(ds.shape, 2), *shape)
        assert ds.chunks[0] * 2 * int(np.prod(shape)) <= CHUNK_BYTES
    with h5py.File(cache.path / "meta.h5") as f:
        assert json.loads(f.attrs["shapes"])["block1:map"] == list(shape)
    # The same pooled means as the pooled layer of the same block (float16 tolerance).
    vec, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                         num_workers=0, precision="fp32", layers=("block1",), progress=False)
    np.testing.assert_allclose(X.mean(axis=(2, 3)), vec.load("train", "block1")[0], rtol=1e-2, atol=1e-2)
    out = subprocess.run([sys.executable, "-m", "embedpipe", "info", "--cache", str(cache.path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    summary = json.loads(out)
    assert summary["layers"]["block1:map"] == list(shape) and summary["disk_bytes"] > 24 * 2 * int(np.prod(shape))


def test_old_cache_without_shapes_still_reads(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    cache, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                           num_workers=0, precision="fp32", layers=("pooled",), progress=False)
    with h5py.File(cache.path / "meta.h5", "a") as f:
        del f.attrs["shapes"]
    old = open_cache(cache.path)
    assert old.shapes == {"pooled": (old.dims["pooled"],)}
    assert old.load("train", "pooled")[0].shape[1] == old.dims["pooled"]


@pytest.mark.parametrize("bad", ["block9:map", "pooled:map"])
def test_unknown_map_layer_is_refused(tiny_timm_weights: str, bad: str) -> None:
    from embedpipe.core.errors import EmbedpipeError

    bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, device="cpu")
    with pytest.raises(EmbedpipeError, match="has no layer"):
        bb.check_layers([bad])


def test_chunks_hold_whole_rows_up_to_a_mebibyte() -> None:
    assert chunk_rows((1000, 112, 14, 14), 2) == CHUNK_BYTES // (2 * 112 * 14 * 14)  # 23 maps
    assert chunk_rows((1000, 16, 112, 112), 4) == 1  # a map over 1 MiB is a chunk of its own
    assert chunk_rows((5, 8), 4) == 5  # never more rows than the dataset has


def test_map_shards_pass_the_checks_and_a_wrong_map_shape_is_damage(image_folder: Path, tiny_timm_weights: str,
                                                                    tmp_path: Path) -> None:
    from embedpipe.cache import verify_cache
    from embedpipe.cache.reader import ShardLayout, read_meta, shard_problem, unfinished_shards
    from embedpipe.cache.writer import write_shard
    from embedpipe.core.errors import EmbedpipeError
    from embedpipe.train import fit_head, load_splits

    cache, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                           num_workers=0, shard_size=10, layers=("block1", "block1:map"), progress=False)
    assert verify_cache(cache.path) == []  # every checksum of the N-D datasets read back
    assert unfinished_shards(cache.path, cache.n_shards, cache.key) == []
    layout = ShardLayout.of(read_meta(cache.path))
    shape = cache.shapes["block1:map"]
    with h5py.File(cache.path / "shards/00000.h5") as f:
        feats = {name: f[f"features/{name}"][()] for name in ("block1", "block1:map")}
    feats["block1:map"] = feats["block1:map"][:, :, :-1]  # one row of the map short: same flat width, wrong shape
    write_shard(cache.path, 0, 0, cache.key, feats, np.ones(10, bool), [""] * 10, "float16")
    problem = shard_problem(cache.path, 0, layout)
    assert problem is not None and f"instead of {(10, *shape)}" in problem
    assert unfinished_shards(cache.path, cache.n_shards, cache.key) == [0]  # a re-run recomputes it
    run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                num_workers=0, shard_size=10, layers=("block1", "block1:map"), progress=False)
    fixed = open_cache(cache.path)
    with pytest.raises(EmbedpipeError, match="unpooled map and cannot be concatenated"):
        fixed.load("train", "block1,block1:map")
    with pytest.raises(EmbedpipeError, match="head logreg takes vectors, and block1:map is an unpooled map"):
        fit_head(load_splits(fixed, "block1:map"), "logreg", "block1:map")


def test_grids_are_the_maps_averaged_over_cells(tiny_timm_weights: str, tiny_clip_weights: str) -> None:
    """block<k>:grid<G>: the stage's map averaged over a G x G grid, flattened (c, row, column); grid1
    is the pooled block; a ViT's tokens form the grid too; sizes past the map's side are one error."""
    timm_bb = create_backbone(TINY_TIMM, weights=tiny_timm_weights, precision="fp32", device="cpu")
    size = timm_bb.preprocess["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    assert "block2:grid2" in timm_bb.layers  # listed; other sizes are accepted on request
    out = timm_bb.embed(x, ["block2", "block2:map", "block2:grid2", "block2:grid1"])
    c, h, w = out["block2:map"].shape[1:]
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(out["block2:map"]), 2).flatten(1).numpy()
    np.testing.assert_allclose(out["block2:grid2"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["block2:grid1"], out["block2"], rtol=1e-5, atol=1e-6)
    assert timm_bb.shapes["block2:grid2"] == (c * 4,) and timm_bb.dims["block2:grid1"] == c
    # cell (row 0, column 1) of channel 0 averages the right half of the top half
    np.testing.assert_allclose(out["block2:grid2"][:, 1], out["block2:map"][:, 0, : h // 2, w // 2 :].mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(EmbedpipeError, match=rf"block2:grid{min(h, w) + 1}: the grid must be 1 to {min(h, w)} cells"):
        timm_bb.check_layers([f"block2:grid{min(h, w) + 1}"])
    with pytest.raises(EmbedpipeError, match="has no layer block99:grid2"):
        timm_bb.check_layers(["block99:grid2"])
    clip_bb = create_backbone(TINY_CLIP, weights=tiny_clip_weights, precision="fp32", device="cpu")
    side = clip_bb.preprocess["input_size"][-1]
    out = clip_bb.embed(torch.randn(2, 3, side, side), ["block0", "block0:grid2"])
    assert out["block0:grid2"].shape == (2, 4 * out["block0"].shape[1]) == (2, *clip_bb.shapes["block0:grid2"])
    np.testing.assert_allclose(out["block0:grid2"].reshape(2, -1, 4).mean(axis=2), out["block0"], rtol=1e-4, atol=1e-5)


def test_grid_layers_cache_train_and_predict(image_folder: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    """A grid is a vector layer: cached, trained on (alone or in a multilayer head) and embedded again
    by a saved head's predict on raw images."""
    from embedpipe.predict import predict
    from embedpipe.train import default_layer, train_heads

    cache, _ = run_extract(str(image_folder), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                           num_workers=0, precision="fp32", dtype="float32",
                           layers=("block1", "block1:grid3", "block1:map"), progress=False)
    X, y = cache.load("train", "block1:grid3")
    assert X.shape == (len(y), 9 * cache.dims["block1"]) and cache.shapes["block1:grid3"] == (X.shape[1],)
    maps = torch.from_numpy(cache.load("train", "block1:map")[0])
    np.testing.assert_allclose(X, torch.nn.functional.adaptive_avg_pool2d(maps, 3).flatten(1).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert default_layer(cache, "multilayer") == "block1,block1:grid3"  # vectors and grids, not maps
    r = train_heads(cache, ["logreg"], layer="block1:grid3", out=tmp_path / "head.npz")[0]
    image = str(next(image_folder.rglob("*.png")))
    rows = predict(r.path, [image], top_k=1)
    assert "error" not in rows[0] and rows[0]["top"][0][0] in cache.label_names
