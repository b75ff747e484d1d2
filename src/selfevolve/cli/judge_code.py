"""``selfevolve judge-code``: judge code samples without running them (CodeJudge or a baseline judge)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    samples: Path = typer.Option(
        ..., "--samples", "-s", help="JSONL: task_id, completion, and optionally passed (true/false)."
    ),
    problems: Path = typer.Option(
        None, "--problems", "-p", help="HumanEval-format JSONL (.gz ok); default: the bundled HumanEval."
    ),
    mode: str = typer.Option("analyze", "--mode", help="analyze, taxonomy, vanilla or rubric."),
    judge_model: str = typer.Option(
        DEFAULT_MODEL,
        "--judge",
        "-m",
        help="Registry name, model folder, .gguf or hub id; with --base-url, the served model's name.",
    ),
    reference: bool = typer.Option(False, "--reference", help="Show the judge the canonical solution."),
    base_url: str = typer.Option(
        None, "--base-url", help="Judge through an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."
    ),
    api_key: str = typer.Option("EMPTY", "--api-key", envvar="OPENAI_API_KEY", help="Key for --base-url."),
    out: Path = typer.Option(None, "--out", "-o", help="Write every verdict here as JSON lines."),
    limit: int = typer.Option(None, "--limit", min=1, help="Judge only the first N samples."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with CodeJudgeConfig values."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. analysis_max_new_tokens=256."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Judge code samples with a language model; print the judge's agreement with the labels, if given."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config
    from selfevolve.evaluate.codejudge import MODES, CodeJudgeConfig
    from selfevolve.loop.recipes import judge_samples

    if mode not in MODES:
        raise SelfEvolveError(f"unknown --mode {mode!r}; use one of {', '.join(MODES)}")
    summary = judge_samples(
        samples,
        load_config(CodeJudgeConfig, config, overrides or ()),
        judge_model=judge_model,
        mode=mode,
        problems=problems,
        reference=reference,
        base_url=base_url,
        api_key=api_key,
        limit=limit,
        out=out,
        device=device,
    )
    typer.echo(json.dumps(summary))
