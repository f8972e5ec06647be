"""The ridge head: scikit-learn's Ridge solution on one-hot targets, exact leave-one-out and k-fold
selection, selection on validation rows with a refit, the fitted temperature, and saving.

Real components on tiny random problems (CPU, a second or two); the CUDA case runs where there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from embedpipe.heads import RidgeHead, create_head, load_head, save_head
from embedpipe.heads.base import softmax_np, standardizer
from embedpipe.heads.ridge import fit_temperature

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def problem(n: int, d: int, k: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows with an offset and unequal feature scales (so centring and standardising matter)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d)) + signal * np.eye(k, d)[y] * 2
    return (X * rng.uniform(0.3, 4.0, d) + rng.normal(size=d) * 5).astype(np.float32), y


def sk_ridge(X: np.ndarray, y: np.ndarray, alpha: float, k: int) -> Ridge:
    return Ridge(alpha=alpha, fit_intercept=True).fit(X.astype(np.float64), np.eye(k)[y])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", [(80, 12), (20, 40)], ids=["d<=n", "n<d"])
@pytest.mark.parametrize("alpha", [0.05, 3.0, 200.0])
def test_matches_scikit_learn_ridge_on_one_hot_targets(n: int, d: int, alpha: float, device: str) -> None:
    X, y = problem(n, d, 4)
    ours = RidgeHead(alpha=alpha, standardize=False, device=device).fit(X, y)
    ref = sk_ridge(X, y, alpha, 4)
    assert ours.alpha_ == alpha and ours.coef_.shape == ref.coef_.shape == (4, d)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-4 * max(1.0, np.abs(ref.coef_).max()))
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-4 * max(1.0, np.abs(ref.intercept_).max()))
    np.testing.assert_allclose(ours.decision_function(X), ref.predict(X.astype(np.float64)), atol=1e-4)


def test_standardized_fit_is_ridge_on_scaled_features_folded_back() -> None:
    """standardize=True: Ridge on X / std (the penalty weighs every feature alike), coef_ on raw X."""
    X, y = problem(60, 8, 3, seed=1)
    scale = standardizer(X)[1].astype(np.float64)
    ref = sk_ridge(X / scale, y, 2.0, 3)
    ours = RidgeHead(alpha=2.0, standardize=True).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_ / scale, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.decision_function(X), ref.predict(X / scale), atol=1e-4)


@pytest.mark.parametrize("n, d", [(24, 5), (12, 30)], ids=["d<=n", "n<d"])
def test_leave_one_out_selection_is_brute_force_leave_one_out(n: int, d: int) -> None:
    X, y = problem(n, d, 3, seed=2, signal=0.5)
    alphas = (0.01, 0.3, 3.0, 30.0, 300.0)
    head = RidgeHead(alphas=alphas, standardize=False).fit(X, y)
    assert head.selection_["rule"] == "loo" and set(head.val_scores_) == {repr(a) for a in alphas}
    loo = {}
    for a in alphas:
        keep = ~np.eye(n, dtype=bool)
        hits = [sk_ridge(X[keep[i]], y[keep[i]], a, 3).predict(X[i : i + 1].astype(np.float64)).argmax() == y[i]
                for i in range(n)]
        loo[repr(a)] = float(np.mean(hits))
    assert head.val_scores_ == pytest.approx(loo, abs=1e-12)
    assert len(set(loo.values())) > 1  # the path really varies
    assert head.best_val_score_ == max(loo.values()) == loo[repr(head.alpha_)]
    # and coef_ is the full-data solution at the chosen alpha
    np.testing.assert_allclose(head.coef_, sk_ridge(X, y, head.alpha_, 3).coef_, atol=1e-4)


def test_kfold_selection_scores_each_fold_with_a_fit_on_the_others() -> None:
    X, y = problem(30, 6, 3, seed=3, signal=0.5)
    alphas = (0.1, 10.0, 1000.0)
    head = RidgeHead(alphas=alphas, cv=3, standardize=False).fit(X, y)
    fold = np.zeros(len(y), int)
    for c in range(3):  # within each class, the i-th row goes to fold i % 3
        fold[y == c] = np.arange((y == c).sum()) % 3
    for a in alphas:
        hits = sum(int((sk_ridge(X[fold != f], y[fold != f], a, 3).predict(X[fold == f].astype(np.float64)).argmax(1)
                        == y[fold == f]).sum()) for f in range(3))
        assert head.val_scores_[repr(a)] == pytest.approx(hits / len(y))
    assert head.selection_ == {"rule": "kfold", "folds": 3, "val_rows": len(y), "n_classes": 3, "describe": "3 stratified folds of train"}


@pytest.mark.parametrize("n, d", [(60, 8), (16, 40)], ids=["d<=n", "n<d"])
def test_val_selection_picks_the_best_val_alpha_then_refits_on_train_and_val(n: int, d: int) -> None:
    X, y = problem(n, d, 3, seed=4, signal=0.6)
    Xv, yv = problem(n // 2, d, 3, seed=5, signal=0.6)
    alphas = (0.01, 1.0, 100.0, 1e4)
    kept = RidgeHead(alphas=alphas, refit=False, standardize=False).fit(X, y, eval_set=(Xv, yv))
    assert kept.selection_["rule"] == "eval_set"
    for a in alphas:  # each alpha's val accuracy is that of the train-only Ridge
        pred = sk_ridge(X, y, a, 3).predict(Xv.astype(np.float64)).argmax(1)
        assert kept.val_scores_[repr(a)] == pytest.approx(float(np.mean(pred == yv)))
    assert kept.best_val_score_ == max(kept.val_scores_.values()) == kept.val_scores_[repr(kept.alpha_)]
    np.testing.assert_allclose(kept.coef_, sk_ridge(X, y, kept.alpha_, 3).coef_, atol=1e-4)
    refit = RidgeHead(alphas=alphas, standardize=False).fit(X, y, eval_set=(Xv, yv))
    assert refit.alpha_ == kept.alpha_ and refit.temperature_ == kept.temperature_
    both = sk_ridge(np.concatenate([X, Xv]), np.concatenate([y, yv]), refit.alpha_, 3)
    np.testing.assert_allclose(refit.coef_, both.coef_, atol=1e-4)
    np.testing.assert_allclose(refit.intercept_, both.intercept_, atol=1e-4)


def test_holdout_rule_selects_on_rows_held_out_of_train() -> None:
    from embedpipe.heads.select import HoldOut

    X, y = problem(60, 6, 3, seed=6, signal=0.5)
    held = HoldOut().mask([str(i) for i in range(len(y))], y)
    own = RidgeHead(selection=HoldOut()).fit(X, y)
    given = RidgeHead().fit(X[~held], y[~held], eval_set=(X[held], y[held]))
    assert own._selects() and not RidgeHead()._selects() and not RidgeHead(alpha=1.0, selection=HoldOut())._selects()
    assert own.selection_["rule"] == "eval_set" and own.val_scores_ == given.val_scores_
    np.testing.assert_array_equal(own.predict_proba(X), given.predict_proba(X))


def log_loss(P: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(P[np.arange(len(y)), y], 1e-300, None))))


def test_probabilities_sum_to_one_and_the_temperature_lowers_val_log_loss() -> None:
    X, y = problem(90, 10, 3, seed=7, signal=0.5)
    Xv, yv = problem(60, 10, 3, seed=8, signal=0.5)
    head = RidgeHead(refit=False).fit(X, y, eval_set=(Xv, yv))
    P = head.predict_proba(Xv)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(head.predict(Xv), head.classes_[head.decision_function(Xv).argmax(1)])
    scores = head.decision_function(Xv).astype(np.float64)
    at = {t: log_loss(softmax_np(scores / t), yv) for t in (1.0, head.temperature_ * 0.8, head.temperature_ * 1.25)}
    fitted = log_loss(P, yv)
    assert head.temperature_ != 1.0 and fitted < at[1.0] and fitted < min(at.values())


def test_temperature_is_the_log_loss_minimiser() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 5, 400)
    S = rng.normal(size=(400, 5)) * 0.2 + 0.3 * np.eye(5)[y]
    T = fit_temperature(torch.from_numpy(S), torch.from_numpy(y))
    grid = np.exp(np.linspace(np.log(T) - 1, np.log(T) + 1, 201))
    losses = [log_loss(softmax_np(S / t), y) for t in grid]
    assert grid[int(np.argmin(losses))] == pytest.approx(T, rel=0.02)
    sep = np.eye(5)[y] * 2.0  # separable scores: the loss falls all the way to the bound
    assert fit_temperature(torch.from_numpy(sep), torch.from_numpy(y)) == pytest.approx(1e-4)


def test_leave_one_out_temperature_is_fitted_on_leave_one_out_scores() -> None:
    X, y = problem(40, 6, 4, seed=10, signal=0.4)
    head = RidgeHead(alpha=5.0, standardize=False).fit(X, y)
    loo = np.stack([sk_ridge(np.delete(X, i, 0), np.delete(y, i), 5.0, 4).predict(X[i : i + 1].astype(np.float64))[0]
                    for i in range(len(y))])
    assert head.temperature_ == pytest.approx(fit_temperature(torch.from_numpy(loo), torch.from_numpy(y)), rel=1e-4)
    assert head.val_scores_ == {} and head.best_val_score_ is None  # a fixed alpha records no selection


def test_save_load_round_trip_keeps_predictions_and_selection(tmp_path: Path) -> None:
    X, y = problem(50, 7, 3, seed=11, signal=0.5)
    labels = np.array(["ant", "bee", "cat"])[y]
    head = create_head("ridge").fit(X, labels)
    loaded, _ = load_head(save_head(tmp_path / "r.npz", head))
    assert isinstance(loaded, RidgeHead)
    for attr in ("alpha_", "temperature_", "val_scores_", "best_val_score_", "selection_"):
        assert getattr(loaded, attr) == getattr(head, attr), attr
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(loaded.decision_function(X), head.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))


@pytest.mark.parametrize("params, match", [({"cv": 1}, "cv"), ({"cv": 2.5}, "cv"), ({"alpha": 0.0}, "alpha"),
                                           ({"alphas": (1.0, -1.0)}, "alphas")])
def test_bad_parameters_are_named(params: dict[str, object], match: str) -> None:
    X, y = problem(20, 4, 2)
    with pytest.raises(ValueError, match=match):
        RidgeHead(**params).fit(X, y)  # type: ignore[arg-type]
