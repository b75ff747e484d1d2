"""``selfevolve ih-data``: write instruction-hierarchy training conversations with targets (JSONL)."""

from __future__ import annotations

from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    out: Path = typer.Option(
        ..., "--out", "-o", help="JSONL file for the examples (kind, family, messages, target)."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    seed_tasks: Path = typer.Option(None, "--seed-tasks", help="JSONL of seed tasks ('task' field)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with HierarchyDataConfig values."),
    overrides: list[str] = typer.Option(None, "--set", help="Config override key=value, e.g. ignorance=96."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Generate context-synthesis, context-ignorance, refusal, look-alike and ordinary examples with the model."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from collections import Counter

    from selfevolve.acquire.hierarchy import (
        SEED_TASKS,
        HierarchyDataConfig,
        generate_hierarchy_data,
        load_seed_tasks,
        write_examples,
    )
    from selfevolve.config import load_config
    from selfevolve.runtime import load_model

    settings = load_config(HierarchyDataConfig, config, overrides or [])
    tasks = load_seed_tasks(seed_tasks) if seed_tasks is not None else SEED_TASKS
    backend = load_model(model, device=device)
    examples = generate_hierarchy_data(backend, settings, tasks)
    write_examples(examples, out)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(Counter(e.kind for e in examples).items()))
    typer.echo(f"wrote {len(examples)} examples ({counts}) to {out}")
