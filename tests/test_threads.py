"""Threads sized to the work (core/threads.py): the size rule, the context manager that sets and
restores torch's threads and the BLAS limits, and a user's own setting left alone. Nothing is timed
here; benchmarks/threads.py measures the effect on a busy machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from embedpipe.core.threads import (
    THREAD_ENV,
    WORK_PER_THREAD,
    fit_threads,
    threads_for,
    torch_default_threads,
    user_setting,
)
from embedpipe.heads import LogRegHead
from embedpipe.heads.base import Head

TINY = 100 * 1280 * 7  # logreg on 100 rows x 1,280 features x 7 classes
MANY_CORES = pytest.mark.skipif(torch_default_threads() < 2, reason="needs 2 or more physical cores")


def blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Threads as a user who set nothing has them (the test run may set OMP_NUM_THREADS, conftest.py);
    the test's own settings are undone after it."""
    for name in THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_default_threads())
    try:
        with threadpool_limits(limits=torch_default_threads(), user_api="blas"):
            yield torch_default_threads()
    finally:
        torch.set_num_threads(before)


def test_the_size_rule() -> None:
    assert threads_for(TINY, available=8) == 1
    assert threads_for(WORK_PER_THREAD - 1, available=8) == 1
    assert threads_for(3 * WORK_PER_THREAD, available=8) == 3
    assert threads_for(9000 * 1280 * 1500, available=2) == 2  # glyphs: every core
    assert threads_for(float("inf"), available=4) == 4
    assert threads_for(0, available=4) == threads_for(float("nan"), available=4) == 1


def test_torch_default_is_recognised() -> None:
    """torch_default_threads() is the count a fresh torch starts with when nothing sets it; else every
    fit would take torch's threads for a user's setting and the rule would never apply."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.strip()) == torch_default_threads()


@MANY_CORES
def test_a_tiny_fit_runs_on_one_thread_and_restores(defaults: int) -> None:
    assert user_setting() is None
    with fit_threads(TINY) as n:
        assert n == 1
        assert torch.get_num_threads() == 1
        assert set(blas_threads()) == {1}
    assert torch.get_num_threads() == defaults
    assert set(blas_threads()) == {defaults}


@MANY_CORES
def test_restored_when_the_block_raises(defaults: int) -> None:
    with pytest.raises(ZeroDivisionError), fit_threads(TINY):
        1 / 0  # noqa: B018
    assert torch.get_num_threads() == defaults
    assert set(blas_threads()) == {defaults}


def test_a_large_fit_keeps_the_default(defaults: int) -> None:
    with fit_threads(1e15) as n:
        assert n == torch.get_num_threads() == defaults


@MANY_CORES
@pytest.mark.parametrize("name", THREAD_ENV)
def test_the_environment_wins(defaults: int, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, str(defaults))
    assert name in (user_setting() or "")
    with fit_threads(TINY) as n:
        assert n == torch.get_num_threads() == defaults
        assert set(blas_threads()) == {defaults}
    assert torch.get_num_threads() == defaults


def test_set_num_threads_wins(defaults: int) -> None:
    mine = defaults + 1  # any count but torch's default
    torch.set_num_threads(mine)
    assert "set_num_threads" in (user_setting() or "")
    with fit_threads(TINY) as n:
        assert n == torch.get_num_threads() == mine
    assert torch.get_num_threads() == mine


@MANY_CORES
def test_a_threadpoolctl_limit_wins(defaults: int) -> None:
    with threadpool_limits(limits=defaults - 1, user_api="blas"):
        assert "threadpoolctl" in (user_setting() or "")
        with fit_threads(TINY) as n:
            assert n == torch.get_num_threads() == defaults
            assert set(blas_threads()) == {defaults - 1}
        assert set(blas_threads()) == {defaults - 1}
    with threadpool_limits(limits=1):  # an OpenMP limit shows in torch's own count
        assert user_setting() is not None
        with fit_threads(TINY):
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == defaults


class ThreadsSeen(Head):
    """A head that records the torch threads its fit and prediction ran with (a real subclass, as
    users write one)."""

    name = "threads-seen"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: Any, y_val: Any) -> None:
        self.fit_threads_ = torch.get_num_threads()
        if self.fail:
            raise RuntimeError("fit failed")

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        self.predict_threads_ = torch.get_num_threads()
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


@MANY_CORES
def test_heads_fit_and_predict_sized_to_the_work(defaults: int) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 16)), np.arange(40) % 4
    head = ThreadsSeen().fit(X, y)
    head.predict(X)
    assert (head.fit_threads_, head.predict_threads_) == (1, 1)
    assert torch.get_num_threads() == defaults
    with pytest.raises(RuntimeError, match="fit failed"):
        ThreadsSeen(fail=True).fit(X, y)
    assert torch.get_num_threads() == defaults
    torch.set_num_threads(defaults + 1)  # the user's count: heads keep it
    assert ThreadsSeen().fit(X, y).fit_threads_ == defaults + 1


def test_logreg_fits_the_same_under_the_rule(defaults: int) -> None:
    """Threads change the order of float sums, not the solution: the fitted logreg agrees with one
    fitted at the user's one thread."""
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    X = rng.normal(size=(120, 10)) + 2 * np.eye(3, 10)[y]
    ruled = LogRegHead(C=1.0).fit(X, y)
    torch.set_num_threads(1)
    pinned = LogRegHead(C=1.0).fit(X, y)
    assert np.allclose(ruled.coef_, pinned.coef_, atol=1e-4)
