"""NExT: program repair with execution traces, and ReST-EM self-training on the model's own verified fixes.

A recipe of the loop layer: it acquires problems and samples, filters them by execution, trains and evaluates,
so it lives above the phases it composes. Recipe (https://arxiv.org/abs/2404.14662, Ni et al., 2024, "NExT: Teaching Large Language Models to Reason
about Code Execution"):

1. **Problems.** Buggy programs are HumanEval canonical solutions with one mutation that makes a test fail
   (:func:`~selfevolve.acquire.mutate.labelled_candidates`). For each, the first failing test statement is
   found and the buggy program is traced on it (:mod:`selfevolve.acquire.trace`).
2. **Prompt.** Buggy code with its inline trace (or without, to measure what traces add), the failing test
   and its outcome; the model answers with a rationale, then the fixed function in a code block.
3. **Self-training** (ReST-EM, https://arxiv.org/abs/2312.06585): each round samples ``samples`` answers per
   training problem from the current model, keeps those whose fix passes *every* test in the sandbox, and
   fine-tunes on them (SFT of prompt → rationale + fix, through the shared training loop).
4. **Evaluation.** Fix rate (pass@1, pass@k) on held-out problems after every round, with and without traces.
   Tasks are split before mutation, so no held-out task has a mutant in training.

Everything lands in ``out_dir`` (``problems.jsonl``, then ``roundNN/`` with ``samples.jsonl``, the training
checkpoint, ``model/``, ``eval.jsonl`` and a ``done.json`` marker) and, given a store, every sample, verdict
and round goes to the experience store; ``resume=True`` continues after a crash from the last finished step.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from selfevolve.acquire.mutate import DEFINITIONS
from selfevolve.acquire.trace import TokenCounter, TraceConfig, token_counter, trace_many
from selfevolve.config import config_to_dict
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import pass_at_k
from selfevolve.io import read_jsonl, write_json, write_jsonl
from selfevolve.records import Problem, Sample
from selfevolve.runtime.backend import Backend, Message
from selfevolve.runtime.model import LocalModel
from selfevolve.sandbox import Remote, Stopped, run_remote
from selfevolve.sandbox.humaneval import evaluate_samples
from selfevolve.store import Experience, ExperienceStore
from selfevolve.update.sft import CrossEntropyObjective
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, save_model, train

METHOD = "next-repair"
"""The ``method`` of every experience this module records."""
MODES = ("trace", "plain")  # evaluation prompts with and without the inline trace


@dataclass
class RepairConfig:
    """NExT self-training settings. *(inferred)*: not fixed by the paper (which samples from PaLM 2); ours."""

    rounds: int = 2  # ReST-EM iterations: sample, keep the verified fixes, fine-tune
    samples: int = 4  # rationale + fix samples per training problem and round (the paper's N)
    temperature: float = 0.8  # *(inferred)* sampling temperature for training samples
    top_p: float = 0.95
    max_new_tokens: int = 384  # room for a few sentences and a whole function
    train_tasks: int = 16  # HumanEval tasks whose mutants are training problems
    eval_tasks: int = 8  # other tasks, held out: the fix rate is measured on their mutants
    mutants_per_task: int = 1  # buggy programs per task (each verified to fail a test)
    eval_samples: int = 4  # answers per held-out problem: pass@1 and pass@k with k = eval_samples
    eval_temperature: float = 0.8
    with_traces: bool = True  # training prompts carry the inline trace (NExT); evaluation does both
    from_base: bool = True  # ReST-EM: each round fine-tunes the *base* model on that round's kept samples
    exemplar: bool = True  # *(inferred)* a worked example before each prompt shows small models the format
    trace: TraceConfig = field(default_factory=lambda: TraceConfig(token_budget=512, timeout_s=5.0))
    # *(inferred)* short SFT per round: LoRA r=16, lr 5e-4, 2 epochs
    train: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=2, learning_rate=5e-4))
    test_timeout_s: float = 5.0  # per sandboxed run of a problem's tests
    seed: int = 0  # task split, mutants and sampling

    def __post_init__(self) -> None:
        for name in ("rounds", "samples", "train_tasks", "eval_tasks", "mutants_per_task", "eval_samples"):
            if getattr(self, name) < 1:
                raise SelfEvolveError(
                    f"repair {name} must be at least 1, got {getattr(self, name)}: it counts rounds, samples or tasks; "
                    f"set {name}=1 or more"
                )
        if self.temperature <= 0 or self.eval_temperature <= 0:
            raise SelfEvolveError(
                f"repair temperature {self.temperature} / eval_temperature {self.eval_temperature}: sampling needs "
                "a positive temperature so that samples differ; set both above 0, e.g. 0.8"
            )


@dataclass(frozen=True)
class RepairProblem:
    """A buggy program, the test it fails, and its trace on that test."""

    key: str  # "HumanEval/12#0": task and mutant number
    task_id: str
    entry_point: str
    program: str  # the whole buggy program (prompt + mutated body)
    test: str  # the failing test statement, e.g. ``assert f(3) == 4``
    outcome: str  # what the test did, e.g. "raised: AssertionError"
    trace: str  # ``program`` with the inline trace of ``test``
    operator: str  # the mutation, for analysis only (the model never sees it)


# Prompts and answers.

INSTRUCTION = (
    "The Python function below has a bug: it fails the test shown. Explain in a few sentences what goes "
    "wrong and why, then write the corrected function, without its docstring, in one ```python code block."
)
TRACE_NOTE = (
    "The code carries the execution trace of the failing test as comments: (n) is the order in which the "
    "lines ran, followed by the variables each run changed; __return__ is the value returned."
)
EXEMPLAR = RepairProblem(
    key="example#0",
    task_id="example",
    entry_point="count_positive",
    program='def count_positive(xs):\n    """Count the numbers in xs greater than zero."""\n    n = 0\n'
    "    for x in xs:\n        if x >= 0:\n            n += 1\n    return n\n",
    test="assert count_positive([0, 2, -1]) == 1",
    outcome="raised: AssertionError",
    trace='def count_positive(xs):  # (0) xs=[0, 2, -1]\n    """Count the numbers in xs greater than zero."""\n'
    "    n = 0  # (1) n=0\n    for x in xs:  # (2) x=0; (5) x=2; (8) x=-1; (10)\n"
    "        if x >= 0:  # (3); (6); (9)\n            n += 1  # (4) n=1; (7) n=2\n"
    "    return n  # (11) __return__=2\n# call: assert count_positive([0, 2, -1]) == 1\n"
    "# raised: AssertionError\n",
    operator="flip_comparison",
)
EXEMPLAR_ANSWER = (
    "The test expects 1 but the function returns 2. For x=0 the condition `x >= 0` holds, so n becomes 1 "
    "although 0 is not greater than zero. The comparison must be strict: `x > 0`.\n"
    "```python\ndef count_positive(xs):\n    n = 0\n    for x in xs:\n        if x > 0:\n            n += 1\n"
    "    return n\n```"
)


def repair_request(problem: RepairProblem, traced: bool) -> str:
    """The user message asking to repair ``problem``, with or without its inline trace."""
    note = f" {TRACE_NOTE}" if traced else ""
    code = problem.trace if traced else problem.program
    return (
        f"{INSTRUCTION}{note}\n\n```python\n{code.rstrip()}\n```\n\n"
        f"Failing test:\n```python\n{problem.test}\n```\nOutcome: {problem.outcome}"
    )


def repair_prompt(problem: RepairProblem, traced: bool, exemplar: bool = True) -> list[Message]:
    """The chat for ``problem``: optionally one worked example first, then the request."""
    shot = [
        {"role": "user", "content": repair_request(EXEMPLAR, traced)},
        {"role": "assistant", "content": EXEMPLAR_ANSWER},
    ]
    return [*(shot if exemplar else []), {"role": "user", "content": repair_request(problem, traced)}]


CLOSING_FENCE = "\n```\n"
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _definitions(code: str, name: str) -> str | None:
    """The imports, definitions and assignments of ``code`` (its tests and prints dropped), if it parses and
    defines the function ``name``; else None."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body):
        return None
    lines = code.splitlines()
    spans = [
        (min([n.lineno, *(d.lineno for d in getattr(n, "decorator_list", []))]), n.end_lineno)
        for n in tree.body
    ]
    kept = [lines[a - 1 : b] for (a, b), n in zip(spans, tree.body) if isinstance(n, DEFINITIONS)]
    return "\n".join("\n".join(chunk) for chunk in kept) + "\n"


def extract_fix(reply: str, entry_point: str) -> str | None:
    """The fixed program in a reply: from the last fenced block that defines ``entry_point``, else from the last
    ``def entry_point`` in the text with its indented body (as much of it as parses); only its imports,
    definitions and assignments are kept (no tests, no prints). None when there is no such function."""
    for block in reversed(_FENCE.findall(reply)):
        fix = _definitions(block, entry_point)
        if fix is not None:
            return fix
    start = reply.rfind(f"def {entry_point}(")
    if start < 0:
        return None
    lines = reply[start:].splitlines()
    body = next(
        (i for i, line in enumerate(lines[1:], 1) if line.strip() and not line[0].isspace()), len(lines)
    )
    for end in range(body, 0, -1):
        fix = _definitions("\n".join(lines[:end]), entry_point)
        if fix is not None:
            return fix
    return None


def answer_target(reply: str) -> str:
    """What the model is trained to write: its answer up to the end of its last code block."""
    end = reply.rfind("```")
    return reply[: end + 3] if end > reply.find("```") >= 0 else reply


# Problems: split, mutants, first failing test, trace.


def split_tasks(problems: Sequence[Problem], config: RepairConfig) -> tuple[list[Problem], list[Problem]]:
    """Training and held-out tasks: a seeded shuffle of the tasks (never of mutants), then two disjoint slices."""
    if config.train_tasks + config.eval_tasks > len(problems):
        raise SelfEvolveError(
            f"train_tasks + eval_tasks = {config.train_tasks + config.eval_tasks} but there are only "
            f"{len(problems)} problems; lower them"
        )
    order = sorted(problems, key=lambda p: p.task_id)
    random.Random(config.seed).shuffle(order)
    return order[: config.train_tasks], order[config.train_tasks : config.train_tasks + config.eval_tasks]


class _Candidate(ast.NodeTransformer):
    """Renames ``candidate`` (HumanEval's name for the function under test) to the entry point."""

    def __init__(self, entry_point: str) -> None:
        self.entry_point = entry_point

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.entry_point, node.ctx) if node.id == "candidate" else node


def check_units(problem: Problem) -> tuple[str, list[tuple[str, str]]]:
    """The test module without ``check`` (setup code), and each test of ``check`` as (prelude, statement):
    an ``assert`` or a loop of them, with ``candidate`` renamed to the function under test."""
    tree = ast.parse(problem.test)
    rename = _Candidate(problem.entry_point)
    setup = [s for s in tree.body if not (isinstance(s, ast.FunctionDef) and s.name == "check")]
    check = next(s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check")
    prelude: list[str] = []
    units = []
    for statement in check.body:
        text = ast.unparse(rename.visit(statement))
        if isinstance(statement, ast.Assert | ast.For | ast.While | ast.If | ast.With | ast.Try):
            units.append(("\n".join(prelude), text))
        else:
            prelude.append(text)
    return "\n".join(ast.unparse(s) for s in setup), units


def first_failures(programs: Sequence[tuple[Problem, str]], timeout_s: float) -> list[int | None]:
    """For each (problem, program), the index of its first failing test unit (running out of time, or the
    program ending, counts), or None when every unit passed or the program did not load.

    The units run here, as trusted code, calling the program's entry point in the sandbox as
    :func:`selfevolve.sandbox.run_tests` does: nothing the program prints or exits with decides the index.
    """

    def one(job: tuple[Problem, str]) -> int | None:
        problem, program = job
        return run_remote(program, functools.partial(_first_failure, problem), timeout_s=timeout_s)[1]

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(one, programs))


def _first_failure(problem: Problem, remote: Remote) -> int | None:
    """Run ``problem``'s test units in order, after the prompt's helpers and the test module's setup, against
    the program behind ``remote``; the index of the first that fails."""
    setup, units = check_units(problem)
    namespace: dict = {"__name__": "__tests__"}
    exec(compile(f"{problem.prompt}\n{setup}", "<setup>", "exec"), namespace)
    namespace[problem.entry_point] = remote.function(problem.entry_point)
    for index, (prelude, unit) in enumerate(units):
        try:
            exec(compile(f"{prelude}\n{unit}", "<tests>", "exec"), namespace)
        except (Exception, Stopped):
            return index
    return None


def build_problems(
    problems: Sequence[Problem],
    config: RepairConfig,
    count_tokens: TokenCounter | None = None,
) -> list[RepairProblem]:
    """Repair problems for ``problems``: up to ``mutants_per_task`` failing mutants each, traced on the first
    test they fail (mutants whose failing test cannot be found are dropped)."""
    from selfevolve.acquire.mutate import labelled_candidates

    candidates = labelled_candidates(problems, mutants_per_problem=config.mutants_per_task, seed=config.seed)
    by_id = {p.task_id: p for p in problems}
    buggy = [c for c in candidates if c.source == "mutant" and c.passed is False]
    programs = [(by_id[c.task_id], (by_id[c.task_id].prompt + c.completion).lstrip("\n")) for c in buggy]
    failing = first_failures(programs, config.test_timeout_s)
    jobs, kept = [], []
    for candidate, (problem, program), index in zip(buggy, programs, failing):
        if index is None:
            continue
        setup, units = check_units(problem)
        prelude, unit = units[index]
        jobs.append((program, unit, f"{setup}\n{prelude}"))
        kept.append(candidate)
    traces = trace_many(jobs, config.trace)
    numbers: dict[str, int] = {}
    result = []
    for candidate, (program, unit, _), trace in zip(kept, jobs, traces):
        number = numbers[candidate.task_id] = numbers.get(candidate.task_id, -1) + 1
        result.append(
            RepairProblem(
                key=f"{candidate.task_id}#{number}",
                task_id=candidate.task_id,
                entry_point=by_id[candidate.task_id].entry_point,
                program=program,
                test=unit,
                outcome=trace.outcome(config.trace.value_width),
                trace=trace.render(config.trace, count_tokens),
                operator=candidate.operator or "",
            )
        )
    return result


# Sampling and verification.


@dataclass
class Attempt:
    """One sampled answer to a repair problem and its verdict."""

    problem: str  # RepairProblem.key
    traced: bool  # whether the prompt carried the trace
    sample: int
    reply: str
    passed: bool
    status: str  # the sandbox status of the full tests, or "no-code" when no fixed function was found


def attempt_repairs(
    backend: Backend,
    problems: Sequence[RepairProblem],
    humaneval: dict[str, Problem],
    config: RepairConfig,
    *,
    traced: bool,
    n: int,
    temperature: float,
    seed: int,
) -> list[Attempt]:
    """Sample ``n`` answers per problem and run each extracted fix against all of its task's tests."""
    if not problems:
        return []
    prompts = [repair_prompt(p, traced, config.exemplar) for p in problems]
    replies = backend.generate(
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=temperature,
        top_p=config.top_p,
        stop=[CLOSING_FENCE],  # the answer is complete once its code block is
        n=n,
        seed=seed,
    )
    for reply in replies:
        if reply.text.count("```") % 2:  # stopped at the closing fence, which the stop string removed
            reply.text += CLOSING_FENCE.rstrip()
    fixes = [extract_fix(r.text, problems[r.prompt_index].entry_point) for r in replies]
    runnable = [(r, fix) for r, fix in zip(replies, fixes) if fix is not None]
    samples = [Sample(problems[r.prompt_index].task_id, "\n" + fix) for r, fix in runnable]
    verdicts = iter(evaluate_samples(humaneval.values(), samples, timeout_s=config.test_timeout_s))
    attempts = []
    for reply, fix in zip(replies, fixes):
        verdict = next(verdicts) if fix is not None else None
        attempts.append(
            Attempt(
                problem=problems[reply.prompt_index].key,
                traced=traced,
                sample=reply.sample_index,
                reply=reply.text,
                passed=bool(verdict and verdict.passed),
                status=verdict.status if verdict else "no-code",
            )
        )
    return attempts


def fix_rates(attempts: Sequence[Attempt], k: int) -> dict[str, float]:
    """Mean pass@1 and pass@k over the problems attempted (unbiased estimator, n samples each)."""
    by_problem: dict[str, list[bool]] = {}
    for attempt in attempts:
        by_problem.setdefault(attempt.problem, []).append(attempt.passed)
    if not by_problem:
        return {"pass@1": 0.0, f"pass@{k}": 0.0}
    return {
        f"pass@{j}": sum(pass_at_k(len(v), sum(v), j) for v in by_problem.values()) / len(by_problem)
        for j in sorted({1, k})
    }


# The self-training loop.


@dataclass
class RoundResult:
    """What one round did: its samples, what was kept, the training, and the held-out fix rates."""

    round: int  # 0 is the base model, evaluated only
    sampled: int = 0
    kept: int = 0
    train: dict = field(default_factory=dict)  # steps, tokens, seconds, final loss (empty: not trained)
    fix_rate: dict = field(default_factory=dict)  # mode ("trace" / "plain") -> {"pass@1": ..., "pass@k": ...}
    seconds: dict = field(default_factory=dict)  # sample, train, eval


def _read_jsonl(path: Path, cls):
    return [cls(**record) for _, record in read_jsonl(path)]


def _write_jsonl(path: Path, items) -> None:
    write_jsonl(path, (asdict(item) for item in items))


class _Recorder:
    """Writes experiences to the store (if any), once per round and phase even across resumes."""

    def __init__(self, store: ExperienceStore | None, run_id: str | None) -> None:
        self.store, self.run_id = store, run_id

    def recorded(self, round_: int, phase: str, summary: bool) -> bool:
        if self.store is None:
            return True
        found = self.store.query(run_id=self.run_id, method=METHOD, phase=phase)
        return any(
            e.metadata.get("round") == round_ and e.metadata.get("summary", False) == summary for e in found
        )

    def attempts(self, round_: int, phase: str, attempts, problems, revision: str) -> None:
        if self.recorded(round_, phase, summary=False):
            return
        self.store.add_many(
            Experience(
                self.run_id,
                task=problems[a.problem].task_id,
                prompt=repair_request(problems[a.problem], a.traced),
                response=a.reply,
                phase=phase,
                feedback={"passed": a.passed, "status": a.status, "operator": problems[a.problem].operator},
                score=float(a.passed),
                method=METHOD,
                model_revision=revision,
                metadata={"round": round_, "problem": a.problem, "sample": a.sample, "traced": a.traced},
            )
            for a in attempts
        )

    def summary(self, round_: int, phase: str, result: dict, revision: str, score: float | None) -> None:
        if self.recorded(round_, phase, summary=True):
            return
        self.store.add(
            Experience(
                self.run_id,
                task="repair",
                prompt="",
                response="",
                phase=phase,
                feedback=result,
                score=score,
                method=METHOD,
                model_revision=revision,
                metadata={"round": round_, "summary": True},
            )
        )


def _load_weights(model: LocalModel, folder: Path) -> None:
    from selfevolve.runtime.loading import load_model

    model.model = load_model(str(folder), device=str(model.device), dtype=model.model.dtype).model.eval()


def repair_train(
    model: LocalModel,
    problems: Sequence[Problem],
    config: RepairConfig | None = None,
    *,
    out_dir: str | Path,
    store: ExperienceStore | None = None,
    resume: bool = False,
    sampler: Backend | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Self-train ``model`` (in place) to repair programs, for ``config.rounds`` ReST-EM rounds.

    Args:
        model: the model to train; its weights after the last round are those of the last trained round.
        problems: HumanEval-format tasks; split into training and held-out tasks by ``config``.
        out_dir: where problems, samples, checkpoints, models and evaluations go.
        store: record every sample, verdict and round here (the run id is kept in ``out_dir/state.json``).
        resume: continue the run in ``out_dir`` after the last step it finished.
        sampler: who writes the answers (default: ``model`` itself; tests pass canned replies).
        on_round: called with each round's result, in order (also for rounds a resumed run had finished).
    Returns one :class:`RoundResult` per round, round 0 being the base model.
    """
    config = config or RepairConfig()
    out = Path(out_dir)
    state_file = out / "state.json"
    if state_file.exists() and not resume:
        raise SelfEvolveError(
            f"{out} already holds a repair-train run; pass resume=True (--resume) or another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    settings = config_to_dict(config)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.setdefault("config", settings) != settings:
        raise SelfEvolveError(
            f"the run in {out} was started with another config (see its state.json); resume it with the same "
            "settings, or start afresh in another folder"
        )
    if store is not None and not state.get("run_id"):
        state["run_id"] = store.start_run("next repair-train", settings)
    write_json(state_file, state)
    recorder = _Recorder(store, state.get("run_id"))
    sampler = sampler or model
    base_revision = model.revision
    base = {k: v.detach().clone() for k, v in model.model.state_dict().items()} if config.from_base else None

    train_tasks, eval_tasks = split_tasks(problems, config)
    humaneval = {p.task_id: p for p in [*train_tasks, *eval_tasks]}
    problems_file = out / "problems.jsonl"
    if problems_file.exists():
        repair_problems = _read_jsonl(problems_file, RepairProblem)
    else:
        repair_problems = build_problems([*train_tasks, *eval_tasks], config, token_counter(model.tokenizer))
        _write_jsonl(problems_file, repair_problems)
    held_out = {p.task_id for p in eval_tasks}
    training = [p for p in repair_problems if p.task_id not in held_out]
    evaluation = [p for p in repair_problems if p.task_id in held_out]
    by_key = {p.key: p for p in repair_problems}

    def evaluate(round_: int, folder: Path) -> tuple[dict, float]:
        began = time.perf_counter()
        eval_file = folder / "eval.jsonl"
        if eval_file.exists():
            attempts = _read_jsonl(eval_file, Attempt)
        else:
            attempts = [
                a
                for mode in MODES
                for a in attempt_repairs(
                    sampler,
                    evaluation,
                    humaneval,
                    config,
                    traced=mode == "trace",
                    n=config.eval_samples,
                    temperature=config.eval_temperature,
                    seed=config.seed + 1000,
                )
            ]
            _write_jsonl(eval_file, attempts)
        recorder.attempts(round_, "evaluate", attempts, by_key, model.revision)
        rates = {
            mode: fix_rates([a for a in attempts if a.traced == (mode == "trace")], config.eval_samples)
            for mode in MODES
        }
        return rates, time.perf_counter() - began

    results = []
    for round_ in range(config.rounds + 1):
        folder = out / f"round{round_:02d}"
        done = folder / "done.json"
        if done.exists():  # finished before a crash: take its model and move on
            result = RoundResult(**json.loads(done.read_text()))
            if (folder / "model").is_dir():
                _load_weights(model, folder / "model")
                model.revision = f"{base_revision}+repair{round_}"
        else:
            folder.mkdir(parents=True, exist_ok=True)
            result = RoundResult(round_)
            if round_ > 0:
                args = (training, by_key, humaneval, config, round_, folder, recorder, base)
                result = _improve(model, sampler, *args)
                if result.train:
                    model.revision = f"{base_revision}+repair{round_}"
            result.fix_rate, result.seconds["eval"] = evaluate(round_, folder)
            summary = {"fix_rate": result.fix_rate, "sampled": result.sampled, "kept": result.kept}
            recorder.summary(round_, "evaluate", summary, model.revision, result.fix_rate["trace"]["pass@1"])
            write_json(done, asdict(result))
        results.append(result)
        if on_round is not None:
            on_round(result)
    if store is not None:
        store.finish_run(state["run_id"])
    return results


def _improve(
    model: LocalModel,
    sampler: Backend,
    training: Sequence[RepairProblem],
    by_key: dict[str, RepairProblem],
    humaneval: dict[str, Problem],
    config: RepairConfig,
    round_: int,
    folder: Path,
    recorder: _Recorder,
    base_weights: dict[str, torch.Tensor] | None,
) -> RoundResult:
    """One ReST-EM round: sample (E-step), keep the fixes that pass every test, fine-tune on them (M-step)."""
    result = RoundResult(round_)
    began = time.perf_counter()
    samples_file = folder / "samples.jsonl"
    if samples_file.exists():
        attempts = _read_jsonl(samples_file, Attempt)
    else:
        attempts = attempt_repairs(
            sampler,
            training,
            humaneval,
            config,
            traced=config.with_traces,
            n=config.samples,
            temperature=config.temperature,
            seed=config.seed + round_,
        )
        _write_jsonl(samples_file, attempts)
    recorder.attempts(round_, "acquire", attempts, by_key, model.revision)
    result.seconds["sample"] = time.perf_counter() - began
    kept = {(a.problem, answer_target(a.reply)) for a in attempts if a.passed}
    result.sampled, result.kept = len(attempts), len(kept)
    if not kept:
        return result  # nothing verified: the model stays as it is
    began = time.perf_counter()
    if base_weights:
        model.model.load_state_dict(base_weights)
    examples = [
        (repair_prompt(by_key[key], config.with_traces, config.exemplar), response_ids(model, target))
        for key, target in sorted(kept)
    ]
    trained: TrainResult = train(
        model, examples, CrossEntropyObjective(), config.train, checkpoint_dir=folder, resume=True
    )
    save_model(model, folder / "model")
    result.train = {
        "examples": len(examples),
        "steps": trained.steps,
        "tokens": trained.tokens,
        "seconds": trained.seconds,
        "final_loss": trained.losses[-1] if trained.losses else None,
    }
    result.seconds["train"] = time.perf_counter() - began
    recorder.summary(round_, "update", result.train, model.revision, None)
    return result
