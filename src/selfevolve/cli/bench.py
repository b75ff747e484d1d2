"""``selfevolve bench NAME``: run ``benchmarks/NAME.py`` (its ``main(argv)``) with the remaining arguments."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer

import selfevolve
from selfevolve.errors import SelfEvolveError


def benchmarks_dir() -> Path:
    """``$SELFEVOLVE_BENCHMARKS``, else ``./benchmarks``, else the source checkout's ``benchmarks/``."""
    candidates = [Path.cwd() / "benchmarks", Path(selfevolve.__file__).resolve().parents[2] / "benchmarks"]
    if os.environ.get("SELFEVOLVE_BENCHMARKS"):
        candidates.insert(0, Path(os.environ["SELFEVOLVE_BENCHMARKS"]))
    for candidate in candidates:
        if (candidate / "_common.py").is_file():
            return candidate
    raise SelfEvolveError(
        "cannot find the benchmarks folder; run from a selfevolve checkout or set SELFEVOLVE_BENCHMARKS"
    )


def available(folder: Path) -> list[str]:
    """Benchmark names: the modules of the folder that are not private."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def main(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Benchmark to run; omit to list them. Extra arguments go to it."),
) -> None:
    """Run a benchmark from benchmarks/ (it prints a table and writes results/NAME.json)."""
    folder = benchmarks_dir()
    names = available(folder)
    if name is None:
        typer.echo("benchmarks: " + ", ".join(names))
        return
    if name not in names:
        raise SelfEvolveError(f"unknown benchmark {name!r}; available: {', '.join(names)}")
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    sys.path.insert(0, str(folder.parent))
    module = importlib.import_module(f"{folder.name}.{name}")
    module.main(list(ctx.args))
