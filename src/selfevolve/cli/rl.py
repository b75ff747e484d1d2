"""``selfevolve rl``: RL fine-tuning by single-agent PPO or CORY (https://arxiv.org/abs/2410.06101)."""

from __future__ import annotations

from pathlib import Path

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    method: str = typer.Option("cory", "--method", help="ppo (one policy) or cory (pioneer and observer)."),
    task: str = typer.Option("sentiment", "--task", "-t", help="sentiment (IMDB prefixes, VADER) or gsm8k."),
    iterations: int = typer.Option(None, "--iterations", "-n", help="RL iterations (default 20)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: metrics.jsonl, checkpoint, adapters."),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    data: Path = typer.Option(None, "--data", help="gsm8k: JSONL with question/answer (train.jsonl)."),
    reward: str = typer.Option(
        None,
        "--reward",
        help="module:function replacing the task reward: reward(query, response, reference).",
    ),
    merge: bool = typer.Option(False, "--merge", help="Also write each adapter merged into a model folder."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with RLConfig values."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. batch_size=8 or ppo.kl_coef=0.1."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue after the last checkpoint in --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Fine-tune a model with PPO or CORY on a reward; one metrics line per iteration and agent."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config
    from selfevolve.runtime import load_model
    from selfevolve.update.rl import RLConfig, final_summary, run_rl

    named = {"method": method, "task": task, "iterations": iterations, "reward": reward}
    extra = [*(overrides or []), *(f"{k}={v}" for k, v in named.items() if v is not None)]
    if data is not None:
        extra.append(f"data={data.resolve()}")
    if merge:
        extra.append("merge=true")
    settings = load_config(RLConfig, config, extra)
    backend = load_model(model, device=device)
    result = run_rl(backend, settings, out, resume=resume)
    for agent, numbers in final_summary(result.rows).items():
        typer.echo(
            f"{agent}: reward {numbers['first_reward']:.3f} (first 10) -> {numbers['last_reward']:.3f} "
            f"(last 10), KL {numbers['last_kl']:.3f}"
        )
    typer.echo(f"wrote {out / 'metrics.jsonl'} and {out / 'adapters'}")
