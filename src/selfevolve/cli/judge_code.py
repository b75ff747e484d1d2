"""``selfevolve judge-code``: judge code samples without running them (CodeJudge or a baseline judge)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    samples: Path = typer.Option(
        ..., "--samples", "-s", help="JSONL: task_id, completion, and optionally passed (true/false)."
    ),
    problems: Path = typer.Option(
        None, "--problems", "-p", help="HumanEval-format JSONL (.gz ok); default: the bundled HumanEval."
    ),
    mode: str = typer.Option("analyze", "--mode", help="analyze, taxonomy, vanilla or rubric."),
    judge_model: str = typer.Option(
        DEFAULT_MODEL,
        "--judge",
        "-m",
        help="Registry name, model folder, .gguf or hub id; with --base-url, the served model's name.",
    ),
    reference: bool = typer.Option(False, "--reference", help="Show the judge the canonical solution."),
    base_url: str = typer.Option(
        None, "--base-url", help="Judge through an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."
    ),
    api_key: str = typer.Option("EMPTY", "--api-key", envvar="OPENAI_API_KEY", help="Key for --base-url."),
    out: Path = typer.Option(None, "--out", "-o", help="Write every verdict here as JSON lines."),
    limit: int = typer.Option(None, "--limit", min=1, help="Judge only the first N samples."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with CodeJudgeConfig values."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. analysis_max_new_tokens=256."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Judge code samples with a language model; print the judge's agreement with the labels, if given."""
    from selfevolve.acquire.mutate import load_candidates
    from selfevolve.config import load_config
    from selfevolve.evaluate.codejudge import MODES, CodeJudgeConfig, judge, judge_metrics
    from selfevolve.evaluate.humaneval import load_humaneval

    if mode not in MODES:
        raise SelfEvolveError(f"unknown --mode {mode!r}; use one of {', '.join(MODES)}")
    settings = load_config(CodeJudgeConfig, config, overrides or ())
    candidates = load_candidates(samples)[:limit]
    if not candidates:
        raise SelfEvolveError(f"{samples} holds no samples; write one JSON object per line")
    by_id = {p.task_id: p for p in load_humaneval(problems)}
    unknown = sorted({c.task_id for c in candidates} - set(by_id))
    if unknown:
        where = problems or "the bundled HumanEval"
        raise SelfEvolveError(f"task id(s) {unknown[:5]} are not in {where}; check --samples and --problems")

    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    if base_url:
        from selfevolve.runtime.http import OpenAIBackend

        backend = OpenAIBackend(base_url, model=judge_model, api_key=api_key)
    else:
        from selfevolve.runtime import load_model

        backend = load_model(judge_model, device=device)
    results = judge(backend, by_id, candidates, mode, settings, reference=reference)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as handle:
            for candidate, result in zip(candidates, results):
                row = {**result.as_dict(), "passed": candidate.passed}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    valid = [r for r in results if r.valid]
    summary = {
        "judge": getattr(backend, "revision", backend.name),
        "mode": mode,
        "reference": reference,
        "n": len(results),
        "invalid": len(results) - len(valid),
        "mean_score": sum(r.score for r in valid) / len(valid) if valid else None,
    }
    if any(c.passed is not None for c in candidates):
        summary |= judge_metrics(results, candidates)
    typer.echo(json.dumps(summary))
