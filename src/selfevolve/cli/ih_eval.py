"""``selfevolve ih-eval``: attack a model (extraction, injections, jailbreaks, look-alikes) and report
robustness per category."""

from __future__ import annotations

from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    attacks: Path = typer.Option(
        None,
        "--attacks",
        "-a",
        help="JSONL: category, messages, check {type, value} (default: the built-in set).",
    ),
    split: str = typer.Option("all", "--split", help="Built-in set: train, heldout or all families."),
    per_family: int = typer.Option(2, "--per-family", min=1, help="Built-in set: attacks per family."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Most tokens per reply."),
    json_out: Path = typer.Option(
        None, "--json", help="Write {category: {robustness, count}} and every reply."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Send every attack, check each reply automatically, print robustness per category."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from selfevolve.evaluate.hierarchy import evaluate_hierarchy

    report = evaluate_hierarchy(
        model,
        attacks,
        split=split,
        per_family=per_family,
        max_new_tokens=max_new_tokens,
        json_out=json_out,
        device=device,
    )
    table = Table(title=f"instruction hierarchy: {model}")
    for column in ("category", "robustness", "count"):
        table.add_column(column, justify="right")
    for category, row in report.categories.items():
        table.add_row(category, f"{row['robustness']:.3f}", str(row["count"]))
    Console().print(table)
    if json_out is not None:
        typer.echo(f"wrote {json_out}")
