"""``selfevolve demo``: a short tour of what has landed, on the embedded default model.

It grows with the library: each method adds its stage to :func:`selfevolve.loop.tour.tour` once it exists.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model to show off."),
    out: Path = typer.Option(Path("results/demo"), "--out", help="Where the experience store and export go."),
) -> None:
    """Load the model, generate in a batch, score answers, sample, compress the KV cache, repair a traced bug in
    the sandbox, and record it all in the experience store."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.loop.tour import tour

    console = Console()
    for section in tour(model, out):
        if section.columns:
            table = Table(title=section.title)
            for column in section.columns:
                table.add_column(column)
            for row in section.rows:
                table.add_row(*row)
            console.print(table)
            continue
        console.print(section.title, style="bold", markup=False, highlight=False)
        if section.code:
            console.print(Syntax(section.code, "python", word_wrap=True))
        if section.text:
            console.print(section.text, markup=False, highlight=False)
