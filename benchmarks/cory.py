"""Benchmark ``cory``: single-agent PPO against CORY (https://arxiv.org/abs/2410.06101) under one budget, with
CORY's two ablations (no role exchange, no knowledge transfer).

Every run gets the same iterations, queries per iteration, answer tokens, LoRA and PPO settings. Per iteration
and agent: the task reward r (mean over the batch), the KL to the reference (Σ_t log π − log π_ref, mean over
answers) and the combined reward r − β·KL. Rows: per run and agent, the mean reward of the first and last 10
iterations and the mean KL and combined reward of the last 10; then every run over the iterations all runs
share (``--ablation-iterations`` shortens the ablations on a small machine; every run sees the same queries
at iteration i). A PNG of the curves goes to results/cory.png.

    selfevolve bench cory [--runs ppo,cory,no_exchange,no_transfer] [--iterations 20] [--batch-size 8]
        [--ablation-iterations N] [--max-new-tokens 12] [--model smollm2-135m-instruct]
        [--task sentiment|gsm8k --data FILE] [--fresh]

The defaults are sized for a 2-core CPU (SmolLM2-135M, IMDB sentiment, VADER reward). On a GPU, GSM8K with a
larger model: ``selfevolve bench cory --task gsm8k --data ../shared/data/gsm8k/train.jsonl --model
qwen2.5-coder-0.5b-instruct --iterations 100 --batch-size 32 --max-new-tokens 256 --lora-layers 0``.
Runs go to ``results/cory-runs/RUN`` and resume there after a crash (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from benchmarks._common import print_table, write_results
from selfevolve.runtime import load_model
from selfevolve.update.cory import CORYConfig
from selfevolve.update.ppo import PPOConfig
from selfevolve.update.rl import RLConfig, final_summary, run_rl

RUNS = {
    "ppo": {"method": "ppo"},
    "cory": {"method": "cory"},
    "no_exchange": {"method": "cory", "cory": CORYConfig(role_exchange=False)},
    "no_transfer": {"method": "cory", "cory": CORYConfig(knowledge_transfer=False)},
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfevolve bench cory")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="sentiment", choices=("sentiment", "gsm8k"))
    parser.add_argument("--data", default="")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--ablation-iterations", type=int, default=0, help="0: the same as --iterations")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lora-layers", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", default="results")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, name: str) -> RLConfig:
    """The shared budget with run ``name``'s method and ablation."""
    ppo = PPOConfig(
        learning_rate=args.learning_rate,
        kl_coef=args.kl_coef,
        epochs=args.epochs,
        mini_batch_size=args.batch_size,
    )
    ablation = name not in ("ppo", "cory") and args.ablation_iterations
    return RLConfig(
        task=args.task,
        data=args.data,
        iterations=args.ablation_iterations if ablation else args.iterations,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        lora_layers=args.lora_layers,
        seed=args.seed,
        ppo=ppo,
        **RUNS[name],
    )


def same_budget(curves: dict[str, list[dict]]) -> list[dict]:
    """Every run and agent over the iterations all runs share: mean reward, KL and combined reward over the
    last five of them (runs use the same seeds, so iteration i sees the same queries in every run)."""
    shared = min(len(rows) for rows in curves.values())
    window = range(max(shared - 5, 0), shared)
    table = []
    for label, rows in curves.items():
        run, agent = label.split(":")
        picked = [rows[i] for i in window]
        means = {k: sum(r[k] for r in picked) / len(picked) for k in ("reward", "kl", "combined")}
        table.append({"run": run, "agent": agent, "iterations": f"{window.start + 1}-{shared}", **means})
    return table


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    """Reward, KL and combined reward per iteration, one line per run and agent."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, rows in curves.items():
        style = "-" if label.startswith(("ppo", "cory")) else ":"
        for axis, key in zip(axes, ("reward", "kl", "combined"), strict=True):
            axis.plot([r["iteration"] for r in rows], [r[key] for r in rows], style, label=label, marker=".")
    for axis, title in zip(
        axes, ("task reward (VADER)", "KL to the reference", "combined r − β·KL"), strict=True
    ):
        axis.set_title(title)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    args = parse(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    runs_dir = Path(args.out) / "cory-runs"
    rows, curves, seconds = [], {}, {}
    for name in names:
        out = runs_dir / name
        if args.fresh and out.exists():
            shutil.rmtree(out)
        config = run_config(args, name)
        model = load_model(args.model, device=args.device)
        result = run_rl(model, config, out, resume=True)
        seconds[name] = sum(r["seconds"] for r in result.rows) / (2 if config.method == "cory" else 1)
        for agent, numbers in final_summary(result.rows).items():
            rows.append({"run": name, "agent": agent, **numbers, "minutes": seconds[name] / 60})
            curves[f"{name}:{agent}"] = [r for r in result.rows if r["agent"] == agent]
        del model, result
    print_table(
        f"PPO vs CORY ({args.task}, {args.model}, {args.iterations} iterations × {args.batch_size} queries × "
        f"{args.max_new_tokens} tokens)",
        rows,
        ["run", "agent", "first_reward", "last_reward", "last_kl", "last_combined", "minutes"],
    )
    budget = same_budget(curves)
    print_table("Same budget: every run over the last 5 of the iterations they all ran", budget)
    png = Path(args.out) / "cory.png"
    plot(curves, png)
    path = write_results(
        "cory", rows, out_dir=args.out, config=vars(args), same_budget=budget, curves=curves, figure=str(png)
    )
    print(f"wrote {path} and {png}")
