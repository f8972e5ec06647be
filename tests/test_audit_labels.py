"""The audit's row-level checks: likely label errors (out-of-fold probabilities ranked by cleanlab),
outliers (blockwise kNN distances), and the Markdown report with its contact sheets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedpipe.audit.labels import find_label_issues
from embedpipe.audit.outliers import find_outliers
from embedpipe.audit.sheets import write_report
from embedpipe.core.errors import EmbedpipeError

pytest.importorskip("cleanlab", reason='the label audit needs cleanlab: pip install "embedpipe[quality]"')


def blobs(classes: int = 4, per_class: int = 40, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian classes: a flipped label is clearly wrong."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    X = rng.normal(size=(len(y), d)) + 5 * np.eye(classes, d)[y]
    return X.astype(np.float32), y


def flip(y: np.ndarray, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(y), n, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, y.max() + 1, n)) % (y.max() + 1)
    return noisy, rows


@pytest.mark.timeout(120)
def test_planted_flips_on_real_digits_rank_first() -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    noisy, rows = flip(y, 30)
    found, info = find_label_issues(X.astype(np.float32), noisy, top=30)
    flipped = set(rows.tolist())
    hits = {r["index"] for r in found} & flipped
    assert {r["index"] for r in found[:10]} <= flipped, info  # measured: the first 14 are all flips
    assert len(hits) >= 21, (len(hits), info)  # precision@30 >= 0.7 (measured: 23 of 30)
    assert info["n_flagged"] >= len(found) and info["head"] == "ridge" and "alpha" in info["params"]
    for r in found:
        assert r["given"] == noisy[r["index"]] and 0.0 <= r["score"] <= 1.0
        if r["index"] in hits:  # the suggestion is the true label
            assert r["suggested"] == y[r["index"]]
    scores = [r["score"] for r in found]
    assert scores == sorted(scores, reverse=True)  # higher = more likely wrong, ranked first


@pytest.mark.timeout(60)
def test_small_classes_are_handled_and_said() -> None:
    X, y = blobs()
    rng = np.random.default_rng(2)
    X_small = rng.normal(size=(4, X.shape[1])).astype(np.float32) + 5 * np.eye(6, X.shape[1])[[4, 4, 4, 5]]
    X, y = np.concatenate([X, X_small]), np.concatenate([y, [4, 4, 4, 5]])  # class 4: 3 rows; class 5: 1 row
    noisy, rows = flip(y[:160], 6)
    y = np.concatenate([noisy, [4, 4, 4, 5]])
    found, info = find_label_issues(X, y, folds=5)
    small = {s["label"]: s for s in info["small_classes"]}
    assert small[4] == {"label": 4, "rows": 3, "judged": True}
    assert small[5] == {"label": 5, "rows": 1, "judged": False}
    assert info["n_judged"] == len(y) - 1
    assert len(y) - 1 not in {r["index"] for r in found}  # the single-row class is not judged
    assert len(set(rows.tolist()) & {r["index"] for r in found}) >= 5  # of 6 flips (measured: 5)


def test_label_issues_bad_input() -> None:
    X, y = blobs()
    with pytest.raises(EmbedpipeError, match="at least 2 classes"):
        find_label_issues(X, np.zeros(len(y), int))
    with pytest.raises(EmbedpipeError, match="folds"):
        find_label_issues(X, y, folds=1)


@pytest.mark.timeout(120)
def test_missing_cleanlab_says_which_install_fixes_it() -> None:
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "cleanlab" or name.startswith("cleanlab."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Hide())
        import numpy as np
        from embedpipe.audit.labels import find_label_issues
        from embedpipe.core.errors import EmbedpipeError
        try:
            find_label_issues(np.eye(4), np.array([0, 0, 1, 1]))
        except EmbedpipeError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == 'finding label issues needs cleanlab: pip install "embedpipe[quality]"'


def test_outliers_find_planted_far_points_blockwise() -> None:
    X, y = blobs(per_class=50)
    rng = np.random.default_rng(3)
    far = [5, 77, 150]
    X[far] = rng.normal(size=(3, X.shape[1])) * 5  # away from every class
    found, info = find_outliers(X, y, k=5, top=10, block=32)  # tiles smaller than a class
    assert {r["index"] for r in found[:3]} == set(far)
    assert all(r["knn_all"] > info["median_knn_all"] for r in found[:3])
    whole, _ = find_outliers(X, y, k=5, block=4096)
    assert len(whole) == len(y)
    by_index = {r["index"]: r for r in whole}
    for r in found:  # the same numbers whatever the tile size
        assert r["knn_all"] == pytest.approx(by_index[r["index"]]["knn_all"], abs=1e-5)
        assert r["knn_class"] == pytest.approx(by_index[r["index"]]["knn_class"], abs=1e-5)


def test_outliers_bad_input_and_single_row_class() -> None:
    X, y = blobs(classes=2, per_class=6)
    with pytest.raises(EmbedpipeError, match="more than 12 rows"):
        find_outliers(X, y, k=12)
    y = y.copy()
    y[0] = 9  # a class of one row: no within-class distance
    found, _ = find_outliers(X, y, k=3)
    assert next(r for r in found if r["index"] == 0)["knn_class"] is None


def test_report_completes_with_a_missing_image(tmp_path: Path) -> None:
    result = {
        "duplicates": [{"a": "train/a.png", "b": "test/b.png", "similarity": 0.97, "splits": ["train", "test"], "leak": True},
                       {"a": "train/c.png", "b": "train/d.png", "similarity": 0.95, "splits": ["train", "train"], "leak": False}],
        "label_issues": [{"id": f"train/{i}.png", "given": "seven", "suggested": "one", "score": 0.9 - i / 100} for i in range(30)],
        "outliers": [{"id": "gone.png", "score": 3.0}, {"id": "train/a.png", "score": 2.0}],
        "summary": {"rows": 120, "classes": {"one": 60, "seven": 60}},
    }
    opened = []

    def open_image(image_id: str) -> Image.Image | None:
        opened.append(image_id)
        if image_id == "gone.png":
            return None
        if image_id == "train/d.png":
            raise OSError("truncated")
        return Image.new("L", (8, 8), 128)  # as small as a digits image

    md = write_report(result, open_image, tmp_path / "report")
    text = md.read_text()
    assert md.name == "audit.md"
    for name in ("duplicates.png", "label_issues.png", "outliers.png"):
        assert f"]({name})" in text
        with Image.open(md.parent / name) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert "gone.png: file not found" in text and "train/d.png: could not be read (OSError)" in text
    assert text.count("| train/") >= 24 and "train/24.png" not in text  # capped at 24 per sheet
    assert len(opened) == len(set(opened))  # each image opened once


def test_report_without_findings(tmp_path: Path) -> None:
    md = write_report({"duplicates": [], "label_issues": [], "outliers": [], "summary": {}}, lambda i: None, tmp_path)
    assert "No near-duplicates found." in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.md"]


@pytest.mark.timeout(60)
def test_docstring_examples_run() -> None:
    import doctest

    from embedpipe.audit import labels, outliers, sheets

    for module in (labels, outliers, sheets):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted >= 3, (module.__name__, result)
