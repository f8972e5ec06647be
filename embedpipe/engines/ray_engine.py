"""The Ray engine: the driver plans, an actor pool computes one shard per task, all into one cache.

``run_extract(..., engine="ray")`` plans exactly as the local engine (manifest, split, key,
``meta.h5``, pending shards, donor rows); then the pending shards go through Ray Data's actor-pool
batch inference pattern: ``from_items([{"shard": s}])`` with one block per shard and
``batch_size=1``, so one input row is one shard and one call writes one shard file (Ray Data does
not keep block boundaries stable by itself, so rows are never the unit of work). Each actor
(``ShardActor``) loads the backbone once and writes its shards with the same atomic write as the
local engine, into a cache directory every node sees.

Invariants: a shard file appears whole or not at all (``write_shard``: temp file, fsync, rename),
so Ray's retries after a worker or node dies (Ray Data's actor pools default to
``max_restarts=-1, max_task_retries=-1``) are harmless, and a killed driver is resumed by the same
command (finished shards are skipped by the plan). The cache must be on a shared POSIX filesystem:
object storage has no atomic rename and no ``flock``, so it is not supported.

Every wait on the cluster is bounded and, when its time runs out, ends in one line (EmbedpipeError)
saying what it waited for. The run itself: when no shard finishes for ``SHARD_TIMEOUT_S`` seconds
(600; the environment variable ``EMBEDPIPE_RAY_TIMEOUT_S`` overrides it, e.g. for a cluster that
autoscales slowly), counted from the start and from each finished shard, the run stops with e.g.
"no shard finished in 600 s: waiting for 2 workers x 1 CPU on a cluster with 0 of 2 CPUs free ...";
Ray Data's execution is shut down (its own no-progress guard, set ``BACKSTOP_S`` later, is the
fallback), finished shards are kept and the same command resumes. Starting or joining Ray is bounded
by ``INIT_TIMEOUT_S`` (``ray.init``; plus the connection attempt under way when it runs out) and,
for an address, ``CONNECT_TIMEOUT_S`` (TCP); the GPU probe by ``GPU_PROBE_TIMEOUT_S``.

A local instance (no address) is started by ``start_local_ray``, the one place that says how (the
tests and benchmarks use it too): it listens on 127.0.0.1 only (node IP 127.0.0.1: gcs_server,
raylet, object manager, workers and agents bind loopback; no dashboard), since whoever reaches a Ray
port can submit work to it; and its workers run at the driver's priority (Ray's default niceness 15
let any busy process on the machine starve them: minutes per actor start-up under two busy loops,
where the local engine competes as an equal). A loopback ``--ray-address`` stays loopback
(``connect_ray``); joining a real cluster changes nothing on it.

Ray is an optional extra: this module imports it only inside functions.
"""

from __future__ import annotations

import _thread
import contextlib
import ipaddress
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from tqdm import tqdm

from ..cache import shard_name
from ..core.errors import EmbedpipeError
from .base import ExtractJob, ExtractStats
from .shard_runner import ShardContext, ShardRunner, file_mtime

_logger = logging.getLogger(__name__)

RAY_MISSING = 'the Ray engine needs Ray: pip install "embedpipe[ray]"'
ALIVE_POLL_S = 2.0  # how often the progress bar asks the cluster how many workers are alive
CONNECT_TIMEOUT_S = 5.0  # a --ray-address host:port must accept a TCP connection within this
INIT_TIMEOUT_S = 120.0  # ray.init (start a local instance, or join a cluster) must return within this
GPU_PROBE_TIMEOUT_S = 300  # waiting for a GPU to resolve precision "auto" on the cluster
CPU_ACTORS_PER_NODE = 8  # CPU-only nodes: 1-CPU actors up to this many CPUs, then larger actors
SHARD_TIMEOUT_S = 600.0  # no shard finished for this long: stop, saying what the run waits for
TIMEOUT_ENV = "EMBEDPIPE_RAY_TIMEOUT_S"  # overrides SHARD_TIMEOUT_S (seconds, > 0)
BACKSTOP_S = 60.0  # Ray Data's own no-progress guard fires this long after ours (if ours could not stop it)
CLOSE_WAIT_S = 10.0  # after a timeout, how long the run waits for Ray Data's execution to stop
LOOPBACK = "127.0.0.1"  # a local instance listens here only: Ray ports take work from whoever reaches them
SHARD_ACTOR = "ShardActor"  # in the class name Ray Data gives our actors: MapWorker(MapBatches(ShardActor))


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray core
    except ImportError:
        raise EmbedpipeError(RAY_MISSING) from None
    return ray


def local_node_args(head: bool = True) -> dict[str, Any]:
    """Arguments of a Ray node started on this machine (``ray.cluster_utils.Cluster``'s
    ``head_node_args``, or ``add_node(**local_node_args(head=False))``): node IP 127.0.0.1, so that
    gcs_server, raylet, object manager and workers listen on loopback only; no dashboard; workers at
    the driver's priority (a system config: set on the head, the other nodes get it from there)."""
    args: dict[str, Any] = {"node_ip_address": LOOPBACK, "include_dashboard": False}
    if head:
        args["_system_config"] = {"worker_niceness": 0}
    return args


def start_local_ray(num_cpus: int | None, **kwargs: Any) -> None:
    """``ray.init`` of a new local instance that listens on 127.0.0.1 only (``local_node_args``).

    The one place that starts Ray on this machine: the engine without an address, the tests and the
    benchmarks call it. The node's address is checked afterwards: an instance the network could reach
    is shut down, never used. Bounded by ``INIT_TIMEOUT_S``."""
    ray = import_ray()
    node = local_node_args()
    with _loopback_kept():
        _within(INIT_TIMEOUT_S, "start a local Ray instance", lambda: ray.init(
            address="local",  # never join a stray instance
            num_cpus=num_cpus, include_dashboard=node["include_dashboard"],
            _node_ip_address=node["node_ip_address"], _system_config=node["_system_config"],
            **{"logging_level": logging.WARNING, **kwargs}), cleanup=ray.shutdown)
    ip = ray.util.get_node_ip_address()
    if not _is_loopback(ip):  # 127.0.0.1, or ::1 where Ray resolves "localhost" to IPv6
        ray.shutdown()
        raise EmbedpipeError(f"the local Ray instance came up on {ip}, not {LOOPBACK}: refusing to run a Ray "
                             "instance the network can reach; start one yourself and pass --ray-address")


def connect_ray(address: str, **kwargs: Any) -> None:
    """``ray.init(address)``: join a running cluster, in at most CONNECT_TIMEOUT_S (TCP) +
    INIT_TIMEOUT_S. A loopback address (a local instance, a simulated cluster) stays loopback."""
    ray = import_ray()
    _check_reachable(address)
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    with _loopback_kept() if _is_loopback(host) else contextlib.nullcontext():
        _within(INIT_TIMEOUT_S, f"join the Ray cluster at {address}",
                lambda: ray.init(address=address, **{"logging_level": logging.WARNING, **kwargs}),
                cleanup=ray.shutdown)


@contextlib.contextmanager
def _loopback_kept() -> Iterator[None]:
    """While Ray starts or joins: keep 127.0.0.1 as the node's and the GCS's address. ``ray.init``
    replaces a loopback address by the host's outward one (so that other machines could join) unless
    Ray believes multi-node clusters are off (ray._private.ray_constants.ENABLE_RAY_CLUSTER, read at
    call time); then a loopback-only GCS would be looked for on the outward address and never found."""
    try:
        from ray._private import ray_constants  # private: another Ray layout just skips this
    except ImportError:
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _within(seconds: float, what: str, call: Callable[[], Any], cleanup: Callable[[], Any] | None = None) -> Any:
    """``call()``, interrupted after ``seconds`` with one line saying what did not finish (after
    ``cleanup()``, e.g. ``ray.shutdown`` of whatever Ray had half set up).

    Only the main thread can be interrupted: SIGINT sent to it (when Python's own handler is installed)
    ends a blocking sleep or wait at once and raises KeyboardInterrupt at the next Python instruction
    (e.g. between Ray's connection retries); elsewhere, or under another SIGINT handler, Ray's own
    retry limits apply."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    lock, state = threading.Lock(), {"done": False, "fired": False}

    def watch() -> None:
        time.sleep(seconds)
        with lock:
            if not state["done"]:
                state["fired"] = True
                if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                else:  # another handler: leave it to decide (interrupt_main calls it, or does nothing)
                    _thread.interrupt_main()

    threading.Thread(target=watch, name="embedpipe-ray-init-watch", daemon=True).start()
    try:
        try:
            result = call()
        finally:
            with lock:
                state["done"] = True
        if state["fired"]:  # it fired as the call returned: its interrupt is due now
            time.sleep(1.0)
        return result
    except KeyboardInterrupt:
        if not state["fired"]:
            raise
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()
        raise EmbedpipeError(f"cannot {what}: ray.init did not return in {seconds:g} s") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def shard_timeout_s() -> float:
    """How long a run waits for the next shard: ``SHARD_TIMEOUT_S``, or ``$EMBEDPIPE_RAY_TIMEOUT_S``."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return SHARD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise EmbedpipeError(f"{TIMEOUT_ENV} must be a number of seconds above 0, got {raw!r}")
    return value


@dataclass
class RayExtractStats(ExtractStats):
    """ExtractStats plus where the work ran: one entry per shard computed by this run."""

    engine: str = "ray"
    workers: int = 0  # actors in the pool
    nodes: int = 0  # distinct nodes that computed a shard
    shard_log: list[dict[str, Any]] = field(default_factory=list)  # shard, node, pid, computed, seconds


@dataclass(frozen=True)
class Pool:
    """How many actors, and what each one holds."""

    actors: int
    cpus: int
    gpus: int


class ShardActor:
    """One Ray Data map worker: a loaded backbone, then shard after shard."""

    def __init__(self, ctx: ShardContext, cpus: int) -> None:
        import ray
        import torch

        if ctx.backbone.device == "cpu":
            torch.set_num_threads(max(1, cpus))  # Ray sets OMP_NUM_THREADS too; torch may have read it late
        self.runner = ShardRunner(ctx, max(1, cpus))
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        outcomes = [self.runner.run(int(s)) for s in batch["shard"]]
        return {
            "shard": [o.shard for o in outcomes],
            "computed": [o.computed for o in outcomes],
            "failed": [o.failed for o in outcomes],
            "seconds": [o.seconds for o in outcomes],
            "node": [self.node] * len(outcomes),
            "pid": [self.pid] * len(outcomes),
        }


class RayEngine:
    """A connection to a Ray cluster (joined, or started locally) that fills pending shards."""

    def __init__(self, address: str | None, bb_options: dict[str, Any], cpus_per_worker: int | None = None) -> None:
        if cpus_per_worker is not None and cpus_per_worker < 1:
            raise EmbedpipeError(f"--ray-cpus-per-worker must be at least 1, got {cpus_per_worker}")
        self.cpus_per_worker = cpus_per_worker
        self.ray = import_ray()
        _quiet_ray()
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not self.ray.is_initialized():  # an existing connection in this process is reused
            try:
                if address:
                    connect_ray(address)
                else:
                    start_local_ray(os.cpu_count())
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise EmbedpipeError(f"cannot {where}: {first}") from None
        device = str(bb_options.get("device", "auto"))
        self.use_gpu = device != "cpu" and self._cluster_gpus() > 0
        if device.startswith("cuda") and not self.use_gpu:
            raise EmbedpipeError(f"device {device!r} requested but the Ray cluster has no GPUs; use --device cpu")
        self.worker_device = "cuda" if self.use_gpu else "cpu"
        options = dict(bb_options)
        if self.use_gpu and options.get("precision", "auto") == "auto":
            options["precision"] = self._gpu_precision()  # the key must name what the GPU workers compute
        if self.use_gpu and device.startswith("cuda"):
            options["device"] = "auto"  # the driver may have no GPU; it only plans
        self.driver_options = options

    # -- cluster -------------------------------------------------------------------------------
    def _nodes(self) -> list[dict[str, float]]:
        return [dict(n["Resources"]) for n in self.ray.nodes() if n.get("Alive")]

    def _cluster_gpus(self) -> int:
        return sum(int(r.get("GPU", 0)) for r in self._nodes())

    def _gpu_precision(self) -> str:
        @self.ray.remote(num_gpus=1)
        def probe() -> str:
            import torch

            from embedpipe.backbones.base import resolve_precision

            return resolve_precision("auto", torch.device("cuda"))

        ref = probe.remote()
        try:
            return str(self.ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S))
        except self.ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            raise EmbedpipeError(f"no GPU worker ran the precision probe in {GPU_PROBE_TIMEOUT_S} s (GPUs busy "
                                 "with other work?); pass --precision explicitly to skip it") from None

    def size_pool(self, shards: int) -> Pool:
        """One actor per GPU (with that GPU's share of its node's CPUs); without GPUs, small CPU
        actors: ``cpus_per_worker`` CPUs each when given, else 1 CPU each on nodes of up to
        ``CPU_ACTORS_PER_NODE`` CPUs and at most that many actors per node on larger ones (each actor
        holds a copy of the model). Small actors decode in-line and run few torch threads: on a 2-core
        node two 1-CPU actors came within 6 % of the local engine where one 2-CPU actor (a decoding
        process beside 2 torch threads and Ray's own processes) lost 30 % (benchmarks/results/scale.md)."""
        nodes = self._nodes()
        if self.use_gpu:
            gpu_nodes = [r for r in nodes if r.get("GPU", 0) >= 1]
            cpus = min(int(r.get("CPU", 0) // r["GPU"]) for r in gpu_nodes)
            if self.cpus_per_worker is not None:
                cpus = self.cpus_per_worker
            actors = sum(int(r["GPU"]) for r in gpu_nodes)
            return Pool(max(1, min(actors, shards)), cpus, 1)
        cpu_counts = [int(r.get("CPU", 0)) for r in nodes if r.get("CPU", 0) >= 1]
        if not cpu_counts:
            raise EmbedpipeError("the Ray cluster has no CPUs to run on; start nodes with `ray start`")
        per = self.cpus_per_worker or max(1, -(-min(cpu_counts) // CPU_ACTORS_PER_NODE))
        if per > max(cpu_counts):
            raise EmbedpipeError(f"--ray-cpus-per-worker {per} is more than any node has ({max(cpu_counts)} CPUs)")
        return Pool(max(1, min(sum(c // per for c in cpu_counts), shards)), per, 0)

    def alive_workers(self) -> int | None:
        """Shard actors of this job that are alive now (None when the cluster cannot say)."""
        try:
            job = self.ray.get_runtime_context().get_job_id()
            return sum(1 for a in _shard_actors() if a["State"] == "ALIVE" and a["JobID"] == job)
        except Exception:  # a private API: a progress detail must never fail a run
            return None

    def describe_wait(self, pool: Pool, waited_s: float, done: int, total: int) -> str:
        """The one line of a run that stopped waiting: what it waited for, and what holds the cluster."""
        kind = "GPU" if pool.gpus else "CPU"
        need = (f"{pool.actors} worker{'s' * (pool.actors != 1)} x {pool.cpus} CPU{'s' * (pool.cpus != 1)}"
                f"{f' + {pool.gpus} GPU' if pool.gpus else ''}")
        where = ""
        try:  # a diagnosis, best effort: the line is complete without it
            free, have = self.ray.available_resources().get(kind, 0), self.ray.cluster_resources().get(kind, 0)
            job = self.ray.get_runtime_context().get_job_id()
            actors = [a for a in _shard_actors() if a["State"] != "DEAD"]
            mine = sum(1 for a in actors if a["JobID"] == job and a["State"] == "ALIVE")
            others: dict[str, int] = {}
            for a in actors:
                if a["JobID"] != job:
                    others[a["JobID"]] = others.get(a["JobID"], 0) + 1
            where = f" on a cluster with {free:g} of {have:g} {kind}s free"
            if others:
                dead = _dead_jobs()
                where += " (held by shard actors of other jobs: " + ", ".join(
                    f"{n} of job {j}{' whose driver is gone' if j in dead else ''}"
                    for j, n in sorted(others.items())) + ")"
            elif not mine and free < (pool.gpus if pool.gpus else pool.cpus):
                where += " (held by other actors or tasks?)"
            where += f"; {mine} of {pool.actors} workers of this run started"
            if mine:
                where += " (a shard slower than the limit, or workers starved of CPU?)"
        except Exception:
            pass
        return (f"no shard finished in {waited_s:g} s: waiting for {need}{where}; {done} of {total} shards "
                f"of this run finished and are kept: re-run the same command to resume (more patience: "
                f"{TIMEOUT_ENV}=SECONDS)")

    # -- the run -------------------------------------------------------------------------------
    def fill_shards(
        self, source: Any, records: list[Any], bb: Any, layers: list[str], config: Any, path: Path,
        key: str, plans: list[Any], opts: Any, decoder: Any, progress: bool,
    ) -> RayExtractStats:
        stats = RayExtractStats(str(path), len(records), 0, 0, 0, 0.0, 0.0, 0)
        if not plans:
            return stats
        pending = [p.index for p in plans]
        ctx = ShardContext(
            source=source, records=records, backbone=replace(bb.config, device=self.worker_device),
            fingerprint=bb.fingerprint, layers=layers, dtype=config.dtype, jpeg_draft=opts.draft,
            gpu_decode=decoder is not None, num_workers=config.num_workers, path=path, key=key,
            plans={p.index: p for p in plans},
            planned_files={p.index: file_mtime(path / shard_name(p.index)) for p in plans})
        stats.reused = sum(len(p.copy) for p in plans)
        n_compute = sum(ctx.to_compute(s) for s in pending)
        pool = self.size_pool(len(pending))
        stats.workers = pool.actors
        ray = self.ray
        data_context = ray.data.DataContext.get_current()
        data_context.enable_progress_bars = False  # ours is the one bar
        data = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
        shards = data.map_batches(
            ShardActor,
            batch_size=1,  # one row = one shard = one file
            compute=ray.data.ActorPoolStrategy(size=pool.actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_args=(ctx, pool.cpus),
            num_cpus=pool.cpus,
            num_gpus=pool.gpus,
        )
        timeout = shard_timeout_s()
        if hasattr(shards.context, "execution_no_progress_timeout_s"):  # Ray Data's own guard: a backstop
            shards.context.execution_no_progress_timeout_s = timeout + BACKSTOP_S
        t0 = time.perf_counter()
        alive, polled = self.alive_workers(), time.monotonic()
        with tqdm(total=n_compute, unit="img", desc=f"extract {source.name} on ray", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            bar.set_postfix(shards=f"0/{len(pending)}", workers=alive)
            rows = BoundedRows(shards, timeout)
            try:
                for row in rows:
                    entry = {k: _plain(row[k]) for k in ("shard", "node", "pid", "computed", "failed", "seconds")}
                    stats.shard_log.append(entry)
                    stats.embedded += entry["computed"] - entry["failed"]
                    stats.failed += entry["failed"]
                    if time.monotonic() - polled > ALIVE_POLL_S:
                        alive, polled = self.alive_workers(), time.monotonic()
                    bar.update(entry["computed"])
                    bar.set_postfix(shards=f"{len(stats.shard_log)}/{len(pending)}", workers=alive,
                                    **({"skipped": stats.failed} if stats.failed else {}))
            except StalledError as e:
                rows.close()
                raise EmbedpipeError(self.describe_wait(pool, e.waited_s, len(stats.shard_log), len(pending))) from None
            except Exception as e:
                rows.close()
                if type(e).__name__ == "ExecutionTimeoutError":  # Ray Data's guard came first
                    raise EmbedpipeError(self.describe_wait(pool, timeout, len(stats.shard_log), len(pending))) from None
                raise _as_error(e) from None
            except BaseException:  # KeyboardInterrupt: stop the execution too, then let it through
                rows.close()
                raise
        elapsed = time.perf_counter() - t0
        stats.images_per_s = n_compute / elapsed if elapsed > 0 and n_compute else 0.0
        stats.nodes = len({e["node"] for e in stats.shard_log})
        if progress:
            pids = len({(e["node"], e["pid"]) for e in stats.shard_log})
            print(f"ray: {len(pending)} shards on {pool.actors} workers x {pool.cpus} CPU{'s' * (pool.cpus != 1)}"
                  f"{f' + {pool.gpus} GPU' if pool.gpus else ''} across {stats.nodes} node(s)"
                  f"{f'; {pids - pool.actors} worker restarts' if pids > pool.actors else ''}", file=sys.stderr)
        return stats

    name = "ray"

    def fill(self, job: ExtractJob) -> RayExtractStats:
        """The Engine interface (engines/base.py) over ``fill_shards``."""
        ex = job.executor
        options = SimpleNamespace(dtype=job.dtype, num_workers=ex.num_workers)
        return self.fill_shards(job.source, list(job.records), ex.backbone, list(ex.layers), options, job.path,
                                job.key, list(job.plans), ex.decode, ex.decoder, job.progress)


class StalledError(Exception):
    """No row arrived in time (turned into the run's one line by ``RayEngine.describe_wait``)."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"no row in {waited_s:g} s")
        self.waited_s = waited_s


class BoundedRows:
    """``dataset.iter_rows()`` with a limit on the wait for each row.

    Ray Data's iterator blocks without a timeout, so a thread pumps it into a queue that is read with
    one; ``close()`` shuts the dataset's execution down (its actors are released) and lets the thread
    end. Iterating raises ``StalledError`` when no row came for ``timeout_s`` seconds."""

    _END = object()

    def __init__(self, dataset: Any, timeout_s: float) -> None:
        self.dataset, self.timeout_s = dataset, timeout_s
        self.queue: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, name="embedpipe-ray-rows", daemon=True)

    def _pump(self) -> None:
        try:
            for row in self.dataset.iter_rows():
                self.queue.put((row, None))
        except BaseException as e:  # handed to the reading thread, which raises it
            self.queue.put((self._END, e))
        else:
            self.queue.put((self._END, None))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.thread.start()
        while True:
            try:
                row, error = self.queue.get(timeout=self.timeout_s)
            except queue.Empty:
                raise StalledError(self.timeout_s) from None
            if row is self._END:
                if error is not None:
                    raise error
                return
            yield row

    def close(self) -> None:
        """Stop the dataset's execution (force: running shards are abandoned, their files never
        appear half-written) and wait a little for the pumping thread to notice."""
        name = f"StreamingExecutor-{self.dataset.get_dataset_id()}"
        for thread in threading.enumerate():
            if thread.name == name and hasattr(thread, "shutdown"):
                try:
                    thread.shutdown(force=True)
                except Exception:  # Ray Data internals: shutting down is best effort
                    _logger.debug("could not shut down %s", name, exc_info=True)
        self.thread.join(timeout=CLOSE_WAIT_S)


def _shard_actors() -> list[dict[str, Any]]:
    """The cluster's shard actors (every job's): ActorID, State, JobID, Pid. Private API: may raise."""
    from ray._private import state

    return [{"ActorID": str(a.get("ActorID")), "State": str(a.get("State")), "JobID": str(a.get("JobID")),
             "Pid": a.get("Pid")}
            for a in state.actors().values() if SHARD_ACTOR in str(a.get("ActorClassName"))]


def _dead_jobs() -> set[str]:
    """Ids of the jobs whose driver has exited. Private API: may raise."""
    from ray._private import state

    return {str(j.get("JobID")) for j in state.jobs() if j.get("IsDead")}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _as_error(e: BaseException) -> EmbedpipeError:
    """A failed Ray run as one line: our own error's message when a worker raised one."""
    text = str(e)
    ours = re.search(r"EmbedpipeError: (.+)", text)
    if ours:
        return EmbedpipeError(ours.group(1).strip())
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return EmbedpipeError(f"the Ray run failed ({type(e).__name__}: {first[:300]}); finished shards are "
                          "kept, re-run the same command to resume")


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes of Ray's own retries, when a host:port address does not answer."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray://... : left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise EmbedpipeError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                             "`ray start --head` there, or leave out --ray-address for a local instance") from None


def _quiet_ray() -> None:
    """Ray Data's own progress bars and INFO lines off: the driver shows one bar and one summary."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
