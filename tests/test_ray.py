"""The Ray engine writes the same cache as the local engine: equality, worker and driver kills,
a multi-node simulation, bench, bounded waits, loopback-only listening, and the one-line error
without Ray.

One local Ray instance (the engine's own ``start_local_ray(2)``: 127.0.0.1 only) is shared by the
in-process tests; subprocess drivers join it by address. Tests assert what the engine guarantees
(the cache, every shard once, a killed worker's or driver's work redone, the pool it asks for), never
the scheduler's choices (which actor or node takes which shard) or timing. Every Ray run here has
``EMBEDPIPE_RAY_TIMEOUT_S`` = RAY_TIMEOUT_S, so a stalled run fails with the engine's one line well
before the test's own timeout. Features are compared exactly where the actors are 2-CPU
(``ray_cpus_per_worker=2``): fp32 forward pass on CPU, float32 storage, same batches and the same
torch thread count on both engines, so a Ray cache is bit-identical to a local one. The default
1-CPU actors of a CPU-only node (and the multi-node simulation's) run one torch thread, which sums in
another order: there features agree within THREADS_RTOL.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
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

from embedpipe.core.errors import EmbedpipeError
from embedpipe.engines.ray import TIMEOUT_ENV, BoundedRows, StalledError, shard_timeout_s
from embedpipe.extract import run_extract

try:
    import ray
    import ray.data
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed (pip install "embedpipe[ray]")')

# exact comparison: fp32 forward, float32 storage; small shards so that runs have several of them
EXACT = {"precision": "fp32", "dtype": "float32", "batch_size": 4, "shard_size": 6, "num_workers": 0}
# A tiny shard takes seconds; a stalled run stops after this long with the engine's one line,
# before the test's own timeout (the subprocess drivers inherit it through the environment).
RAY_TIMEOUT_S = 150
DEADLINE_S = 300  # polling loops in tests give up after this long


@pytest.fixture(scope="module", autouse=True)
def ray_timeout() -> Iterator[None]:
    saved = os.environ.get(TIMEOUT_ENV)
    os.environ[TIMEOUT_ENV] = str(RAY_TIMEOUT_S)
    yield
    if saved is None:
        os.environ.pop(TIMEOUT_ENV, None)
    else:
        os.environ[TIMEOUT_ENV] = saved


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray instance shared by this module's tests, started as the engine starts one
    (127.0.0.1 only); yields its address."""
    from embedpipe.engines.ray_cluster import start_local_ray

    assert ray is not None
    started = not ray.is_initialized()
    if started:
        start_local_ray(2)
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
def test_ray_recomputes_a_damaged_shard(ray_cluster: str, digits_data: Path, digits_local: Path,
                                        tiny_timm_weights: str, tmp_path: Path) -> None:
    """A truncated shard file exists but fails the cheap check: the Ray engine recomputes it, it does not
    mistake it for one this run already wrote. The cache starts as a copy of a local one (same key);
    default actor sizing, capped at one actor for the one pending shard."""
    cache = tmp_path / "ray" / digits_local.parent.name / digits_local.name
    shutil.copytree(digits_local, cache)
    shard = cache / "shards" / "00001.h5"
    shard.write_bytes(shard.read_bytes()[:200])  # truncated: unreadable, still a file
    again, stats = _extract(str(digits_data), tiny_timm_weights, tmp_path / "ray", engine="ray")
    assert again.path == cache and stats.workers == 1  # never more actors than pending shards
    assert [e["shard"] for e in stats.shard_log] == [1] and stats.embedded == 6  # shard size 6
    assert_same_cache(digits_local, again.path, exact=False)  # 1-CPU actors: 1 torch thread


@needs_ray
def test_actor_sizing(ray_cluster: str) -> None:
    """CPU-only nodes get 1-CPU actors by default (2 on this 2-CPU instance); --ray-cpus-per-worker
    overrides it, and an impossible size is one clear error."""
    from embedpipe.core.errors import EmbedpipeError
    from embedpipe.engines.ray import Pool, RayEngine

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


def _shard_actor_pids(job: str) -> list[int]:
    """Pids of job ``job``'s shard actors that are alive now."""
    from ray._private import state

    return [int(a["Pid"]) for a in state.actors().values()
            if a.get("State") == "ALIVE" and "ShardActor" in str(a.get("ActorClassName"))
            and str(a.get("JobID")) == job and a.get("Pid")]


@needs_ray
def test_sigkill_of_an_embedding_worker_is_retried(ray_cluster: str, digits_data: Path, digits_local: Path,
                                                   tiny_timm_weights: str, tmp_path: Path) -> None:
    """SIGKILL of this run's shard actor while shards are pending: the run still finishes with a cache
    equal to the local one, every shard reported once, and no shard written twice. (Which actor then
    takes which shard, and whether the pool's pid changes, is Ray's choice: not asserted.)"""
    root = tmp_path / "ray"
    job = ray.get_runtime_context().get_job_id()
    killed: list[int] = []
    written_at_kill: dict[str, int] = {}

    def killer() -> None:  # once the first shard is written, SIGKILL the actor that is embedding the next
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not killed:
            pids, files = _shard_actor_pids(job), list(root.glob("*/*/shards/*.h5"))
            if pids and files:
                written_at_kill.update({f.name: f.stat().st_mtime_ns for f in files})
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cache, stats = _extract(str(digits_data), tiny_timm_weights, root, engine="ray", ray_cpus_per_worker=2)
    thread.join(timeout=5)
    assert killed, "no shard actor was found to kill"
    assert len(written_at_kill) < cache.n_shards, "the run had finished before the kill"
    assert_same_cache(digits_local, cache.path)
    assert sorted(e["shard"] for e in stats.shard_log) == list(range(cache.n_shards))  # each reported once
    shards = cache.path / "shards"
    assert {name: (shards / name).stat().st_mtime_ns for name in written_at_kill} == written_at_kill  # not rewritten


@needs_ray
@pytest.mark.slow  # two driver processes, each importing torch and joining Ray
@pytest.mark.timeout(900)
def test_killed_driver_resumes_with_the_same_command(ray_cluster: str, digits_data: Path, digits_local: Path,
                                                     tiny_timm_weights: str, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cmd = [sys.executable, "-m", "embedpipe", "extract", "--data", str(digits_data), "--backbone", TINY_TIMM,
           "--weights", tiny_timm_weights, "--cache-dir", str(root), "--precision", "fp32", "--dtype", "float32",
           "--batch-size", "4", "--shard-size", "6", "--workers", "0",
           "--engine", "ray", "--ray-address", ray_cluster, "--ray-cpus-per-worker", "2", "--json"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and driver.poll() is None and not list(root.glob("*/*/shards/*.h5")):
            time.sleep(0.05)
        assert driver.poll() is None, "the driver finished (or failed) before it could be killed"
        assert list(root.glob("*/*/shards/*.h5")), f"the driver wrote no shard in {DEADLINE_S} s"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    done_before = len(list(root.glob("*/*/shards/*.h5")))
    assert 0 < done_before < 7
    # the same command: it must not wait on what the dead driver's actors held (a stall would end in
    # the engine's one line after RAY_TIMEOUT_S, well inside this subprocess timeout)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["stats"]["resumed_shards"] >= done_before and out["stats"]["engine"] == "ray"
    assert len(out["stats"]["shard_log"]) == 7 - out["stats"]["resumed_shards"]
    assert_same_cache(digits_local, Path(out["path"]))


MULTI_NODE = """
import json, os, sys
import ray
from ray.cluster_utils import Cluster
from embedpipe.engines.ray_cluster import connect_ray, local_node_args
from embedpipe.extract import run_extract

cluster = Cluster(initialize_head=True, head_node_args={**local_node_args(), "num_cpus": 0})
for i in range(3):
    cluster.add_node(num_cpus=1, resources={f"node{i}": 1}, **local_node_args(head=False))
data, weights, cache_dir, tests = sys.argv[1:5]
sys.path.insert(0, tests)
from test_ray import exposed_listeners
connect_ray(cluster.address)  # this script's own connection: the engine leaves it open (ray.nodes() below)
try:
    cache, stats = run_extract(data, "timm:test_efficientnet", weights=weights, cache_dir=cache_dir,
                               engine="ray", ray_address=cluster.address, progress=False, precision="fp32",
                               dtype="float32", batch_size=4, shard_size=6, num_workers=0)
    names = {n["NodeID"]: next(k for k in n["Resources"] if k.startswith("node") and ":" not in k)
             for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    print(json.dumps({"path": str(cache.path), "workers": stats.workers,
                      "shards": {e["shard"]: names[e["node"]] for e in stats.shard_log},
                      "exposed": exposed_listeners(os.getpid())}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@needs_ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multi_node_cluster(digits_data: Path, digits_local: Path, tiny_timm_weights: str, tmp_path: Path) -> None:
    """Three 1-CPU nodes (and a 0-CPU head), all on 127.0.0.1 only: one 1-CPU actor per node, every
    shard computed once on a worker node, the cache equal to the local one. How the shards spread over
    the nodes is Ray's choice: not asserted."""
    proc = subprocess.run([sys.executable, "-c", MULTI_NODE, str(digits_data), tiny_timm_weights,
                           str(tmp_path / "cache"), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=2 * DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["workers"] == 3 and sorted(map(int, out["shards"])) == list(range(7))
    assert set(out["shards"].values()) <= {"node0", "node1", "node2"}  # worker nodes only (the head has 0 CPUs)
    assert out["exposed"] == [], out["exposed"]  # no Ray process of the simulated cluster beyond loopback
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


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket on this machine, from
    /proc/net/tcp and /proc/net/tcp6 (what `ss -ltn` reads; no tool needed)."""
    found: dict[str, tuple[str, int]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def _process_tree(root: int) -> set[int]:
    """``root`` and all its descendants (from /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def listeners(root: int) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket held by ``root`` or its descendants."""
    sockets = _listening_sockets()
    return sorted({(p, *sockets[i]) for p in _process_tree(root) for i in _socket_inodes(p) if i in sockets})


def exposed_listeners(root: int) -> list[tuple[int, str, int]]:
    """``listeners(root)`` that are not on loopback (what the network could reach)."""
    return [entry for entry in listeners(root) if not _is_loopback(entry[1])]


@needs_ray
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_local_instance_listens_on_loopback_only(ray_cluster: str) -> None:
    """The engine's local instance (the shared fixture's: start_local_ray) has no port open to the
    network: every listening TCP socket of this process and its descendants (gcs_server, raylet, its
    workers and agents, this driver) is on 127.0.0.1 / ::1."""
    @ray.remote(num_cpus=1)
    def pid() -> int:
        return os.getpid()

    workers = set(ray.get([pid.remote() for _ in range(2)], timeout=RAY_TIMEOUT_S))
    assert workers <= _process_tree(os.getpid()), "the Ray workers are not descendants of this process"
    listening = listeners(os.getpid())
    gcs_port = int(ray_cluster.rpartition(":")[2])
    assert any(port == gcs_port for _, _, port in listening), f"the GCS port was not found: {listening}"
    assert {p for p, _, _ in listening} & workers, f"no worker's port was found: {listening}"
    assert ray_cluster.startswith("127.0.0.1:")
    exposed = exposed_listeners(os.getpid())
    assert not exposed, f"Ray processes listening beyond loopback (pid, address, port): {exposed}"


def test_shard_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.engines.ray import SHARD_TIMEOUT_S

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert shard_timeout_s() == SHARD_TIMEOUT_S
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert shard_timeout_s() == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(EmbedpipeError, match=f"{TIMEOUT_ENV} must be a number of seconds"):
            shard_timeout_s()


def test_a_call_that_does_not_return_is_interrupted() -> None:
    """What bounds ray.init: the call is interrupted after its time, with one line, and cleaned up."""
    from embedpipe.engines.ray_cluster import _within

    cleaned: list[bool] = []
    t0 = time.monotonic()
    with pytest.raises(EmbedpipeError, match=r"^cannot start it: ray.init did not return in 0.3 s$"):
        _within(0.3, "start it", lambda: time.sleep(30), cleanup=lambda: cleaned.append(True))
    assert cleaned == [True] and time.monotonic() - t0 < 10
    assert _within(5, "return", lambda: 42) == 42


def test_bounded_rows_stop_waiting() -> None:
    """The wait for each row is bounded (Ray Data's iterator itself has no timeout); rows, the end and
    errors pass through."""
    release = threading.Event()

    class Stuck:  # a dataset whose second row never comes (until released)
        def iter_rows(self) -> Iterator[dict[str, int]]:
            yield {"shard": 0}
            release.wait(DEADLINE_S)

        def get_dataset_id(self) -> str:
            return "stuck"

    rows, got = BoundedRows(Stuck(), 0.3), []
    t0 = time.monotonic()
    with pytest.raises(StalledError):
        for row in rows:
            got.append(row)
    assert got == [{"shard": 0}] and time.monotonic() - t0 < 30
    release.set()
    rows.close()
    assert not rows.thread.is_alive()

    class Fails:
        def iter_rows(self) -> Iterator[dict[str, int]]:
            yield {"shard": 0}
            raise ValueError("worker said no")

    with pytest.raises(ValueError, match="worker said no"):
        list(BoundedRows(Fails(), 5))


@needs_ray
def test_a_run_that_cannot_start_stops_with_one_line(ray_cluster: str, digits_data: Path, tiny_timm_weights: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CPU held by another actor: no shard can finish, and the run stops after the timeout with one
    line saying what it waited for, instead of waiting forever; its own actors are released."""
    monkeypatch.setenv(TIMEOUT_ENV, "5")

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()  # type: ignore[attr-defined]
    try:
        ray.get(hog.ready.remote(), timeout=RAY_TIMEOUT_S)
        job = ray.get_runtime_context().get_job_id()
        with pytest.raises(EmbedpipeError) as error:
            _extract(str(digits_data), tiny_timm_weights, tmp_path / "ray", engine="ray")
        line = str(error.value)
        assert "\n" not in line
        assert line.startswith("no shard finished in 5 s: waiting for 2 workers x 1 CPU on a cluster with "
                               "0 of 2 CPUs free"), line
        assert "(held by other actors or tasks?); 0 of 2 workers of this run started;" in line, line
        assert "0 of 7 shards of this run finished and are kept: re-run the same command to resume" in line
        assert not list((tmp_path / "ray").glob("*/*/shards/*.h5"))
        deadline = time.monotonic() + DEADLINE_S  # the stopped run's pending actors go away
        while _shard_actors_of(job) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _shard_actors_of(job)
    finally:
        ray.kill(hog)


def _shard_actors_of(job: str) -> list[str]:
    from ray._private import state

    return [str(a["State"]) for a in state.actors().values()
            if "ShardActor" in str(a.get("ActorClassName")) and str(a.get("JobID")) == job
            and a.get("State") != "DEAD"]
