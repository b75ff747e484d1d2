"""``selfevolve acr``: audit what a model memorized (MiniPrompt over GCG, adversarial compression ratio)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.registry import DEFAULT_MODEL


def _print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memorization audit (ACR > 1 and success = memorized)")
    columns = (
        "set",
        "targets",
        "memorized",
        "mean ACR, memorized",
        "mean bound, not found",
        "found",
        "s/target",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["set"],
            str(row["targets"]),
            f"{row['memorized']:.0%}",
            "-" if row["mean_acr_memorized"] is None else f"{row['mean_acr_memorized']:.2f}",
            "-" if row["mean_bound"] is None else f"< {row['mean_bound']:.2f}",
            f"{row['success']:.0%}",
            f"{row['seconds_per_target']:.0f}",
        )
    Console(file=sys.stderr).print(table)


def main(
    text: str = typer.Argument(None, help="The string to audit (or --file)."),
    file: Path = typer.Option(
        None, "--file", "-f", help="JSONL targets: one object per line, text (id, set)."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    steps: int = typer.Option(40, "--steps", help="GCG steps at the first prompt length (x1.2 per failure)."),
    topk: int = typer.Option(256, "--topk", help="Candidate tokens per prompt position."),
    batch: int = typer.Option(32, "--batch", help="Single-token swaps evaluated per step."),
    template: str = typer.Option(
        "none", "--template", help="none (raw text prompt) or chat (the user turn)."
    ),
    max_prompt_tokens: int = typer.Option(30, "--max-prompt-tokens", help="Longest prompt the search tries."),
    ascii_only: bool = typer.Option(False, "--ascii-only", help="Only printable-ASCII prompt tokens."),
    seed: int = typer.Option(0, "--seed", help="Initial prompts and candidate sampling."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Results JSONL, appended per target and resumed from (default for --file: FILE.acr.jsonl); "
        "with --file a histogram goes beside it as .png.",
    ),
    memorized_out: Path = typer.Option(
        None,
        "--memorized-out",
        help="Write the memorized targets here as JSONL (a document file for inject).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Find the shortest prompt that makes the model emit each target; print one JSON line per target."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.evaluate.acr_targets import load_targets
    from selfevolve.evaluate.gcg import GCGConfig
    from selfevolve.evaluate.memorization import MiniPromptConfig, as_targets, audit_memorization
    from selfevolve.runtime import load_model

    if (text is None) == (file is None):
        raise SelfEvolveError("pass either a TEXT to audit or --file F.jsonl, not both and not neither")
    targets = load_targets(file) if file is not None else as_targets([text])
    config = MiniPromptConfig(
        GCGConfig(steps=steps, topk=topk, batch=batch, template=template, ascii_only=ascii_only, seed=seed),
        max_prompt_tokens=max_prompt_tokens,
    )
    if out is None and file is not None:
        out = Path(f"{file.stem}.acr.jsonl")
    report = audit_memorization(
        load_model(model, device=device),
        targets,
        config,
        resume_file=out,
        histogram_file=out.with_suffix(".png") if file is not None else None,
        memorized_file=memorized_out,
    )
    keys = ("id", "set", "target", "target_tokens", "prompt_tokens", "acr", "memorized", "success")
    for row in report.rows:
        typer.echo(json.dumps({k: row[k] for k in (*keys, "prompt", "steps", "seconds")}))
    if report.histogram is not None:
        _print_summary(report.summary)
        typer.echo(f"histogram: {report.histogram}", err=True)
    if memorized_out is not None:
        typer.echo(f"{len(report.memorized)} memorized target(s) written to {memorized_out}", err=True)
