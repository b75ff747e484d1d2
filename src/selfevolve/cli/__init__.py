"""The ``selfevolve`` command line: one module per subcommand, listed here in one place.

User mistakes (a :class:`~selfevolve.errors.SelfEvolveError`) print one line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

from selfevolve import __version__
from selfevolve.cli import (
    acr,
    bench,
    clean_prefs,
    demo,
    doctor,
    eval_qa,
    evolve,
    exec_,
    generate,
    ih_data,
    ih_eval,
    ih_train,
    inject,
    judge_code,
    judge_consistency,
    models,
    repair_train,
    report,
    rl,
    serve,
    trace,
)
from selfevolve.errors import SelfEvolveError

app = typer.Typer(
    name="selfevolve",
    help="A language model that improves itself: acquire, refine, update, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMANDS = (
    (models.main, "models"),
    (generate.main, "generate"),
    (serve.main, "serve"),
    (doctor.main, "doctor"),
    (demo.main, "demo"),
    (inject.main, "inject"),
    (eval_qa.main, "eval-qa"),
    (judge_code.main, "judge-code"),
    (clean_prefs.main, "clean-prefs"),
    (judge_consistency.main, "judge-consistency"),
    (exec_.main, "exec"),
    (trace.main, "trace"),
    (repair_train.main, "repair-train"),
    (acr.main, "acr"),
    (evolve.main, "evolve"),
    (report.main, "report"),
    (rl.main, "rl"),
    (ih_data.main, "ih-data"),
    (ih_train.main, "ih-train"),
    (ih_eval.main, "ih-eval"),
)
for command, name in COMMANDS:
    app.command(name)(command)
app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(bench.main)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"selfevolve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A language model that improves itself: acquire, refine, update, evaluate."""


def main() -> None:
    """Console entry point: run the app, turning user errors into one line on stderr."""
    try:
        app()
    except SelfEvolveError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
