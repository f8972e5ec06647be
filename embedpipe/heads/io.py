"""Saving and loading heads without pickle.

A head file is a ``.npz`` read with ``allow_pickle=False``: one entry ``__embedpipe__`` holds JSON text
(format version, head name, hyperparameters, learned scalars such as logreg's chosen ``C_``, and
``info``: what the head was trained on: cache path and key, backbone config and fingerprint, layer,
label names, where the validation rows came from), stored as UTF-8 bytes; every other entry is a plain
numeric or string array: ``classes`` and the learned arrays under ``a/`` (logreg: ``a/coef_``,
``a/intercept_``, acting on raw features). numpy alone reads it (``json.loads`` takes the bytes; this
works for every format version, whose JSON entry was a uint8 array of the same bytes)::

    import json
    import numpy as np

    with np.load("logreg-pooled.npz") as z:
        doc = json.loads(z["__embedpipe__"].tobytes())  # head, params, state, info
        coef, intercept = z["a/coef_"], z["a/intercept_"]  # scores = X @ coef.T + intercept
    chosen_C, class_names = doc["state"]["C_"], doc["info"]["label_names"]

``embedpipe info --head-file FILE`` prints the same, as tables (or ``--json``). Loading builds only registered head classes and only their declared
hyperparameters, so a crafted file cannot run code; it then checks the file against what the head
declares (``Head._state_spec``: each JSON value's type, each array's dtype and shape, no NaN, nothing
missing or extra) and predicts one row, so a file edited by hand is refused with one line naming the
file and the problem instead of failing later deep inside numpy.

Format versions: 2 (today) stores the logreg head's ``coef_``/``intercept_`` on raw features, as
scikit-learn does (the multilayer head's nested final logreg too). A format-1 file kept them on
standardised features with ``mean_``/``scale_``; it is converted exactly on load
(``Head._upgrade_state``: ``coef / scale``, ``intercept - coef @ (mean / scale)``) with one warning line.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.errors import EmbedpipeError, first_line
from .base import Head, StateSpec
from .registry import HEADS, NOT_HEADS
from .select import RULE_TYPES, rule_from_json
from .zeroshot import ZeroShotClassifier

Saveable = Head | ZeroShotClassifier  # what a head file holds: a fitted head, or a built zero-shot classifier

FORMAT = "embedpipe-head"
VERSION = 2  # 2: logreg coef_/intercept_ act on raw X
READS = (1, 2)  # format versions load_head reads (older ones are converted on load)
_logger = logging.getLogger(__name__)
_JSON_TYPES = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> Any:
    if isinstance(value, RULE_TYPES):  # a selection rule: a small frozen dataclass, saved as its JSON
        return value.to_json()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_head(path: str | Path, head: Saveable, info: dict[str, Any] | None = None) -> Path:
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
    payload["__embedpipe__"] = np.array(json.dumps(doc).encode())  # 0-d bytes: prints as the JSON text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return atomic_write_bytes(path, buf.getbuffer())


def load_head(path: str | Path) -> tuple[Saveable, dict[str, Any]]:
    """-> (fitted head, info). Raises one-line EmbedpipeError for anything that is not a valid head
    file: not an archive, object arrays (pickle), JSON or arrays whose names, types, dtypes or shapes
    differ from what the head declares (``Head._state_spec``), NaN, label names that do not cover the
    classes, or a head that cannot predict one row after loading."""
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
        raise EmbedpipeError(f"{path} is not a valid embedpipe head file ({type(e).__name__}: {_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmbedpipeError(f"{path} is not an embedpipe head file")
    version = doc.get("version")
    if type(version) is not int or version not in READS:
        raise EmbedpipeError(f"{path} is head format {version!r}; this embedpipe reads {', '.join(map(str, READS))}")
    try:
        head, converted = _build(doc, entries, version)
    except _Refused as e:
        raise EmbedpipeError(f"{path} is a damaged or hand-edited head file: {e}; retrain it with `embedpipe train`") from None
    if converted:
        _logger.warning("%s: head format %d converted on load to format %d (the %s head's coefficients now act "
                        "on raw features); save it again to store the new format", path, version, VERSION, head.name)
    return head, dict(doc["info"])


def read_head_file(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """A head file's JSON entry and its arrays' dtypes and shapes, read with numpy alone: nothing is
    built or checked (``load_head`` does that). Raises a one-line EmbedpipeError for a file that is
    not a head file."""
    path = Path(path)
    if not path.is_file():
        raise EmbedpipeError(f"head file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(z["__embedpipe__"].tobytes())
            arrays = {k: (str(z[k].dtype), tuple(z[k].shape)) for k in z.files if k != "__embedpipe__"}
    except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError, AttributeError, zipfile.BadZipFile) as e:
        raise EmbedpipeError(f"{path} is not a valid embedpipe head file ({type(e).__name__}: {_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmbedpipeError(f"{path} is not an embedpipe head file")
    return doc, arrays


def class_names(classes: np.ndarray, label_names: list[str] | None) -> list[str] | None:
    """The name of each class: ``label_names[c]`` for integer labels that index into it (what
    ``embedpipe train`` saves), the label itself where ``label_names`` lists the labels as text, or
    ``str(c)`` without label names; None when label names are given but name neither way."""
    if not label_names:
        return [str(c) for c in classes]
    if classes.dtype.kind in "iu" and classes.min() >= 0 and classes.max() < len(label_names):
        return [label_names[int(c)] for c in classes]
    text = [str(c) for c in classes]
    return text if set(text) <= set(label_names) else None


class _Refused(Exception):
    """A reason a head file is refused (turned into one EmbedpipeError line naming the file)."""


def _build(doc: dict[str, Any], entries: dict[str, np.ndarray], version: int = VERSION) -> tuple[Saveable, bool]:
    """-> (the head, whether its state was converted from an older format version)."""
    for key in ("params", "state", "info"):
        if not isinstance(doc.get(key), dict):
            raise _Refused(f"'{key}' is {type(doc.get(key)).__name__}, expected an object")
    n_features = doc.get("n_features_in")
    if type(n_features) is not int or n_features < 1:
        raise _Refused(f"n_features_in is {n_features!r}, expected a positive integer")
    name = doc.get("head")
    if not isinstance(name, str) or (name not in HEADS and name not in NOT_HEADS):
        raise _Refused(f"unknown head {name!r}")
    head = (NOT_HEADS if name in NOT_HEADS else HEADS).get(name)()  # imports only the head it names
    params = _check_params(head, doc["params"])
    head.set_params(**params)
    classes = _check_classes(entries.pop("classes", None), doc["info"])
    head.classes_, head.n_features_in_ = classes, n_features
    state, arrays = doc["state"], {k[2:]: v for k, v in entries.items() if k.startswith("a/")}
    stray = sorted(k for k in entries if not k.startswith("a/"))
    if stray:
        raise _Refused(f"unexpected entries {stray}")
    converted = False
    if version != VERSION:
        try:
            converted = head._upgrade_state(version, state, arrays)
        except (ValueError, TypeError, KeyError) as e:
            raise _Refused(f"its format-{version} state cannot be converted ({type(e).__name__}: {_line(e)})") from None
    try:
        spec = head._state_spec()  # may rebuild a model from the parameters (finetune's backbone blocks)
    except (EmbedpipeError, ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        raise _Refused(f"the {name} head's parameters do not describe a usable state ({type(e).__name__}: {_line(e)})") from None
    if spec is not None:
        _check_state(state, arrays, spec, {"d": n_features, "k": len(classes)})
    try:
        head._set_state(state, arrays)
        proba = head.predict_proba(np.zeros((1, n_features), np.float32))
    except Exception as e:  # the last line of defence: any failure here is the file's
        raise _Refused(f"the {name} head cannot use its state ({type(e).__name__}: {_line(e)})") from None
    if proba.shape != (1, len(classes)) or not np.all(np.isfinite(proba)):
        raise _Refused(f"the {name} head predicts {proba.shape} probabilities (finite: {np.isfinite(proba).all()}) "
                       f"for {len(classes)} classes")
    return head, converted


def _check_params(head: Saveable, params: dict[str, Any]) -> dict[str, Any]:
    """Only declared hyperparameters, each of the JSON type of its default (None defaults take any)."""
    defaults = head.get_params()
    out = {}
    for key, value in params.items():
        if key not in defaults:
            raise _Refused(f"unknown parameters [{key!r}] for the {head.name} head")
        if key == "selection" and value is not None:  # the one parameter that is an object: a rule
            try:
                out[key] = rule_from_json(value)
            except ValueError as e:
                raise _Refused(f"parameters: selection: {_line(e)}") from None
            continue
        if not _plain(value):
            raise _Refused(f"non-plain parameters [{key!r}]")
        default = defaults[key]
        if default is not None and value is not None and not _same_kind(value, default):
            raise _Refused(f"parameters: {key} is {value!r}, expected a {type(default).__name__}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and (isinstance(value, int) or not isinstance(default, int))
    if isinstance(default, tuple):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _check_classes(classes: np.ndarray | None, info: dict[str, Any]) -> np.ndarray:
    if classes is None:
        raise _Refused("the array 'classes' is missing")
    if classes.ndim != 1 or classes.dtype.kind not in "iufUb" or len(classes) < 2:
        raise _Refused(f"'classes' is {classes.dtype} of shape {classes.shape}, expected at least 2 labels")
    if len(np.unique(classes)) != len(classes) or not np.array_equal(np.sort(classes), classes):
        raise _Refused("'classes' are not sorted and unique")
    for key in ("layer", "backbone_fingerprint", "cache_key"):
        if key in info and not isinstance(info[key], str):
            raise _Refused(f"info.{key} is {info[key]!r}, expected a string")
    if "backbone" in info and not isinstance(info["backbone"], dict):
        raise _Refused("info.backbone is not an object")
    names = info.get("label_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _Refused("info.label_names is not a list of strings")
        if class_names(classes, names) is None:
            raise _Refused(f"{len(names)} label_names do not name the classes {_short(classes)}")
    return classes


def _check_state(state: dict[str, Any], arrays: dict[str, np.ndarray], spec: StateSpec, dims: dict[str, int]) -> None:
    scalars, wanted = spec
    for key, kind in scalars.items():
        if not _value_is(state.get(key), kind):
            raise _Refused(f"state.{key} is {state.get(key)!r}, expected {kind}")
    extra = sorted(set(state) - set(scalars))
    if extra:
        raise _Refused(f"unexpected state values {extra}")
    extra = sorted(set(arrays) - set(wanted))
    if extra:
        raise _Refused(f"unexpected arrays {extra}")
    for key, want in wanted.items():
        a = arrays.get(key)
        if a is None:
            if want.optional:
                continue
            raise _Refused(f"the array {key!r} is missing")
        if a.dtype.kind not in want.kind:
            raise _Refused(f"the array {key!r} is {a.dtype}, expected {'a float' if want.kind == 'f' else 'an integer'} array")
        if a.ndim != len(want.shape):
            raise _Refused(f"the array {key!r} has shape {a.shape}, expected {_shape(want.shape, dims)}")
        for size, dim in zip(a.shape, want.shape, strict=True):
            expected = dim if isinstance(dim, int) else dims.setdefault(dim, size)
            if size != expected:
                raise _Refused(f"the array {key!r} has shape {a.shape}, expected {_shape(want.shape, dims)}")
        if want.finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise _Refused(f"the array {key!r} holds NaN or infinite values")
        if want.positive and not np.all(a > 0):
            raise _Refused(f"the array {key!r} holds values <= 0")
        if want.below is not None and a.size and (a.min() < 0 or a.max() >= dims[want.below]):
            raise _Refused(f"the array {key!r} holds indices outside 0..{dims[want.below] - 1}")


def _value_is(value: Any, kind: str) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return number and np.isfinite(value)
    if kind == "number?":
        return value is None or (number and np.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":  # a nested head's own state (that head's _set_state reads it)
        return isinstance(value, dict)
    if kind == "dict[str,number]":
        return isinstance(value, dict) and all(_value_is(v, "number") for v in value.values())
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list[dict[str,number?]]":  # e.g. a per-epoch training history
        return isinstance(value, list) and all(
            isinstance(v, dict) and all(_value_is(x, "number?") for x in v.values()) for v in value)
    raise ValueError(f"unknown state value kind {kind!r}")  # a head's own spec is wrong


def _shape(shape: tuple[int | str, ...], dims: dict[str, int]) -> str:
    return "(" + ", ".join(str(dims.get(d, d)) if isinstance(d, str) else str(d) for d in shape) + ")"


def _short(a: np.ndarray) -> str:
    return np.array2string(a, threshold=8, separator=",")


def _line(e: BaseException) -> str:
    return first_line(e) if str(e).strip() else ""


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, _JSON_TYPES) for v in value)
    return isinstance(value, _JSON_TYPES)
