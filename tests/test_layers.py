"""Several layers at once: the multilayer head (Head2Toe), multi-layer loads from a cache, and the val
split carved out of train when the data brings train/ and test/ only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TIMM, make_image_folder

from embedpipe import extract, open_cache
from embedpipe.data.splits import SplitRule, carve_val
from embedpipe.heads import create_head, load_head, save_head
from embedpipe.heads.select import HoldOut
from embedpipe.train import evaluate, train_heads

SMALL = {"Cs": (0.1, 1.0, 10.0, 100.0), "keeps": (0.25, 0.5, 1.0), "lasso_iters": 40}


def grouped(n_per_class: int, seed: int, means: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three layer groups of widths 40, 8, 30: only the 8-wide group carries the class; the others are noise
    at a much larger scale (as raw layers of different depths are)."""
    rng = np.random.default_rng(seed)
    k = 4
    if means is None:
        means = rng.normal(size=(k, 8)).astype(np.float32) * 2
    y = np.repeat(np.arange(k), n_per_class)
    informative = means[y] + 0.5 * rng.normal(size=(len(y), 8))
    X = np.concatenate([50 * rng.normal(size=(len(y), 40)), informative, 10 * rng.normal(size=(len(y), 30))], axis=1)
    return X.astype(np.float32), y, means


def test_multilayer_finds_the_informative_layer_and_round_trips(tmp_path: Path) -> None:
    Xtr, ytr, means = grouped(40, 0)
    Xv, yv, _ = grouped(15, 1, means)
    Xte, yte, _ = grouped(15, 2, means)
    head = create_head("multilayer", layer_dims=(40, 8, 30), layer_names=("a", "b", "c"), **SMALL)
    head.fit(Xtr, ytr, eval_set=(Xv, yv))
    assert head.score(Xte, yte) >= 0.9
    shares = head.layer_contributions_
    assert set(shares) == {"a", "b", "c"} and sum(shares.values()) == pytest.approx(1.0)
    assert shares["b"] > 0.5 and shares["b"] > shares["a"] + shares["c"]  # the informative layer dominates
    assert set(head.keep_scores_) == {"0.25", "0.5", "1.0"} and head.keep_ in (0.25, 0.5, 1.0)
    assert sum(head.layer_kept_.values()) == len(head.selected_) == round(head.keep_ * 78)
    # the final logreg is linear on the kept raw columns: decision_function is exactly that
    decision = head.decision_function(Xte)
    np.testing.assert_allclose(decision, Xte[:, head.selected_] @ head.clf_.coef_.T + head.clf_.intercept_,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(head.predict(Xte), np.argmax(decision, axis=1))
    path = save_head(tmp_path / "m.npz", head, {"layer": "a,b,c"})
    again, info = load_head(path)
    assert info["layer"] == "a,b,c" and again.layer_dims == (40, 8, 30)
    np.testing.assert_allclose(again.predict_proba(Xte), head.predict_proba(Xte), atol=1e-6)
    assert again.layer_contributions_ == pytest.approx(shares)


def test_group_scaling_puts_layers_on_equal_footing() -> None:
    from embedpipe.heads.multilayer import group_scale

    s = group_scale((16, 64), 80)
    assert s[:16] == pytest.approx(0.25) and s[16:] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="layer_dims"):
        create_head("multilayer", layer_dims=(5, 5)).fit(*grouped(5, 0)[:2])
    with pytest.raises(ValueError, match="layer_names"):
        create_head("multilayer", layer_dims=(40, 8, 30), layer_names=("a",)).fit(*grouped(5, 0)[:2])


def test_carve_val_is_seeded_stratified_and_stable() -> None:
    ids = [f"c{c}/img{i}" for c in range(3) for i in range(20)] + ["c3/a", "c3/b"]
    labels = [c for c in range(3) for _ in range(20)] + [3, 3]
    mask = carve_val(ids, labels)
    assert mask.sum() == 9 and [int(mask[np.array(labels) == c].sum()) for c in range(4)] == [3, 3, 3, 0]
    assert np.array_equal(mask, carve_val(ids, labels))
    assert not np.array_equal(mask, carve_val(ids, labels, SplitRule(seed=1, val=0.15, test=0)))
    # adding images keeps the earlier images' assignment (the order depends only on each id)
    more = carve_val([*ids, "c0/new"], [*labels, 0])
    assert (more[:-1] == mask).mean() > 0.95


@pytest.fixture
def layered_cache(tmp_path: Path, tiny_timm_weights: str):  # type: ignore[no-untyped-def]
    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=12)
    return extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                   layers=("pooled", "block1", "block2"), precision="fp32", num_workers=0, progress=False)


def test_cache_loads_several_layers_in_the_order_given(layered_cache) -> None:  # type: ignore[no-untyped-def]
    Xp, y = layered_cache.load("train", "pooled")
    X1, _ = layered_cache.load("train", "block1")
    X, y2 = layered_cache.load("train", "block1,pooled")
    assert np.array_equal(y, y2) and np.array_equal(X, np.concatenate([X1, Xp], axis=1))
    assert np.array_equal(layered_cache.load("train", ["block1", "pooled"])[0], X)


def test_train_multilayer_on_all_cached_layers_saves_the_layer_list(layered_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (result,) = train_heads(layered_cache, "multilayer", params={"multilayer": SMALL}, out=tmp_path / "ml.npz")
    assert result.layer == "pooled,block1,block2"
    assert set(result.report["layer_contributions_"]) == {"pooled", "block1", "block2"}
    head, info = load_head(result.path)
    assert info["layer"] == "pooled,block1,block2" and head.layer_names == ("pooled", "block1", "block2")
    assert head.n_features_in_ == sum(layered_cache.dims[n] for n in ("pooled", "block1", "block2"))
    assert evaluate(result.path)["top1"] == pytest.approx(result.test_acc)
    proc = subprocess.run([sys.executable, "-m", "embedpipe", "train", "--cache", str(layered_cache.path),
                           "--head", "multilayer", "--layer", "block2,pooled", "--param", "keeps=[0.5,1.0]",
                           "--out", str(tmp_path / "two.npz")], capture_output=True, text=True, check=True)
    assert "multilayer: layer contributions" in proc.stdout
    assert [line.split()[0] for line in proc.stdout.splitlines()[-2:]] == ["block2", "pooled"]
    assert load_head(tmp_path / "two.npz")[1]["layer"] == "block2,pooled"


def _folder_without_val(root: Path) -> Path:
    for split, count in (("train", 14), ("test", 4)):
        make_image_folder(root / split, classes=3, per_class=count)
    return root


def test_no_val_split_carves_one_out_of_train_and_says_so(tmp_path: Path, tiny_timm_weights: str) -> None:
    data = _folder_without_val(tmp_path / "tt")
    cache = extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                    precision="fp32", num_workers=0, progress=False)
    assert cache.counts() == {"train": 42, "val": 0, "test": 12}
    (result,) = train_heads(cache, "logreg", params={"logreg": {"Cs": (0.01, 1.0, 100.0)}}, out=tmp_path / "h.npz",
                            selection=HoldOut())  # a train split this small selects by k-fold unless told to carve
    assert result.val_split["source"] == "carved from train" and result.val_split["rows"] == 6  # 2 of 14 per class
    assert result.n_train == 36 and result.val_acc is not None
    head, info = load_head(result.path)
    assert head.val_scores_ and head.C_ in (0.01, 1.0, 100.0)  # the sweep ran: there was a val set
    assert info["val_split"] == result.val_split and info["val_split"]["rule"]["seed"] == 0
    assert result.val_split["rule"] == {"seed": 0, "val": 0.15, "test": 0.0}  # heads.select.HoldOut()
    # the CLI says so in one line on stderr, and the same record is in the JSON
    proc = subprocess.run([sys.executable, "-m", "embedpipe", "train", "--cache", str(cache.path), "--head", "ncm",
                           "--selection", "holdout", "--json", "--out", str(tmp_path / "n.npz")], capture_output=True, text=True, check=True)
    assert "no val split in the cache: held out 15% of train (seed 0) for selection" in proc.stderr
    (row,) = json.loads(proc.stdout)["results"]
    assert row["val_split"]["ids_sha256"] == result.val_split["ids_sha256"] and row["n_train"] == 36


def test_cache_with_val_split_is_used_as_given(layered_cache) -> None:  # type: ignore[no-untyped-def]
    (result,) = train_heads(layered_cache, "ncm", save=False)
    assert result.val_split == {"source": "cache", "rows": len(open_cache(layered_cache.path).rows("val"))}
