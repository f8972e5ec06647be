"""Results as Markdown tables (what `bench`, `advise` and the CLI print)."""

from __future__ import annotations

from typing import Any


def format_table(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...], columns: list[str] | None = None) -> str:
    """A Markdown table; floats with 3 decimals, None/'' as '-'."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if v is None or v == "":
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(b) for b in body)])


# How many decimals a number means, by the name it is reported under (``json_ready``): accuracies and
# shares to 4 (0.1 % of 10,000 images is 10 images), seconds to 3 (a millisecond), images per
# class to 2; any other float keeps 6 significant digits (C values, probabilities, rates).
_ACCURACY_WORDS = ("acc", "top1", "top5", "recall", "score", "val", "gap", "entropy", "share", "contribution")
_SECONDS_ENDINGS = ("_s", "_s_", "_s_mean", "_s_std", "seconds", "seconds_")


def _decimals(key: str) -> int | None:
    key = key.lower()
    if key == "per_class":
        return 2
    if key.endswith(_SECONDS_ENDINGS) and "per_s" not in key and "img_s" not in key:  # not a rate
        return 3
    if any(word in key for word in _ACCURACY_WORDS):
        return 4
    return None


def json_ready(obj: Any, decimals: int | None = None) -> Any:
    """``obj`` as plain JSON values for ``--json``: numpy scalars and arrays become numbers and lists,
    paths strings, tuples lists, and floats are rounded to what they mean (by their key: see
    ``_decimals``; float32 noise such as 0.529411792755127 becomes 0.5294). Nested values inherit
    their parent key's rounding (``val_scores_`` keyed by C values)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v, _decimals(str(k)) if _decimals(str(k)) is not None else decimals)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [json_ready(v, decimals) for v in items]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return json_ready(obj.tolist(), decimals)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return None  # JSON has no NaN or infinity
        return round(obj, decimals) if decimals is not None else float(f"{obj:.6g}")
    if hasattr(obj, "to_json") and callable(obj.to_json):  # a selection rule (heads.select.HoldOut)
        return json_ready(obj.to_json(), decimals)
    return str(obj)  # paths and anything else: their text
