"""Data sources: ImageFolder, CSV manifest and built-in sets, all yielding the same records.

A record is ``(id, label, split, path)`` plus a ``signature`` (size and mtime, or a content hash)
that goes into the cache key. Ids are stable (paths relative to the dataset root), labels are class
names (mapped to integers in sorted order by the cache), split is train/val/test or None (assigned
later by the seeded stratified rule in ``splits.py``).

Listing never fails on one entry. A name that cannot be used (a broken or looping symbolic link, a
file that vanished or cannot be read, a FIFO, socket or device, a path longer than the OS allows, an
empty folder named like an image) becomes a record whose ``error`` says why and whose signature is
``error:<kind>``; extraction stores it as a failed row without opening it. Only regular files are
ever opened, and only after ``stat`` said they are regular. Folders below a class folder are walked
(symbolic links to folders too, unless they point back up the tree).

Names that are not valid UTF-8 (bytes file names on Linux) keep their real OS path in
``Record.path`` (a surrogate-escaped str that ``open`` accepts) while ids and labels show the bad
bytes as ``\\xNN`` (``display_name``), so they can be written to HDF5 and printed.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..core.errors import EmbedpipeError

SPLITS = ("train", "val", "test")
SIGNATURES = ("stat", "content")  # stat: size + mtime (free); content: sha256 of the bytes (reads every file)
CHECK_THREADS = 8  # threads that stat / open / hash listed files: those calls release the GIL
CHECK_CHUNK = 256  # files per thread task: keeps the pool's per-task cost small next to a stat
HASH_BLOCK = 1 << 20  # bytes read per hash update: a huge file is hashed in bounded memory
PATH_MAX = 4096  # Linux's limit on a path handed to the OS, terminating NUL included
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


@dataclass(frozen=True)
class Record:
    id: str
    label: str
    split: str | None
    path: str | None  # absolute file path; None for in-memory built-in sets
    signature: str  # changes whenever the image changes
    error: str = ""  # set when the entry was found unusable while listing; extraction records it as failed


class Source:
    """A named list of records and a way to open each one as a PIL image.

    ``notes`` are facts about the listing worth a user's eye (entries ignored, paths outside the
    manifest's folder); they end ``description``, which the cache stores and ``embedpipe info`` shows.
    """

    name: str
    records: list[Record]
    description: str = ""
    notes: tuple[str, ...] = ()
    kind: str = "custom"  # where the images live: folder, csv, builtin, torchvision; custom = unknown
    root: str = ""  # the folder, the manifest file, or the set's name (built-in, torchvision)

    def open(self, record: Record) -> Image.Image:
        assert record.path is not None
        return Image.open(record.path)


def display_name(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``. Identity on valid names."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file system produced
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _describe(base: str, notes: Sequence[str]) -> str:
    return "; ".join([base, *notes])


# -- one path -> (signature, error) --------------------------------------------------------------

def _special_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _os_failure(err: OSError, path: str) -> tuple[str, str]:
    """(signature, reason) for an OSError met on ``path``."""
    if err.errno == errno.ENAMETOOLONG:
        n = len(os.fsencode(path))
        return "error:path-too-long", f"path too long ({n} bytes; the OS allows {PATH_MAX - 1})"
    if err.errno == errno.ELOOP:
        return "error:link-loop", "symbolic link loop"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            try:
                target = display_name(os.readlink(path))
            except OSError:
                target = "?"
            return "error:broken-link", f"broken symbolic link (to {target}, which does not exist)"
        return "error:vanished", "vanished while listing (no such file)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "error:unreadable", "no permission to read"
    return "error:os", f"{type(err).__name__}: {display_name(err.strerror or str(err))}"


def _content_signature(fd: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL on large updates: threads hash in parallel
    return "sha256:" + h.hexdigest()[:32]


def check_file(path: str, signature: str = "stat") -> tuple[str, str]:
    """``(signature, error)`` of one path; ``error`` is "" when it is a readable regular file.

    Never opens anything but a regular file (a FIFO would block, a device could be endless). In
    ``stat`` mode nothing is opened (``access`` checks the permission); in ``content`` mode the file
    is read (streamed) and hashed.
    """
    try:
        st = os.stat(path)  # follows symbolic links
    except OSError as e:
        return _os_failure(e, path)
    if not stat.S_ISREG(st.st_mode):
        kind = _special_kind(st.st_mode)
        if kind == "a folder":
            return "error:folder", "a folder, not an image file"
        return "error:special-file", f"{kind}, not a regular file (never opened)"
    if signature == "stat":  # permission check without opening: one syscall (the read stage catches the rest)
        if not os.access(path, os.R_OK):
            return "error:unreadable", "no permission to read"
        return f"{st.st_size}:{st.st_mtime_ns}", ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        return _os_failure(e, path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            return "error:special-file", f"{_special_kind(st.st_mode)}, not a regular file (never read)"
        return _content_signature(fd), ""
    except OSError as e:
        return "error:unreadable", f"read failed ({display_name(e.strerror or str(e))})"
    finally:
        os.close(fd)


def file_signature(path: str, signature: str = "stat") -> str:
    """The signature of one file (``error:<kind>`` when it cannot be used)."""
    return check_file(path, signature)[0]


def _check_all(paths: Sequence[str], signature: str) -> list[tuple[str, str]]:
    """``check_file`` over many paths, CHECK_THREADS at a time, results in order."""
    def chunk(part: Sequence[str]) -> list[tuple[str, str]]:
        return [check_file(p, signature) for p in part]

    parts = [paths[i : i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    if len(parts) <= 1:
        return chunk(paths)
    with ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="embedpipe-check") as pool:
        return [result for part in pool.map(chunk, parts) for result in part]


# -- ImageFolder ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A listed name, not yet checked: its real OS path and the record it will become."""

    path: str
    id: str
    label: str
    split: str | None


@dataclass
class Listing:
    """What walking a folder found: names to check, records already failed, notes for the user."""

    entries: list[Entry]
    failed: list[Record]
    notes: list[str]


def check_entries(entries: Sequence[Entry], signature: str = "stat") -> list[Record]:
    """Stat (and open, or hash) every listed entry in threads; each becomes a record, good or failed."""
    results = _check_all([e.path for e in entries], signature)
    return [Record(e.id, e.label, e.split, e.path, sig, err) for e, (sig, err) in zip(entries, results, strict=True)]


def _is_listed(name: str) -> bool:
    return not name.startswith(".")


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_class(top: str, root: str, label: str, split: str | None, above: frozenset[tuple[int, int]],
                out: Listing) -> None:
    """Every non-hidden name below ``top``, depth first, without recursion (paths can be 2000 levels deep)."""
    def rel(path: str) -> str:
        return display_name(os.path.relpath(path, root).replace(os.sep, "/"))

    def fail(path: str, signature: str, reason: str) -> None:
        out.failed.append(Record(rel(path), label, split, path, signature, reason))

    image_named: list[str] = []  # folders named like images; empty ones are reported below
    stack = [(top, above)]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                listed = sorted((e for e in it if _is_listed(e.name)), key=lambda e: e.name)
        except OSError as e:
            sig, reason = _os_failure(e, folder)
            if sig == "error:unreadable":
                reason = "no permission to list this folder"
            fail(folder, sig, reason)
            continue
        for entry in listed:
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False  # a link loop or similar: check_entries names the reason
            if not is_dir:
                out.entries.append(Entry(entry.path, rel(entry.path), label, split))
                continue
            key = _folder_key(entry.path)
            if key is None:  # vanished, or a path too long to stat: check_entries names the reason
                out.entries.append(Entry(entry.path, rel(entry.path), label, split))
            elif key in ancestors:
                fail(entry.path, "error:link-loop", "symbolic link loop (points to a folder above it)")
            else:
                if entry.name.lower().endswith(IMAGE_SUFFIXES):
                    image_named.append(rel(entry.path))
                stack.append((entry.path, ancestors | {key}))
    if image_named:
        parents = {i.rsplit("/", k)[0] for i in [*(e.id for e in out.entries), *(r.id for r in out.failed)]
                   for k in range(1, i.count("/") + 1)}
        for name in image_named:
            if name not in parents:
                path = os.path.join(root, *name.split("/"))  # only for display; never opened
                out.failed.append(Record(name, label, split, path, "error:folder",
                                         "a folder named like an image, holding no images"))


def list_image_folder(root: str) -> Listing:
    """Walk ``root/<class>/...`` or ``root/{train,val,test}/<class>/...`` (names only; see check_entries)."""
    out = Listing([], [], [])
    root_key = _folder_key(root)
    ignored: list[str] = []

    def folders(path: str) -> list[str]:
        names = []
        try:
            with os.scandir(path) as it:
                listed = sorted((e for e in it if _is_listed(e.name)), key=lambda e: e.name)
        except OSError as e:
            raise EmbedpipeError(f"cannot list {display_name(path)}: {display_name(e.strerror or str(e))}") from None
        for e in listed:
            try:
                ok = e.is_dir() and _folder_key(e.path) not in (None, root_key)
            except OSError:
                ok = False
            if ok:
                names.append(e.name)
            else:
                ignored.append(display_name(os.path.relpath(e.path, root)))
        return names

    subdirs = folders(root)
    named_splits = set(subdirs) & set(SPLITS)
    if named_splits and named_splits != set(subdirs):
        others = sorted(display_name(s) for s in set(subdirs) - set(SPLITS))
        raise EmbedpipeError(
            f"{display_name(root)} mixes split folders ({', '.join(sorted(named_splits))}) with other folders "
            f"({', '.join(others[:5])}); use only train/val/test at the top, or only class folders"
        )
    if not subdirs:
        raise EmbedpipeError(f"no class folders in {display_name(root)}: expected {display_name(root)}/<class>/<image>")
    above = frozenset(k for k in [root_key] if k is not None)
    for top in subdirs:
        if named_splits:
            split_dir = os.path.join(root, top)
            split_key = _folder_key(split_dir)
            for cls in folders(split_dir):
                path = os.path.join(split_dir, cls)
                _walk_class(path, root, display_name(cls), top, above | {split_key} if split_key else above, out)
        else:
            _walk_class(os.path.join(root, top), root, display_name(top), None, above, out)
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        out.notes.append(f"ignored {len(ignored)} entries that are not class folders ({shown})")
    return out


def _unique_ids(records: list[Record], notes: list[str]) -> list[Record]:
    """Records sorted by id, one per id. Two names can show as one id only when one of them is not
    UTF-8 (``a\xff.png`` as bytes, and as text with a real backslash): the UTF-8 one is kept and the
    other named in ``notes``, instead of failing the whole run on duplicate ids."""
    by_id: dict[str, Record] = {}
    dropped: list[str] = []
    for r in records:
        other = by_id.setdefault(r.id, r)
        if other is not r:
            keep, drop = (other, r) if other.path == display_name(other.path or "") else (r, other)
            by_id[r.id] = keep
            dropped.append(display_name(drop.path or r.id))
    if dropped:
        notes.append(f"skipped {len(dropped)} non-UTF-8 names that show as another file's name ({', '.join(dropped[:3])})")
    return sorted(by_id.values(), key=lambda r: r.id)


class ImageFolderSource(Source):
    """``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``.

    Every non-hidden file below a class folder is a sample (folders below it are walked); one that
    cannot be used or decoded is recorded as failed (so nothing is silently ignored).
    """

    def __init__(self, root: str, signature: str = "stat") -> None:
        self.root = os.path.abspath(root)
        self.kind = "folder"
        self.name = display_name(Path(self.root).name)
        listing = list_image_folder(self.root)
        records = _unique_ids([*listing.failed, *check_entries(listing.entries, signature)], listing.notes)
        if not records:
            raise EmbedpipeError(f"no images found under {display_name(root)}")
        self.records = records
        self.notes = tuple(listing.notes)
        self.description = _describe(f"ImageFolder {display_name(self.root)}", self.notes)


# -- CSV manifest -------------------------------------------------------------------------------

class CsvSource(Source):
    """A CSV manifest with header ``path,label[,split]``; paths are relative to the CSV file.

    A row naming a missing or unusable file is a failed record (not an error); a path outside the
    manifest's folder (``../x.png`` or absolute) is used when it exists and counted in the notes.
    """

    def __init__(self, csv_path: str, signature: str = "stat") -> None:
        self.csv_path = os.path.abspath(csv_path)
        self.kind, self.root = "csv", self.csv_path
        base = os.path.dirname(self.csv_path)
        shown = display_name(csv_path)
        self.name = display_name(Path(csv_path).stem)
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a column name
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise EmbedpipeError(f"{shown} is not UTF-8 text ({e.reason}); save it as UTF-8") from None
        except (OSError, csv.Error) as e:
            raise EmbedpipeError(f"cannot read {shown}: {display_name(str(e))}") from None
        if "path" not in fields or "label" not in fields:
            raise EmbedpipeError(
                f"{shown}: header must be path,label[,split]; found {','.join(fields) or 'nothing'}"
            )
        has_split = "split" in fields
        rows_ok: list[tuple[str, str, str | None, str]] = []
        seen: set[str] = set()
        for lineno, row in enumerate(rows, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            rel = os.path.normpath(rel).replace(os.sep, "/") if rel else rel  # ./a.png and a.png are one file
            split = (row.get("split") or "").strip() or None if has_split else None
            if not rel or not label:
                raise EmbedpipeError(f"{shown}:{lineno}: empty path or label")
            if split is not None and split not in SPLITS:
                raise EmbedpipeError(f"{shown}:{lineno}: split {split!r} is not one of {SPLITS}")
            if rel in seen:
                raise EmbedpipeError(f"{shown}:{lineno}: path {rel!r} is listed twice")
            seen.add(rel)
            rows_ok.append((rel, label, split, os.path.normpath(os.path.join(base, rel))))
        if len({split is None for _, _, split, _ in rows_ok}) > 1:
            raise EmbedpipeError(f"{shown}: some rows have a split and some do not; fill every split or none")
        if not rows_ok:
            raise EmbedpipeError(f"{shown} lists no images")
        checked = _check_all([path for *_, path in rows_ok], signature)
        records: list[Record] = []
        outside = 0
        for (rel, label, split, path), (sig, err) in zip(rows_ok, checked, strict=True):
            escapes = os.path.isabs(rel) or rel == ".." or rel.startswith("../")
            outside += escapes
            if sig == "error:vanished":
                sig, err = "error:missing", "missing file"
            if escapes and err:  # allowed only when it exists and can be read
                sig, err = "error:outside", f"outside the manifest's folder and {'missing' if sig == 'error:missing' else err}"
            records.append(Record(rel, label, split, path, sig, err))
        self.records = sorted(records, key=lambda r: r.id)
        if outside:
            self.notes = (f"{outside} paths outside the manifest's folder",)
        self.description = _describe(f"CSV manifest {display_name(self.csv_path)}", self.notes)

