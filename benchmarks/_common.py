"""What every benchmark shares: the results file and the printed table."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from selfevolve.io import write_json


def environment() -> dict:
    """Where the numbers were taken: they mean little without the machine."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, rows: list[dict], *, out_dir: str | Path = "results", **meta) -> Path:
    """Write ``results/NAME.json`` atomically: ``{"benchmark", "environment", "rows", ...meta}``."""
    payload = {"benchmark": name, "environment": environment(), **meta, "rows": rows}
    return write_json(Path(out_dir) / f"{name}.json", payload)


def print_table(title: str, rows: list[dict], columns: Sequence[str] | None = None) -> None:
    """Print rows as a rich table; floats get three significant decimals."""
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            *(f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns)
        )
    Console().print(table)
