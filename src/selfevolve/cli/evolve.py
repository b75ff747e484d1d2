"""``selfevolve evolve CONFIG``: run (or resume) the self-evolution loop, with progress bars and a summary."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class _Bars:
    """One progress bar per phase (its steps over the whole run) and one for the iterations."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks = progress, {}

    def __call__(self, event) -> None:
        progress, print_ = self.progress, self.progress.console.print
        if event.kind == "plan":
            first, last = event.iteration, event.total
            self.tasks["iterations"] = progress.add_task("iterations", total=last + 1, completed=first)
            for phase, count in event.phases:
                runs = last + 1 if phase == "evaluate" else last
                done = first if phase == "evaluate" else max(first - 1, 0)
                if count:
                    self.tasks[phase] = progress.add_task(phase, total=count * runs, completed=count * done)
        elif event.kind == "start":
            progress.update(
                self.tasks[event.phase],
                description=f"{event.phase}: {event.step} (iteration {event.iteration})",
            )
        elif event.kind in ("done", "resumed"):
            progress.advance(self.tasks[event.phase])
            note = " (finished before, read back)" if event.kind == "resumed" else ""
            print_(
                f"  iteration {event.iteration} {event.phase}/{event.step}{note}: {event.message}",
                markup=False,
            )
        elif event.kind == "iteration":
            progress.advance(self.tasks["iterations"])
            print_(f"[bold]iteration {event.iteration}[/bold]: {event.message}")


def _verdict(record) -> str:
    if record.iteration == 0:
        return "base"
    if not record.accepted:
        return "rolled back"
    return "accepted" if record.result["updated"] else "no update"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float | int) else str(value)


def _summary(summary, console: Console) -> None:
    """Metrics as rows, iterations as columns (fits a narrow terminal); the shipped iteration starred."""
    iterations = summary.iterations
    table = Table(title=f"run {summary.run_dir}")
    table.add_column("")
    for record in iterations:
        table.add_column(
            f"{record.iteration}{' ★' if record.iteration == summary.best_iteration else ''}", justify="right"
        )
    table.add_row(
        "update",
        *(_verdict(r) for r in iterations),
    )
    for metric in sorted({m for r in iterations for m in r.result["scores"]}):
        table.add_row(metric, *(_number(r.result["scores"].get(metric, "")) for r in iterations))
    console.print(table)
    best = iterations[summary.best_iteration]
    console.print(
        f"shipped: iteration {summary.best_iteration} ({best.reason}) -> {summary.model_dir}", markup=False
    )
    if summary.stopped_early:
        console.print("stopped early: no new best within the patience", markup=False)
    console.print(f"report: {summary.report}", markup=False)


def main(
    config: Path = typer.Argument(..., help="Run config (YAML), or a run directory to resume."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: the config's out)."),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="Override key=value; a step's as phase.step.key=value, e.g. update.selfparam.train.epochs=2.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Require an existing run in the directory and continue it."
    ),
) -> None:
    """Run the self-evolution loop (acquire, refine, update, evaluate) from a config; resumes after a crash."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.loop import evolve

    console = Console()
    columns = (TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        summary = evolve(config, out=out, overrides=overrides or (), resume=resume, on_event=_Bars(progress))
    _summary(summary, console)
