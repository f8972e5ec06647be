"""Faults during a real `embedpipe extract` subprocess: SIGKILL at random moments, and a full disk
(a real failing write through RLIMIT_FSIZE). After each, the same command resumes and the cache equals
an uninterrupted run's, byte for byte. The long kill loop is benchmarks/faults.py."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from embedpipe import open_cache
from embedpipe.errors import EmbedpipeError

_spec = importlib.util.spec_from_file_location("faults", Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py")
assert _spec is not None and _spec.loader is not None
faults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faults)

SHARD = 4  # rows per shard: 48 images -> 12 shards, so kills land between and inside writes


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, tiny_timm_weights: str) -> tuple[Path, Path]:
    """(image folder, cache of an uninterrupted run)."""
    root = tmp_path_factory.mktemp("faults")
    data = faults.make_folder(root / "images", per_class=16)
    return data, faults.run_to_end(faults.extract_cmd(data, root / "clean", tiny_timm_weights, SHARD))


def test_kill_loop_resumes_to_identical_cache(clean_run: tuple[Path, Path], tiny_timm_weights: str,
                                              tmp_path: Path) -> None:
    data, clean = clean_run
    log, killed = faults.kill_loop(data, tmp_path, tiny_timm_weights, kills=4, shard_size=SHARD, seed=1)
    assert [k.kind for k in log] == ["start", "write", "between", "start"]
    assert any(k.killed and k.shards_after < 12 for k in log), f"no kill landed before the end: {log}"
    assert faults.cache_differences(killed, clean) == []
    assert not list(killed.rglob("*.tmp"))
    assert open_cache(killed).n_shards == 12


def _limited(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_stops_with_one_line_then_resumes(clean_run: tuple[Path, Path], tiny_timm_weights: str,
                                                    tmp_path: Path) -> None:
    data, clean = clean_run
    meta = (clean / "meta.h5").stat().st_size
    cmd = faults.extract_cmd(data, tmp_path / "c", tiny_timm_weights, SHARD * 3)  # bigger shards than meta
    clean_big = faults.run_to_end(faults.extract_cmd(data, tmp_path / "clean", tiny_timm_weights, SHARD * 3))
    shard = max(p.stat().st_size for p in (clean_big / "shards").iterdir())
    assert meta < shard, (meta, shard)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          preexec_fn=_limited((meta + shard) // 2))
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    (path,) = (tmp_path / "c").glob("*/*")
    assert "File too large" in line and str(path) in line and "re-run the same command" in line, line
    assert not list(path.rglob("*.tmp")) and not list((path / "shards").glob("*.h5"))
    with pytest.raises(EmbedpipeError, match=r"incomplete: 4 of 4 shards missing \(48 of 48 rows"):
        open_cache(path)
    resumed = faults.run_to_end(cmd)
    assert resumed == path and faults.cache_differences(resumed, clean_big) == []
