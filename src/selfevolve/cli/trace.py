"""``selfevolve trace FILE.py --call "f(3, [1, 2])"``: trace a call of a program run in the sandbox."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError


def _undefined(program: str, call: str) -> list[str]:
    """Names the call reads that neither the program's top-level functions, the call itself nor the builtins
    define (the call is evaluated outside the sandbox, so it sees nothing else of the program)."""
    from selfevolve.acquire.trace import program_functions

    bound = set(dir(builtins)) | set(program_functions(program))
    for node in ast.walk(ast.parse(call)):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    used = [
        n.id for n in ast.walk(ast.parse(call)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    ]
    return sorted(set(used) - bound)


def main(
    file: Path = typer.Argument(..., help="The Python file that defines what to call."),
    call: str = typer.Option(
        ..., "--call", "-c", help='What to run: an expression such as "f(3, [1, 2])", or "assert f(3) == 4".'
    ),
    width: int = typer.Option(40, "--width", help="Characters of a value shown before it is cut with …."),
    first: int = typer.Option(
        3, "--first", help="Runs of a line shown before the … (first loop iterations)."
    ),
    last: int = typer.Option(1, "--last", help="Runs of a line shown after the …."),
    budget: int = typer.Option(
        1024, "--budget", help="Most tokens (about 3 characters each) the trace comments may take."
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds before the run is stopped."),
    max_steps: int = typer.Option(100_000, "--max-steps", help="Executed lines before the run is stopped."),
) -> None:
    """Trace one call of FILE: each executed line gets its run order and the variables it changed.

    Exit status 0 when the call returned, 1 when it raised, timed out or was stopped, 2 on a usage error.
    """
    from selfevolve.acquire.trace import TraceConfig, check_call, check_program, trace_call

    try:
        program = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SelfEvolveError(f"{file} does not exist; pass the path of a Python file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SelfEvolveError(f"cannot read {file} ({err}); pass a UTF-8 Python file") from None
    check_program(program, str(file))
    check_call(call)
    missing = _undefined(program, call)
    if missing:
        raise SelfEvolveError(
            f"--call uses {', '.join(missing)}, which is not a top-level function of {file}; the call runs "
            "outside the sandbox and can call the program's functions with plain-data arguments"
        )
    try:
        config = TraceConfig(
            value_width=width,
            first=first,
            last=last,
            token_budget=budget,
            max_steps=max_steps,
            timeout_s=timeout,
        )
    except ValueError as err:
        raise SelfEvolveError(f"{err}; see selfevolve trace --help") from None
    trace = trace_call(program, call, config)  # the sandbox logs a warning when bubblewrap is missing
    typer.echo(trace.render(config), nl=False)
    if trace.output:
        typer.echo(f"# the program printed:\n{trace.output.rstrip()}", err=True)
    if trace.status not in ("returned", "completed"):
        raise typer.Exit(1)
