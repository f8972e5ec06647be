"""The Ray engine writes the same cache as the local engine: equality, worker and driver kills,
a multi-node simulation, bench, and the one-line error without Ray.

One local Ray instance (``ray.init(num_cpus=2)``) is shared by the in-process tests; subprocess
drivers join it by address. Features are compared exactly where the actors are 2-CPU
(``ray_cpus_per_worker=2``): fp32 forward pass on CPU, float32 storage, same batches and the same
torch thread count on both engines, so a Ray cache is bit-identical to a local one. The default
1-CPU actors of a CPU-only node (and the multi-node simulation's) run one torch thread, which sums in
another order: there features agree within THREADS_RTOL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe.extract import run_extract

try:
    import ray
    import ray.data
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed (pip install "embedpipe[ray]")')

# exact comparison: fp32 forward, float32 storage; small shards so that runs have several of them
EXACT = {"precision": "fp32", "dtype": "float32", "batch_size": 4, "shard_size": 6, "num_workers": 0}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray instance shared by this module's tests; yields its address."""
    assert ray is not None
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def _extract(data: object, weights: str, cache_dir: Path, **kw: object):  # type: ignore[no-untyped-def]
    options = {**EXACT, "progress": False, **kw}
    return run_extract(data, TINY_TIMM, weights=weights, cache_dir=cache_dir, **options)  # type: ignore[arg-type]


# Workers with fewer CPU threads than the local run sum in another order: float32 rounding differs.
THREADS_RTOL = 1e-5  # max |a - b| <= THREADS_RTOL * max |a| per stored array


def assert_same_cache(a: Path, b: Path, exact: bool = True) -> None:
    """Same key (directory name), same files, same meta.h5 (but its creation time), same shards: bit for
    bit, or (``exact=False``) features within THREADS_RTOL."""
    assert a.name == b.name
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and p.name != ".lock")
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != ".lock")
    for name in files:
        with h5py.File(a / name, "r") as fa, h5py.File(b / name, "r") as fb:
            skip = {"created_at"} if name == "meta.h5" else set()
            assert {k: v for k, v in fa.attrs.items() if k not in skip} == \
                   {k: v for k, v in fb.attrs.items() if k not in skip}, name
            datasets = _datasets(fa)
            assert datasets and set(datasets) == {n for n in datasets if n in fb}, name
            for d in datasets:
                va, vb = fa[d][()], fb[d][()]
                assert va.dtype == vb.dtype, f"{name}:{d}"
                if exact or not d.startswith("features/"):
                    assert np.array_equal(va, vb), f"{name}:{d}"
                else:
                    assert np.abs(va - vb).max() <= THREADS_RTOL * np.abs(va).max(), f"{name}:{d}"


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def digits_folder(root: Path, per_class: int = 4) -> Path:
    """A subset of the built-in digits as an ImageFolder (the same images the built-in set serves)."""
    from embedpipe.data import resolve_source

    source = resolve_source("digits")
    taken: dict[str, int] = {}
    for record in source.records:
        if taken.get(record.label, 0) < per_class:
            taken[record.label] = taken.get(record.label, 0) + 1
            (root / record.label).mkdir(parents=True, exist_ok=True)
            source.open(record).save(root / record.label / f"{record.id.replace('/', '_')}.png")
    return root


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="module")
def digits_local(digits_data: Path, tiny_timm_weights: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _extract(str(digits_data), tiny_timm_weights, tmp_path_factory.mktemp("local"))[0].path


def test_missing_ray_is_one_line_and_import_needs_no_ray(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None  # as if the extra were not installed: `import ray` raises ImportError
        import embedpipe, embedpipe.extract, embedpipe.bench, embedpipe.cli, embedpipe.engines
        assert "ray" not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(embedpipe.cli.main(sys.argv[1:]))
    """)
    data = make_image_folder(tmp_path / "shapes", classes=2, per_class=1)
    proc = subprocess.run([sys.executable, "-c", code, "extract", "--data", str(data), "--engine", "ray"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == 'embedpipe: error: the Ray engine needs Ray: pip install "embedpipe[ray]"'


@needs_ray
def test_unreachable_address_is_one_line(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=2, per_class=1)
    proc = subprocess.run([sys.executable, "-m", "embedpipe", "extract", "--data", str(data), "--engine", "ray",
                           "--ray-address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("embedpipe: error: no Ray cluster answers at 127.0.0.1:1")


@needs_ray
def test_ray_cache_equals_local_with_broken_files(ray_cluster: str, tiny_timm_weights: str, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=5)
    (data / "class0" / "broken.png").write_bytes(b"not an image")
    (data / "class1" / "empty.jpg").write_bytes(b"")
    (data / "class2" / "truncated.png").write_bytes((data / "class2" / "img000.png").read_bytes()[:60])
    options = {"num_workers": None, "layers": ("pooled", "block1"),  # decoding processes inside the actor too
               "ray_cpus_per_worker": 2}  # one 2-CPU actor: the local run's thread count, so bit-identical
    local, local_stats = _extract(str(data), tiny_timm_weights, tmp_path / "local",
                                  **{k: v for k, v in options.items() if k != "ray_cpus_per_worker"})
    remote, stats = _extract(str(data), tiny_timm_weights, tmp_path / "ray", engine="ray", progress=True, **options)
    assert_same_cache(local.path, remote.path)
    assert stats.engine == "ray" and stats.failed == local_stats.failed == 3
    assert stats.embedded == local_stats.embedded == 15
    assert sorted(e["shard"] for e in stats.shard_log) == list(range(3))
    assert dict(remote.failed) == dict(local.failed) and "broken.png" in str(remote.failed)
    err = capfd.readouterr().err
    assert "shards=3/3" in err and "workers=" in err and "ray: 3 shards on 1 workers x 2 CPUs" in err
    # the same command again: only the 3 failed rows are retried (they fail again), nothing is embedded
    before = {p.name: p.stat().st_mtime_ns for p in (remote.path / "shards").iterdir()}
    again, stats = _extract(str(data), tiny_timm_weights, tmp_path / "ray", engine="ray", **options)
    assert again.path == remote.path and stats.embedded == 0
    assert sum(e["computed"] for e in stats.shard_log) == 3 and sum(e["failed"] for e in stats.shard_log) == 3
    assert {p.name: p.stat().st_mtime_ns for p in (remote.path / "shards").iterdir()} == before  # not rewritten
    assert_same_cache(local.path, again.path)


@needs_ray
def test_ray_recomputes_a_damaged_shard(ray_cluster: str, tiny_timm_weights: str, tmp_path: Path) -> None:
    """A truncated shard file exists but fails the cheap check: the Ray engine recomputes it, it does not
    mistake it for one this run already wrote. Default actor sizing: two 1-CPU actors."""
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=5)
    options = {"num_workers": 0, "layers": ("pooled",)}
    local, _ = _extract(str(data), tiny_timm_weights, tmp_path / "local", **options)
    remote, stats = _extract(str(data), tiny_timm_weights, tmp_path / "ray", engine="ray", **options)
    assert stats.workers == 2  # two actors for 3 shards (which actor takes which shard is Ray's choice)
    shard = remote.path / "shards" / "00001.h5"
    shard.write_bytes(shard.read_bytes()[:200])  # truncated: unreadable, still a file
    again, stats = _extract(str(data), tiny_timm_weights, tmp_path / "ray", engine="ray", **options)
    assert [e["shard"] for e in stats.shard_log] == [1] and stats.embedded == 6  # shard size 6
    assert_same_cache(local.path, again.path, exact=False)  # 1-CPU actors: 1 torch thread


@needs_ray
def test_actor_sizing(ray_cluster: str) -> None:
    """CPU-only nodes get 1-CPU actors by default (2 on this 2-CPU instance); --ray-cpus-per-worker
    overrides it, and an impossible size is one clear error."""
    from embedpipe.core.errors import EmbedpipeError
    from embedpipe.engines.ray_engine import Pool, RayEngine

    options = {"device": "cpu"}
    assert RayEngine(None, options).size_pool(5) == Pool(2, 1, 0)
    assert RayEngine(None, options).size_pool(1) == Pool(1, 1, 0)  # never more actors than shards
    assert RayEngine(None, options, cpus_per_worker=2).size_pool(5) == Pool(1, 2, 0)
    with pytest.raises(EmbedpipeError, match="more than any node has"):
        RayEngine(None, options, cpus_per_worker=3).size_pool(5)
    with pytest.raises(EmbedpipeError, match="at least 1"):
        RayEngine(None, options, cpus_per_worker=0)
    with pytest.raises(EmbedpipeError, match=r"need engine=.ray."):
        run_extract("digits", ray_cpus_per_worker=2)


def _actor_pids() -> list[int]:
    from ray._private import state

    return [int(a["Pid"]) for a in state.actors().values()
            if a.get("State") == "ALIVE" and "ShardActor" in str(a.get("ActorClassName")) and a.get("Pid")]


@needs_ray
def test_sigkill_of_an_embedding_worker_is_retried(ray_cluster: str, digits_data: Path, digits_local: Path,
                                                   tiny_timm_weights: str, tmp_path: Path) -> None:
    root = tmp_path / "ray"
    killed: list[int] = []

    def killer() -> None:  # once the first shard is written, SIGKILL the actor that is embedding the next
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = _actor_pids()
            if pids and list(root.glob("*/*/shards/*.h5")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cache, stats = _extract(str(digits_data), tiny_timm_weights, root, engine="ray", ray_cpus_per_worker=2)
    thread.join(timeout=5)
    assert killed, "no shard actor was found to kill"
    assert_same_cache(digits_local, cache.path)
    pids = {e["pid"] for e in stats.shard_log}
    assert killed[0] in pids and len(pids) >= 2, "the killed worker was not replaced mid-run"
    assert sorted(e["shard"] for e in stats.shard_log) == list(range(cache.n_shards))


@needs_ray
@pytest.mark.slow  # two driver processes, each importing torch and joining Ray
def test_killed_driver_resumes_with_the_same_command(ray_cluster: str, digits_data: Path, digits_local: Path,
                                                     tiny_timm_weights: str, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cmd = [sys.executable, "-m", "embedpipe", "extract", "--data", str(digits_data), "--backbone", TINY_TIMM,
           "--weights", tiny_timm_weights, "--cache-dir", str(root), "--precision", "fp32", "--dtype", "float32",
           "--batch-size", "4", "--shard-size", "6", "--workers", "0",
           "--engine", "ray", "--ray-address", ray_cluster, "--ray-cpus-per-worker", "2", "--json"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None and not list(root.glob("*/*/shards/*.h5")):
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = len(list(root.glob("*/*/shards/*.h5")))
    assert 0 < done_before < 7
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stats"]["resumed_shards"] >= done_before and out["stats"]["engine"] == "ray"
    assert len(out["stats"]["shard_log"]) == 7 - out["stats"]["resumed_shards"]
    assert_same_cache(digits_local, Path(out["path"]))


MULTI_NODE = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from embedpipe.extract import run_extract

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for i in range(3):
    cluster.add_node(num_cpus=1, resources={f"node{i}": 1})
ray.init(address=cluster.address, logging_level="WARNING")
data, weights, cache_dir = sys.argv[1:4]
cache, stats = run_extract(data, "timm:test_efficientnet", weights=weights, cache_dir=cache_dir, engine="ray",
                           progress=False, precision="fp32", dtype="float32", batch_size=4, shard_size=6,
                           num_workers=0)
names = {n["NodeID"]: next(k for k in n["Resources"] if k.startswith("node") and ":" not in k)
         for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
print(json.dumps({"path": str(cache.path), "workers": stats.workers,
                  "shards": {e["shard"]: names[e["node"]] for e in stats.shard_log}}))
ray.shutdown()
cluster.shutdown()
"""


@needs_ray
@pytest.mark.slow
def test_multi_node_cluster_spreads_shards(digits_data: Path, digits_local: Path, tiny_timm_weights: str,
                                           tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", MULTI_NODE, str(digits_data), tiny_timm_weights,
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["workers"] == 3 and sorted(map(int, out["shards"])) == list(range(7))
    assert len(set(out["shards"].values())) >= 2, out["shards"]  # one node did not take every shard
    assert_same_cache(digits_local, Path(out["path"]), exact=False)  # 1-CPU workers: 1 torch thread


@needs_ray
def test_bench_extracts_with_the_ray_engine(ray_cluster: str, tiny_timm_weights: str, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    from embedpipe.bench import BenchConfig, run_bench

    data = make_image_folder(tmp_path / "shapes", classes=2, per_class=6, splits=True)
    config = BenchConfig.build(datasets=(str(data),), backbones=(TINY_TIMM,), heads=("ncm",), engine="ray",
                               weights={TINY_TIMM: tiny_timm_weights}, cache_dir=str(tmp_path / "cache"),
                               results_dir=str(tmp_path / "results"), extract=EXACT)
    rows = run_bench(config)
    assert [r["status"] for r in rows] == ["ok"]
    assert "ray: 2 shards on 2 workers x 1 CPU across" in capfd.readouterr().err
    local, _ = _extract(str(data), tiny_timm_weights, tmp_path / "local")
    assert_same_cache(local.path, next((tmp_path / "cache" / "shapes").iterdir()), exact=False)
