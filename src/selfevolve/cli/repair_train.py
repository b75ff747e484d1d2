"""``selfevolve repair-train``: NExT self-training for program repair on HumanEval mutants (ReST-EM rounds)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    rounds: int = typer.Option(
        None, "--rounds", "-r", help="Self-training rounds (default: the config's, 2)."
    ),
    samples: int = typer.Option(
        None, "--samples", "-n", help="Answers sampled per training problem and round (default 4)."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: problems, rounds (samples, models, evaluations), report."
    ),
    problems: Path = typer.Option(
        None, "--problems", "-p", help="HumanEval-format JSONL (.gz ok); default: the bundled HumanEval."
    ),
    train_tasks: int = typer.Option(None, "--train-tasks", help="Tasks whose mutants are trained on."),
    eval_tasks: int = typer.Option(None, "--eval-tasks", help="Held-out tasks for the fix rate."),
    lora: bool = typer.Option(None, "--lora/--full", help="LoRA adapters (merged) or full fine-tuning."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with RepairConfig values."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. train.epochs=3 or trace.token_budget=256."
    ),
    store: Path = typer.Option(None, "--store", help="Experience store file for every sample and verdict."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Self-train a model to repair buggy programs from execution traces, and report the fix rate per round."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config, save_config
    from selfevolve.evaluate.humaneval import load_humaneval
    from selfevolve.io import write_json
    from selfevolve.loop.repair import RepairConfig, RoundResult, repair_train
    from selfevolve.runtime import load_model
    from selfevolve.store import ExperienceStore

    named = {"rounds": rounds, "samples": samples, "train_tasks": train_tasks, "eval_tasks": eval_tasks}
    extra = [*(overrides or []), *(f"{k}={v}" for k, v in named.items() if v is not None)]
    if lora is not None:
        extra.append(f"train.lora={lora}")
    settings = load_config(RepairConfig, config, extra)
    tasks = load_humaneval(problems)
    backend = load_model(model, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(settings, out / "config.yaml")

    def show(result: RoundResult) -> None:
        rates = "  ".join(
            f"{mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.fix_rate[mode].items())
            for mode in result.fix_rate
        )
        typer.echo(f"round {result.round}: kept {result.kept}/{result.sampled}  {rates}")

    experience = ExperienceStore(store) if store is not None else None
    try:
        results = repair_train(
            backend, tasks, settings, out_dir=out, store=experience, resume=resume, on_round=show
        )
    finally:
        if experience is not None:
            experience.close()
    report = {"model": backend.revision, "rounds": [asdict(r) for r in results]}
    write_json(out / "report.json", report)
    typer.echo(f"wrote {out / 'report.json'}")
