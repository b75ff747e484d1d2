"""``selfevolve models``: the registry, and what is installed and cached."""

from __future__ import annotations

import shutil

import typer
from rich.console import Console
from rich.table import Table

from selfevolve.runtime.registry import REGISTRY, cache_dir


def main(
    clear_cache: str = typer.Option(
        None,
        "--clear-cache",
        metavar="NAME",
        help="Delete the cached safetensors copy of NAME (re-built on load).",
    ),
) -> None:
    """List the models selfevolve can load offline."""
    if clear_cache:
        if clear_cache not in REGISTRY:
            raise typer.BadParameter(f"unknown model {clear_cache!r}; known: {', '.join(REGISTRY)}")
        shutil.rmtree(cache_dir() / "models" / clear_cache, ignore_errors=True)
        typer.echo(f"cleared the cache of {clear_cache}")
        return
    table = Table(title=f"models (cache: {cache_dir()})")
    table.add_column("name", no_wrap=True)
    for column in ("installed", "cached", "description", "install with"):
        table.add_column(column)
    for entry in REGISTRY.values():
        installed = entry.installed()
        table.add_row(
            entry.name,
            "yes" if installed else "no",
            "yes" if entry.cached() else ("-" if entry.gguf is None else "no"),
            entry.description,
            "" if installed or entry.gguf is None else entry.gguf.install,
        )
    Console().print(table)
