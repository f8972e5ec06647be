"""Exporting a cache: Parquet, Arrow and .npy read back with pyarrow, DuckDB and NumPy equal ``load()``;
failed rows are left out and counted; the CLI verb; a missing pyarrow is one line naming the extra."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import EmbedpipeError
from embedpipe.cache import Cache
from embedpipe.cli import main
from embedpipe.extract import run_extract

pa = pytest.importorskip("pyarrow", reason='the export needs pyarrow: pip install "embedpipe[arrow]"')
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny_timm_weights: str) -> Cache:
    root = make_image_folder(tmp_path_factory.mktemp("data") / "shapes", classes=3, per_class=6)
    (root / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cache, stats = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights,
                               cache_dir=tmp_path_factory.mktemp("c"), layers=["pooled", "block2"],
                               shard_size=5, precision="fp32", num_workers=0, batch_size=8, progress=False)
    assert stats.failed == 1 and cache.n_shards == 4
    return cache


def expected(cache: Cache, layer: str) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """id -> features, and id -> (label name, split), from ``load`` over every split."""
    X, y = cache.load(None, layer)
    ids = cache.load_ids(None)
    rows = cache.rows(None)
    return ({str(i): x for i, x in zip(ids, X, strict=True)},
            {str(i): (cache.label_names[c], str(cache.splits[r])) for i, c, r in zip(ids, y, rows, strict=True)})


def test_to_arrow_equals_load(cache: Cache) -> None:
    table = cache.to_arrow()
    assert table.column_names == ["id", "label", "split", "pooled", "block2"]
    assert table.num_rows == 18 and "class1/broken.png" not in table.column("id").to_pylist()
    assert table.schema.field("pooled").type == pa.list_(pa.float32(), cache.dims["pooled"])
    assert table.schema.metadata[b"embedpipe.cache_key"].decode() == cache.key
    for layer in ("pooled", "block2"):
        feats, meta = expected(cache, layer)
        got = np.stack(table.column(layer).to_numpy(zero_copy_only=False))
        for i, row, label, split in zip(table.column("id").to_pylist(), got, table.column("label").to_pylist(),
                                        table.column("split").to_pylist(), strict=True):
            np.testing.assert_array_equal(row, feats[i])
            assert (label, split) == meta[i]
    batches = list(cache.iter_arrow("pooled", dtype="float16"))
    assert len(batches) == cache.n_shards and sum(b.num_rows for b in batches) == 18
    assert batches[0].schema.field("pooled").type == pa.list_(pa.float16(), cache.dims["pooled"])


def test_parquet_read_by_pyarrow_and_duckdb(cache: Cache, tmp_path: Path) -> None:
    out = tmp_path / "feats.parquet"
    stats = cache.export(out, "parquet", layers="pooled")
    assert (stats.rows, stats.skipped_failed, stats.layers) == (18, 1, ["pooled"])
    table = pq.read_table(out)
    feats, meta = expected(cache, "pooled")
    got = dict(zip(table.column("id").to_pylist(), np.stack(table.column("pooled").to_numpy(zero_copy_only=False)),
                   strict=True))
    assert got.keys() == feats.keys()
    for i in feats:
        np.testing.assert_array_equal(got[i], feats[i])
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT id, label, split, pooled FROM read_parquet('{out}') ORDER BY id").fetchall()
    assert [r[0] for r in rows] == sorted(feats)
    for i, label, split, vec in rows:
        assert (label, split) == meta[i]
        np.testing.assert_allclose(np.array(vec, np.float32), feats[i], rtol=0, atol=0)
    counts = dict(duckdb.sql(f"SELECT split, count(*) FROM '{out}' GROUP BY split").fetchall())
    assert counts == {k: v for k, v in cache.counts().items() if v}


def test_arrow_ipc_and_npy(cache: Cache, tmp_path: Path) -> None:
    stats = cache.export(tmp_path / "feats.arrow", "arrow", dtype="float16")
    with pa.memory_map(stats.out) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.num_rows == 18 and table.schema.field("block2").type.value_type == pa.float16()
    feats, _ = expected(cache, "block2")
    np.testing.assert_allclose(np.stack(table.column("block2").to_numpy(zero_copy_only=False))[0],
                               feats[table.column("id")[0].as_py()], rtol=1e-3, atol=1e-3)
    folder = tmp_path / "npy"
    stats = cache.export(folder, "npy", layers=["pooled"])
    assert sorted(p.name for p in folder.iterdir()) == ["pooled.npy", "rows.csv"] and stats.rows == 18
    X = np.load(folder / "pooled.npy")
    with open(folder / "rows.csv") as f:
        rows = list(csv.DictReader(f))
    feats, meta = expected(cache, "pooled")
    assert X.shape == (18, cache.dims["pooled"]) and X.dtype == np.float32
    for r, x in zip(rows, X, strict=True):
        np.testing.assert_array_equal(x, feats[r["id"]])
        assert (r["label"], r["split"]) == meta[r["id"]]
    cache.export(folder, "npy", layers=["block2"])  # replaces the folder whole
    assert sorted(p.name for p in folder.iterdir()) == ["block2.npy", "rows.csv"]


def test_export_cli_and_errors(cache: Cache, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.parquet"
    assert main(["export", "--cache", str(cache.path), "--layer", "pooled", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 18 and report["skipped_failed"] == 1 and pq.read_table(out).num_rows == 18
    assert main(["export", "--cache", str(cache.path), "--layer", "nope", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "layer 'nope' not in cache" in err and err.count("\n") == 1
    assert main(["export", "--cache", str(cache.path), "--out", str(tmp_path / "no" / "f.parquet")]) == 1
    assert "does not exist; create it first" in capsys.readouterr().err
    with pytest.raises(EmbedpipeError, match="use float32 or float16"):
        cache.to_arrow(dtype="int8")
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


@pytest.mark.timeout(120)
def test_missing_pyarrow_names_the_extra(cache: Cache, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['pyarrow'] = None\n"  # import pyarrow now raises ImportError
            "from embedpipe.cli import main\n"
            f"sys.exit(main(['export', '--cache', {str(cache.path)!r}, '--out', {str(tmp_path / 'f.parquet')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1
    assert proc.stderr.strip() == 'embedpipe: error: exporting to Arrow or Parquet needs pyarrow: pip install "embedpipe[arrow]"'
