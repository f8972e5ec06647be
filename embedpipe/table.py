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
