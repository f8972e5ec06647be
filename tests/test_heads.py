"""Heads: scikit-learn's rules, the logreg objective, learning with many classes, and safe save/load.

Everything uses real components on small synthetic data, so the file runs on CPU in seconds.
"""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from embedpipe.core.errors import EmbedpipeError
from embedpipe.core.registry import Registry
from embedpipe.data.splits import VAL_CARVE, carve_val
from embedpipe.heads import (
    DESCRIPTIONS,
    HEADS,
    ZeroShotClassifier,
    create_head,
    list_heads,
    load_head,
    register_head,
    save_head,
)
from embedpipe.heads.logreg import LogRegHead
from embedpipe.heads.select import DEFAULT_SELECTION, Auto, HoldOut, KFold, resolve, selection_rows

# Small settings per head for the tests that fit many times (the defaults are what users get).
SMALL: dict[str, dict[str, Any]] = {
    "logreg": {"Cs": (0.01, 0.1, 1.0, 10.0)},
    "mlp": {"hidden": 32, "epochs": 5, "batch_size": 32},
    "lgbm": {"n_estimators": 30, "pca_dims": 4, "min_child_samples": 5},
}


def blobs(
    n_classes: int,
    per_class: int,
    dim: int,
    spread: float,
    seed: int = 0,
    means: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs around random class means -> (X float32, y int, means)."""
    rng = np.random.default_rng(seed)
    if means is None:
        means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    X = means[y] + spread * rng.normal(size=(len(y), dim)).astype(np.float32)
    return X.astype(np.float32), y, means


# -- 1. scikit-learn's estimator checks over every registered head ------------------------------


def test_every_head_is_checked() -> None:
    assert {"logreg", "mlp", "lgbm", "knn", "ncm", "multilayer", "finetune", "ridge"} == set(list_heads())
    assert {"lgbm", "logreg"} <= set(list_heads("l*")) and "mlp" not in list_heads("l*")
    assert set(DESCRIPTIONS) == set(list_heads())


def test_zeroshot_is_a_classifier_not_a_head(capsys: pytest.CaptureFixture[str]) -> None:
    """Zero-shot fits nothing: it is built from class names, outside the head registry and its checks."""
    from embedpipe.heads import CLASSIFIERS, ZeroShotClassifier, classifier_class, create_classifier

    assert "zeroshot" not in list_heads() and "zeroshot" not in DESCRIPTIONS
    with pytest.raises(EmbedpipeError, match="unknown head 'zeroshot'"):
        create_head("zeroshot")
    assert {"zeroshot": ZeroShotClassifier} == CLASSIFIERS and classifier_class("zeroshot") is ZeroShotClassifier
    assert not hasattr(ZeroShotClassifier, "fit")
    clf = create_classifier("zeroshot", class_names=("a", "b"))
    assert isinstance(clf, ZeroShotClassifier) and clf.get_params()["class_names"] == ("a", "b")
    with pytest.raises(EmbedpipeError, match="has no parameter C"):
        create_classifier("zeroshot", C=1.0)
    assert classifier_class("logreg") is LogRegHead
    from embedpipe.cli import main  # `embedpipe list heads` still lists it, with the heads

    assert main(["list", "heads", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["heads"]
    assert set(listed) == {*list_heads(), "zeroshot"} and listed["zeroshot"].startswith("open_clip zero-shot")


# finetune without a backbone is a linear classifier trained by its epoch loop: fewer forced steps at a
# higher rate keep these checks fast (8 min -> ~2 under load; its defaults are for real maps).
CHECK_PARAMS: dict[str, dict[str, Any]] = {"finetune": {"min_steps": 100, "lr": 0.03}}


@parametrize_with_checks([create_head(name, **CHECK_PARAMS.get(name, {})) for name in list_heads()])
def test_sklearn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)


def test_eval_set_is_validated_like_X() -> None:
    X, y, _ = blobs(3, 10, 5, 0.5)
    head = create_head("logreg")
    with pytest.raises(ValueError, match="features"):
        head.fit(X, y, eval_set=(X[:, :4], y))
    with pytest.raises(ValueError):
        head.fit(X, y, eval_set=(X, y[:-1]))


@pytest.mark.parametrize("epochs, batch_size", [(1, 256), (5, 16), (10, 256), (12, 256)])
def test_mlp_fits_with_any_schedule_length(epochs: int, batch_size: int) -> None:
    # 10 total steps once made OneCycleLR divide by zero (pct_start * total_steps == 1); patience =
    # epochs: early stopping on the held-out rows must not cut the schedule short here
    X, y, _ = blobs(2, 10, 4, 0.5)
    head = create_head("mlp", hidden=8, epochs=epochs, batch_size=batch_size, patience=epochs,
                       selection=HoldOut()).fit(X, y)
    assert head.n_epochs_ == epochs


# -- 2. logreg solves scikit-learn's objective --------------------------------------------------


def logreg_objective(
    coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y: np.ndarray, C: float
) -> float:
    """mean cross-entropy + ||W||^2 / (2 C n), in float64; coef is (k, d) as in scikit-learn."""
    z = X.astype(np.float64) @ coef.astype(np.float64).T + intercept.astype(np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))[:, 0]
    ce = float(np.mean(lse - z[np.arange(len(y)), y]))
    return ce + float((coef.astype(np.float64) ** 2).sum()) / (2 * C * len(y))


def test_logreg_matches_sklearn_objective() -> None:
    # >2 classes: scikit-learn >= 1.5 fits binary problems with a single logit
    X, y = make_classification(
        n_samples=300,
        n_features=20,
        n_informative=10,
        n_classes=4,
        n_clusters_per_class=1,
        random_state=0,
    )
    C = 0.5
    ours = create_head("logreg", C=C, standardize=False, tol=1e-6, max_iter=2000).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(X, y)
    assert ref.coef_.shape == ours.coef_.shape == (4, 20)
    f_ours = logreg_objective(ours.coef_, ours.intercept_, X, y, C)
    f_ref = logreg_objective(ref.coef_, ref.intercept_, X, y, C)
    assert f_ours == pytest.approx(f_ref, rel=1e-4)
    assert f_ours >= f_ref - 1e-6 * abs(f_ref)  # scikit-learn at tol 1e-8 is the (near-)optimum
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-3)
    assert ours.C_ == C and ours.n_iter_ >= 1


# -- 3. logreg regularisation sweep -------------------------------------------------------------


@pytest.mark.parametrize("refit", [True, False])
def test_logreg_sweep_picks_best_validation_C(refit: bool) -> None:
    X, y = make_classification(
        n_samples=400, n_features=20, n_informative=6, n_classes=4, flip_y=0.1, random_state=1
    )
    Xtr, ytr, Xv, yv = X[:300], y[:300], X[300:], y[300:]
    Cs = (0.001, 0.01, 0.1, 1.0, 10.0)
    head = create_head("logreg", Cs=Cs, refit=refit, patience=None).fit(Xtr, ytr, eval_set=(Xv, yv))
    assert head.C_ in Cs
    assert set(head.val_scores_) == {repr(c) for c in Cs}
    assert head.best_val_score_ == max(head.val_scores_.values())
    assert head.val_scores_[repr(head.C_)] == head.best_val_score_
    assert len(set(head.val_scores_.values())) > 1  # the sweep really varies the fit
    if not refit:  # the kept model is the one that scored best_val_score_ on the validation rows
        assert head.score(Xv, yv) == pytest.approx(head.best_val_score_, abs=0.02)


def test_logreg_sweep_stops_after_patience_values_below_the_best() -> None:
    X, y = make_classification(
        n_samples=400, n_features=20, n_informative=6, n_classes=4, flip_y=0.1, random_state=1
    )
    Xtr, ytr, Xv, yv = X[:300], y[:300], X[300:], y[300:]
    Cs = tuple(float(c) for c in np.logspace(-4, 4, 9))
    full = create_head("logreg", Cs=Cs, patience=None, refit=False).fit(Xtr, ytr, eval_set=(Xv, yv))
    early = create_head("logreg", Cs=Cs, patience=1, refit=False).fit(Xtr, ytr, eval_set=(Xv, yv))
    scores = [full.val_scores_[repr(c)] for c in Cs]
    # where the full sweep first falls below its running best, the patient one stops
    stop = next(i for i in range(1, len(scores)) if scores[i] < max(scores[:i]))
    assert list(early.val_scores_) == [repr(c) for c in Cs[: stop + 1]]
    assert [early.val_scores_[repr(c)] for c in Cs[: stop + 1]] == scores[: stop + 1]
    assert Cs[int(np.argmax(scores[: stop + 1]))] == early.C_


def test_logreg_fixed_C_does_not_sweep() -> None:
    X, y, _ = blobs(3, 20, 6, 0.5)
    fixed = create_head("logreg", C=0.3).fit(X, y, eval_set=(X, y))
    assert fixed.C_ == 0.3 and fixed.val_scores_ == {} and fixed.best_val_score_ is None


def test_logreg_without_eval_set_sweeps_on_rows_held_out_of_train() -> None:
    """C=None and no eval_set: the selection rule holds rows out, the sweep runs on them, and the
    refit sees all of train: the same head as fitting with those rows passed as eval_set."""
    X, y = make_classification(n_samples=200, n_features=10, n_informative=5, n_classes=3, random_state=2)
    Cs = (0.001, 0.01, 0.1, 1.0, 10.0)
    held = HoldOut().mask([str(i) for i in range(len(y))], y)
    assert 0 < held.sum() < len(y) // 4
    own = create_head("logreg", Cs=Cs, patience=None, selection=HoldOut()).fit(X, y)
    given = create_head("logreg", Cs=Cs, patience=None).fit(X[~held], y[~held], eval_set=(X[held], y[held]))
    assert set(own.val_scores_) == {repr(c) for c in Cs} and own.best_val_score_ is not None
    assert own.val_scores_ == given.val_scores_ and own.C_ == given.C_
    np.testing.assert_array_equal(own.predict_proba(X), given.predict_proba(X))  # refit on all of train
    # the rule is a hyperparameter: another one holds out other rows
    other = HoldOut(fraction=0.3, seed=1)
    held2 = other.mask([str(i) for i in range(len(y))], y)
    assert not np.array_equal(held, held2)
    own2 = create_head("logreg", Cs=Cs, patience=None, selection=other).fit(X, y)
    given2 = create_head("logreg", Cs=Cs, patience=None).fit(X[~held2], y[~held2], eval_set=(X[held2], y[held2]))
    assert own2.val_scores_ == given2.val_scores_
    np.testing.assert_array_equal(own2.predict_proba(X), given2.predict_proba(X))


# -- 3b. logreg's coef_ and intercept_ act on raw X, as scikit-learn's do ----------------------


def shifted_blobs(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs whose features have very different means and scales (so standardising matters)."""
    X, y, _ = blobs(n_classes, 30, 6, 0.8, seed=seed)
    return (X * np.array([1, 10, 0.1, 5, 100, 2], np.float32) + np.arange(6, dtype=np.float32) * 7), y


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_logreg_decision_function_is_linear_in_raw_X() -> None:
    X, y = shifted_blobs(3)
    head = LogRegHead().fit(X, y)
    scores = X.astype(np.float64) @ head.coef_.T.astype(np.float64) + head.intercept_
    decision = head.decision_function(X)
    assert decision.shape == (len(X), 3) and head.coef_.shape == (3, 6) and head.intercept_.shape == (3,)
    np.testing.assert_allclose(decision, scores, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(head.predict_proba(X), softmax(scores), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(head.predict(X), head.classes_[np.argmax(decision, axis=1)])
    assert head.score(X, y) > 0.9


def test_logreg_raw_coef_is_the_standardised_fit_unfolded() -> None:
    """Fitting on raw X (standardised inside) = fitting on standardised X, then coef/scale and
    intercept - coef_std @ (mean/scale): the exact conversion, checked against the head's own solver."""
    X, y = shifted_blobs(3)
    mean, scale = X.mean(0, dtype=np.float64).astype(np.float32), X.std(0, dtype=np.float64).astype(np.float32)
    raw = LogRegHead(C=0.5).fit(X, y)
    std = LogRegHead(C=0.5, standardize=False).fit((X - mean) / scale, y)
    np.testing.assert_allclose(raw.coef_, std.coef_ / scale, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(raw.intercept_, std.intercept_ - std.coef_ @ (mean / scale), rtol=1e-4, atol=1e-3)
    assert not hasattr(raw, "mean_") and not hasattr(raw, "scale_")  # nothing else is needed to predict


def test_logreg_binary_decision_function_follows_scikit_learn() -> None:
    X, y = shifted_blobs(2)
    labels = np.array(["no", "yes"])[y]
    head = LogRegHead(C=1.0).fit(X, labels)
    margin = head.decision_function(X)
    scores = X @ head.coef_.T + head.intercept_  # still one row of coef_ per class
    assert margin.shape == (len(X),) and head.coef_.shape == (2, 6)
    np.testing.assert_allclose(margin, scores[:, 1] - scores[:, 0], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(head.predict(X), np.where(margin > 0, "yes", "no"))


# -- 3c. one selection hook: eval_set, else rows held out of train, else all of train -------------

SELECTING = ["finetune", "lgbm", "logreg", "mlp", "multilayer"]
FAST: dict[str, dict[str, Any]] = {**SMALL, "finetune": {"min_steps": 30, "epochs": 4, "lr": 0.03},
                                   "multilayer": {"Cs": (0.1, 1.0), "keeps": (0.5, 1.0), "lasso_iters": 20}}


def test_holdout_is_the_train_carve_rule() -> None:
    assert Auto() == DEFAULT_SELECTION and DEFAULT_SELECTION.resolve(9000, 100) == HoldOut(fraction=0.15, seed=0)
    assert HoldOut().split_rule == VAL_CARVE  # the rule train.py applies to a cache without val rows
    ids, labels = [f"img{i}" for i in range(40)], np.repeat([0, 1], 20)
    np.testing.assert_array_equal(HoldOut().mask(ids, labels), carve_val(ids, labels, VAL_CARVE))
    for bad in (0.0, 1.0, "0.2"):
        with pytest.raises(ValueError, match="fraction"):
            HoldOut(fraction=bad)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        HoldOut().fraction = 0.2  # type: ignore[misc]


def test_selection_rows_uses_eval_set_else_holds_out_seeded_stratified_rows() -> None:
    X, y = np.arange(60, dtype=np.float32).reshape(30, 2), np.repeat([0, 1, 2], 10)
    Xf, yf, Xv, yv = selection_rows(X, y, (X[:3], y[:3]), None, "test")
    assert Xf is X and yf is y and np.array_equal(Xv, X[:3]) and np.array_equal(yv, y[:3])
    Xf, yf, Xh, yh = selection_rows(X, y, None, None, "test")
    assert Xh is not None and yh is not None
    assert np.bincount(yh).tolist() == [2, 2, 2] and np.bincount(yf).tolist() == [8, 8, 8]
    assert sorted(np.concatenate([Xf, Xh])[:, 0].tolist()) == X[:, 0].tolist()  # a partition of train
    np.testing.assert_array_equal(selection_rows(X, y, None, None, "test")[2], Xh)  # seeded: the same rows
    assert not np.array_equal(selection_rows(X, y, None, HoldOut(seed=5), "test")[2], Xh)


def test_the_selecting_heads_are_the_ones_that_select() -> None:
    assert [n for n in list_heads() if create_head(n)._selects()] == SELECTING
    assert not create_head("logreg", C=1.0)._selects() and not create_head("lgbm", early_stopping_rounds=0)._selects()
    assert not create_head("multilayer", keep=0.5, C=1.0)._selects()


@pytest.mark.parametrize("name", SELECTING)
def test_without_eval_set_a_head_selects_on_the_rows_its_rule_holds_out(name: str) -> None:
    """fit(X, y) is the same head as fit(train part, eval_set=held-out part) under the head's rule."""
    X, y, _ = blobs(3, 20, 8, 1.5, seed=4)
    held = HoldOut().mask([str(i) for i in range(len(y))], y)
    own = create_head(name, **FAST.get(name, {}), selection=HoldOut()).fit(X, y)
    given = create_head(name, **FAST.get(name, {})).fit(X[~held], y[~held], eval_set=(X[held], y[held]))
    np.testing.assert_allclose(own.predict_proba(X), given.predict_proba(X), rtol=1e-6, atol=1e-7)
    if name != "lgbm":  # lgbm records no validation score
        assert own.best_val_score_ is not None and own.best_val_score_ == given.best_val_score_


@pytest.mark.parametrize("name", SELECTING)
def test_too_small_a_class_fits_on_all_of_train_with_one_warning(name: str, caplog: pytest.LogCaptureFixture) -> None:
    X, y, _ = blobs(3, 8, 4, 0.5)
    X, y = X[:-7], y[:-7]  # the last class keeps one row: nothing can be held out of it
    with caplog.at_level("WARNING"):
        head = create_head(name, **FAST.get(name, {}), selection=HoldOut()).fit(X, y)
    (record,) = [r for r in caplog.records if r.levelno >= 30]
    message = record.getMessage()
    assert "\n" not in message and type(head).__name__ in message and "smallest class has 1 row" in message
    assert f"all {len(y)} training rows without selection" in message
    assert getattr(head, "best_val_score_", None) is None
    if name in ("logreg", "multilayer"):
        assert head.C_ == 1.0  # nothing to sweep on: logreg's default C


@pytest.mark.parametrize("name", ["knn", "ncm"])
def test_heads_that_do_not_select_use_all_rows(name: str, caplog: pytest.LogCaptureFixture) -> None:
    X, y, _ = blobs(3, 20, 8, 1.5, seed=4)
    with caplog.at_level("WARNING"):
        head = create_head(name).fit(X, y)
    assert not caplog.records
    if name == "knn":
        assert len(head.X_) == len(X)
    else:
        np.testing.assert_allclose(head.mean_, X.mean(0), rtol=1e-5, atol=1e-6)


# -- 4. each head learns, including with far more classes than a backbone's source --------------


@pytest.mark.parametrize(
    "name, params",
    [
        ("logreg", {"C": 1.0}),
        ("mlp", {"hidden": 256, "epochs": 15}),
        ("knn", {}),
        ("ncm", {}),
    ],
)
def test_head_learns_2000_classes(name: str, params: dict[str, Any]) -> None:
    k = 2000
    Xtr, ytr, means = blobs(k, 3, 64, 0.6, seed=0)
    Xte, yte, _ = blobs(k, 2, 64, 0.6, seed=1, means=means)
    head = create_head(name, **params).fit(Xtr, ytr)
    assert head.n_classes_ == k and head.predict_proba(Xte[:5]).shape == (5, k)
    assert head.score(Xtr, ytr) >= 0.99
    assert head.score(Xte, yte) >= 0.95


def test_lgbm_learns_20_classes() -> None:
    Xtr, ytr, means = blobs(20, 30, 16, 0.4, seed=0)
    Xte, yte, _ = blobs(20, 10, 16, 0.4, seed=1, means=means)
    Xv, yv, _ = blobs(20, 5, 16, 0.4, seed=2, means=means)
    head = create_head("lgbm", n_estimators=100).fit(Xtr, ytr, eval_set=(Xv, yv))
    assert 1 <= head.best_iteration_ <= 100
    assert head.score(Xtr, ytr) >= 0.95
    assert head.score(Xte, yte) >= 0.9


def test_knn_is_dino_weighted_vote() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 8)).astype(np.float32), rng.integers(0, 4, 60)
    Q = rng.normal(size=(7, 8)).astype(np.float32)
    head = create_head("knn", n_neighbors=5, temperature=0.1, batch_size=3).fit(X, y)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Qn @ Xn.T
    expected = np.zeros((7, 4))
    for i in range(7):
        top = np.argsort(-sims[i])[:5]
        for j in top:
            expected[i, y[j]] += np.exp(sims[i, j] / 0.1)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(head.predict_proba(Q), expected, rtol=1e-4, atol=1e-5)


def test_ncm_predicts_nearest_centred_class_mean() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(90, 6)).astype(np.float32), np.repeat(np.arange(3), 30)
    Q = rng.normal(size=(20, 6)).astype(np.float32)
    head = create_head("ncm").fit(X, y)
    mean = X.mean(0)
    norm = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    centroids = norm(np.stack([norm(X[y == c] - mean).mean(0) for c in range(3)]))
    np.testing.assert_array_equal(head.predict(Q), np.argmax(norm(Q - mean) @ centroids.T, axis=1))


def test_lgbm_warns_with_a_time_estimate() -> None:
    Xtr, ytr, _ = blobs(5, 20, 8, 0.4, seed=0)
    with pytest.warns(UserWarning, match=r"lgbm: about .*s for up to 50 rounds x 5 classes.*Faster"):
        head = create_head("lgbm", n_estimators=50, warn_after_s=0.0).fit(Xtr, ytr)
    assert head.estimated_fit_s_ > 0


# -- 5. save/load round trip --------------------------------------------------------------------

LEARNED_SCALARS = (
    "C_",
    "val_scores_",
    "best_val_score_",
    "n_iter_",
    "n_epochs_",
    "best_iteration_",
)


@pytest.mark.parametrize(
    "labels", [np.array(["cat", "dog", "eel"]), np.array([3, 7])], ids=["str3", "int2"]
)
@pytest.mark.parametrize("name", list_heads())
def test_save_load_round_trip(tmp_path: Path, name: str, labels: np.ndarray) -> None:
    X, y_idx, means = blobs(len(labels), 30, 8, 1.0, seed=0)
    Xv, yv_idx, _ = blobs(len(labels), 10, 8, 1.0, seed=1, means=means)
    y, yv = labels[y_idx], labels[yv_idx]
    head = create_head(name, **SMALL.get(name, {})).fit(X, y, eval_set=(Xv, yv))
    info = {
        "cache_key": "abc123",
        "backbone": {"spec": "effnet-lite0", "fingerprint": "f00"},
        "layer": "pooled",
        "label_names": [str(c) for c in labels],
    }
    path = save_head(tmp_path / "sub" / "head.npz", head, info=info)
    assert [p.name for p in path.parent.iterdir()] == ["head.npz"]  # written, no temp file left

    loaded, loaded_info = load_head(path)
    assert type(loaded) is type(head)
    assert loaded_info == info
    assert loaded.get_params() == head.get_params()
    assert loaded.n_features_in_ == head.n_features_in_ == 8
    assert loaded.classes_.dtype == head.classes_.dtype
    np.testing.assert_array_equal(loaded.classes_, labels)
    for attr in LEARNED_SCALARS:
        if hasattr(head, attr):
            assert getattr(loaded, attr) == getattr(head, attr), attr
    Xq = np.concatenate([X[:7], Xv[:7]])
    np.testing.assert_array_equal(loaded.predict(Xq), head.predict(Xq))
    np.testing.assert_array_equal(loaded.predict_proba(Xq), head.predict_proba(Xq))
    assert loaded.predict(Xq).dtype == labels.dtype


def test_selection_rule_is_saved_as_json(tmp_path: Path, valid_entries: dict[str, np.ndarray]) -> None:
    X, y, _ = blobs(3, 10, 4, 0.5)
    path = save_head(tmp_path / "h.npz", create_head("logreg", selection=HoldOut(0.3, 2)).fit(X, y))
    with np.load(path, allow_pickle=False) as z:
        doc = _doc({k: z[k] for k in z.files})
    assert doc["params"]["selection"] == {"rule": "holdout", "fraction": 0.3, "seed": 2}
    assert load_head(path)[0].selection == HoldOut(0.3, 2)
    for rule in (KFold(3, 1), Auto(max_rows=500)):  # the other rules travel the same way
        path = save_head(tmp_path / "k.npz", create_head("logreg", selection=rule).fit(X, y))
        assert load_head(path)[0].selection == rule
    base = _doc(valid_entries)
    for bad in ({"rule": "loo"}, {"rule": "kfold", "folds": 1}, {"rule": "holdout", "fraction": 2.0}, {"rule": "holdout", "evil": 1}, [0.3]):
        with pytest.raises(EmbedpipeError, match="selection"):
            load_head(_write(tmp_path / "bad.npz", valid_entries, {**base, "params": {**base["params"], "selection": bad}}))


def test_save_without_info_loads_empty_info(tmp_path: Path) -> None:
    X, y, _ = blobs(3, 10, 4, 0.5)
    _, info = load_head(save_head(tmp_path / "h.npz", create_head("logreg").fit(X, y)))
    assert info == {}


def _v1_file(path: Path, head: str, params: dict[str, Any], n_features: int, state: dict[str, Any],
             arrays: dict[str, np.ndarray], classes: np.ndarray) -> Path:
    """A head file as format 1 wrote it (version 1 in the JSON; arrays as given)."""
    doc = {"format": "embedpipe-head", "version": 1, "head": head, "params": params,
           "n_features_in": n_features, "state": state, "info": {}}
    entries = {f"a/{k}": v for k, v in arrays.items()}
    return _write(path, {**entries, "classes": classes}, doc)


def _one_warning_line(caplog: pytest.LogCaptureFixture) -> str:
    records = [r for r in caplog.records if r.levelno >= 30]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert "\n" not in message and "format 1" in message
    return message


def test_format_1_logreg_file_is_converted_exactly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    k, d = 3, 5
    coef_std = rng.normal(size=(k, d)).astype(np.float32)  # format 1: coefficients on standardised X
    intercept_std = rng.normal(size=k).astype(np.float32)
    mean = rng.normal(size=d).astype(np.float32) * 10
    scale = rng.uniform(0.1, 20, size=d).astype(np.float32)
    params = {k_: list(v) if isinstance(v, tuple) else v for k_, v in LogRegHead().get_params().items()}
    state = {"C_": 1.0, "val_scores_": {}, "best_val_score_": None, "n_iter_": 7}
    path = _v1_file(tmp_path / "old.npz", "logreg", params, d, state,
                    {"coef_": coef_std, "intercept_": intercept_std, "mean_": mean, "scale_": scale},
                    np.array([2, 5, 9]))
    with caplog.at_level("WARNING"):
        head, _ = load_head(path)
    assert str(path) in _one_warning_line(caplog)
    X = (rng.normal(size=(50, d)) * scale + mean).astype(np.float32)
    old = ((X - mean) / scale).astype(np.float64) @ coef_std.T + intercept_std  # the format-1 formula
    np.testing.assert_allclose(head.coef_, coef_std / scale, rtol=1e-6)
    np.testing.assert_allclose(head.intercept_, intercept_std - coef_std.astype(np.float64) @ (mean / scale),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.decision_function(X), old, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(head.predict_proba(X), softmax(old), atol=1e-5)
    np.testing.assert_array_equal(head.predict(X), np.array([2, 5, 9])[np.argmax(old, axis=1)])
    assert head.n_iter_ == 7
    # saved again, it is format 2 and loads without a warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        again, _ = load_head(save_head(tmp_path / "new.npz", head))
    assert _doc(dict(np.load(tmp_path / "new.npz")))["version"] == 2 and not caplog.records
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))


def test_format_1_file_with_a_bad_standardiser_is_refused(tmp_path: Path) -> None:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in LogRegHead().get_params().items()}
    state = {"C_": 1.0, "val_scores_": {}, "best_val_score_": None, "n_iter_": 1}
    arrays = {"coef_": np.ones((2, 3), np.float32), "intercept_": np.zeros(2, np.float32),
              "mean_": np.zeros(3, np.float32), "scale_": np.array([1, 0, 1], np.float32)}
    with pytest.raises(EmbedpipeError, match=r"cannot be converted.*scale_"):
        load_head(_v1_file(tmp_path / "z.npz", "logreg", params, 3, state, arrays, np.array([0, 1])))
    arrays["scale_"] = np.ones(4, np.float32)
    with pytest.raises(EmbedpipeError, match="cannot be converted"):
        load_head(_v1_file(tmp_path / "w.npz", "logreg", params, 3, state, arrays, np.array([0, 1])))


def test_format_1_multilayer_file_converts_its_nested_logreg(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    X, y, means = blobs(3, 30, 8, 1.0, seed=0)
    Xv, yv, _ = blobs(3, 10, 8, 1.0, seed=1, means=means)
    head = create_head("multilayer", layer_dims=(5, 3), Cs=(0.1, 1.0), keeps=(0.5, 1.0)).fit(
        X, y, eval_set=(Xv, yv))
    path = save_head(tmp_path / "ml.npz", head)
    entries = dict(np.load(path))
    doc = _doc(entries)
    # the same final classifier written as format 1 did: on standardised kept columns
    s = len(head.selected_)
    m = np.linspace(-3, 3, s).astype(np.float32)
    sc = np.linspace(0.5, 4, s).astype(np.float32)
    coef, intercept = head.clf_.coef_.astype(np.float64), head.clf_.intercept_.astype(np.float64)
    entries["a/clf.coef_"] = (coef * sc).astype(np.float32)
    entries["a/clf.intercept_"] = (intercept + coef @ m).astype(np.float32)
    entries["a/clf.mean_"], entries["a/clf.scale_"] = m, sc
    old = _write(tmp_path / "ml-v1.npz", entries, {**doc, "version": 1})
    with caplog.at_level("WARNING"):
        loaded, _ = load_head(old)
    assert "multilayer" in _one_warning_line(caplog)
    Xq = np.concatenate([X, Xv])
    np.testing.assert_allclose(loaded.predict_proba(Xq), head.predict_proba(Xq), atol=1e-4)
    np.testing.assert_array_equal(loaded.predict(Xq), head.predict(Xq))
    np.testing.assert_allclose(loaded.decision_function(Xq), head.decision_function(Xq), rtol=1e-4, atol=1e-3)


# -- 6. a crafted head file cannot run code -----------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (it reduces to ``open(marker, "w")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _object_array(marker: Path) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    return arr


@pytest.fixture(scope="module")
def valid_entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    X, y, _ = blobs(3, 10, 4, 0.5)
    path = save_head(
        tmp_path_factory.mktemp("valid") / "h.npz", create_head("logreg", C=1.0).fit(X, y)
    )
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _doc(entries: dict[str, np.ndarray]) -> dict[str, Any]:
    return json.loads(entries["__embedpipe__"].tobytes().decode())


def _write(path: Path, entries: dict[str, np.ndarray], doc: dict[str, Any] | None = None) -> Path:
    entries = dict(entries)
    if doc is not None:
        entries["__embedpipe__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    np.savez(path, **entries)
    return path


def test_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload used below really runs when something unpickles it."""
    marker = tmp_path / "control-ran"
    np.savez(tmp_path / "p.npz", x=_object_array(marker))
    with np.load(tmp_path / "p.npz", allow_pickle=True) as z:
        z["x"][0].close()
    assert marker.exists()


@pytest.mark.parametrize("key", ["__embedpipe__", "classes", "a/coef_", "extra"])
def test_pickled_object_array_is_refused_unexecuted(
    tmp_path: Path, valid_entries: dict[str, np.ndarray], key: str
) -> None:
    marker = tmp_path / "payload-ran"
    path = _write(tmp_path / "evil.npz", {**valid_entries, key: _object_array(marker)})
    with pytest.raises(EmbedpipeError):
        load_head(path)
    assert not marker.exists()


def test_raw_pickle_and_object_npy_are_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    npy = tmp_path / "obj.npy"
    np.save(npy, _object_array(marker))
    for path in (raw, npy):
        with pytest.raises(EmbedpipeError):
            load_head(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "head_name", ["os.system", "builtins.eval", "__import__", "LogRegHead", 123]
)
def test_unregistered_head_name_is_refused(
    tmp_path: Path, valid_entries: dict[str, np.ndarray], head_name: Any
) -> None:
    doc = {**_doc(valid_entries), "head": head_name}
    with pytest.raises(EmbedpipeError, match="unknown head"):
        load_head(_write(tmp_path / "h.npz", valid_entries, doc))


@pytest.mark.parametrize(
    "params",
    [
        {"evil": 1},
        {"__class__": "os.system"},
        {"C": {"__reduce__": "os.system"}},
        {"Cs": [{"a": 1}]},
        {"Cs": [[1.0]]},
    ],
    ids=["unknown", "dunder", "dict-value", "list-of-dicts", "nested-list"],
)
def test_bad_params_are_refused(
    tmp_path: Path, valid_entries: dict[str, np.ndarray], params: dict[str, Any]
) -> None:
    doc = _doc(valid_entries)
    doc["params"] = {**doc["params"], **params}
    with pytest.raises(EmbedpipeError, match="parameters"):
        load_head(_write(tmp_path / "h.npz", valid_entries, doc))


@pytest.mark.parametrize(
    "damage",
    [
        "params-not-dict",
        "state-not-dict",
        "info-not-dict",
        "no-n_features_in",
        "n_features_in-str",
        "no-classes",
        "classes-2d",
        "no-coef",
        "no-doc",
        "doc-not-json",
        "doc-list",
        "wrong-format",
        "wrong-version",
    ],
)
def test_damaged_head_file_is_refused(
    tmp_path: Path, valid_entries: dict[str, np.ndarray], damage: str
) -> None:
    entries, doc = dict(valid_entries), _doc(valid_entries)
    if damage.endswith("-not-dict"):
        doc[damage.split("-")[0]] = [1, 2]
    elif damage == "no-n_features_in":
        del doc["n_features_in"]
    elif damage == "n_features_in-str":
        doc["n_features_in"] = "4"
    elif damage == "no-classes":
        del entries["classes"]
    elif damage == "classes-2d":
        entries["classes"] = np.zeros((3, 2))
    elif damage == "no-coef":
        del entries["a/coef_"]
    elif damage == "no-doc":
        del entries["__embedpipe__"]
    elif damage == "doc-not-json":
        entries["__embedpipe__"] = np.frombuffer(b"{not json", dtype=np.uint8)
    elif damage == "doc-list":
        entries["__embedpipe__"] = np.frombuffer(b"[1, 2]", dtype=np.uint8)
    elif damage == "wrong-format":
        doc["format"] = "something-else"
    elif damage == "wrong-version":
        doc["version"] = 999
    rewrite_doc = "__embedpipe__" in entries and not damage.startswith("doc-")
    path = _write(tmp_path / "h.npz", entries, doc if rewrite_doc else None)
    with pytest.raises(EmbedpipeError):
        load_head(path)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "npy", "plain-zip", "directory"])
def test_non_head_file_is_refused(
    tmp_path: Path, valid_entries: dict[str, np.ndarray], kind: str
) -> None:
    path = tmp_path / "h.npz"
    if kind == "garbage":
        path.write_bytes(b"definitely not a head file" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _write(tmp_path / "good.npz", valid_entries)
        path.write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    elif kind == "npy":
        path = tmp_path / "h.npy"
        np.save(path, np.arange(10))
    elif kind == "plain-zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(EmbedpipeError):
        load_head(path)


def test_missing_head_file(tmp_path: Path) -> None:
    with pytest.raises(EmbedpipeError, match="not found"):
        load_head(tmp_path / "nope.npz")


# -- 7. create_head errors ----------------------------------------------------------------------


def test_unknown_head_name_lists_close_matches() -> None:
    with pytest.raises(EmbedpipeError, match="did you mean logreg"):
        create_head("logre")
    with pytest.raises(EmbedpipeError, match=r"known: .*logreg"):
        create_head("zzzzzz")


def test_unknown_head_parameter_is_named() -> None:
    with pytest.raises(EmbedpipeError, match="hiden") as err:
        create_head("mlp", hiden=64)
    assert "hidden" in str(err.value)  # and it lists what the head does take


# -- 8. registry --------------------------------------------------------------------------------


def test_duplicate_registration_raises() -> None:
    before = dict(DESCRIPTIONS)
    with pytest.raises(ValueError, match="registered twice"):
        register_head(description="an impostor")(LogRegHead)
    with pytest.raises(ValueError, match="registered twice"):
        HEADS.register("mlp")(LogRegHead)
    assert before == DESCRIPTIONS
    assert HEADS.get("logreg") is LogRegHead and HEADS.get("mlp").__name__ == "MLPHead"


def test_registry_pattern() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("alphabet")(lambda: 2)
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        reg.register("alpha")(lambda: 3)
    assert (
        reg.create("alpha") == 1 and reg.names("alpha*") == ["alpha", "alphabet"] and "alpha" in reg
    )
    with pytest.raises(EmbedpipeError, match="unknown widget 'alpah'; did you mean alpha"):
        reg.get("alpah")


def test_register_head_decorator_registers_under_the_class_name() -> None:
    from embedpipe.heads.base import Head

    @register_head(description="a test-only head")
    class _TestOnlyHead(Head):
        name = "test-only-head"

    try:
        assert HEADS.get("test-only-head") is _TestOnlyHead and _TestOnlyHead.name == "test-only-head"
        assert DESCRIPTIONS["test-only-head"] == "a test-only head"
        assert "test-only-head" in list_heads("test-*")
    finally:  # leave the global registry as it was for the other tests
        del HEADS._factories["test-only-head"], DESCRIPTIONS["test-only-head"]
    with pytest.raises(ValueError, match="no name"):
        register_head(description="nameless")(type("Nameless", (Head,), {}))


# -- 9. documentation: numpydoc class docstrings whose examples run ------------------------------

DOCUMENTED = [*(HEADS.get(name) for name in list_heads())]


def _section(doc: str, title: str) -> list[str]:
    """The names a numpydoc section lists (lines ``name : type`` at the section's indentation)."""
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index(title) + 2
    assert set(lines[start - 1]) == {"-"}, title
    names = []
    for line in lines[start:]:
        if line and set(line) == {"-"}:  # the next section's underline
            break
        if match := re.match(r"^(\w+) : ", line):
            names.append(match.group(1))
    return names


@pytest.mark.parametrize("cls", [*DOCUMENTED, ZeroShotClassifier], ids=lambda c: c.__name__)
def test_class_docstrings_document_every_parameter(cls: type) -> None:
    doc = cls.__doc__ or ""
    assert doc.splitlines()[0].strip().endswith(".")  # one summary line
    assert _section(doc, "Parameters") == list(inspect.signature(cls).parameters)
    assert "Examples" in doc and ">>> " in doc
    for name in inspect.signature(cls).parameters:  # the meaning moved from inline comments
        assert not re.search(rf"self\.{name} = {name}  #", inspect.getsource(cls)), name


@pytest.mark.parametrize("name", list_heads())
def test_class_docstrings_document_every_learned_attribute(name: str) -> None:
    X, y, _ = blobs(3, 20, 8, 1.0)
    head = create_head(name, **FAST.get(name, {}))
    head.fit(X, y)
    learned = sorted(k for k in vars(head) if k.endswith("_") and not k.startswith("_"))
    documented = _section(type(head).__doc__ or "", "Attributes")
    assert sorted(set(learned) - {"estimated_fit_s_"}) == sorted(set(documented) - {"estimated_fit_s_"})


def test_docstring_examples_run() -> None:
    """Every head's (and the selection rule's) docstring examples run and give what they show
    (the zero-shot ones and finetune's cache example are skipped: they need a backbone download)."""
    import embedpipe.heads.registry
    import embedpipe.heads.select
    import embedpipe.heads.zeroshot

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    objects = [*DOCUMENTED, embedpipe.heads.select.HoldOut, embedpipe.heads.zeroshot.ZeroShotClassifier,
               embedpipe.heads.registry.register_head]
    ran = {}
    for obj in objects:
        for test in finder.find(obj, obj.__name__, globs={}):
            result = runner.run(test, out=lambda text: None)
            assert result.failed == 0, f"{test.name}: {result.failed} failing examples"
            ran[obj.__name__] = ran.get(obj.__name__, 0) + result.attempted
    assert all(ran.get(cls.__name__, 0) >= 3 for cls in DOCUMENTED), ran  # a real example per head
    assert ran["HoldOut"] >= 1


# -- 3d. k-fold selection: KFold folds, Auto's switch, a head's choice = a brute-force loop over folds ----


def test_kfold_folds_are_stratified_seeded_and_a_partition() -> None:
    y = np.repeat([0, 1, 2, 3], [12, 10, 3, 1])  # class 2 has fewer rows than folds, class 3 a single row
    masks = KFold().val_masks(y, "test")
    assert len(masks) == 5
    held = np.sum(masks, axis=0)
    assert held[y != 3].tolist() == [1] * 25 and held[y == 3].tolist() == [0]  # each row once; the singleton never
    for c, n in ((0, 12), (1, 10)):
        per_fold = [int(m[y == c].sum()) for m in masks]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n  # stratified
    assert [int(m.sum()) for m in masks] == [5, 5, 5, 5, 5]
    again = KFold().val_masks(y, "test")
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))  # deterministic
    assert not all(np.array_equal(a, b) for a, b in zip(masks, KFold(seed=1).val_masks(y, "test"), strict=True))
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="folds"):
            KFold(folds=bad)  # type: ignore[arg-type]


def test_kfold_says_in_one_line_how_it_handles_small_classes(caplog: pytest.LogCaptureFixture) -> None:
    y = np.repeat([0, 1, 2], [12, 3, 1])
    with caplog.at_level("WARNING"):
        KFold().val_masks(y, "LogRegHead")
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "2 of 3 classes have fewer than 5 rows (smallest 1)" in message
    assert "1 class with a single row stays in training in every fold" in message


def test_auto_switches_to_kfold_at_the_thresholds() -> None:
    auto = Auto()
    assert auto.resolve(1999, 10) == KFold() and auto.resolve(2000, 10) == HoldOut()  # 2,000 images
    assert auto.resolve(2999, 100) == KFold() and auto.resolve(3000, 100) == HoldOut()  # 30 per class
    assert Auto(folds=3, seed=2).resolve(100, 2) == KFold(3, 2)
    assert resolve(None, np.repeat(np.arange(10), 20)) == KFold()  # the default rule, on 200 rows
    assert resolve(HoldOut(0.2), np.zeros(5)) == HoldOut(0.2)  # a concrete rule is kept


def test_logreg_kfold_picks_the_C_of_a_brute_force_loop_over_the_folds() -> None:
    X, y = make_classification(n_samples=80, n_features=12, n_informative=5, n_classes=3, class_sep=0.7,
                               random_state=3)
    Cs = (0.001, 0.01, 0.1, 1.0, 10.0)
    # sweep_iter=500: every C of the path converged, as the brute-force fits are (the default is a proxy)
    head = create_head("logreg", Cs=Cs, patience=None, tol=1e-6, sweep_iter=500, selection=KFold()).fit(X, y)
    masks = KFold().val_masks(y, "test")
    brute = {c: float(np.mean([create_head("logreg", C=c, tol=1e-6).fit(X[~m], y[~m]).score(X[m], y[m])
                               for m in masks])) for c in Cs}
    assert head.selection_ == {**head.selection_, "rule": "kfold", "folds": 5, "val_rows": 80}
    assert [head.val_scores_[repr(c)] for c in Cs] == pytest.approx([brute[c] for c in Cs], abs=1e-6)
    best = max(Cs, key=lambda c: (brute[c], -Cs.index(c)))  # the first best, as GridSearchCV
    assert best == head.C_ and head.best_val_score_ == pytest.approx(brute[best], abs=1e-6)
    final = create_head("logreg", C=best, tol=1e-6).fit(X, y)  # then one fit on all of train at that C
    np.testing.assert_allclose(head.predict_proba(X), final.predict_proba(X), atol=1e-5)
    assert "over 5 stratified folds" in (head.how_chosen() or "")


@pytest.mark.parametrize("name", SELECTING)
def test_every_selecting_head_selects_by_kfold_on_small_train(name: str, caplog: pytest.LogCaptureFixture) -> None:
    X, y, _ = blobs(3, 20, 8, 1.5, seed=4)
    with caplog.at_level("INFO", logger="embedpipe.heads.base"):
        head = create_head(name, **FAST.get(name, {})).fit(X, y)  # 60 rows: Auto picks k-fold
    chance = np.bincount(y).max() / len(y)
    if name == "finetune":  # k fine-tunes cost too much: a held-out 15 %, said in one line
        assert head.selection_["rule"] == "holdout"
        (record,) = caplog.records  # its documented way under the default rule: information, not a warning
        assert "instead of 5-fold cross-validation" in record.getMessage() and record.levelname == "INFO"
        caplog.clear()
        with caplog.at_level("WARNING", logger="embedpipe.heads.base"):  # k-fold asked for by name: a warning
            create_head(name, **FAST.get(name, {}), selection=KFold()).fit(X, y)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
    else:
        assert head.selection_["rule"] == "kfold" and head.selection_["val_rows"] == 60 and not caplog.records
        assert "5 stratified folds" in (head.how_chosen() or "") and head.chosen_params()
    assert head.score(X, y) > chance  # FAST settings: a quick fit, better than the majority class


@pytest.mark.timeout(60)
def test_logreg_quick_sweep_picks_the_C_of_the_converged_sweep() -> None:
    """The selection proxy (a few preconditioned L-BFGS iterations per C) chooses a C that scores, fully
    converged, about as well as the converged sweep's best; the final fit at it is the fixed-C fit."""
    X, y = make_classification(n_samples=600, n_features=30, n_informative=8, n_classes=5, flip_y=0.05,
                               random_state=4)
    Xtr, ytr, Xv, yv = X[:450], y[:450], X[450:], y[450:]
    Cs = (0.001, 0.01, 0.1, 1.0, 10.0)
    quick = create_head("logreg", Cs=Cs, patience=None, refit=False).fit(Xtr, ytr, eval_set=(Xv, yv))
    full = create_head("logreg", Cs=Cs, patience=None, refit=False, sweep_iter=500,
                       tol=1e-6).fit(Xtr, ytr, eval_set=(Xv, yv))
    assert quick.sweep_iter < full.sweep_iter
    # the proxy's C scores, fully converged, within 3 of the 150 validation rows of the best C
    assert full.val_scores_[repr(quick.C_)] >= full.best_val_score_ - 0.02
    fixed = create_head("logreg", C=quick.C_).fit(Xtr, ytr)
    np.testing.assert_allclose(quick.predict_proba(Xv), fixed.predict_proba(Xv), atol=0.02)
