"""The layer-name grammar, written once.

* ``pooled``: the backbone's embedding;
* ``block<k>``: stage k average-pooled to a vector;
* ``block<k>:grid<G>``: stage k average-pooled over a G x G grid and flattened (C*G*G values);
* ``block<k>:map``: stage k unpooled, a (C, H, W) map or an (L, C) token sequence;
* ``logits``: a classifier backbone's class scores.
"""

from __future__ import annotations

import re

from .errors import EmbedpipeError

BLOCK_RE = re.compile(r"block(\d+)(?::(map|grid(\d+)))?")  # block<k>, block<k>:map, block<k>:grid<G>
GRID_RE = re.compile(r"block(\d+):grid(\d+)")  # block<k>:grid<G>
POOLED_DEPTH = 1000  # where ``pooled`` sorts among blocks: after every one of them


def is_map(layer: str) -> bool:
    """True for an unpooled layer (``block<k>:map``)."""
    return layer.endswith(":map")


def grid_of(layer: str) -> tuple[int, int] | None:
    """(k, G) of ``block<k>:grid<G>``; None for any other name."""
    m = GRID_RE.fullmatch(layer)
    return (int(m.group(1)), int(m.group(2))) if m else None


def block_index(layer: str) -> int:
    """k of ``block<k>``, ``block<k>:map`` or ``block<k>:grid<G>``."""
    m = BLOCK_RE.fullmatch(layer)
    if not m:
        raise EmbedpipeError(f"{layer!r} is not a block layer")
    return int(m.group(1))


def depth(layer: str) -> int:
    """How deep a vector layer sits: k for ``block<k>`` and its grids, after every block for
    ``pooled``, -1 (before them) for anything else, maps included."""
    if layer == "pooled":
        return POOLED_DEPTH
    m = BLOCK_RE.fullmatch(layer)
    return int(m.group(1)) if m and m.group(2) != "map" else -1


def split_layers(spec: str) -> list[str]:
    """``"pooled,block4"`` -> ``["pooled", "block4"]`` (several cached layers read side by side)."""
    return [name for name in spec.split(",") if name]
