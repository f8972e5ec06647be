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

Ray is an optional extra: this module imports it only inside functions.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
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

RAY_MISSING = 'the Ray engine needs Ray: pip install "embedpipe[ray]"'
ALIVE_POLL_S = 2.0  # how often the progress bar asks the cluster how many workers are alive
CONNECT_TIMEOUT_S = 5.0  # a --ray-address host:port must accept a TCP connection within this
GPU_PROBE_TIMEOUT_S = 300  # waiting for a GPU to resolve precision "auto" on the cluster
CPU_ACTORS_PER_NODE = 8  # CPU-only nodes: 1-CPU actors up to this many CPUs, then larger actors


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray core
    except ImportError:
        raise EmbedpipeError(RAY_MISSING) from None
    return ray


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
                    _check_reachable(address)
                    self.ray.init(address=address, logging_level=logging.WARNING)
                else:
                    self.ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                                  logging_level=logging.WARNING)  # "local": never join a stray instance
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

        return str(self.ray.get(probe.remote(), timeout=GPU_PROBE_TIMEOUT_S))

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
            from ray._private import state

            job = self.ray.get_runtime_context().get_job_id()
            return sum(1 for a in state.actors().values()
                       if a.get("State") == "ALIVE" and "ShardActor" in str(a.get("ActorClassName"))
                       and str(a.get("JobID")) == job)
        except Exception:  # a private API: a progress detail must never fail a run
            return None

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
        t0 = time.perf_counter()
        alive, polled = self.alive_workers(), time.monotonic()
        with tqdm(total=n_compute, unit="img", desc=f"extract {source.name} on ray", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            bar.set_postfix(shards=f"0/{len(pending)}", workers=alive)
            try:
                for row in shards.iter_rows():
                    entry = {k: _plain(row[k]) for k in ("shard", "node", "pid", "computed", "failed", "seconds")}
                    stats.shard_log.append(entry)
                    stats.embedded += entry["computed"] - entry["failed"]
                    stats.failed += entry["failed"]
                    if time.monotonic() - polled > ALIVE_POLL_S:
                        alive, polled = self.alive_workers(), time.monotonic()
                    bar.update(entry["computed"])
                    bar.set_postfix(shards=f"{len(stats.shard_log)}/{len(pending)}", workers=alive,
                                    **({"skipped": stats.failed} if stats.failed else {}))
            except Exception as e:
                raise _as_error(e) from None
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
