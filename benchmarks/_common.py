"""Shared by the benchmark scripts: machine/library facts and tidy CSV + Markdown output."""

from __future__ import annotations

import csv
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    import torch

    from embedpipe.extract import library_versions

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "device": device,
        **{f"v_{k}": v for k, v in library_versions().items()},
    }


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
