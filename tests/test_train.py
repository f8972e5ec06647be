"""Training on real caches: several heads on one load, few-shot sampling with seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import EmbedpipeError, extract
from embedpipe.heads import load_head
from embedpipe.train import few_shot, sample_shots, train_heads


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
