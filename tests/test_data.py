"""Data sources, the split rule and decoding (modes, EXIF, corrupt files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, make_image_folder
from PIL import Image

from embedpipe import EmbedpipeError
from embedpipe.data import CsvSource, ImageFolderSource, SplitRule, assign_splits, resolve_source
from embedpipe.data.loader import to_rgb
from embedpipe.extraction.decode import DecodeOptions, load_sample


def test_image_folder_flat_and_split(tmp_path: Path) -> None:
    flat = ImageFolderSource(str(make_image_folder(tmp_path / "flat", classes=2, per_class=3)))
    assert len(flat.records) == 6 and {r.split for r in flat.records} == {None}
    assert flat.records[0].id == "class0/img000.png" and flat.records[0].label == "class0"
    split = ImageFolderSource(str(make_image_folder(tmp_path / "split", classes=2, per_class=6, splits=True)))
    assert {r.split for r in split.records} == {"train", "val", "test"}
    assert split.records[0].id.startswith(("test/", "train/", "val/"))


def test_csv_manifest(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    (tmp_path / "m.csv").write_text("path,label,split\nimgs/class0/img000.png,a,train\nimgs/class1/img000.png,b,test\n")
    src = resolve_source(str(tmp_path / "m.csv"))
    assert isinstance(src, CsvSource) and [r.split for r in src.records] == ["train", "test"]
    assert src.records[0].path == str(tmp_path / "imgs/class0/img000.png")
    (tmp_path / "bad.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(EmbedpipeError, match="header must be path,label"):
        resolve_source(str(tmp_path / "bad.csv"))
    (tmp_path / "mixed.csv").write_text("path,label,split\na.png,a,train\nb.png,b,\n")
    with pytest.raises(EmbedpipeError, match="some rows have a split"):
        resolve_source(str(tmp_path / "mixed.csv"))
    (tmp_path / "dup.csv").write_text("path,label\na.png,a\na.png,b\n")
    with pytest.raises(EmbedpipeError, match="listed twice"):
        resolve_source(str(tmp_path / "dup.csv"))


def test_missing_and_empty_data(tmp_path: Path) -> None:
    with pytest.raises(EmbedpipeError, match="not found"):
        resolve_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedpipeError, match="no class folders"):
        resolve_source(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(EmbedpipeError, match="no images"):
        resolve_source(str(tmp_path / "empty"))


def test_split_rule_is_seeded_stratified_and_stable() -> None:
    src = resolve_source("digits")
    a = assign_splits(src.records, SplitRule(seed=0))
    assert a == assign_splits(src.records, SplitRule(seed=0))
    assert a != assign_splits(src.records, SplitRule(seed=1))
    for label in {r.label for r in a}:
        members = [r for r in a if r.label == label]
        counts = {s: sum(r.split == s for r in members) for s in ("train", "val", "test")}
        assert counts["test"] == round(0.15 * len(members)) and counts["val"] == round(0.15 * len(members))
    # adding images keeps almost every existing image in its split
    b = assign_splits(src.records[:1500], SplitRule(seed=0))
    same = sum(x.split == y.split for x, y in zip(a[:1500], b, strict=True))
    assert same / 1500 > 0.95
    tiny = assign_splits([r for r in src.records if r.label == "3"][:3], SplitRule())
    assert sorted(r.split for r in tiny) == ["test", "train", "val"]


def test_to_rgb_handles_modes_and_exif() -> None:
    base = make_image(1, 0, size=20).resize((40, 20))
    rgba = base.convert("RGBA")
    rgba.putalpha(0)
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent onto white
    for img in (base.convert("L"), base.convert("P"), base.convert("CMYK"), base.convert("1"),
                Image.fromarray((np.arange(800).reshape(20, 40) * 80).astype(np.uint16)),
                Image.fromarray(np.random.default_rng(0).random((20, 40)).astype(np.float32))):
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == (40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    base.save(buf, format="JPEG", exif=exif)
    assert to_rgb(Image.open(io.BytesIO(buf.getvalue()))).size == (20, 40)


def test_corrupt_files_are_reported_not_fatal(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "class0" / "empty.jpg").write_bytes(b"")
    (root / "class0" / "notes.jpg").write_text("not an image")
    good = io.BytesIO()
    make_image(0, 9).save(good, format="JPEG")
    (root / "class1" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    src = ImageFolderSource(str(root))
    opts = DecodeOptions(None, lambda img: np.asarray(img), draft=False)
    results = {r.id: load_sample(src, r, i, opts) for i, r in enumerate(src.records)}
    assert results["class0/empty.jpg"].reason == "empty file"
    assert "UnidentifiedImageError" in results["class0/notes.jpg"].reason
    assert "truncated" in results["class1/truncated.jpg"].reason.lower()
    assert results["class0/img000.png"].pixels is not None and results["class0/img000.png"].reason == ""


GLYPHS_DIGEST = """
from embedpipe.data import resolve_source
import hashlib
src = resolve_source("glyphs")
h = hashlib.sha256()
for r in src.records[::997]:
    h.update(r.id.encode()); h.update(src.open(r).tobytes())
print(len(src.classes), len(src.records), h.hexdigest())
"""


def test_glyphs_has_1500_classes_and_is_deterministic() -> None:
    import subprocess
    import sys

    from embedpipe.data import resolve_source

    src = resolve_source("glyphs")
    labels = {r.label for r in src.records}
    assert len(labels) >= 1500 and len(src.records) >= 8 * 1500
    assert {r.split for r in src.records} == {"train", "val", "test"}
    first = src.open(src.records[0])
    assert first.mode == "RGB" and first.size == (64, 64)
    assert np.asarray(first).std() > 10  # something is drawn
    # the same images in two fresh processes (nothing shared but the code and the font files)
    runs = [subprocess.run([sys.executable, "-c", GLYPHS_DIGEST], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith("1500 12000 ")
    # images of one class differ from each other (font, size, rotation, noise vary)
    a, b = (np.asarray(src.open(r), np.float32) for r in src.records[8:10])
    assert np.abs(a - b).mean() > 5


def test_mixed_split_folders_and_csv_details_fail_clearly(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "mixed", classes=2, per_class=3, splits=True)
    (root / "unlabeled").mkdir()
    with pytest.raises(EmbedpipeError, match="mixes split folders"):
        resolve_source(str(root))
    make_image_folder(tmp_path / "imgs", classes=1, per_class=2)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("path,label\n./imgs/class0/img000.png,a\nimgs/class0/img001.png,b\n".encode("utf-8-sig"))
    src = resolve_source(bom)  # a Path works as well as a str
    assert [r.id for r in src.records] == ["imgs/class0/img000.png", "imgs/class0/img001.png"]
    (tmp_path / "dup.csv").write_text("path,label\n./a.png,a\na.png,a\n")
    with pytest.raises(EmbedpipeError, match="listed twice"):
        resolve_source(str(tmp_path / "dup.csv"))
    (tmp_path / "latin1.csv").write_bytes("path,label\ncaf\xe9.png,a\n".encode("latin-1"))
    with pytest.raises(EmbedpipeError, match="not UTF-8"):
        resolve_source(str(tmp_path / "latin1.csv"))
