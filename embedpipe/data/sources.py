"""Data sources: ImageFolder, CSV manifest and built-in sets, all yielding the same records.

A record is ``(id, label, split, path)`` plus a ``signature`` (size and mtime, or a content hash)
that goes into the cache key. Ids are stable (paths relative to the dataset root), labels are class
names (mapped to integers in sorted order by the cache), split is train/val/test or None (assigned
later by the seeded stratified rule in ``splits.py``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import EmbedpipeError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    id: str
    label: str
    split: str | None
    path: str | None  # absolute file path; None for in-memory built-in sets
    signature: str  # changes whenever the image changes
    error: str = ""  # set when the entry was found unusable while listing; extraction records it as failed


class Source:
    """A named list of records and a way to open each one as a PIL image."""

    name: str
    records: list[Record]
    description: str = ""

    def open(self, record: Record) -> Image.Image:
        assert record.path is not None
        return Image.open(record.path)


def file_signature(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_listed(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".")


def _class_dir_records(class_dir: str, root: str, label: str, split: str | None) -> list[Record]:
    records = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            path = os.path.join(dirpath, fname)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            records.append(Record(rel, label, split, path, file_signature(path)))
    return records


class ImageFolderSource(Source):
    """``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``.

    Every non-hidden file below a class folder is a sample; one that cannot be decoded is recorded
    as failed during extraction (so nothing is silently ignored).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.name = Path(self.root).name
        self.description = f"ImageFolder {self.root}"
        subdirs = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and _is_listed(e))
        if not subdirs:
            raise EmbedpipeError(f"no class folders in {root}: expected {root}/<class>/<image>")
        records: list[Record] = []
        named_splits = set(subdirs) & set(SPLITS)
        if named_splits and named_splits != set(subdirs):
            others = sorted(set(subdirs) - set(SPLITS))
            raise EmbedpipeError(
                f"{root} mixes split folders ({', '.join(sorted(named_splits))}) with other folders "
                f"({', '.join(others[:5])}); use only train/val/test at the top, or only class folders"
            )
        if named_splits:
            for split in subdirs:
                split_dir = os.path.join(self.root, split)
                for e in sorted(os.scandir(split_dir), key=lambda e: e.name):
                    if e.is_dir() and _is_listed(e):
                        records += _class_dir_records(e.path, self.root, e.name, split)
        else:
            for cls in subdirs:
                records += _class_dir_records(os.path.join(self.root, cls), self.root, cls, None)
        if not records:
            raise EmbedpipeError(f"no images found under {root}")
        self.records = records


class CsvSource(Source):
    """A CSV manifest with header ``path,label[,split]``; paths are relative to the CSV file."""

    def __init__(self, csv_path: str) -> None:
        self.csv_path = os.path.abspath(csv_path)
        base = os.path.dirname(self.csv_path)
        self.name = Path(csv_path).stem
        self.description = f"CSV manifest {self.csv_path}"
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a column name
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise EmbedpipeError(f"{csv_path} is not UTF-8 text ({e.reason}); save it as UTF-8") from None
        except (OSError, csv.Error) as e:
            raise EmbedpipeError(f"cannot read {csv_path}: {e}") from None
        if "path" not in fields or "label" not in fields:
            raise EmbedpipeError(
                f"{csv_path}: header must be path,label[,split]; found {','.join(fields) or 'nothing'}"
            )
        has_split = "split" in fields
        records: list[Record] = []
        seen: set[str] = set()
        for lineno, row in enumerate(rows, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            rel = os.path.normpath(rel).replace(os.sep, "/") if rel else rel  # ./a.png and a.png are one file
            split = (row.get("split") or "").strip() or None if has_split else None
            if not rel or not label:
                raise EmbedpipeError(f"{csv_path}:{lineno}: empty path or label")
            if split is not None and split not in SPLITS:
                raise EmbedpipeError(f"{csv_path}:{lineno}: split {split!r} is not one of {SPLITS}")
            if rel in seen:
                raise EmbedpipeError(f"{csv_path}:{lineno}: path {rel!r} is listed twice")
            seen.add(rel)
            path = os.path.normpath(os.path.join(base, rel))
            sig = file_signature(path) if os.path.exists(path) else "missing"
            records.append(Record(rel.replace(os.sep, "/"), label, split, path, sig))
        splits = {r.split is None for r in records}
        if len(splits) > 1:
            raise EmbedpipeError(f"{csv_path}: some rows have a split and some do not; fill every split or none")
        if not records:
            raise EmbedpipeError(f"{csv_path} lists no images")
        self.records = sorted(records, key=lambda r: r.id)
