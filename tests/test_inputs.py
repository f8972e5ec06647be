"""Unusable inputs, built for real: every bad directory entry or manifest row is a failed row with its
reason, never a crash or a hang; every good image (symbolic links, non-UTF-8 names, long paths
included) is embedded. Also content signatures and dataset folder names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TIMM, make_image, make_image_folder

from embedpipe import extract
from embedpipe.cache.key import cache_path, unique_slug
from embedpipe.data import resolve_source
from embedpipe.data.sources import (
    PATH_MAX,
    check_entries,
    check_file,
    display_name,
    list_image_folder,
)
from embedpipe.extract import run_extract

REPO = Path(__file__).resolve().parents[1]


def bytes_path(parent: str | Path, name: bytes) -> str:
    """A child path whose name is raw bytes, as the surrogate-escaped str the OS layer uses."""
    return os.fsdecode(os.path.join(os.fsencode(str(parent)), name))


def unprivileged_prefix(tmp: Path) -> list[str] | None:
    """A command prefix under which file permissions apply: [] for a normal user; for root,
    ``setpriv`` dropping the capabilities that bypass them; None when neither works here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, "--bounding-set", caps, "--inh-caps", caps]
    probe = tmp / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe)!r}).read()"],
                              capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return prefix if "PermissionError" in done.stderr else None


def finishes(fn: Callable[[], object], fifos: list[str], seconds: float = 60) -> object:
    """Run ``fn`` in a thread; if it is still running after ``seconds`` it is blocked on a FIFO:
    unblock it by opening the FIFOs for writing, and fail."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for f in fifos:
            os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("listing blocked (it opened a FIFO)")
    assert result, "the listing raised (see the thread's traceback above)"
    return result[0]


def build_zoo(tmp: Path) -> tuple[str, dict[str, str], list[str]]:
    """A folder of every kind of entry. Returns (root, id -> expected signature class or "" for a good
    image or "decode" for a file that lists fine but does not decode, FIFO paths)."""
    outside = tmp / "outside"
    outside.mkdir()
    make_image(2, 9).save(outside / "ext.png")
    root = bytes_path(tmp, b"zoo-\xff")  # a dataset whose own name is not UTF-8
    cat = os.path.join(root, "cat")
    os.makedirs(cat)
    expect: dict[str, str] = {}
    for i in range(3):
        make_image(0, i).save(os.path.join(cat, f"good{i}.png"))
        expect[f"cat/good{i}.png"] = ""
    make_image(0, 5).save(os.path.join(cat, ".hidden.png"))  # hidden: not listed at all
    Path(root, "loose.txt").write_text("a file at the top, not a class folder")
    os.symlink("good0.png", os.path.join(cat, "link_rel.png"))
    expect["cat/link_rel.png"] = ""
    os.symlink(outside / "ext.png", os.path.join(cat, "link_abs.png"))
    expect["cat/link_abs.png"] = ""
    os.symlink("missing.png", os.path.join(cat, "broken.png"))
    expect["cat/broken.png"] = "error:broken-link"
    os.symlink("loop.png", os.path.join(cat, "loop.png"))
    expect["cat/loop.png"] = "error:link-loop"
    os.symlink("ping.png", os.path.join(cat, "pong.png"))
    os.symlink("pong.png", os.path.join(cat, "ping.png"))
    expect["cat/ping.png"] = expect["cat/pong.png"] = "error:link-loop"
    os.symlink("..", os.path.join(cat, "up"))  # a folder link back up the tree
    expect["cat/up"] = "error:link-loop"
    fifo = os.path.join(cat, "fifo.png")
    os.mkfifo(fifo)
    expect["cat/fifo.png"] = "error:special-file"
    sock_path = os.path.join(cat, "sock.png")
    if len(os.fsencode(sock_path)) < 100:  # AF_UNIX path limit
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(sock_path)
        expect["cat/sock.png"] = "error:special-file"
    os.symlink("/dev/null", os.path.join(cat, "null.png"))
    expect["cat/null.png"] = "error:special-file"
    os.mkdir(os.path.join(cat, "empty.jpg"))  # a folder named like an image, empty
    expect["cat/empty.jpg"] = "error:folder"
    os.mkdir(os.path.join(cat, "nested.jpg"))  # a folder named like an image, walked
    make_image(0, 6).save(os.path.join(cat, "nested.jpg", "inner.png"))
    expect["cat/nested.jpg/inner.png"] = ""
    long_name = "n" * 251 + ".png"  # NAME_MAX is 255 bytes
    make_image(0, 7).save(os.path.join(cat, long_name))
    expect[f"cat/{long_name}"] = ""
    make_image(0, 8).save(bytes_path(cat, b"\xff\xfe.png"))
    expect["cat/\\xff\\xfe.png"] = ""
    Path(cat, "notes.jpg").write_text("not an image")
    expect["cat/notes.jpg"] = "decode"
    Path(bytes_path(cat, b"bad-\xff.jpg")).write_text("not an image either")
    expect["cat/bad-\\xff.jpg"] = "decode"
    locked = os.path.join(cat, "locked.png")
    make_image(0, 9).save(locked)
    os.chmod(locked, 0)
    expect["cat/locked.png"] = "error:unreadable"
    locked_dir = os.path.join(cat, "locked_dir")
    os.mkdir(locked_dir)
    make_image(0, 10).save(os.path.join(locked_dir, "inner.png"))
    os.chmod(locked_dir, 0)
    expect["cat/locked_dir"] = "error:unreadable"
    dog = bytes_path(root, b"dog\xff")  # a class folder whose name is not UTF-8
    os.makedirs(dog)
    for i in range(3):
        make_image(1, i).save(os.path.join(dog, f"good{i}.png"))
        expect[f"dog\\xff/good{i}.png"] = ""
    # deep paths: a good image just under PATH_MAX, and a folder beyond it
    deep, rel = os.path.join(root, "deep"), "deep"
    while len(os.fsencode(deep)) + 2 * 201 < PATH_MAX - 20:
        deep, rel = os.path.join(deep, "d" * 200), f"{rel}/{'d' * 200}"
    os.makedirs(deep)
    near = os.path.join(deep, "near.png")
    make_image(1, 5).save(near)
    assert len(os.fsencode(near)) > PATH_MAX - 450
    expect[f"{rel}/near.png"] = ""
    fd = os.open(deep, os.O_RDONLY)
    try:
        while len(os.fsencode(deep)) < PATH_MAX:  # made relative to an open folder: beyond what a path can name
            os.mkdir("e" * 200, dir_fd=fd)
            inner = os.open("e" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, deep, rel = inner, os.path.join(deep, "e" * 200), f"{rel}/{'e' * 200}"
        out = os.open("far.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            make_image(1, 6).save(f, format="PNG")
    finally:
        os.close(fd)
    expect[rel] = "error:path-too-long"  # the first folder whose path is too long; nothing below it is seen
    return root, expect, [fifo]


def expected_for(expect: dict[str, str], permissions_apply: bool) -> dict[str, str]:
    """As root (in this process) permission bits do not stop reads: those entries are good."""
    if permissions_apply:
        return dict(expect)
    out = {k: v for k, v in expect.items() if v != "error:unreadable"}
    out["cat/locked.png"] = out["cat/locked_dir/inner.png"] = ""
    return out


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], list[str]]]:
    built = build_zoo(tmp_path)
    yield built
    for path in (os.path.join(built[0], "cat", "locked_dir"),):
        os.chmod(path, 0o755)  # so that pytest can clean up


def test_listing_survives_the_zoo(zoo: tuple[str, dict[str, str], list[str]]) -> None:
    root, expect, fifos = zoo
    src = finishes(lambda: resolve_source(root), fifos)
    records = {r.id: r for r in src.records}  # type: ignore[attr-defined]
    want = expected_for(expect, permissions_apply=os.geteuid() != 0)
    assert set(records) == set(want)
    for rid, kind in want.items():
        r = records[rid]
        r.id.encode("utf-8")  # ids are valid UTF-8 (HDF5 utf-8 datasets)
        if kind in ("", "decode"):
            assert r.error == "" and r.signature.count(":") == 1, rid
            assert os.path.exists(r.path), rid  # the real OS path, non-UTF-8 bytes and all
        else:
            assert r.signature == kind and r.error, (rid, r)
    assert records["dog\\xff/good0.png"].label == "dog\\xff"
    assert records["cat/\\xff\\xfe.png"].path == bytes_path(os.path.join(root, "cat"), b"\xff\xfe.png")
    assert "broken symbolic link (to missing.png" in records["cat/broken.png"].error
    assert "FIFO" in records["cat/fifo.png"].error and "character device" in records["cat/null.png"].error
    assert "holding no images" in records["cat/empty.jpg"].error
    assert src.name == "zoo-\\xff"  # type: ignore[attr-defined]
    assert "ignored 1 entries that are not class folders (loose.txt)" in src.description  # type: ignore[attr-defined]
    # the same listing twice gives the same records: signatures of failures are stable
    assert finishes(lambda: resolve_source(root), fifos).records == src.records  # type: ignore[attr-defined]


def test_names_that_show_alike_do_not_stop_the_run(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=1, per_class=2)
    make_image(0, 5).save(root / "class0" / "a\\xff.png")  # a real backslash in a UTF-8 name
    make_image(0, 6).save(bytes_path(root / "class0", b"a\xff.png"))  # the byte 0xff
    src = resolve_source(root)
    assert [r.id for r in src.records] == ["class0/a\\xff.png", "class0/img000.png", "class0/img001.png"]
    assert src.records[0].path == str(root / "class0" / "a\\xff.png")
    assert src.notes == (f"skipped 1 non-UTF-8 names that show as another file's name ({root}/class0/a\\xff.png)",)


def test_entry_that_vanishes_between_listing_and_stat(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    listing = list_image_folder(str(root))
    (root / "class0" / "img001.png").unlink()
    (root / "class1" / "img002.png").unlink()
    (root / "class1" / "img002.png").symlink_to("gone.png")  # replaced by a broken link
    records = {r.id: r for r in check_entries(listing.entries)}
    assert records["class0/img001.png"].signature == "error:vanished"
    assert records["class0/img001.png"].error == "vanished while listing (no such file)"
    assert records["class1/img002.png"].signature == "error:broken-link"
    assert sum(not r.error for r in records.values()) == 4


UNPRIVILEGED_LISTING = """
import json, sys
from embedpipe.data import resolve_source
from embedpipe.extract import run_extract
print(json.dumps([[r.id, r.signature, r.error] for r in resolve_source(sys.argv[1]).records]))
"""


def test_unreadable_files_and_folders(tmp_path: Path) -> None:
    prefix = unprivileged_prefix(tmp_path)
    if prefix is None:
        pytest.skip("running as root and cannot drop the capabilities that ignore file permissions (no setpriv)")
    root = make_image_folder(tmp_path / "data", classes=1, per_class=2)
    (root / "class0" / "img000.png").chmod(0)
    (root / "class0" / "sub").mkdir()
    (root / "class0" / "sub" / "x.png").write_bytes(b"x")
    (root / "class0" / "sub").chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", UNPRIVILEGED_LISTING, str(root)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        (root / "class0" / "sub").chmod(0o755)
    assert done.returncode == 0, done.stderr
    rows = {rid: (sig, err) for rid, sig, err in json.loads(done.stdout)}
    assert rows["class0/img000.png"] == ("error:unreadable", "no permission to read")
    assert rows["class0/sub"] == ("error:unreadable", "no permission to list this folder")
    assert rows["class0/img001.png"][1] == ""


def test_csv_manifest_rows_that_cannot_be_used(tmp_path: Path, tiny_timm_weights: str) -> None:
    make_image_folder(tmp_path / "m" / "imgs", classes=2, per_class=2)
    make_image(0, 7).save(tmp_path / "shared.png")
    (tmp_path / "m" / "folder.png").mkdir()
    os.mkfifo(tmp_path / "m" / "fifo.png")
    rows = ["imgs/class0/img000.png,a", "imgs/class1/img000.png,b", "imgs/class0/img001.png,a",
            "imgs/missing.png,a", "../shared.png,b", "../nowhere.png,b", "folder.png,a", "fifo.png,b",
            f"{tmp_path / 'shared.png'},a"]
    manifest = tmp_path / "m" / "list.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    src = finishes(lambda: resolve_source(manifest), [str(tmp_path / "m" / "fifo.png")])
    records = {r.id: r for r in src.records}  # type: ignore[attr-defined]
    assert records["imgs/missing.png"].signature == "error:missing"
    assert records["imgs/missing.png"].error == "missing file"
    assert records["../shared.png"].error == "" and records[str(tmp_path / "shared.png")].error == ""
    assert records["../nowhere.png"].signature == "error:outside"
    assert records["../nowhere.png"].error == "outside the manifest's folder and missing"
    assert records["folder.png"].signature == "error:folder"
    assert records["fifo.png"].signature == "error:special-file"
    assert src.notes == ("3 paths outside the manifest's folder",)  # type: ignore[attr-defined]
    cache = extract(manifest, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "cache",
                    progress=False, num_workers=0)
    ok = dict(zip(cache.ids, cache.ok, strict=True))
    assert ok == {rid: not r.error for rid, r in records.items()}
    assert dict(cache.failed)["../nowhere.png"] == "outside the manifest's folder and missing"
    assert cache.meta["source"].endswith("; 3 paths outside the manifest's folder")
    # the missing file appears: the next run embeds it and reuses every row that was good
    make_image(1, 7).save(tmp_path / "m" / "imgs" / "missing.png")
    fixed, stats = run_extract(manifest, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "cache",
                               progress=False, num_workers=0)
    assert dict(zip(fixed.ids, fixed.ok, strict=True))["imgs/missing.png"]
    assert stats.embedded == 1 and stats.reused == sum(ok.values())


def test_content_signature_catches_an_edit_that_keeps_size_and_mtime(tmp_path: Path, tiny_timm_weights: str) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    target = root / "class0" / "img001.bmp"  # uncompressed: an edit keeps the size
    make_image(0, 1).save(target)
    (root / "class0" / "img001.png").unlink()
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(3 * (1 << 20) + 17))  # several hash blocks
    assert check_file(str(big), "content") == ("sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()[:32], "")
    st = target.stat()
    assert check_file(str(target)) == (f"{st.st_size}:{st.st_mtime_ns}", "")

    def run(signature: str) -> object:
        return extract(root, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "cache", progress=False,
                       num_workers=0, signature=signature)

    stat_before, content_before = run("stat"), run("content")
    sig = {r.id: r.signature for r in resolve_source(root, signature="content").records}
    assert sig["class0/img001.bmp"] == "sha256:" + hashlib.sha256(target.read_bytes()).hexdigest()[:32]
    edited = make_image(3, 3).resize((40, 40))  # other pixels, same size on disk
    edited.save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    stat_after, content_after = run("stat"), run("content")
    assert stat_after.path == stat_before.path  # type: ignore[attr-defined]  # the documented limitation
    assert content_after.path != content_before.path  # type: ignore[attr-defined]
    row = list(content_after.ids).index("class0/img001.bmp")  # type: ignore[attr-defined]
    x_before, _ = content_before.load(None)  # type: ignore[attr-defined]
    x_after, _ = content_after.load(None)  # type: ignore[attr-defined]
    assert not np.allclose(x_before[row], x_after[row])  # recomputed, not taken from the stale rows
    assert np.array_equal(np.delete(x_before, row, 0), np.delete(x_after, row, 0))  # the rest reused
    with pytest.raises(Exception, match="unknown signature 'mtime'"):
        resolve_source(root, signature="mtime")


def test_dataset_names_that_differ_get_different_folders(tmp_path: Path, tiny_timm_weights: str) -> None:
    names = ["数据", "画像", "データ", "a b", "a-b", "a  b", "..", ".", "", "x" * 80, "x" * 80 + "y", "caf\\xe9"]
    slugs = [unique_slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    for s in slugs:
        assert s and s.isascii() and s not in (".", "..") and "/" not in s and len(s) <= 60
    assert unique_slug("shapes") == "shapes" and unique_slug("cifar10") == "cifar10"  # plain names keep their folder
    assert unique_slug("my data") == "my-data-b2167b0a"  # the example on the Data sources page (docs/data.md)
    assert cache_path("c", "数据", "timm:x", "0" * 64).parent != cache_path("c", "画像", "timm:x", "0" * 64).parent
    # end to end: two datasets named only with non-ASCII characters, same files, same mtimes
    a = make_image_folder(tmp_path / "数据", classes=2, per_class=3)
    b = tmp_path / "画像"
    shutil.copytree(a, b)  # copy2 keeps mtimes: same ids and signatures
    ca = extract(a, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "cache", progress=False, num_workers=0)
    cb = extract(b, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "cache", progress=False, num_workers=0)
    assert ca.path.parent != cb.path.parent and ca.path.parent.name and cb.path.parent.name


def test_display_name() -> None:
    assert display_name("plain/é.png") == "plain/é.png"
    assert display_name(os.fsdecode(b"a\xff\xfeb")) == "a\\xff\\xfeb"
    assert display_name("\ud800") == "\\ud800"


@pytest.mark.slow
def test_zoo_extract_in_process_and_cli(zoo: tuple[str, dict[str, str], list[str]], tmp_path: Path,
                                        tiny_timm_weights: str) -> None:
    """The whole zoo through ``extract`` (API, as this user) and ``embedpipe extract`` / ``info`` in
    subprocesses (without the root powers that ignore permissions, where that can be arranged)."""
    root, expect, fifos = zoo

    def check(ids: list[str], ok: list[bool], failed: dict[str, str], want: dict[str, str]) -> None:
        assert set(ids) == set(want)
        good = {i for i, k in want.items() if k == ""}
        assert {i for i, o in zip(ids, ok, strict=True) if o} == good  # every good image embedded
        for rid, kind in want.items():
            if kind == "decode":
                assert "UnidentifiedImageError" in failed[rid], (rid, failed[rid])
            elif kind:
                assert failed[rid], rid
        assert "no such file" not in failed["cat/broken.png"] and "broken symbolic link" in failed["cat/broken.png"]
        assert failed["cat/loop.png"] == "symbolic link loop"
        assert "FIFO" in failed["cat/fifo.png"] and "path too long" in failed[max(want, key=len)]
        assert "bad-" in failed["cat/bad-\\xff.jpg"]  # the decoder's message names the non-UTF-8 path

    cache = finishes(lambda: extract(root, TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "api",
                                     progress=False, num_workers=0), fifos, seconds=300)
    check(list(cache.ids), list(cache.ok), dict(cache.failed),  # type: ignore[attr-defined]
          expected_for(expect, permissions_apply=os.geteuid() != 0))

    prefix = unprivileged_prefix(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache_dir = bytes_path(tmp_path, b"cache-\xfe")  # the printed cache path is not UTF-8 either
    cmd = [*(prefix or []), sys.executable, "-m", "embedpipe", "extract", "--data", root, "--backbone", TINY_TIMM,
           "--weights", tiny_timm_weights, "--cache-dir", cache_dir, "--workers", "0", "--json"]
    done = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in stderr, stderr
    assert "skipped " in stderr  # the summary line counts the failed rows
    out = json.loads(done.stdout)
    path = out["path"]
    n_bad = sum(1 for k in expected_for(expect, prefix is not None).values() if k)
    assert out["failed"] == out["stats"]["failed"] == n_bad
    info = subprocess.run([sys.executable, "-m", "embedpipe", "info", "--cache", path, "--json"],
                          capture_output=True, timeout=120, env=env)
    assert info.returncode == 0 and b"Traceback" not in info.stderr, info.stderr
    failed = dict(json.loads(info.stdout)["failed_ids"])
    check(list(failed), [False] * len(failed), failed,
          {i: k for i, k in expected_for(expect, prefix is not None).items() if k})
    text = subprocess.run([sys.executable, "-m", "embedpipe", "info", "--cache", path],
                          capture_output=True, timeout=120, env=env)
    assert text.returncode == 0 and b"Traceback" not in text.stderr, text.stderr
    shown = text.stdout.decode("utf-8", "surrogateescape")  # the cache path may come out as its raw bytes
    rows = {cells[0]: cells[1] for line in shown.splitlines() if line.startswith("| ")  # the skipped table
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if len(cells) == 2}
    assert rows["cat/bad-\\xff.jpg"].startswith("UnidentifiedImageError")
    assert rows["cat/broken.png"].startswith("broken symbolic link")
    assert re.search(r"^source +ImageFolder ", shown, re.M) and "zoo-\\xff; ignored 1 entries that are not class folders" in shown
