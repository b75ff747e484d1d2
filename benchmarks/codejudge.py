"""Benchmark ``codejudge``: CodeJudge and two baseline judges against execution on labelled HumanEval code.

Candidates (cached under ``--out/codejudge/``): for each problem of a seeded sample, its canonical solution
(passes) and up to ``--mutants`` AST mutants of it that fail the tests, plus ``--model-samples`` completions
per problem sampled from ``--sampler`` (labelled by execution). Every judge model then runs every mode:
``analyze`` (CodeJudge A, analyze then summarize), ``taxonomy`` (CodeJudge B, fault localization),
``vanilla`` (Yes/No) and ``rubric`` (ICE-Score 0-4). Verdicts of each (judge, mode) are cached too, so an
interrupted run resumes at the batch where it stopped; cached verdicts are parsed again from their raw outputs,
so they count as the current parsers read them.

Rows: judge, mode, n, accuracy (binary modes, on valid outputs), accuracy_invalid_as_wrong, Kendall τ and
Spearman ρ of the judge's score against pass/fail, invalid_rate, seconds_per_sample. ``positive_rate`` is the
share of passing candidates (the accuracy of a judge that always says No is 1 - positive_rate).

    selfevolve bench codejudge [--problems 16] [--mutants 1] [--full] [--judges A,B] [--modes analyze,...]
        [--model-samples 0] [--sampler NAME] [--reference] [--analysis-tokens 256] [--taxonomy-tokens 256]

CPU default (16 problems, 32 candidates, one torch thread): SmolLM2 about 15-25 min, Qwen2.5-Coder-0.5B about
2-3 times longer on a shared 2-core machine; ``--full --batch-size 64`` is meant for a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks._common import print_table, write_results
from selfevolve.acquire.mutate import labelled_candidates, load_candidates, model_samples, save_candidates
from selfevolve.config import config_to_dict
from selfevolve.evaluate.codejudge import (
    MODES,
    CodeJudgeConfig,
    JudgeResult,
    judge,
    judge_metrics,
    reparse,
)
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.records import Candidate, Problem
from selfevolve.runtime import load_model
from selfevolve.runtime.registry import lookup

JUDGES = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
COLUMNS = (
    "judge",
    "mode",
    "n",
    "accuracy",
    "accuracy_invalid_as_wrong",
    "kendall_tau",
    "spearman_rho",
    "invalid_rate",
    "seconds_per_sample",
)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_candidates(problems: list[Problem], args: argparse.Namespace, cache: Path) -> list[Candidate]:
    """The labelled candidates, from the cache when the same settings built them before."""
    if not args.full:
        problems = random.Random(args.seed).sample(problems, min(args.problems, len(problems)))
        problems.sort(key=lambda p: int(p.task_id.split("/")[-1]))
    settings = [[p.task_id for p in problems], args.mutants, args.seed, args.model_samples, args.sampler]
    path = cache / f"candidates-{_key(settings)}.jsonl"
    if path.is_file():
        print(f"candidates from {path}", flush=True)
        return load_candidates(path)
    began = time.perf_counter()
    samples: list[Candidate] = []
    if args.model_samples:
        sampler = load_model(args.sampler, batch_size=args.batch_size)
        samples = model_samples(sampler, problems, n=args.model_samples, temperature=0.8, seed=args.seed)
    candidates = labelled_candidates(
        problems, mutants_per_problem=args.mutants, samples=samples, seed=args.seed
    )
    candidates = [c for c in candidates if c.passed is not None]  # a sandbox failure is no label
    save_candidates(path, candidates)
    print(f"built {len(candidates)} candidates in {time.perf_counter() - began:.0f}s -> {path}", flush=True)
    return candidates


def _load_verdicts(path: Path, config: CodeJudgeConfig) -> list[JudgeResult]:
    """Cached verdicts, parsed again from their raw outputs; a last line cut short by an interrupted write is
    dropped (and judged again)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [reparse(JudgeResult(**row), config) for row in rows]


def run_judge(
    name: str, modes: list[str], candidates: list[Candidate], problems: dict[str, Problem], args, cache: Path
) -> list[dict]:
    """Every mode of one judge model. Verdicts are appended to a cache file one batch at a time, so an
    interrupted run resumes at the batch where it stopped (batches are fixed, so the verdicts are the same)."""
    config = CodeJudgeConfig(
        analysis_max_new_tokens=args.analysis_tokens,
        taxonomy_max_new_tokens=args.taxonomy_tokens,
        batch_size=args.batch_size,
    )
    backend = None
    rows = []
    for mode in modes:
        key = _key(name, mode, args.reference, config_to_dict(config), [asdict(c) for c in candidates])
        path = cache / f"verdicts-{name}-{mode}{'-ref' if args.reference else ''}-{key}.jsonl"
        results = _load_verdicts(path, config) if path.is_file() else []
        if results:
            print(f"{name} {mode}: {len(results)} cached verdicts in {path}", flush=True)
        began = time.perf_counter()
        for start in range(len(results), len(candidates), config.batch_size):
            backend = backend or load_model(name, batch_size=args.batch_size)
            chunk = candidates[start : start + config.batch_size]
            judged = judge(backend, problems, chunk, mode, config, reference=args.reference, progress=False)
            with path.open("a") as handle:
                handle.writelines(json.dumps(r.as_dict()) + "\n" for r in judged)
            results += judged
            elapsed = time.perf_counter() - began
            print(f"{name} {mode}: {len(results)}/{len(candidates)} judged, {elapsed:.0f}s", flush=True)
        metrics = judge_metrics(results, candidates)
        rows.append({"judge": name, "reference": args.reference, **metrics})
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}
        print(shown, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench codejudge", description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16, help="HumanEval problems (seeded sample)")
    parser.add_argument("--full", action="store_true", help="all 164 problems, 512/384-token budgets (GPU)")
    parser.add_argument("--mutants", type=int, default=1, help="failing mutants kept per problem")
    parser.add_argument("--model-samples", type=int, default=0, help="completions per problem from --sampler")
    parser.add_argument("--sampler", default="qwen2.5-coder-0.5b-instruct", help="model that writes samples")
    parser.add_argument(
        "--judges", default=None, help=f"comma-separated judge models (default: those of {JUDGES} installed)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated judge modes")
    parser.add_argument("--reference", action="store_true", help="show judges the canonical solution")
    parser.add_argument(
        "--analysis-tokens", type=int, help="budget of mode analyze, call 1 (256; --full 512)"
    )
    parser.add_argument("--taxonomy-tokens", type=int, help="budget of mode taxonomy (256; --full 384)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (64 on a GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (more slow a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes must name some of {', '.join(MODES)}, got {args.modes!r}")
    judges = args.judges.split(",") if args.judges else [j for j in JUDGES if lookup(j).installed()]
    args.analysis_tokens = args.analysis_tokens or (512 if args.full else 256)
    args.taxonomy_tokens = args.taxonomy_tokens or (384 if args.full else 256)
    torch.set_num_threads(args.threads)
    cache = Path(args.out) / "codejudge"
    cache.mkdir(parents=True, exist_ok=True)

    humaneval = load_humaneval()
    candidates = build_candidates(humaneval, args, cache)
    counts = {s: sum(c.source == s for c in candidates) for s in ("canonical", "mutant", "model")}
    print(
        f"{len(candidates)} candidates {counts}, {sum(bool(c.passed) for c in candidates)} pass", flush=True
    )
    rows = [
        row
        for name in judges
        for row in run_judge(name, modes, candidates, {p.task_id: p for p in humaneval}, args, cache)
    ]

    title = (
        f"codejudge: {len(candidates)} HumanEval candidates{' (with reference)' if args.reference else ''}"
    )
    print_table(title, rows, COLUMNS)
    path = write_results(
        "codejudge" + ("-reference" if args.reference else ""),
        rows,
        out_dir=args.out,
        candidates=len(candidates),
        candidate_sources=counts,
        positive_rate=sum(bool(c.passed) for c in candidates) / len(candidates),
        problems=len({c.task_id for c in candidates}),
        config={k: v for k, v in vars(args).items() if k != "out"},
    )
    print(f"wrote {path}")
