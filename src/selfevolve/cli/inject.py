"""``selfevolve inject``: put documents into a model's weights with SELF-PARAM, and save the updated model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL

MODES = ("single", "batch", "sequential")


def main(
    docs: str = typer.Argument(
        ...,
        help="A .txt file, a folder of .txt files, a .jsonl file (text, id, title), or fictional:N[:SEED].",
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: model/, report.json, config.yaml, checkpoints."
    ),
    lora: bool = typer.Option(
        None, "--lora/--full", help="LoRA adapters (merged at the end) or full fine-tuning."
    ),
    mode: str = typer.Option(
        None, "--mode", help="single, batch or sequential (default: the config's, batch)."
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file with InjectConfig values (SelfParamConfig's and synthesis)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. train.epochs=3."
    ),
    questions: Path = typer.Option(
        None,
        "--questions",
        help="Held-out questions (JSONL) to score before and after (fictional sets bring theirs).",
    ),
    regularizer_text: Path = typer.Option(
        None,
        "--regularizer-text",
        help="Unrelated text (.txt, folder or .jsonl) for the KL-to-base regularizer that keeps general "
        "knowledge; turns it on with regularizer_weight=1.0 unless --set gives a weight.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    store: Path = typer.Option(
        None, "--store", help="Experience store file to record the synthesized experiences."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Inject documents into a model's weights (SELF-PARAM) and write the updated model and a report."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config
    from selfevolve.loop.recipes import InjectConfig, inject_documents

    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    extra = [
        *(overrides or []),
        *([f"mode={mode}"] if mode else []),
        *([f"train.lora={lora}"] if lora is not None else []),
    ]
    if regularizer_text is not None and not any(o.startswith("regularizer_weight=") for o in extra):
        extra.insert(0, "regularizer_weight=1.0")
    report = inject_documents(
        docs,
        out,
        load_config(InjectConfig, config, extra),
        model=model,
        device=device,
        questions=questions,
        regularizer_text=regularizer_text,
        resume=resume,
        store=store,
        on_round=lambda row: typer.echo(
            f"round {row['round']}: " + json.dumps({"round": row["round"], "retention": row["retention"]})
        ),
    )
    typer.echo(
        f"before: {report['before']}\nafter:  {report['after']}\nwrote {out / 'model'} and {out / 'report.json'}"
    )
