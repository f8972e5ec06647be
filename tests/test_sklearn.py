"""ImageEmbedder, the cached scikit-learn transformer over image paths, with a tiny real model: the
features equal a direct extract; inputs; GridSearchCV embeds each image once and a second search
none (counted from the store's files); joblib worker processes share the store; pickling, clone,
set_output; unusable images; the writer lock's bounded wait; scikit-learn's estimator checks that
apply to a transformer that takes paths."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TIMM, make_image, make_image_folder
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks as checks

from embedpipe import EmbedpipeError, create_head
from embedpipe.core.locking import exclusive
from embedpipe.extract import run_extract
from embedpipe.sklearn import ImageEmbedder


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    root = make_image_folder(tmp_path / "shapes", classes=3, per_class=6)
    return sorted(str(p) for p in root.glob("*/*.png"))


def embedder(weights: str, root: Path, **kw: object) -> ImageEmbedder:
    return ImageEmbedder(TINY_TIMM, weights=weights, cache_dir=root, device="cpu", batch_size=4, **kw)  # type: ignore[arg-type]


def labels(paths: list[str]) -> list[str]:
    return [Path(p).parent.name for p in paths]


def test_features_equal_extract_in_order_for_every_input_type(paths: list[str], tiny_timm_weights: str,
                                                                tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    X = emb.fit_transform(paths)
    assert X.dtype == np.float32 and X.shape == (18, emb.get_feature_names_out().size)
    cache, _ = run_extract(str(Path(paths[0]).parents[1]), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "x",
                           dtype="float32", device="cpu", num_workers=0, batch_size=4, progress=False)
    ref = dict(zip(cache.load_ids(None), cache.load(None)[0], strict=True))
    root = Path(paths[0]).parents[1]
    np.testing.assert_array_equal(X, np.stack([ref[str(Path(p).relative_to(root))] for p in paths]))
    order = paths[::-1]
    for given in (order, np.array(order), pd.Series(order), pd.DataFrame({"path": order}),
                  np.array(order)[:, None], [Path(p) for p in order]):
        np.testing.assert_array_equal(emb.transform(given), X[::-1])
    assert emb.store_stats().rows == 18  # every read after the first came from the store
    with pytest.raises(EmbedpipeError, match="one column of image paths"):
        emb.transform(pd.DataFrame({"a": paths, "b": paths}))
    with pytest.raises(EmbedpipeError, match="not one path"):
        emb.transform(paths[0])
    with pytest.raises(EmbedpipeError, match="got float"):
        emb.transform([0.5, 1.5])


def test_same_bytes_are_one_row_and_an_edit_is_a_new_one(paths: list[str], tiny_timm_weights: str,
                                                          tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(paths[0]).read_bytes())
    X = emb.transform([paths[0], str(copy), paths[0]])
    np.testing.assert_array_equal(X[0], X[1])
    assert emb.store_stats().rows == 1
    stat = os.stat(copy)
    make_image(2, 99).save(copy)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the content still tells
    assert not np.array_equal(emb.transform([str(copy)])[0], X[0]) and emb.store_stats().rows == 2


@pytest.mark.timeout(240)
def test_grid_search_embeds_each_image_once_and_a_second_search_none(paths: list[str], tiny_timm_weights: str,
                                                                     tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    pipe = make_pipeline(emb, create_head("logreg"))
    search = GridSearchCV(pipe, {"logreghead__C": [0.1, 1.0]}, cv=3)
    search.fit(paths, labels(paths))
    stats = emb.store_stats()
    assert (stats.rows, stats.duplicates, stats.failed) == (18, 0, 0)
    files = sorted(os.listdir(Path(stats.path) / "rows"))
    clone(search).fit(paths, labels(paths))  # a fresh process state would do the same: nothing is missing
    after = emb.store_stats()
    assert after.rows == 18 and sorted(os.listdir(Path(stats.path) / "rows")) == files
    assert search.predict(paths[:3]).shape == (3,)


@pytest.mark.timeout(240)
def test_joblib_worker_processes_share_the_store(paths: list[str], tiny_timm_weights: str, tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    search = GridSearchCV(make_pipeline(emb, create_head("logreg")), {"logreghead__C": [0.1, 1.0]}, cv=3, n_jobs=2)
    search.fit(paths, labels(paths))  # loky: real worker processes, all missing every image at first
    stats = emb.store_stats()
    assert (stats.rows, stats.duplicates) == (18, 0)
    # two processes racing on the same misses: one embeds, the other waits and reads
    new = [str(tmp_path / f"new{i}.png") for i in range(20)]
    for i, p in enumerate(new):
        make_image(7 + i % 2, 100 + i).save(p)  # other patterns than the fixture's: 20 new images
    code = ("import sys; from embedpipe.sklearn import ImageEmbedder\n"
            f"e = ImageEmbedder({TINY_TIMM!r}, weights={tiny_timm_weights!r}, cache_dir={str(tmp_path / 'c')!r}, "
            "device='cpu', batch_size=2)\n"
            f"print(e.transform({new!r}).sum())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sums = [p.communicate(timeout=200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and sums[0] == sums[1]
    stats = emb.store_stats()
    assert (stats.rows, stats.duplicates) == (38, 0)
    # a process that finds every image stored reads them without loading the model
    again = subprocess.run([sys.executable, "-c", code + "\nfrom embedpipe.sklearn import _BACKBONES\n"
                            "print([bb._model is None for bb in _BACKBONES.values()])"],
                           capture_output=True, text=True, timeout=100)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [sums[0].strip(), "[True]"]


def test_a_stale_remembered_key_is_corrected_before_embedding(paths: list[str], tiny_timm_weights: str,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import embedpipe.sklearn as sk

    root = tmp_path / "c"
    pooled, other = embedder(tiny_timm_weights, root), embedder(tiny_timm_weights, root, layer="block1")
    X, _ = pooled.transform(paths[:3]), other.transform(paths[:3])
    right, wrong = (e.store_stats().path for e in (pooled, other))
    remembered = {f: json.loads(f.read_text())["key"] for f in (root / "images" / "keys").glob("*.json")}
    mine = next(f for f, k in remembered.items() if right.endswith(k[:16]))
    mine.write_text(json.dumps({"key": remembered[next(f for f in remembered if f != mine)]}))  # block1's
    monkeypatch.setattr(sk, "_RUNS", {})  # a fresh process
    fresh = embedder(tiny_timm_weights, root)
    assert fresh.store_stats().path == wrong  # recalled without loading the model
    np.testing.assert_array_equal(fresh.transform(paths[:4])[:3], X)  # a miss: the key is computed, and right
    assert fresh.store_stats().path == right and json.loads(mine.read_text())["key"][:16] == right[-16:]


def test_pickle_clone_params_and_pandas_output(paths: list[str], tiny_timm_weights: str, tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c", layer="block1")
    X = emb.fit_transform(paths[:4])
    blob = pickle.dumps(emb)
    assert len(blob) < 1000 and b"torch" not in blob  # parameters only: no model inside
    np.testing.assert_array_equal(pickle.loads(blob).transform(paths[:4]), X)
    twin = clone(emb)
    assert twin.get_params() == emb.get_params() and not hasattr(twin, "n_features_in_")
    assert emb.n_features_in_ == 1
    names = emb.get_feature_names_out()
    assert names[0] == "block1_0" and len(names) == X.shape[1]
    emb.set_output(transform="pandas")
    frame = emb.fit(pd.DataFrame({"image": paths[:4]})).transform(pd.DataFrame({"image": paths[:4]}))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)
    np.testing.assert_array_equal(frame.to_numpy(), X)
    assert list(emb.feature_names_in_) == ["image"]


def test_unusable_images_raise_or_give_nan_rows(paths: list[str], tiny_timm_weights: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = str(tmp_path / "missing.png")
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    with pytest.raises(EmbedpipeError, match=r"cannot embed image .*missing\.png: FileNotFoundError.*on_error='nan'"):
        emb.transform([paths[0], missing])
    with pytest.raises(EmbedpipeError, match=r"cannot embed image .*broken\.png: OSError: Truncated File Read"):
        emb.transform([str(broken), paths[1]])
    assert emb.store_stats().rows == 3 and emb.store_stats().failed == 1  # the good ones were kept
    X = embedder(tiny_timm_weights, tmp_path / "c", on_error="nan").transform([paths[0], missing, str(broken), paths[1]])
    assert np.isnan(X[1]).all() and np.isnan(X[2]).all() and np.isfinite(X[[0, 3]]).all()
    assert emb.store_stats().rows == 3  # the broken file's failure was stored, not decoded again
    with pytest.raises(EmbedpipeError, match="on_error='skip' is not one of raise, nan"):
        embedder(tiny_timm_weights, tmp_path / "c", on_error="skip").transform(paths[:1])


HOLD = """
import sys, time, fcntl, pathlib
lock = open(sys.argv[1], "w"); fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
for i in range(int(sys.argv[2])):   # "writing": a new file every 0.3 s
    time.sleep(0.3); pathlib.Path(sys.argv[3], f"{i}.h5").touch()
time.sleep(float(sys.argv[4]))      # then silent
"""


@pytest.mark.timeout(60)
def test_a_writer_waits_while_the_holder_makes_progress_and_not_forever(tmp_path: Path) -> None:
    lock, rows = tmp_path / ".lock", tmp_path / "rows"
    rows.mkdir()

    def progress() -> int:
        return len(os.listdir(rows))

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "10", str(rows), "0"], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    t0 = time.monotonic()
    with exclusive(lock, "the store", patience=1.0, progress=progress):  # 3 s of writing > 1 s of patience
        waited = time.monotonic() - t0
    holder.wait(10)
    assert waited > 2.5
    hung = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "0", str(rows), "30"], stdout=subprocess.PIPE)
    try:
        assert hung.stdout is not None and hung.stdout.readline() == b"held\n"
        t0 = time.monotonic()
        with pytest.raises(EmbedpipeError, match="for 1 s without progress; wait for it to finish"), \
                exclusive(lock, "the store", patience=1.0, progress=progress):
            pass
        assert time.monotonic() - t0 < 5
    finally:
        hung.kill()
        hung.wait()


# scikit-learn's checks that do not feed the estimator numbers: they check construction, parameters,
# cloning, tags and repr. The others fit and transform random numeric matrices, which are not image
# paths (this transformer refuses them with a one-line error); their path-based counterparts
# (fit returns self, order and subset invariance, pickling, unchanged parameters) are below.
APPLICABLE = [checks.check_estimator_cloneable, checks.check_estimator_tags_renamed, checks.check_valid_tag_types,
              checks.check_estimator_repr, checks.check_no_attributes_set_in_init,
              checks.check_do_not_raise_errors_in_init_or_set_params, checks.check_mixin_order,
              checks.check_transformer_n_iter, checks.check_parameters_default_constructible,
              checks.check_get_params_invariance, checks.check_set_params]


@pytest.mark.parametrize("check", APPLICABLE, ids=lambda c: c.__name__)
def test_sklearn_estimator_checks_that_apply(check) -> None:  # type: ignore[no-untyped-def]
    check("ImageEmbedder", ImageEmbedder())


def test_path_versions_of_the_numeric_checks(paths: list[str], tiny_timm_weights: str, tmp_path: Path) -> None:
    emb = embedder(tiny_timm_weights, tmp_path / "c")
    params = emb.get_params()
    assert emb.fit(paths) is emb and emb.get_params() == params  # fit returns self, changes no parameter
    X = emb.transform(paths)
    np.testing.assert_array_equal(emb.fit(paths).transform(paths), X)  # idempotent
    perm = np.random.default_rng(0).permutation(len(paths))
    np.testing.assert_array_equal(emb.transform([paths[i] for i in perm]), X[perm])  # sample order
    np.testing.assert_array_equal(np.vstack([emb.transform(paths[:5]), emb.transform(paths[5:])]), X)  # subsets
    assert emb.transform([]).shape == (0, X.shape[1])
