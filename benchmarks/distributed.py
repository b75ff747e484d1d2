"""The training loop under ``accelerate launch``: one process against two, same data, same seed.

Both runs fine-tune on the same fictional documents through ``selfevolve.update.sft.finetune`` (the accelerate
loop every update method uses). The two-process run splits each global batch between the processes and weighs
each shard by its share of the batch's tokens, so its updates should equal the single process's: the table gives
the largest difference between the two loss curves and between the trained models' next-token logits on a
probe. This is how the same config scales to several GPUs or nodes (``accelerate launch --num_processes N``).

    selfevolve bench distributed [--model smollm2-135m-instruct] [--processes 2] [--documents 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import print_table, write_results
from selfevolve.errors import SelfEvolveError

SIDE = Path(__file__).resolve().parent / "_distributed_side.py"
COLUMNS = ["processes", "steps", "final_loss", "max_loss_diff", "max_logit_diff", "seconds"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfevolve bench distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--out", default="results")
    return parser


def run(command: list[str], out: Path, env: dict[str, str] | None = None) -> dict:
    """Run one side process (or launcher) and read what its main process wrote."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SelfEvolveError(f"{' '.join(command[:4])} ... failed: {' | '.join(tail)}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.processes < 2:
        raise SelfEvolveError(
            f"--processes must be at least 2 to compare with one process, got {args.processes}"
        )
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    side = [
        str(SIDE),
        "--model",
        args.model,
        "--documents",
        str(args.documents),
        "--epochs",
        str(args.epochs),
    ]
    side += ["--batch-size", str(args.batch_size), *(["--no-lora"] if args.full else [])]
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one.json", Path(tmp) / "many.json"
        single = run([sys.executable, side[0], str(one), *side[1:]], one)
        # torchrun-style processes (accelerate's multi-GPU launcher) on the CPU: gloo over localhost. Plain
        # `--cpu` launches several CPU processes through mpirun only, which needs an MPI install.
        launch = [launcher, "launch", "--multi_gpu", "--num_processes", str(args.processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
        multi = run([*launch, side[0], str(many), *side[1:]], many, env)
    if len(single["losses"]) != len(multi["losses"]):
        raise SelfEvolveError(f"step counts differ: {len(single['losses'])} vs {len(multi['losses'])}")
    loss_diff = max(abs(a - b) for a, b in zip(single["losses"], multi["losses"], strict=True))
    logit_diff = max(abs(a - b) for a, b in zip(single["probe_logits"], multi["probe_logits"], strict=True))
    rows = [
        {
            "processes": run_["processes"],
            "steps": len(run_["losses"]),
            "final_loss": run_["losses"][-1],
            "max_loss_diff": 0.0 if run_ is single else loss_diff,
            "max_logit_diff": 0.0 if run_ is single else logit_diff,
            "seconds": run_["seconds"],
            "losses": run_["losses"],
        }
        for run_ in (single, multi)
    ]
    print_table("one process against accelerate launch", rows, COLUMNS)
    path = write_results("distributed", rows, out_dir=args.out, config=vars(args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
