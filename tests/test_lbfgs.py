"""The heads' L-BFGS (embedpipe/heads/lbfgs.py): it minimises, stops on its rule, and ends on flat or
non-finite objectives instead of looping; and the multilayer fractions it serves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedpipe import create_head
from embedpipe.heads.lbfgs import minimize

pytestmark = pytest.mark.timeout(60)


def quadratic(A: torch.Tensor, c: torch.Tensor):  # type: ignore[no-untyped-def]
    """f(x, z) = x'Ax/2 - c'x + z^2/2 over two tensors, value and gradient together."""

    def objective(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x, z = p
        return 0.5 * x @ A @ x - c @ x + 0.5 * (z * z).sum(), (A @ x - c, z.clone())

    return objective


def test_minimises_a_quadratic_to_the_tolerance_in_about_one_evaluation_per_iteration() -> None:
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g))[0]
    A = Q @ torch.diag(torch.linspace(1.0, 20.0, 30, dtype=torch.float64)) @ Q.T
    c = torch.randn(30, dtype=torch.float64, generator=g)
    x0 = (torch.zeros(30, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    res = minimize(quadratic(A, c), x0, max_iter=200, done=lambda gr: max(float(t.abs().max()) for t in gr) <= 1e-6)
    assert not res.stalled and max(float(t.abs().max()) for t in res.grad) <= 1e-6
    np.testing.assert_allclose(res.x[0].numpy(), torch.linalg.solve(A, c).numpy(), atol=1e-6)
    assert res.iters < 60  # a condition number of 20 in 30 dimensions
    assert res.evals <= 1.3 * res.iters + 2  # the unit step is accepted almost always


def test_max_iter_and_the_rule_bound_the_work() -> None:
    A, c = torch.eye(4, dtype=torch.float64) * 3, torch.ones(4, dtype=torch.float64)
    x0 = (torch.zeros(4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert minimize(quadratic(A, c), x0, max_iter=0, done=lambda gr: False).iters == 0
    already = minimize(quadratic(A, c), (torch.full((4,), 1 / 3, dtype=torch.float64), x0[1]), max_iter=50,
                       done=lambda gr: max(float(t.abs().max()) for t in gr) <= 1e-12)
    assert already.iters == 0 and already.evals == 1
    # checked every 3 iterations: it stops on a multiple of 3 (or at max_iter)
    every = minimize(quadratic(A * torch.linspace(1, 9, 4, dtype=torch.float64), c), x0, max_iter=50,
                     done=lambda gr: max(float(t.abs().max()) for t in gr) <= 1e-6, check_every=3)
    assert every.iters % 3 == 0 and every.iters > 0


def test_a_flat_objective_stops_as_stalled_instead_of_looping() -> None:
    calls = []

    def flat(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        calls.append(1)  # a gradient that says "go down" on a function that does not change
        return torch.tensor(5.0), (torch.full_like(p[0], 1e-3),)

    res = minimize(flat, (torch.zeros(8),), max_iter=100, done=lambda gr: False)
    assert res.stalled and res.iters == 0 and len(calls) <= 4  # not MAX_BACKTRACKS halvings


def test_non_finite_losses_at_the_unit_step_are_stepped_back_from() -> None:
    A, c = torch.eye(5, dtype=torch.float64) * 1e4, torch.full((5,), 1e4, dtype=torch.float64)
    base = quadratic(A, c)

    def guarded(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        f, gr = base(p)  # the first unit step lands at x = 1e4: call that overflow
        return (torch.tensor(float("inf"), dtype=torch.float64) if float(p[0].abs().max()) > 100 else f), gr

    x0 = (torch.zeros(5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    res = minimize(guarded, x0, max_iter=100, done=lambda gr: max(float(t.abs().max()) for t in gr) <= 1e-6)
    assert not res.stalled
    np.testing.assert_allclose(res.x[0].numpy(), np.ones(5), atol=1e-8)


def test_multilayer_tries_each_distinct_count_once_and_keeps_at_least_16_features() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    X = rng.normal(size=(90, 12)).astype(np.float32) + 2 * np.eye(3, 12, dtype=np.float32)[y]
    yv = np.repeat(np.arange(3), 10)
    Xv = rng.normal(size=(30, 12)).astype(np.float32) + 2 * np.eye(3, 12, dtype=np.float32)[yv]
    head = create_head("multilayer", Cs=(0.1, 1.0)).fit(X, y, eval_set=(Xv, yv))
    # 12 features: both default fractions keep all 12 (at least 16, at most all), so one candidate
    assert list(head.keep_scores_) == ["0.25"] and len(head.selected_) == 12
    assert head.keep_scores_["0.25"] == head.best_val_score_ == head.clf_.best_val_score_
    wide = np.hstack([X, rng.normal(size=(90, 52)).astype(np.float32)])
    wide_v = np.hstack([Xv, rng.normal(size=(30, 52)).astype(np.float32)])
    head = create_head("multilayer", Cs=(0.1, 1.0), keeps=(0.1, 0.25, 0.5)).fit(wide, y, eval_set=(wide_v, yv))
    # 64 features: 0.1 and 0.25 both keep 16, tried once; 0.5 keeps 32
    assert list(head.keep_scores_) == ["0.1", "0.5"]
    assert len(head.selected_) == {0.1: 16, 0.5: 32}[head.keep_]
    # the selection's val score is the chosen fraction's best C: the final logreg's own sweep
    assert head.best_val_score_ == head.keep_scores_[repr(head.keep_)] == max(head.clf_.val_scores_.values())


def test_the_sweep_basis_with_fewer_rows_than_features_spans_the_rows_and_solves_the_same_problem() -> None:
    from embedpipe.heads.logreg import Basis, lbfgs_logreg, lbfgs_logreg_pre

    g = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    X = torch.randn(30, 200, generator=g) + 2 * torch.eye(3, 200)[y]
    basis = Basis(X)
    assert basis.V.shape == (200, 30)  # the rows' span, not all 200 directions
    np.testing.assert_allclose((basis.V.T @ basis.V).numpy(), np.eye(30), atol=1e-4)
    np.testing.assert_allclose((X @ basis.V @ basis.V.T).numpy(), X.numpy(), atol=1e-3)  # X lies in it
    zeros = (torch.zeros(200, 3), torch.zeros(3))
    W_pre, b_pre, _ = lbfgs_logreg_pre(basis.project(X), y, 0.5, *zeros, max_iter=500, tol=1e-5, basis=basis)
    W, b, _ = lbfgs_logreg(X, y, 0.5, *zeros, max_iter=500, tol=1e-5)
    np.testing.assert_allclose((X @ W_pre + b_pre).numpy(), (X @ W + b).numpy(), atol=2e-3)


def test_multilayer_says_how_it_chose_the_fraction() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    X = rng.normal(size=(60, 40)).astype(np.float32) + 2 * np.eye(3, 40, dtype=np.float32)[y]
    swept = create_head("multilayer", Cs=(0.1, 1.0), keeps=(0.5, 1.0)).fit(X, y, eval_set=(X[::2], y[::2]))
    assert "logreg's C sweep on each" in swept.how_chosen() and "probe" not in swept.how_chosen()
    probed = create_head("multilayer", C=1.0, keeps=(0.5, 1.0)).fit(X, y, eval_set=(X[::2], y[::2]))
    assert "a C=30 probe" in probed.how_chosen()
