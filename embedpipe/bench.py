"""The matrix datasets x backbones x layers x heads -> one tidy row per cell, and a table.

Each (dataset, backbone) pair is extracted once (or reused from the cache) with all requested
layers in one pass; every head is then fitted on every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE
from .extract import run_extract
from .train import train_heads


def benchmark(
    datasets: Sequence[str] = ("digits",),
    backbones: Sequence[str] = (DEFAULT_BACKBONE,),
    layers: Sequence[str] = ("pooled",),
    heads: Sequence[str] = ("logreg", "lgbm", "mlp", "knn", "ncm"),
    *,
    cache_dir: str | Path = "cache",
    progress: bool = True,
    **extract_options: Any,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for data in datasets:
        for spec in backbones:
            cache, stats = run_extract(data, spec, cache_dir=cache_dir, layers=tuple(layers),
                                       progress=progress, **extract_options)
            for layer in layers:
                for result in train_heads(cache, list(heads), layer=layer):
                    rows.append({
                        "dataset": cache.meta.get("dataset"),
                        "backbone": spec,
                        "layer": layer,
                        "head": result.head,
                        "val_acc": result.val_acc,
                        "test_acc": result.test_acc,
                        "fit_s": round(result.fit_s, 3),
                        "n_train": result.n_train,
                        "classes": result.n_classes,
                        "extract_img_s": round(stats.images_per_s, 1) if stats.embedded else None,
                    })
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table; floats as 3-decimal numbers."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(b) for b in body)])
