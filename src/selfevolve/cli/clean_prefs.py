"""``selfevolve clean-prefs``: audit a preference set with a committee and clean it by source (SAC)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def main(
    data: Path = typer.Argument(..., help="JSONL (.gz ok) of prompt/chosen/rejected pairs or HH dialogues."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for cleaned.jsonl, audit.jsonl and summary.json (replaced)."
    ),
    policy: str = typer.Option("flip", "--policy", help="flip or remove the confident mis-labels."),
    members: list[str] = typer.Option(
        None,
        "--members",
        help="Committee member (repeat): crossfit:minilm|tfidf|surface|lm, judge:MODEL, rm:FOLDER or "
        "module:function; default: crossfit:minilm, crossfit:tfidf, crossfit:surface.",
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-fitting folds of the reward-model members."),
    seed: int = typer.Option(0, "--seed", help="Fold assignment."),
    source_judge: str = typer.Option(
        None,
        "--source-judge",
        help="Model that sorts the residual sources by a judge prompt (registry name).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad line instead of skipping it."),
    cache: Path = typer.Option(None, "--cache", help="Folder that keeps each member's scores between runs."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with SACConfig values."),
    overrides: list[str] = typer.Option(None, "--set", help="SACConfig override key=value."),
) -> None:
    """Score every pair with a committee, sort the disagreements into six sources, flip or drop them."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config
    from selfevolve.refine.sac import SACConfig, clean_preferences

    settings = load_config(SACConfig, config, [*(overrides or ()), f"policy={policy}"])
    summary = clean_preferences(
        data,
        out,
        members=members or (),
        config=settings,
        folds=folds,
        seed=seed,
        strict=strict,
        source_judge_model=source_judge,
        cache_dir=cache,
        report=lambda line: typer.echo(line, err=True),
    )
    typer.echo(json.dumps(summary))
