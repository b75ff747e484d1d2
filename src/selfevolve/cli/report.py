"""``selfevolve report RUN_DIR``: write the loop run's self-contained HTML report (RUN_DIR/report.html)."""

from __future__ import annotations

from pathlib import Path

import typer


def main(run_dir: Path = typer.Argument(..., help="A run directory made by selfevolve evolve.")) -> None:
    """Write RUN_DIR/report.html: what each iteration acquired, kept, trained and scored, and what shipped."""
    from selfevolve.loop import write_report

    typer.echo(f"report: {write_report(run_dir)}")
