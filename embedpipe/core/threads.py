"""How many threads a fit uses: sized to the work, and never against the user's own setting.

torch runs its CPU kernels on a pool of OpenMP threads, one per physical core by default. On a machine
that other processes keep busy, a small fit with that pool is many times slower than with one thread:
each parallel region ends at a barrier that waits for every thread of the pool, and a pool thread that
the scheduler has put aside holds the whole region up for a time slice, while the work of the region
itself is microseconds. Large fits amortise that wait over milliseconds of work per region and gain
from more threads. So every head fit (``Head.fit``) and prediction runs inside ``fit_threads(work)``:

- ``work`` is the number of multiply-adds of one pass over the data (``n * d * k`` for a linear head;
  ``Head._thread_work``);
- the threads are ``work // WORK_PER_THREAD``, at least 1 and at most torch's default (``threads_for``);
- torch's thread count (``torch.set_num_threads``) is set for the fit and restored after it, and the
  BLAS libraries that threadpoolctl sees (numpy's OpenBLAS) are limited to the same count.

A user's own setting wins, and then nothing is changed:

- ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment (torch reads both at start-up);
- a ``torch.set_num_threads(n)`` call: torch's thread count differs from its default for this machine
  (``torch_default_threads``; an OpenMP limit of threadpoolctl shows the same way);
- an active threadpoolctl limit on a BLAS library (``threadpool_limits(n, user_api="blas")``): one
  runs with fewer threads than this machine has physical cores.

``torch.set_num_threads`` is process-wide: a fit in one Python thread changes it for another that
fits at the same time, which is then counted as a user's setting and left alone. Nested fits (a head
fitting another head inside its own fit) see the outer fit's count as set and keep it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys
from collections.abc import Iterator

import torch
from threadpoolctl import ThreadpoolController

# Multiply-adds per thread. A pass of 1e9 multiply-adds takes about 40 ms on one server core, long
# enough that a pool thread's scheduling delay at each barrier (a time slice, milliseconds) costs
# little. Below it, one thread is the faster on a busy machine and a second one could at most halve
# the time on an idle one (benchmarks/threads.py: logreg on 1,000 x 1,280 x 100, 1.3e8, fits with
# both cores busy in 0.58 s on one thread and 0.91 s on two, idle in 0.39 s and 0.23 s; on 100 x
# 1,280 x 7 busy, 0.08 s and 0.20 s).
WORK_PER_THREAD = 1e9
# Environment variables through which a user sets torch's threads (torch reads both at start-up).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@functools.cache
def physical_cores() -> int:
    """Physical cores of this machine (hyperthread siblings counted once), from sysfs's CPU
    topology; ``os.cpu_count()`` where sysfs does not say."""
    siblings = set()
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"):
        try:
            with open(path) as f:
                siblings.add(f.read().strip())
        except OSError:
            continue
    return len(siblings) or os.cpu_count() or 1


def torch_default_threads() -> int:
    """The intra-op thread count torch starts with when no environment variable sets it: one per
    physical core (c10's ``defaultNumThreads``)."""
    return physical_cores()


_CONTROLLER: dict[int, ThreadpoolController] = {}


def _controller() -> ThreadpoolController:
    """threadpoolctl's view of the loaded thread pools (numpy's BLAS, torch's OpenMP, FAISS's BLAS once
    it is imported). Making one scans every loaded library (milliseconds), so it is made again only
    when modules were imported since: a native library arrives with an import."""
    count = len(sys.modules)
    if count not in _CONTROLLER:
        _CONTROLLER.clear()
        _CONTROLLER[count] = ThreadpoolController()
    return _CONTROLLER[count]


def user_setting() -> str | None:
    """What the user set that fixes the thread count (then ``fit_threads`` changes nothing), in words;
    None when threads are at their defaults."""
    for name in THREAD_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    current, default = torch.get_num_threads(), torch_default_threads()
    if current != default:
        return f"torch uses {current} threads, not its default {default} (torch.set_num_threads or an OpenMP limit)"
    for pool in _controller().info():
        if pool.get("user_api") == "blas" and pool.get("num_threads", default) < default:
            return f"{pool.get('internal_api')} is limited to {pool['num_threads']} threads (threadpoolctl)"
    return None


def threads_for(work: float, available: int | None = None) -> int:
    """Threads for a fit whose pass over the data costs ``work`` multiply-adds: one per
    ``WORK_PER_THREAD``, at least 1 and at most ``available`` (torch's default)."""
    top = available if available is not None else torch_default_threads()
    if not work > 0:  # NaN or 0: nothing to share out
        return 1
    return max(1, min(top, int(min(work / WORK_PER_THREAD, top))))


@contextlib.contextmanager
def fit_threads(work: float) -> Iterator[int]:
    """Run the block with the threads ``threads_for(work)`` chooses, and restore torch's thread
    count and the BLAS limits after it (also when it raises); with a user's own setting
    (``user_setting``), change nothing. Yields the thread count the block runs with.

    Parameters
    ----------
    work : float
        Multiply-adds of one pass over the data, e.g. ``n * d * k`` for a linear model on n rows of d
        features and k classes; ``float("inf")`` = torch's default threads.

    Examples
    --------
    >>> import torch
    >>> from embedpipe.core.threads import fit_threads, user_setting
    >>> before = torch.get_num_threads()
    >>> with fit_threads(100 * 1280 * 7) as n:
    ...     inside = torch.get_num_threads()
    >>> inside == (1 if user_setting() is None else before), torch.get_num_threads() == before
    (True, True)
    """
    before = torch.get_num_threads()
    if user_setting() is not None:
        yield before
        return
    n = threads_for(work, before)
    if n == before:
        yield n
        return
    torch.set_num_threads(n)
    try:
        with _controller().limit(limits=n, user_api="blas"):
            yield n
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run LAPACK's symmetric eigensolver on one CPU thread, then restore the caller's thread count.
    It scales poorly with threads and collapses when the cores are shared: 1280 x 1280 in float64 took
    0.3 s on 2 idle cores, 1.1-5.2 s on 2 threads of 2 busy cores and 0.5 s on 1 thread of them."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
