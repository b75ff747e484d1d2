"""``selfevolve ih-train``: instruction-hierarchy fine-tuning; the trained model lands in ``DIR/model``."""

from __future__ import annotations

from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: data.jsonl, checkpoint, model/, train.json."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    data: Path = typer.Option(None, "--data", "-d", help="Examples from ih-data (default: generate them)."),
    seed_tasks: Path = typer.Option(None, "--seed-tasks", help="JSONL of seed tasks ('task' field)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML with data.* and sft.train.* values."),
    overrides: list[str] = typer.Option(None, "--set", help="Override key=value, e.g. sft.train.epochs=3."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Generate privilege-aware data with the model, fine-tune it (LoRA, merged) and save DIR/model."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.acquire.hierarchy import SEED_TASKS, load_seed_tasks
    from selfevolve.config import load_config, save_config
    from selfevolve.loop.hierarchy import InstructionHierarchyConfig, instruction_hierarchy
    from selfevolve.runtime import load_model

    settings = load_config(InstructionHierarchyConfig, config, overrides or [])
    tasks = load_seed_tasks(seed_tasks) if seed_tasks is not None else SEED_TASKS
    backend = load_model(model, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(settings, out / "config.yaml")
    summary = instruction_hierarchy(backend, out, settings, seed_tasks=tasks, data=data, resume=resume)
    typer.echo(
        f"trained on {summary['examples']} examples in {summary['steps']} steps "
        f"({summary['seconds']:.0f} s); model in {summary['model']}"
    )
