"""``selfevolve doctor``: what is installed, how many threads, where the cache is, which models load."""

from __future__ import annotations

import importlib.metadata
import platform
import time

import typer
from rich.console import Console
from rich.table import Table

from selfevolve.runtime.registry import DEFAULT_MODEL, REGISTRY, cache_dir

PACKAGES = (
    "selfevolve",
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "gguf",
    "datasets",
    "openai",
    "fastapi",
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _folder_size(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(
    build: bool = typer.Option(
        False, "--build", help="Also load installed models that are not cached yet (slow)."
    ),
) -> None:
    """Check the installation; exits 1 when the default model cannot load."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    import torch

    from selfevolve.errors import SelfEvolveError
    from selfevolve.runtime import load_model
    from selfevolve.runtime.loading import resolve_device

    console = Console()
    console.print(f"python {platform.python_version()} on {platform.platform()}")
    for package in PACKAGES:
        console.print(f"  {package:<13} {_version(package)}")
    console.print(f"torch threads {torch.get_num_threads()}, device {resolve_device()}")
    console.print(f"cache {cache_dir()} ({_folder_size(cache_dir()) / 2**20:.0f} MiB)")
    from selfevolve.sandbox import available_isolations, isolation_warning

    tiers = available_isolations()
    if tiers:
        console.print(f"sandbox isolation {', '.join(tiers)}; runs use {tiers[0]}")
    else:
        console.print("sandbox isolation: no tier works here, so generated code cannot be run")
    if isolation_warning():  # logged as a warning too
        console.print("[bold red]the sandbox is not a security boundary here: install bubblewrap[/bold red]")
    table = Table(title="models")
    for column in ("name", "status", "load s", "detail"):
        table.add_column(column)
    default_ok = False
    for entry in REGISTRY.values():
        if not entry.installed():
            table.add_row(entry.name, "not installed", "", entry.gguf.install)
            continue
        if entry.gguf is not None and not entry.cached() and not build:
            table.add_row(entry.name, "installed", "", "not cached yet: `selfevolve doctor --build` loads it")
            continue
        start = time.perf_counter()
        try:
            model = load_model(entry.name)
            model.generate(["Hello"], max_new_tokens=2)
        except SelfEvolveError as err:
            table.add_row(entry.name, "[red]fails[/red]", "", str(err))
            continue
        table.add_row(entry.name, "[green]ok[/green]", f"{time.perf_counter() - start:.1f}", model.revision)
        default_ok |= entry.name == DEFAULT_MODEL
    console.print(table)
    if not default_ok and (build or REGISTRY[DEFAULT_MODEL].cached()):
        raise typer.Exit(1)
