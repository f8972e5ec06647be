"""Shared by the benchmark scripts: machine/library facts and tidy CSV + Markdown output."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """Date, machine, device and library versions: the same fields embedpipe bench records."""
    from embedpipe.bench import environment as bench_environment

    return bench_environment()


def write_results(name: str, rows: list[dict[str, Any]], columns: list[str]) -> tuple[Path, Path]:
    """Write ``results/<name>.csv`` (all fields) and ``results/<name>.md`` (the chosen columns)."""
    from embedpipe.bench import format_table

    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = RESULTS / f"{name}.csv", RESULTS / f"{name}.md"
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(format_table(rows, columns) + "\n")
    return csv_path, md_path
