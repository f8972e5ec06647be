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
fallback), finished shards are kept and the same command resumes. The GPU probe is bounded by
``GPU_PROBE_TIMEOUT_S``; starting or joining Ray (on loopback only, for a local instance) is
``engines/ray_cluster.py``'s job.

Ray is an optional extra: this module imports it only inside functions.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..core.errors import EmbedpipeError, first_line
from ..core.log import get_logger, level
from .base import ExtractJob, ExtractStats
from .ray_cluster import _quiet_ray, connect_ray, import_ray, start_local_ray
from .shard_runner import ShardContext, ShardRunner

_logger = get_logger(__name__)

ALIVE_POLL_S = 2.0  # how often the progress bar asks the cluster how many workers are alive
GPU_PROBE_TIMEOUT_S = 300  # waiting for a GPU to resolve precision "auto" on the cluster
CPU_ACTORS_PER_NODE = 8  # CPU-only nodes: 1-CPU actors up to this many CPUs, then larger actors
SHARD_TIMEOUT_S = 600.0  # no shard finished for this long: stop, saying what the run waits for
TIMEOUT_ENV = "EMBEDPIPE_RAY_TIMEOUT_S"  # overrides SHARD_TIMEOUT_S (seconds, > 0)
BACKSTOP_S = 60.0  # Ray Data's own no-progress guard fires this long after ours (if ours could not stop it)
CLOSE_WAIT_S = 10.0  # after a timeout, how long the run waits for Ray Data's execution to stop
SHARD_ACTOR = "ShardActor"  # in the class name Ray Data gives our actors: MapWorker(MapBatches(ShardActor))


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
        import ray  # the optional extra, on the worker
        import torch

        if ctx.device == "cpu":
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
            raise EmbedpipeError(f"ray_cpus_per_worker must be at least 1, got {cpus_per_worker}")
        self.cpus_per_worker = cpus_per_worker
        self.ray = import_ray()
        _quiet_ray()
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.owns_connection = not self.ray.is_initialized()  # an existing connection is reused, and kept
        if self.owns_connection:
            try:
                if address:
                    connect_ray(address)
                else:
                    start_local_ray(os.cpu_count())
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
                raise EmbedpipeError(f"cannot {where}: {first_line(e)}") from None
        device = str(bb_options.get("device", "auto"))
        self.use_gpu = device != "cpu" and self._cluster_gpus() > 0
        if device.startswith("cuda") and not self.use_gpu:
            raise EmbedpipeError(f"device {device!r} requested but the Ray cluster has no GPUs; use device='cpu'")
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
            import torch  # on a GPU worker of the cluster

            from embedpipe.core.device import resolve_precision

            return resolve_precision("auto", torch.device("cuda"))

        ref = probe.remote()
        try:
            return str(self.ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S))
        except self.ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            raise EmbedpipeError(f"no GPU worker ran the precision probe in {GPU_PROBE_TIMEOUT_S} s (GPUs busy "
                                 "with other work?); set precision='bf16' (or fp16, fp32) to skip it") from None

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
            raise EmbedpipeError(f"ray_cpus_per_worker={per} is more than any node has ({max(cpu_counts)} CPUs)")
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
    name = "ray"

    def close(self) -> None:
        """Leave the cluster (and stop a local instance) when this engine joined or started it: the
        run's actors and Ray Data's threads end here, not in the interpreter's exit handlers."""
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()

    def fill(self, job: ExtractJob) -> RayExtractStats:
        """Compute the job's shards on the actor pool, one shard per task; every wait is bounded."""
        stats = RayExtractStats(str(job.path), len(job.records))
        if not job.plans:
            return stats
        pending = [p.index for p in job.plans]
        stats.reused = sum(len(p.copy) for p in job.plans)
        pool = self.size_pool(len(pending))
        stats.workers = pool.actors
        shards = self._dataset(ShardContext.of(job, self.worker_device), pending, pool)
        timeout = shard_timeout_s()
        if hasattr(shards.context, "execution_no_progress_timeout_s"):  # Ray Data's own guard: a backstop
            shards.context.execution_no_progress_timeout_s = timeout + BACKSTOP_S
        t0 = time.perf_counter()
        self._consume(BoundedRows(shards, timeout), job, stats, pool, timeout)
        elapsed = time.perf_counter() - t0
        stats.images_per_s = job.to_compute / elapsed if elapsed > 0 and job.to_compute else 0.0
        stats.nodes = len({e["node"] for e in stats.shard_log})
        pids = len({(e["node"], e["pid"]) for e in stats.shard_log})
        _logger.log(level(job.progress),
                    f"ray: {len(pending)} shards on {pool.actors} workers x {pool.cpus} CPU{'s' * (pool.cpus != 1)}"
                    f"{f' + {pool.gpus} GPU' if pool.gpus else ''} across {stats.nodes} node(s)"
                    f"{f'; {pids - pool.actors} worker restarts' if pids > pool.actors else ''}")
        return stats

    def _dataset(self, ctx: ShardContext, pending: list[int], pool: Pool) -> Any:
        """Ray Data's actor-pool pattern over the pending shards: one row, one block, one file each."""
        ray = self.ray
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is the one bar
        data = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
        return data.map_batches(
            ShardActor,
            batch_size=1,  # one row = one shard = one file
            compute=ray.data.ActorPoolStrategy(size=pool.actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_args=(ctx, pool.cpus),
            num_cpus=pool.cpus,
            num_gpus=pool.gpus,
        )

    def _consume(self, rows: BoundedRows, job: ExtractJob, stats: RayExtractStats, pool: Pool,
                 timeout: float) -> None:
        """Read one row per finished shard into ``stats`` under the progress bar; a stall, an error or
        Ctrl-C shuts the execution down and ends in one line (finished shards are kept)."""
        total = len(job.plans)
        alive, polled = self.alive_workers(), time.monotonic()
        with tqdm(total=job.to_compute, unit="img", desc=f"extract {job.source.name} on ray",
                  disable=not job.progress, dynamic_ncols=True, file=sys.stderr) as bar:
            bar.set_postfix(shards=f"0/{total}", workers=alive)
            try:
                for row in rows:
                    entry = {k: _plain(row[k]) for k in ("shard", "node", "pid", "computed", "failed", "seconds")}
                    stats.shard_log.append(entry)
                    stats.embedded += entry["computed"] - entry["failed"]
                    stats.failed += entry["failed"]
                    if time.monotonic() - polled > ALIVE_POLL_S:
                        alive, polled = self.alive_workers(), time.monotonic()
                    bar.update(entry["computed"])
                    bar.set_postfix(shards=f"{len(stats.shard_log)}/{total}", workers=alive,
                                    **({"skipped": stats.failed} if stats.failed else {}))
            except StalledError as e:
                rows.close()
                raise EmbedpipeError(self.describe_wait(pool, e.waited_s, len(stats.shard_log), total)) from None
            except Exception as e:
                rows.close()
                if type(e).__name__ == "ExecutionTimeoutError":  # Ray Data's guard came first
                    raise EmbedpipeError(self.describe_wait(pool, timeout, len(stats.shard_log), total)) from None
                raise _as_error(e) from None
            except BaseException:  # KeyboardInterrupt: stop the execution too, then let it through
                rows.close()
                raise


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
    from ray._private import state  # private API, the optional extra: callers tolerate its failure

    return [{"ActorID": str(a.get("ActorID")), "State": str(a.get("State")), "JobID": str(a.get("JobID")),
             "Pid": a.get("Pid")}
            for a in state.actors().values() if SHARD_ACTOR in str(a.get("ActorClassName"))]


def _dead_jobs() -> set[str]:
    """Ids of the jobs whose driver has exited. Private API: may raise."""
    from ray._private import state  # private API, the optional extra: callers tolerate its failure

    return {str(j.get("JobID")) for j in state.jobs() if j.get("IsDead")}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _as_error(e: BaseException) -> EmbedpipeError:
    """A failed Ray run as one line: our own error's message when a worker raised one."""
    text = str(e)
    ours = re.search(r"EmbedpipeError: (.+)", text)
    if ours:
        return EmbedpipeError(ours.group(1).strip())
    return EmbedpipeError(f"the Ray run failed ({type(e).__name__}: {first_line(e).strip()[:300]}); finished shards are "
                          "kept, re-run the same command to resume")


