"""Faults during a real `embedpipe extract` subprocess: SIGKILL at random moments, and a full disk
(a real failing write through RLIMIT_FSIZE). After each, the same command resumes and the cache equals
an uninterrupted run's, byte for byte. The long kill loop is benchmarks/faults.py."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedpipe import open_cache
from embedpipe.core.errors import EmbedpipeError

_spec = importlib.util.spec_from_file_location("faults", Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py")
assert _spec is not None and _spec.loader is not None
faults = importlib.util.module_from_spec(_spec)
sys.modules["faults"] = faults  # dataclasses look their module up here
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
    # kinds are taken in turn; the loop ends early only when a run finished before its kill
    assert [k.kind for k in log] == ["start", "write", "between", "start"][: len(log)]
    assert sum(k.killed for k in log) == 4 or not log[-1].killed
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
    cmd = faults.extract_cmd(data, tmp_path / "c", tiny_timm_weights, 48)  # bigger shards than meta
    clean_big = faults.run_to_end(faults.extract_cmd(data, tmp_path / "clean", tiny_timm_weights, 48))
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
    with pytest.raises(EmbedpipeError, match=r"incomplete: 1 of 1 shards missing \(48 of 48 rows"):
        open_cache(path)
    resumed = faults.run_to_end(cmd)
    assert resumed == path and faults.cache_differences(resumed, clean_big) == []


def test_reader_during_a_write_sees_only_committed_shards(clean_run: tuple[Path, Path], tiny_timm_weights: str,
                                                          tmp_path: Path) -> None:
    """Open the cache over and over while a real extract writes it: every attempt is refused as
    incomplete (never as damaged: no half-written file is ever opened), saying the writer is running."""
    data, clean = clean_run
    cmd = faults.extract_cmd(data, tmp_path, tiny_timm_weights, SHARD)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[str] = []
    while proc.poll() is None:
        paths = list(tmp_path.glob("*/*/meta.h5"))
        if paths:
            try:
                open_cache(paths[0].parent)
            except EmbedpipeError as e:
                seen.append(str(e))
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert seen and all("is incomplete" in m and "rows" in m for m in seen), {m.split(":")[0] for m in seen}
    assert any("still writing it" in m for m in seen)
    (path,) = tmp_path.glob("*/*")
    assert faults.cache_differences(path, clean) == []
