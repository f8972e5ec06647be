"""Limited-memory BFGS in torch for the linear heads' smooth convex objectives (logreg, multilayer).

A plain L-BFGS (Nocedal & Wright, Algorithm 7.4: the two-loop recursion over the last ``history``
steps, the initial Hessian scaled by ``s'y / y'y``) with a backtracking Armijo line search that
starts at the unit step and shrinks it by safeguarded quadratic interpolation. On the heads' problems
the unit step is accepted almost always, so an iteration costs about one loss-and-gradient evaluation,
where ``torch.optim.LBFGS``'s strong-Wolfe search took about two (benchmarks/solvers.py); it also
skips ``torch.optim``'s import of ``torch._dynamo`` (over a second of every process's first fit).

The variables are a tuple of tensors (the weights and the intercept), kept on their device; the
objective returns its value and gradient together (the heads compute the gradient by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensors = tuple[torch.Tensor, ...]
Objective = Callable[[Tensors], tuple[torch.Tensor, Tensors]]  # x -> (loss, gradient)

ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * t * g'd
MAX_BACKTRACKS = 20  # halvings (at least) before the line search gives up: the objective is flat to its precision
FLAT = 8  # a predicted decrease below FLAT machine epsilons of the loss is within its sum's rounding


@dataclass
class Result:
    x: Tensors
    loss: torch.Tensor
    grad: Tensors
    iters: int  # iterations taken (accepted steps)
    evals: int  # objective evaluations, the first included
    stalled: bool  # stopped because no step decreased the objective, before ``done`` held


def _dot(a: Tensors, b: Tensors) -> float:
    return float(sum((u * v).sum() for u, v in zip(a, b, strict=True)))


def minimize(
    objective: Objective, x: Tensors, max_iter: int, done: Callable[[Tensors], bool], history: int = 10,
    check_every: int = 1, start: tuple[torch.Tensor, Tensors] | None = None,
) -> Result:
    """Minimise ``objective`` from ``x`` until ``done(gradient)`` holds (checked every ``check_every``
    iterations and at the start), ``max_iter`` iterations are taken, or no step decreases it.
    ``start``: the objective's value and gradient at ``x`` when the caller already has them."""
    with torch.no_grad():
        f, g = start if start is not None else objective(x)
        evals = 0 if start is not None else 1
        flat = FLAT * torch.finfo(f.dtype).eps
        steps: list[tuple[Tensors, Tensors, float]] = []  # (s, y, 1 / s'y), oldest first
        iters, stalled = 0, False
        while iters < max_iter and not (iters % check_every == 0 and done(g)):
            d = _direction(g, steps)
            slope = _dot(g, d)
            if not slope < 0:  # not a descent direction (rounding): restart from steepest descent
                steps.clear()
                d = tuple(-gi for gi in g)
                slope = _dot(g, d)
                if not slope < 0:
                    stalled = True
                    break
            t, f0 = 1.0, float(f)
            for _ in range(MAX_BACKTRACKS):
                x_new = tuple(xi + t * di for xi, di in zip(x, d, strict=True))
                f_new, g_new = objective(x_new)
                evals += 1
                fn = float(f_new)
                if fn <= f0 + ARMIJO * t * slope:
                    break
                if -slope * t < flat * max(1.0, abs(f0)):  # a decrease the loss cannot resolve: converged
                    t = 0.0  # to its precision
                    break
                # the minimiser of the quadratic through f0, the slope and fn, kept within [t/10, t/2]
                curvature = fn - f0 - slope * t
                t_q = -slope * t * t / (2 * curvature) if curvature > 0 and fn == fn else 0.1 * t
                t = min(max(t_q, 0.1 * t), 0.5 * t)
            else:
                t = 0.0
            if t == 0.0:
                stalled = True
                break
            s = tuple(t * di for di in d)
            y = tuple(gn - gi for gn, gi in zip(g_new, g, strict=True))
            sy = _dot(s, y)
            if sy > 1e-10 * _dot(y, y):  # curvature along the step (always, for a convex objective)
                steps.append((s, y, 1.0 / sy))
                del steps[:-history]
            x, f, g = x_new, f_new, g_new
            iters += 1
        return Result(x, f, g, iters, evals, stalled)


def _direction(g: Tensors, steps: list[tuple[Tensors, Tensors, float]]) -> Tensors:
    """``-H g`` by the two-loop recursion; the steepest descent ``-g`` without history."""
    q = [-gi for gi in g]
    alphas = []
    for s, y, rho in reversed(steps):
        a = rho * _dot(s, q)
        alphas.append(a)
        for qi, yi in zip(q, y, strict=True):
            qi.sub_(yi, alpha=a)
    if steps:
        s, y, _ = steps[-1]
        gamma = _dot(s, y) / _dot(y, y)
        for qi in q:
            qi.mul_(gamma)
    for (s, y, rho), a in zip(steps, reversed(alphas), strict=True):
        beta = rho * _dot(y, q)
        for qi, si in zip(q, s, strict=True):
            qi.add_(si, alpha=a - beta)
    return tuple(q)
