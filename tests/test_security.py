"""Untrusted inputs: head files edited by hand, and images built to exhaust memory.

Head files: for every registered head, a real saved file is rewritten with one thing changed (an
array's shape, dtype or values, a missing or extra array, a string where a number belongs, label names
that do not cover the classes, an object array) and must be refused with one EmbedpipeError line
naming the file and the problem. Images: real PNG and JPEG files whose headers claim huge sizes are
refused per image before decoding (embedpipe/data/safety.py), and the other images are predicted.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_image

from embedpipe import EmbedpipeError, create_head, list_heads
from embedpipe.cli import main
from embedpipe.heads import ZeroShotClassifier, classifier_class, load_head, save_head

# every registered head, and the zero-shot classifier, which saves in the same head file format
KINDS = [*list_heads(), "zeroshot"]
INFO = {"backbone": {"spec": "effnet-lite0"}, "layer": "pooled", "label_names": ["ant", "bee", "cat"]}
SMALL: dict[str, dict[str, Any]] = {
    "logreg": {"Cs": (0.1, 1.0)},
    "mlp": {"hidden": 16, "epochs": 3, "batch_size": 16},
    "lgbm": {"n_estimators": 5, "pca_dims": 4, "min_child_samples": 3},  # pca_dims < 8: arrays saved
}


def fitted(name: str) -> Any:
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(45, 8)) + np.repeat(np.eye(3, 8) * 4, 15, axis=0)).astype(np.float32)
    y = np.repeat(np.arange(3), 15)
    if name == "zeroshot":  # building it needs a text encoder; its state is just the class text weights
        head = ZeroShotClassifier(class_names=("ant", "bee", "cat"))
        head.classes_, head.n_features_in_ = np.arange(3), 8
        head.text_weights_ = rng.normal(size=(3, 8)).astype(np.float32)
        return head
    return create_head(name, **SMALL.get(name, {})).fit(X[::2], y[::2], eval_set=(X[1::2], y[1::2]))


@pytest.fixture(scope="module")
def head_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    return {name: save_head(root / f"{name}.npz", fitted(name), INFO) for name in KINDS}


def entries_of(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    return json.loads(entries.pop("__embedpipe__").tobytes().decode()), entries


def write(path: Path, doc: dict[str, Any], entries: dict[str, Any]) -> Path:
    np.savez(path, __embedpipe__=np.frombuffer(json.dumps(doc).encode(), np.uint8), **entries)
    return path


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(EmbedpipeError) as e:
        load_head(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_every_head_declares_its_state(head_files: dict[str, Path]) -> None:
    for name, path in head_files.items():
        head, info = load_head(path)  # the files below are edits of files that load
        assert info == INFO and head._state_spec() is not None, name
        _, arrays = head._get_state()
        assert set(arrays) <= set(head._state_spec()[1]), name


ARRAY_EDITS = ["shape", "transposed", "flattened", "string-dtype", "integer-dtype", "missing", "extra", "nan",
               "object"]
HEADS_WITH_ARRAYS = [n for n in KINDS if n != "lgbm"] + ["lgbm"]  # lgbm's arrays exist with PCA on


@pytest.mark.parametrize("edit", ARRAY_EDITS)
@pytest.mark.parametrize("name", HEADS_WITH_ARRAYS)
def test_hand_edited_array_is_refused(head_files: dict[str, Path], tmp_path: Path, name: str, edit: str) -> None:
    doc, entries = entries_of(head_files[name])
    spec = classifier_class(name)._state_spec(load_head(head_files[name])[0])
    assert spec is not None
    key = next(k for k, s in spec[1].items() if s.kind == "f" and f"a/{k}" in entries)  # a float array
    a = entries[f"a/{key}"]
    needle = repr(key)
    if edit == "shape":
        entries[f"a/{key}"] = a[..., :-1]
    elif edit == "transposed":
        entries[f"a/{key}"] = a.T if a.ndim == 2 else np.concatenate([a, a])
    elif edit == "flattened":
        entries[f"a/{key}"] = a.reshape(1, -1) if a.ndim == 1 else a.ravel()
    elif edit == "string-dtype":
        entries[f"a/{key}"] = a.astype(str)
    elif edit == "integer-dtype" and a.dtype.kind == "f":
        entries[f"a/{key}"] = np.ones(a.shape, np.int64)
    elif edit == "missing":
        del entries[f"a/{key}"]
    elif edit == "extra":
        entries["a/backdoor_"], needle = np.zeros(3, np.float32), "backdoor_"
    elif edit == "nan":
        entries[f"a/{key}"] = a.copy()
        entries[f"a/{key}"].flat[0] = np.nan
    elif edit == "object":  # pickled by np.savez; loading with allow_pickle=False refuses it
        entries[f"a/{key}"], needle = np.array([a, "x"], dtype=object), "allow_pickle"
    if name == "lgbm" and edit == "missing":
        needle = "come together"  # both PCA arrays are optional, but not one without the other
    refused(write(tmp_path / f"{name}-{edit}.npz", doc, entries), needle)


@pytest.mark.parametrize("name", KINDS)
def test_hand_edited_json_is_refused(head_files: dict[str, Path], tmp_path: Path, name: str) -> None:
    doc, entries = entries_of(head_files[name])

    def edited(**changes: Any) -> Path:
        return write(tmp_path / "h.npz", {**doc, **changes}, entries)

    refused(edited(n_features_in="8"), "n_features_in")
    refused(edited(n_features_in=9), "9")  # the arrays (or the one-row prediction) are 8 wide
    refused(edited(info={**INFO, "label_names": ["ant", "bee"]}), "label_names")
    refused(edited(info={**INFO, "label_names": [1, 2, 3]}), "label_names")
    refused(edited(info={**INFO, "layer": ["pooled"]}), "info.layer")
    for key, value in doc["state"].items():  # a string where a number (or the model text) belongs
        bad = "0.5" if not isinstance(value, str) else 7
        refused(edited(state={**doc["state"], key: bad}), f"state.{key}")
    refused(edited(state={**doc["state"], "surprise_": 1}), "surprise_")
    numeric = next((k for k, v in doc["params"].items() if type(v) in (int, float)), None)
    if numeric:
        refused(edited(params={**doc["params"], numeric: "many"}), numeric)
    classes = entries["classes"]
    write(tmp_path / "c.npz", doc, {**entries, "classes": classes[::-1].copy()})
    refused(tmp_path / "c.npz", "sorted")


def test_lgbm_model_text_is_checked(head_files: dict[str, Path], tmp_path: Path) -> None:
    doc, entries = entries_of(head_files["lgbm"])
    state = doc["state"]
    refused(write(tmp_path / "g.npz", {**doc, "state": {**state, "model": "tree\nnot a model"}}, entries), "lgbm")
    other = save_head(tmp_path / "o.npz", create_head("lgbm", n_estimators=3, pca_dims=0).fit(
        np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32), np.arange(40) % 3))
    model = entries_of(other)[0]["state"]["model"]  # 8 raw features, the file projects to 4
    refused(write(tmp_path / "g.npz", {**doc, "state": {**state, "model": model}}, entries), "LightGBM model takes 8")


def test_cli_prints_one_line_for_a_bad_head_file(head_files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    doc, entries = entries_of(head_files["logreg"])
    bad = write(tmp_path / "bad.npz", doc, {**entries, "a/coef_": entries["a/coef_"][:, :3]})
    image = tmp_path / "x.png"
    make_image(0, 0).save(image)
    assert main(["predict", "--head-file", str(bad), str(image)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'coef_'" in err and "(3, 3)" in err and "Traceback" not in err, err


# -- images that claim huge sizes ---------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height RGB, with one tiny compressed IDAT (a real file)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def png_bomb(path: Path, side: int) -> Path:
    """A real, complete side x side grey PNG of zeros: a few kB on disk, side^2 bytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A real small JPEG with its SOF0 frame size rewritten to width x height."""
    make_image(1, 0, size=16).save(path, format="JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh interpreter running ``code`` (VmHWM: ru_maxrss would
    include the forking parent's peak)."""
    import subprocess
    import sys

    script = code + ("\nimport re; status = open('/proc/self/status').read()"
                     "\nprint(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) / 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    return {
        "png-claims-100000x100000": png_header_only(root / "huge.png", 100_000, 100_000),
        "png-bomb-9000x9000": png_bomb(root / "bomb.png", 9000),  # 81 MP: under PIL's own warning limit
        "jpeg-claims-60000x60000": jpeg_claiming(root / "huge.jpg", 60_000, 60_000),
        "jpeg-claims-10000x10000": jpeg_claiming(root / "big.jpg", 10_000, 10_000),
    }


def test_bombs_are_refused_before_decoding(bombs: dict[str, Path]) -> None:
    from embedpipe.data.safety import MAX_PIXELS, UnsafeImage, open_image

    for name, path in bombs.items():
        assert path.stat().st_size < 200_000, name  # small files that claim huge images
        with pytest.raises(UnsafeImage, match=r"megapixels|decompression-bomb"):
            open_image(path)
    # the PNG bomb is a real image: with a limit above its size it decodes, all 81 million pixels
    with open_image(bombs["png-bomb-9000x9000"], max_pixels=100_000_000) as img:
        assert img.size == (9000, 9000) and img.getextrema() == (0, 0)
    assert MAX_PIXELS < 9000 * 9000


def test_refusing_a_bomb_keeps_memory_bounded(bombs: dict[str, Path]) -> None:
    """Control: plain PIL decodes the 81 MP bomb (+81 MB); open_image refuses it from the header."""
    bomb = bombs["png-bomb-9000x9000"]
    plain = peak_rss_mb(f"from PIL import Image\nImage.open({str(bomb)!r}).load()")
    module = Path(__file__).resolve().parents[1] / "embedpipe" / "data" / "safety.py"  # alone: no torch import
    safe = peak_rss_mb("import importlib.util as u\n"
                       f"spec = u.spec_from_file_location('safety', {str(module)!r}); m = u.module_from_spec(spec)\n"
                       "spec.loader.exec_module(m)\n"
                       f"try:\n    m.open_image({str(bomb)!r})\nexcept m.UnsafeImage:\n    pass\nelse:\n    raise SystemExit(1)")
    assert plain - safe > 60, (plain, safe)


def test_predict_refuses_bombs_per_image_and_predicts_the_rest(
        tmp_path: Path, tiny_timm_weights: str, bombs: dict[str, Path]) -> None:
    from conftest import TINY_TIMM, make_image_folder

    from embedpipe import extract
    from embedpipe.predict import predict
    from embedpipe.train import train_heads

    data = make_image_folder(tmp_path / "shapes", classes=3, per_class=6)
    cache = extract(str(data), TINY_TIMM, weights=tiny_timm_weights, cache_dir=tmp_path / "c",
                    precision="fp32", num_workers=0, progress=False)
    head_file = train_heads(cache, "ncm", out=tmp_path / "ncm.npz")[0].path
    good = sorted(str(p) for p in data.rglob("*.png"))[:2]
    images = [good[0], *map(str, bombs.values()), str(tmp_path / "missing.png"), good[1]]
    results = predict(head_file, images, top_k=2, batch_size=2)  # bombs land in different batches
    assert [r["image"] for r in results] == images
    for r in results:
        if r["image"] in good:
            assert "error" not in r and len(r["top"]) == 2 and r["top"][0][0] in {"class0", "class1", "class2"}
        else:
            assert "top" not in r and r["error"], r
    assert all("UnsafeImage" in r["error"] for r in results[1:5])
    assert "FileNotFoundError" in results[5]["error"]
