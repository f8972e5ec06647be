"""Starting or joining Ray, with every wait bounded, and a local instance on loopback only.

A local instance (no address) is started by ``start_local_ray``, the one place that says how (the
engine, the tests and the benchmarks use it): it listens on 127.0.0.1 only (node IP 127.0.0.1:
gcs_server, raylet, object manager, workers and agents bind loopback; no dashboard), since whoever
reaches a Ray port can submit work to it; and its workers run at the driver's priority (Ray's default
niceness 15 lets any busy process on the machine starve them, where the local engine competes as an
equal). A loopback address stays loopback (``connect_ray``); joining a real cluster changes nothing
on it. ``ray.init`` is bounded by ``INIT_TIMEOUT_S`` (plus the connection attempt under way when it
runs out) and, for a host:port address, by ``CONNECT_TIMEOUT_S`` for the TCP check.

Ray is an optional extra: this module imports it only inside functions.
"""

from __future__ import annotations

import _thread
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..core.errors import EmbedpipeError

RAY_MISSING = 'the Ray engine needs Ray: pip install "embedpipe[ray]"'
CONNECT_TIMEOUT_S = 5.0  # a --ray-address host:port must accept a TCP connection within this
INIT_TIMEOUT_S = 120.0  # ray.init (start a local instance, or join a cluster) must return within this
LOOPBACK = "127.0.0.1"  # a local instance listens here only: Ray ports take work from whoever reaches them


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line saying how to install it."""
    try:
        import ray  # the optional extra (pip install "embedpipe[ray]")
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


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes of Ray's own retries, when a host:port address does not answer."""

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
