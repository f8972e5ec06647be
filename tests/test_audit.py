"""`embedpipe audit` on real image folders and real caches: planted exact and near copies are found
(a near copy of a test image put in train is a leak), unrelated images are not flagged, the JSON
contract holds, a schema-1 cache still opens, a file that is gone is reported instead of crashing,
and bad input is one line."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TINY_TIMM
from PIL import Image, ImageDraw, ImageEnhance

import embedpipe
from embedpipe import EmbedpipeError
from embedpipe.audit import DuplicateConfig
from embedpipe.audit import duplicates as dup
from embedpipe.audit.search import has_faiss, nearest
from embedpipe.cache import open_cache
from embedpipe.cli import main
from embedpipe.extract import run_extract

FAST = {"precision": "fp32", "num_workers": 0, "batch_size": 16, "progress": False}
CONTRACT = {"duplicates": {"a", "b", "similarity", "splits", "leak"},
            "label_issues": {"id", "given", "suggested", "score"}, "outliers": {"id", "score"}}


def texture(seed: int, size: int = 48) -> Image.Image:
    """A smooth random colour field: every seed gives an image unlike the others."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(field, np.float32) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def leak_copy(img: Image.Image) -> Image.Image:
    """Cropped 4 %, resized x2, 4 % brighter (then saved as JPEG by the caller)."""
    w, h = img.size
    img = img.crop((1, 1, w - 1, h - 1)).resize((2 * (w - 2), 2 * (h - 2)), Image.Resampling.BICUBIC)
    return ImageEnhance.Brightness(img).enhance(1.04)


def build_folder(root: Path, classes: int = 2) -> Path:
    """root/{train,val,test}/class<c>/: 6 train, 2 val, 2 test per class; then an exact copy of a train
    image in train, and a near copy of a test image (resized, recompressed, cropped) in train."""
    seed = 0
    for c in range(classes):
        for split, n in (("train", 6), ("val", 2), ("test", 2)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                texture(seed).save(folder / f"{split}{i}.png")
                seed += 1
    shutil.copyfile(root / "train/class0/train0.png", root / "train/class0/exact-copy.png")
    leak_copy(Image.open(root / "test/class1/test0.png").convert("RGB")).save(root / "train/class1/copy.jpg", quality=80)
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tiny_timm_weights: str) -> tuple[Path, Path]:
    root = build_folder(tmp_path_factory.mktemp("audit") / "photos")
    cache, _ = run_extract(str(root), TINY_TIMM, weights=tiny_timm_weights,
                           cache_dir=tmp_path_factory.mktemp("cache"), **FAST)
    return root, cache.path


def _pairs(result: embedpipe.AuditResult) -> dict[frozenset[str], dict]:
    return {frozenset((d["a"], d["b"])): d for d in result.duplicates}


@pytest.mark.timeout(180)
def test_planted_copies_found_and_leak_flagged(planted: tuple[Path, Path]) -> None:
    root, path = planted
    result = embedpipe.audit(path, report=False)
    pairs = _pairs(result)
    exact = pairs[frozenset(("train/class0/train0.png", "train/class0/exact-copy.png"))]
    assert exact["exact"] and not exact["leak"] and exact["splits"] == ["train", "train"]
    leak = pairs[frozenset(("train/class1/copy.jpg", "test/class1/test0.png"))]
    assert leak["leak"] and not leak["exact"] and leak["a"] == "train/class1/copy.jpg"
    assert leak["splits"] == ["train", "test"] and leak["verified_by"].startswith("pixel correlation")
    assert len(pairs) == 2, sorted(map(sorted, pairs))  # the unrelated images are not flagged
    assert result.leaks == ["test/class1/test0.png"]
    s = result.summary
    assert s["duplicates"]["exact"] == 1 and s["duplicates"]["leaked_rows"] == 1
    assert s["source"] == {"kind": "folder", "root": str(root.resolve())}
    assert s["hashing"]["hashed"] == 22 and s["method"]["search"].startswith("exact")
    assert result.pairs.shape == (2, 2) and result.similarity.shape == (2,)
    cache = open_cache(path)
    assert {str(cache.ids[i]) for i in result.pairs.ravel()} == {i for p in pairs for i in p}
    img = result.open_image("test/class1/test0.png")
    assert img is not None and img.size == (48, 48) and img.mode == "RGB"
    saved = json.loads((path / "audit" / "audit-pooled.json").read_text())
    assert saved["summary"]["duplicates"]["count"] == 2
    # the hashes are kept: a second run reads no file again
    again = embedpipe.audit(path, report=False, save=False)
    assert again.summary["hashing"]["reused"] == 22 and again.summary["hashing"]["hashed"] == 0
    assert _pairs(again).keys() == pairs.keys()


@pytest.mark.timeout(180)
def test_json_contract_and_cap(planted: tuple[Path, Path]) -> None:
    _, path = planted
    out = embedpipe.audit(path, report=False, save=False, top=1).to_json()
    assert set(out) == {"duplicates", "label_issues", "outliers", "summary"}
    for name, keys in CONTRACT.items():
        assert all(set(row) == keys for row in out[name]), name
        assert out["summary"][name]["shown"] == len(out[name]) <= 1
    d = out["duplicates"][0]
    assert d["leak"] is True and isinstance(d["similarity"], float) and len(d["splits"]) == 2  # leaks rank first
    assert out["summary"]["duplicates"]["count"] == 2 and out["summary"]["duplicates"]["more"] == 1
    for key in ("rows", "class_balance", "failed", "method", "thresholds", "top"):
        assert key in out["summary"], key
    assert out["summary"]["class_balance"]["counts"] == {"class0": 11, "class1": 11}
    json.dumps(out)  # plain JSON values only


@pytest.mark.timeout(180)
def test_cli_audit_json(planted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, path = planted
    assert main(["audit", "--cache", str(path), "--json", "--top", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["top"] == 5 and out["summary"]["duplicates"]["leaked_rows"] == 1
    assert main(["audit", "--cache", str(path), "--layer", "block9"]) == 1
    assert "layer 'block9' not in cache" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_schema1_cache_opens_and_gone_file_is_reported(planted: tuple[Path, Path], tmp_path: Path) -> None:
    root, path = planted
    old = tmp_path / "old-cache"
    shutil.copytree(path, old, ignore=shutil.ignore_patterns("audit"))
    with h5py.File(old / "meta.h5", "r+") as f:  # as written before the source's kind and root were recorded
        f.attrs["schema_version"] = 1
        del f.attrs["source_kind"], f.attrs["source_root"]
    cache = open_cache(old)
    assert cache.source_kind == "unknown" and cache.key == open_cache(path).key
    blind = embedpipe.audit(old, report=False, save=False)
    assert blind.summary["source"]["kind"] == "unknown" and blind.summary["hashing"] is None
    assert blind.open_image("test/class1/test0.png") is None
    assert all(d["verified_by"].startswith("cosine only") for d in blind.duplicates)
    # given the data again, the images are found
    given = embedpipe.audit(old, report=False, save=False, data=str(root))
    assert frozenset(("train/class1/copy.jpg", "test/class1/test0.png")) in _pairs(given)
    # a file that is gone: reported, not a crash
    moved = tmp_path / "photos"
    shutil.copytree(root, moved)
    (moved / "train/class1/copy.jpg").unlink()
    gone = embedpipe.audit(old, report=False, save=False, data=str(moved))
    assert gone.summary["hashing"]["unreadable"] == 1
    assert "train/class1/copy.jpg" in gone.summary["images_not_opened"]["ids"]
    assert gone.open_image("train/class1/copy.jpg") is None


@pytest.mark.timeout(180)
def test_bad_input_is_one_line(tmp_path: Path, tiny_timm_weights: str) -> None:
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    for i in range(12):
        texture(i).save(one / f"{i}.png")
    cache, _ = run_extract(str(tmp_path / "one"), TINY_TIMM, weights=tiny_timm_weights,
                           cache_dir=tmp_path / "c", layers=("pooled", "block1:map"), **FAST)
    with pytest.raises(EmbedpipeError, match="single class"):
        embedpipe.audit(cache.path)
    with pytest.raises(EmbedpipeError, match="feature map; audit needs a vector layer"):
        embedpipe.audit(cache.path, layer="block1:map")
    with pytest.raises(EmbedpipeError, match="not in cache"):
        embedpipe.audit(cache.path, layer="logits")
    few = tmp_path / "few"
    for c in range(2):
        (few / f"c{c}").mkdir(parents=True)
        for i in range(3):
            texture(100 + 10 * c + i).save(few / f"c{c}" / f"{i}.png")
    small, _ = run_extract(str(few), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c", **FAST)
    with pytest.raises(EmbedpipeError, match="fewer than the 11"):
        embedpipe.audit(small.path)


def test_approximate_search_finds_planted_copies() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    W = rng.normal(size=(32, 96))
    X = np.maximum((centres[rng.integers(0, 20, 3000)] + rng.normal(0, 0.7, (3000, 32))) @ W, 0)
    X += rng.random(X.shape)
    src = rng.choice(2900, 100, replace=False)
    X[2900:] = X[src] + rng.normal(0, 0.3, (100, 96))
    exact = nearest(X.astype(np.float16), 3, method="exact")
    assert exact.method == "exact" and (exact.index[2900:, 0] == src).all()
    assert np.all(np.diff(exact.similarity, axis=1) <= 1e-6)  # largest first
    assert not (exact.index == np.arange(3000)[:, None]).any()  # never a row itself
    methods = ["ivf-pca"] + (["faiss-ivf"] if has_faiss() else [])
    for method in methods:
        approx = nearest(X.astype(np.float16), 3, method=method)
        assert approx.method == method
        assert (approx.index[2900:, 0] == src).mean() >= 0.95, method
        agree = (approx.index[:, 0] == exact.index[:, 0]).mean()
        assert agree >= 0.9, (method, agree)
        assert not (approx.index == np.arange(3000)[:, None]).any()
        same = approx.index[:, 0] == exact.index[:, 0]  # re-scored: the exact cosine
        assert np.allclose(approx.similarity[same, 0], exact.similarity[same, 0], atol=1e-3)


def _far_from_mean(X: np.ndarray, y: np.ndarray, *, top: int | None = None) -> tuple[list[dict], dict]:
    """A real (if simple) outlier step: distance to the mean, largest first."""
    d = np.linalg.norm(X - X.mean(0), axis=1)
    return [{"index": int(i), "score": float(d[i])} for i in np.argsort(-d)[:top]], {"method": "distance to the mean"}


def _first_row_flipped(X: np.ndarray, y: np.ndarray, *, top: int | None = None) -> tuple[list[dict], dict]:
    return [{"index": 0, "given": int(y[0]), "suggested": int(1 - y[0]), "score": 0.25}], {"method": "first row"}


@pytest.mark.timeout(180)
def test_optional_steps_are_called_and_mapped_to_ids(planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.audit import run

    _, path = planted
    monkeypatch.setitem(run.STEPS, "outliers", "test_audit:_far_from_mean")
    monkeypatch.setitem(run.STEPS, "label_issues", "test_audit:_first_row_flipped")
    monkeypatch.setattr(run, "REPORT", "no_such_report_module:write_report")
    result = embedpipe.audit(path, save=False, top=3)
    cache = open_cache(path)
    first = str(cache.ids[cache.rows(None)][0])
    assert result.label_issues == [{"id": first, "given": "class0", "suggested": "class1", "score": 0.25}]
    assert len(result.outliers) == 22 and all(r["id"] in set(cache.ids) for r in result.outliers)
    out = result.to_json()
    assert len(out["outliers"]) == 3 and out["summary"]["outliers"]["more"] == 19
    assert out["summary"]["outliers"]["status"] == "ok" and out["summary"]["outliers"]["method"] == "distance to the mean"


def test_images_open_through_every_kind_of_source(tmp_path: Path) -> None:
    from embedpipe.data.reopen import ImageOpener, SourceLocation

    digits = ImageOpener(SourceLocation("builtin", "digits"))
    img = digits("0/0000")
    assert img is not None and img.size == (64, 64) and digits("0/9999") is None
    texture(1).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\ngone.png,x\n")
    csv_loc = SourceLocation.of(str(tmp_path / "m.csv"))
    assert csv_loc.kind == "csv" and csv_loc.path("a.png") == str(tmp_path / "a.png")
    opener = ImageOpener(csv_loc)
    assert opener("a.png") is not None and opener("gone.png") is None and opener.read_bytes("gone.png") is None
    assert ImageOpener(SourceLocation())("a.png") is None  # unknown: nothing to open
    with pytest.raises(EmbedpipeError, match="not found"):
        SourceLocation.of(str(tmp_path / "nowhere"))


def strokes(seed: int) -> Image.Image:
    """Thin dark strokes on a light, noisy 64 x 64 grey page: the kind of image where a small crop
    moves thin lines off their pixels."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (64, 64), 230)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        draw.line([tuple(rng.uniform(8, 56, 2)), tuple(rng.uniform(8, 56, 2))], fill=30, width=2)
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, (64, 64))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.timeout(30)
def test_registration_undoes_a_crop_and_keeps_other_images_apart() -> None:
    source = strokes(0)
    copy = source.crop((3, 0, 63, 62)).resize((150, 155), Image.Resampling.BICUBIC)  # 5 % crop, x2.4
    buf = io.BytesIO()
    ImageEnhance.Brightness(copy).enhance(1.04).convert("RGB").save(buf, "JPEG", quality=72)
    copy = Image.open(io.BytesIO(buf.getvalue()))
    a, b, other = (dup.thumbnail(img) for img in (source, copy, strokes(1)))
    assert dup.registered_correlation(a, b) >= dup.PIXEL_CORRELATION
    assert dup.registered_correlation(b, a) == dup.registered_correlation(a, b)  # both ways round
    # without registration the same copy falls well below the threshold
    assert dup.thumbnail_correlation(dup.thumbnail(source, 32), dup.thumbnail(copy, 32)) < 0.9
    assert dup.registered_correlation(a, other) < 0.5


@pytest.mark.timeout(180)
def test_perceptual_hash_is_an_optional_second_condition(planted: tuple[Path, Path]) -> None:
    _, path = planted
    default = embedpipe.audit(path, report=False, save=False)
    assert default.summary["thresholds"]["phash_bits"] is None
    assert "perceptual hash" not in default.summary["method"]["verify"]
    loose = embedpipe.audit(path, report=False, save=False, duplicates=DuplicateConfig(phash_bits=64))
    leak = _pairs(loose)[frozenset(("train/class1/copy.jpg", "test/class1/test0.png"))]
    assert leak["verified_by"] == "pixel correlation (registered) + phash" and 0 <= leak["phash_bits"] <= 64
    assert "perceptual hash" in loose.summary["method"]["verify"]
