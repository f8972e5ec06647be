"""Training on real caches: several heads on one load, few-shot sampling with seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import EmbedpipeError, extract
from embedpipe.heads import load_head
from embedpipe.heads.select import HoldOut, KFold
from embedpipe.train import (
    evaluate,
    few_shot,
    few_val_warning,
    fit_head,
    sample_shots,
    standard_error,
    train_heads,
)


@pytest.fixture
def cache(tmp_path: Path, tiny_timm_weights: str):  # type: ignore[no-untyped-def]
    data = make_image_folder(tmp_path / "shapes", classes=4, per_class=14)
    return extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                   precision="fp32", num_workers=0, progress=False)


def test_sample_shots_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(5), [10, 10, 3, 10, 10])
    a = sample_shots(y, 4, seed=0)
    assert np.bincount(y[a]).tolist() == [4, 4, 3, 4, 4]
    assert np.array_equal(a, sample_shots(y, 4, seed=0)) and not np.array_equal(a, sample_shots(y, 4, seed=1))
    with pytest.raises(EmbedpipeError, match=r"^shots must be at least 1, got 0$"):  # the argument, not --shots
        sample_shots(y, 0, seed=0)


def test_heads_take_a_list_of_names(cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for call in (lambda h: train_heads(cache, h, save=False), lambda h: few_shot(cache, h, shots=2, seeds=[0])):
        with pytest.raises(EmbedpipeError, match=r"heads takes a list of head names, e.g. heads=\['ncm', 'knn'\]"):
            call("ncm,knn")
        with pytest.raises(EmbedpipeError, match="non-empty list"):
            call([])
    (one,) = train_heads(cache, "ncm", save=False)  # one name as a plain string is fine
    assert one.head == "ncm"
    assert [r["head"] for r in few_shot(cache, "ncm", shots=2, seeds=[0])["summary"]] == ["ncm"]


def test_few_shot_reports_mean_and_std_over_seeds(cache) -> None:  # type: ignore[no-untyped-def]
    res = few_shot(cache, ["ncm", "knn"], shots=2, seeds=[0, 1, 2])
    assert [r["head"] for r in res["summary"]] == ["ncm", "knn"]
    for row in res["summary"]:
        assert row["shots"] == 2 and row["seeds"] == 3 and row["n_train"] == 8
        accs = [r["test_acc"] for r in res["runs"] if r["head"] == row["head"]]
        assert row["test_acc_mean"] == pytest.approx(np.mean(accs)) and row["test_acc_std"] == pytest.approx(np.std(accs))
    assert len(res["samples"]) == 3 and all(len(ids) == 8 for ids in res["samples"].values())
    assert res["samples"]["0"] != res["samples"]["1"]


def test_train_heads_shares_one_load_and_saves_each(cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = train_heads(cache, ["logreg", "ncm", "knn"], out=tmp_path / "heads")
    assert [r.head for r in results] == ["logreg", "ncm", "knn"]
    assert [r.path for r in results] == [str(tmp_path / "heads" / f"{h}-pooled.npz") for h in ("logreg", "ncm", "knn")]
    X_test, y_test = cache.load("test", "pooled")
    X_train, _ = cache.load("train", "pooled")
    assert len(y_test) > 0
    for r in results:  # each saved file is the fitted head, and the reported numbers are its own
        assert r.path is not None and r.model is not None
        loaded, info = load_head(r.path)
        assert info["cache_key"] == cache.key and info["layer"] == "pooled"
        np.testing.assert_array_equal(loaded.predict_proba(X_test), r.model.predict_proba(X_test))
        assert r.test_acc == pytest.approx(float(np.mean(loaded.predict(X_test) == y_test)))
        assert r.n_train == len(X_train) and r.n_classes == 4


def _no_val_cache(tmp_path: Path, weights: str, per_class: int = 14):  # type: ignore[no-untyped-def]
    root = tmp_path / "tt"  # laid out as train/ and test/ only
    make_image_folder(root / "train", classes=3, per_class=per_class)
    make_image_folder(root / "test", classes=3, per_class=4)
    return extract(str(root), TINY_TIMM, weights=weights, cache_dir=tmp_path / "c", precision="fp32",
                   num_workers=0, progress=False)


def test_a_small_cache_without_val_selects_by_kfold_and_says_so(
        tmp_path: Path, tiny_timm_weights: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = _no_val_cache(tmp_path, tiny_timm_weights)
    with caplog.at_level("WARNING"):
        (r,) = train_heads(cache, "logreg", params={"logreg": {"Cs": (0.01, 1.0, 100.0)}}, out=tmp_path / "h.npz")
    # no carve: every training image trains, and the rule is recorded where results and head files say it
    assert r.n_train == 42 and r.val_split["source"] == "k-fold on train" and r.val_split["rows"] == 42
    assert r.val_split["rule"] == {"rule": "kfold", "folds": 5, "seed": 0} and "42 images" in r.val_split["note"]
    assert r.selection is not None and r.selection["rule"] == "kfold" and r.selection["val_rows"] == 42
    assert "over 5 stratified folds of train" in r.selection["how"] and "5-fold" in r.selection["val"]
    head, info = load_head(r.path)
    assert head.selection == KFold() and info["val_split"] == r.val_split and r.chosen["C"] == head.C_
    # 42 validation images (< FEW_VAL_ROWS): one line with the count and the standard error
    assert r.val_acc is not None and r.val_se == pytest.approx(standard_error(r.val_acc, 42), abs=1e-4)
    (line,) = r.warnings
    assert "rests on 42 validation images" in line and "±" in line and "\n" not in line
    assert any(rec.getMessage() == line for rec in caplog.records)
    # evaluate: no single carve to score on val; train is all of train
    with pytest.raises(EmbedpipeError, match="no single set of rows was held out: use --split test"):
        evaluate(r.path, split="val")
    whole = evaluate(r.path, split="train")
    assert whole["n"] == 42 and "k-fold" in whole["note"]
    # asked to carve, it carves as before
    (held,) = train_heads(cache, "logreg", params={"logreg": {"Cs": (0.01, 1.0, 100.0)}}, save=False,
                          selection=HoldOut())
    assert held.val_split["source"] == "carved from train" and held.n_train == 36
    assert held.selection is not None and held.selection["rule"] == "eval_set" and held.selection["val_rows"] == 6


def test_ridge_on_a_small_cache_without_val_selects_alpha_on_train_and_says_how(
        tmp_path: Path, tiny_timm_weights: str) -> None:
    cache = _no_val_cache(tmp_path, tiny_timm_weights)
    (r,) = train_heads(cache, "ridge", save=False)  # Auto picks k-fold: ridge runs its own folds, no carve
    assert r.n_train == 42 and set(r.chosen) == {"alpha"} and r.chosen["alpha"] == r.model.alpha_
    assert r.selection is not None and r.selection["rule"] == "kfold" and r.selection["val_rows"] == 42
    assert r.selection["how"].startswith("alpha: best mean accuracy over 5 folds of train")
    (loo,) = train_heads(cache, "ridge", save=False, selection=HoldOut())  # carved: alpha on the carve
    assert loo.selection is not None and loo.selection["rule"] == "eval_set" and loo.n_train == 36
    assert "val accuracy" in loo.selection["how"] and "refit on train + val" in loo.selection["how"]


def test_a_val_accuracy_of_zero_on_three_images_warns() -> None:
    X = np.eye(3, 4, dtype=np.float32) * 5
    data = {"train": (X, np.array([0, 1, 2])), "val": (X, np.array([1, 2, 0])),
            "test": (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))}
    r = fit_head(data, "logreg", "pooled", {"Cs": (0.1, 1.0)})
    assert r.val_acc == 0.0 and r.val_rows == 3 and r.val_se == 0.0
    (line,) = r.warnings
    assert "rests on 3 validation images" in line and "no validation image was classified right" in line
    assert "rule of three" in line
    assert few_val_warning("logreg", 0.9, 500, 10) is None  # 50 per class: nothing to say
    assert few_val_warning("logreg", 0.9, 500, 200) is not None  # 2.5 per class
