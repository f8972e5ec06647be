"""Saving and loading heads without pickle.

A head file is a ``.npz`` read with ``allow_pickle=False``: one entry ``__embedpipe__`` holds JSON
(format version, head name, hyperparameters, learned scalars, and ``info``: what the head was trained
on: cache key, backbone config and fingerprint, layer, label names), every other entry is a plain
numeric or string array. Loading builds only registered head classes and only their declared
hyperparameters, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedpipeError
from .base import Head

FORMAT = "embedpipe-head"
VERSION = 1
_JSON_TYPES = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_head(path: str | Path, head: Head, info: dict[str, Any] | None = None) -> Path:
    state, arrays = head._get_state()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "head": head.name,
        "params": {k: _jsonable(v) for k, v in head.get_params().items()},
        "n_features_in": int(head.n_features_in_),
        "state": state,
        "info": info or {},
    }
    payload = {f"a/{k}": np.asarray(v) for k, v in arrays.items()}
    payload["classes"] = np.asarray(head.classes_)
    payload["__embedpipe__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def load_head(path: str | Path) -> tuple[Head, dict[str, Any]]:
    """-> (fitted head, info). Raises EmbedpipeError for anything that is not a valid head file."""
    from . import HEADS

    path = Path(path)
    if not path.is_file():
        raise EmbedpipeError(f"head file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("not an .npz archive")
        with z:
            entries = {k: z[k] for k in z.files}
        doc = json.loads(entries.pop("__embedpipe__").tobytes().decode())
    except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise EmbedpipeError(f"{path} is not a valid embedpipe head file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmbedpipeError(f"{path} is not an embedpipe head file")
    if doc.get("version") != VERSION:
        raise EmbedpipeError(f"{path} is head format {doc.get('version')}; this embedpipe reads {VERSION}")
    shapes_ok = all(isinstance(doc.get(k, {}), dict) for k in ("params", "state", "info"))
    if not shapes_ok or type(doc.get("n_features_in")) is not int or "classes" not in entries:
        raise EmbedpipeError(f"{path} is a damaged head file (params, state, info, n_features_in or classes)")
    cls = HEADS.get(str(doc.get("head")))
    head = cls()
    allowed = head.get_params()
    params = doc.get("params", {})
    bad = [k for k, v in params.items() if k not in allowed or not _plain(v)]
    if bad:
        raise EmbedpipeError(f"{path} has unknown or non-plain parameters {bad}")
    head.set_params(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    classes = entries.pop("classes")
    if classes.ndim != 1 or classes.dtype.kind not in "iufUb":
        raise EmbedpipeError(f"{path} has classes of unsupported type {classes.dtype} or shape {classes.shape}")
    head.classes_ = classes
    head.n_features_in_ = int(doc["n_features_in"])
    arrays = {k[2:]: v for k, v in entries.items() if k.startswith("a/")}
    try:
        head._set_state(doc.get("state", {}), arrays)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise EmbedpipeError(f"{path}: head state does not fit the {head.name} head ({e})") from None
    return head, dict(doc.get("info", {}))


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, _JSON_TYPES) for v in value)
    return isinstance(value, _JSON_TYPES)
