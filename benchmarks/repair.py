"""Benchmark ``repair``: NExT self-training on HumanEval mutants, and the tracer's overhead.

Rows (one per model, round and prompt mode): held-out fix rate pass@1 and pass@k with and without the inline
trace, training samples kept, and seconds spent sampling, training and evaluating. Round 0 is the base model.
Overhead: every canonical solution's HumanEval test run plain and traced in the sandbox, interleaved; the median
ratio of the whole sandboxed run (what a user waits for) and of the test's own run time inside the interpreter,
and whether the traced runs returned what the plain runs did on every call of the tests.

    selfevolve bench repair [--models a,b] [--rounds 2] [--samples 4] [--train-tasks 8] [--eval-tasks 6]
        [--eval-samples 2] [--max-new-tokens 160] [--skip-overhead] [--skip-training] [--fresh]

The defaults are sized for a 2-core CPU (about 30 minutes for SmolLM2-135M); RepairConfig's own defaults
(16 training tasks, 8 held out, 4 samples each) suit a GPU.

Runs go to ``results/repair-runs/MODEL`` and resume there after a crash (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from benchmarks._common import print_table, write_results
from selfevolve.acquire.trace import Trace, TraceConfig, trace_call
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.loop.repair import RepairConfig, repair_train
from selfevolve.records import Problem
from selfevolve.runtime import load_model
from selfevolve.runtime.registry import lookup
from selfevolve.update.training import TrainingConfig

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def overhead(problems: list[Problem], repeat: int) -> dict:
    """Traced against plain runs of each canonical solution's tests (the same harness, tracer on or off): the
    whole sandboxed run once each, and the test's own run time inside the interpreter as the fastest of
    ``repeat`` runs each (both warm or both cold, never mixed). A problem's plain and traced runs follow each
    other on one worker, which goes first alternating, so the load of a shared machine falls on both alike.
    The results compared are what the solution returned on each of its tests' calls."""
    config = TraceConfig(timeout_s=20.0, max_steps=10**9)
    jobs = [(p.prompt + p.canonical_solution, f"check({p.entry_point})", p.test) for p in problems]

    def measure(index: int) -> tuple[Trace, Trace, Trace, Trace]:
        program, call, setup = jobs[index]
        runs = {}
        for traced in (False, True) if index % 2 == 0 else (True, False):
            once = trace_call(program, call, config, setup=setup, traced=traced)
            best = trace_call(program, call, config, setup=setup, traced=traced, repeat=repeat)
            runs[traced] = once, best
        return runs[False][0], runs[True][0], runs[False][1], runs[True][1]

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        plain, traced, plain_best, traced_best = zip(*pool.map(measure, range(len(jobs))))
    seconds = time.perf_counter() - began
    finished = [i for i in range(len(jobs)) if traced[i].status == traced_best[i].status == "returned"]
    # Tests that draw unseeded random inputs call with other values each run: two plain runs tell them apart.
    repeatable = [i for i in finished if plain[i].returns == plain_best[i].returns]
    return {
        "problems": len(problems),
        "traced_to_the_end": len(finished),
        "stopped_by_the_time_limit": [problems[i].task_id for i in range(len(jobs)) if i not in finished],
        "random_inputs": [problems[i].task_id for i in finished if i not in repeatable],
        "results_compared": len(repeatable),
        "results_equal_plain": sum(
            bool(plain[i].returns)
            and (traced[i].returns, traced_best[i].returns) == (plain[i].returns, plain_best[i].returns)
            for i in repeatable
        ),
        "calls_compared": sum(2 * len(plain[i].returns) for i in repeatable),
        "distinct_results": len({plain[i].returns for i in repeatable}),
        "median_ratio_sandboxed_run": statistics.median(traced[i].wall_s / plain[i].wall_s for i in finished),
        "median_ratio_in_process": statistics.median(
            traced_best[i].seconds / plain_best[i].seconds for i in finished
        ),
        "median_steps": statistics.median(traced[i].steps for i in finished),
        "median_plain_sandboxed_s": statistics.median(plain[i].wall_s for i in finished),
        "median_traced_sandboxed_s": statistics.median(traced[i].wall_s for i in finished),
        "median_plain_in_process_s": statistics.median(plain_best[i].seconds for i in finished),
        "median_traced_in_process_s": statistics.median(traced_best[i].seconds for i in finished),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench repair", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=None, help=f"comma-separated; default: those installed of {MODELS}"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="samples per training problem and round")
    parser.add_argument("--train-tasks", type=int, default=8)
    parser.add_argument("--eval-tasks", type=int, default=6)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--trace-budget", type=int, default=384, help="tokens of inline trace per prompt")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per problem for in-process times")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs instead of resuming them")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else [m for m in MODELS if lookup(m).installed()]
    problems = load_humaneval()

    summary = {}
    if not args.skip_overhead:
        summary = overhead(problems, args.repeat)
        print(f"tracer overhead: {summary}", flush=True)
    config = RepairConfig(
        rounds=args.rounds,
        samples=args.samples,
        train_tasks=args.train_tasks,
        eval_tasks=args.eval_tasks,
        eval_samples=args.eval_samples,
        max_new_tokens=args.max_new_tokens,
        trace=TraceConfig(token_budget=args.trace_budget, timeout_s=5.0),
        train=TrainingConfig(epochs=args.epochs, learning_rate=5e-4),
    )
    rows: list[dict] = []
    for name in [] if args.skip_training else names:
        work = Path(args.out) / "repair-runs" / name
        if args.fresh and work.exists():
            shutil.rmtree(work)
        model = load_model(name)
        began = time.perf_counter()

        def report(result, name=name, began=began) -> None:
            for mode, rates in result.fix_rate.items():
                rows.append(
                    {
                        "model": name,
                        "round": result.round,
                        "mode": mode,
                        **rates,
                        "kept": result.kept,
                        "sampled": result.sampled,
                        "train_s": result.train.get("seconds", 0.0),
                        "sample_s": result.seconds.get("sample", 0.0),
                        "eval_s": result.seconds.get("eval", 0.0),
                        "elapsed_s": time.perf_counter() - began,
                    }
                )
            print(rows[-2], rows[-1], sep="\n", flush=True)

        repair_train(
            model, problems, config, out_dir=work, resume=(work / "state.json").exists(), on_round=report
        )
    k = f"pass@{args.eval_samples}"
    columns = ["model", "round", "mode", "pass@1", k, "kept", "sampled", "sample_s", "train_s", "eval_s"]
    if rows:
        print_table("repair: held-out fix rate per self-training round (round 0: base model)", rows, columns)
    if summary:
        columns = [
            "median_ratio_sandboxed_run",
            "median_ratio_in_process",
            "median_steps",
            "traced_to_the_end",
            "results_compared",
            "results_equal_plain",
            "calls_compared",
        ]
        print_table(
            "tracer overhead: traced / plain on the canonical solutions (medians)", [summary], columns
        )
    path = write_results("repair", rows, out_dir=args.out, overhead=summary, config=asdict(config))
    print(f"wrote {path}")
