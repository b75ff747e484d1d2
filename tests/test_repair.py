"""NExT repair and ReST-EM self-training: prompts, fix extraction, the split, and the loop with canned answers."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from copy import deepcopy

import pytest

from selfevolve.acquire.trace import trace_call
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import Problem, load_humaneval
from selfevolve.loop.repair import (
    EXEMPLAR,
    METHOD,
    Attempt,
    RepairConfig,
    answer_target,
    attempt_repairs,
    build_problems,
    check_units,
    extract_fix,
    first_failures,
    fix_rates,
    repair_prompt,
    repair_train,
    split_tasks,
)
from selfevolve.runtime.backend import Completion
from selfevolve.runtime.model import LocalModel
from selfevolve.store import ExperienceStore
from selfevolve.update.training import TrainingConfig


def test_fix_extraction():
    reply = (
        "The loop stops early.\n```python\ndef helper():\n    pass\n```\nFixed:\n"
        "```python\ndef f(x):\n    return x + 1\n```\nDone."
    )
    assert extract_fix(reply, "f") == "def f(x):\n    return x + 1\n"
    assert extract_fix("Because.\n\ndef f(x):\n    return x\n\nThat is all, thanks", "f") == (
        "def f(x):\n    return x\n"
    )
    assert extract_fix("```\ndef f(x):\n    return 2\n```", "f") == "def f(x):\n    return 2\n"
    assert extract_fix("```python\ndef g(x):\n    return 2\n```", "f") is None
    assert extract_fix("no code at all", "f") is None
    tested = (
        "```python\nimport math\n\n@staticmethod\ndef f(x):\n    return x\nassert f(1) == 2\nprint(f(3))\n```"
    )
    assert extract_fix(tested, "f") == "import math\n@staticmethod\ndef f(x):\n    return x\n"
    assert (
        answer_target("why\n```python\ndef f():\n    pass\n```\nthanks!")
        == "why\n```python\ndef f():\n    pass\n```"
    )
    assert answer_target("no fence") == "no fence"


def test_the_tests_of_a_check_function_are_split():
    problem = Problem(
        "T/0",
        "def f(x):\n",
        "f",
        "    return x\n",
        "import math\nMETADATA = {}\n\ndef check(candidate):\n    y = 2\n    assert candidate(1) == 1\n"
        "    for i in range(y):\n        assert candidate(i) == i\n    assert math.isfinite(candidate(0.5))\n",
    )
    setup, units = check_units(problem)
    assert setup == "import math\nMETADATA = {}"
    assert units == [
        ("y = 2", "assert f(1) == 1"),
        ("y = 2", "for i in range(y):\n    assert f(i) == i"),
        ("y = 2", "assert math.isfinite(f(0.5))"),
    ]


def test_the_first_failing_test_comes_from_the_harness():
    """The units run outside the program, calling it through the sandbox: forged markers on its output, an exit
    in the middle, or a hang change nothing but the one answer they are."""
    problem = Problem(
        "T/0",
        'def twice(v):\n    return 2 * v\n\ndef f(x):\n    """Identity."""\n',
        "f",
        "    return x\n",
        "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == 2\n"
        "    assert candidate(twice(2)) == 4\n",
    )
    forged = "import sys\nprint('@@unit 0', '@@fail 0', sep='\\n', flush=True)\n"
    programs = {
        "def f(x):\n    return x\n": None,
        "def f(x):\n    return 1\n": 1,
        forged + "def f(x):\n    print('@@fail 0', flush=True)\n    return x if x < 4 else 0\n": 2,
        forged + "import os\ndef f(x):\n    if x == 2:\n        os._exit(0)\n    return x\n": 1,
        "def f(x):\n    while x == 4:\n        pass\n    return x\n": 2,
        forged + "def f(x):\n    return (\n": None,
    }
    found = first_failures([(problem, program) for program in programs], timeout_s=3)
    assert found == list(programs.values())


def test_tasks_are_split_before_mutation():
    problems = load_humaneval()
    train, held = split_tasks(problems, RepairConfig(train_tasks=16, eval_tasks=8))
    assert len(train) == 16 and len(held) == 8
    assert not {p.task_id for p in train} & {p.task_id for p in held}
    assert split_tasks(problems, RepairConfig(train_tasks=16, eval_tasks=8)) == (train, held)
    other = split_tasks(problems, RepairConfig(train_tasks=16, eval_tasks=8, seed=1))[0]
    assert other != train
    with pytest.raises(SelfEvolveError, match="only 164 problems"):
        split_tasks(problems, RepairConfig(train_tasks=160, eval_tasks=8))


def test_the_worked_example_carries_a_real_trace():
    trace = trace_call(EXEMPLAR.program, EXEMPLAR.test)
    assert trace.render() == EXEMPLAR.trace
    assert trace.outcome() == EXEMPLAR.outcome


def test_prompts_with_and_without_traces():
    traced = repair_prompt(EXEMPLAR, traced=True)
    plain = repair_prompt(EXEMPLAR, traced=False, exemplar=False)
    assert [m["role"] for m in traced] == ["user", "assistant", "user"]
    assert "# (1) n=0" in traced[-1]["content"] and "execution trace" in traced[-1]["content"]
    assert (
        len(plain) == 1
        and "# (1)" not in plain[0]["content"]
        and "execution trace" not in plain[0]["content"]
    )
    for chat in (traced, plain):
        assert "assert count_positive([0, 2, -1]) == 1" in chat[-1]["content"]
        assert chat[-1]["content"].endswith("Outcome: raised: AssertionError")


def test_fix_rates():
    def attempts(problem: str, verdicts: list[bool]) -> list[Attempt]:
        return [Attempt(problem, True, i, "", passed, "ok") for i, passed in enumerate(verdicts)]

    # a: 1 of 4 passed -> pass@1 = 1/4, pass@4 = 1; b: none -> 0, 0; c: all -> 1, 1
    found = (
        attempts("a", [True, False, False, False]) + attempts("b", [False] * 4) + attempts("c", [True] * 4)
    )
    assert fix_rates(found, 4) == pytest.approx({"pass@1": (0.25 + 0 + 1) / 3, "pass@4": 2 / 3})
    # 2 of 4 passed: pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert fix_rates(attempts("d", [True, True, False, False]), 2)["pass@2"] == pytest.approx(5 / 6)


# The loop, end to end, with a canned sampler and the tiny model as the student.

CONFIG = dict(
    rounds=2,
    samples=2,
    train_tasks=2,
    eval_tasks=1,
    eval_samples=2,
    max_new_tokens=32,
    train=TrainingConfig(epochs=1, batch_size=2),
)


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    return load_humaneval()


@pytest.fixture(scope="module")
def built(humaneval, tmp_path_factory):
    """The repair problems of CONFIG's tasks, built once (sandbox runs) and reused by every loop test."""
    config = RepairConfig(**CONFIG)
    train, held = split_tasks(humaneval, config)
    problems = build_problems([*train, *held], config)
    folder = tmp_path_factory.mktemp("problems")
    (folder / "problems.jsonl").write_text("".join(json.dumps(p.__dict__) + "\n" for p in problems))
    return problems, folder / "problems.jsonl", train, held


class CannedSampler:
    """Answers with the canonical solution for the tasks in ``right`` and the buggy program otherwise."""

    name = "canned"

    def __init__(self, humaneval: list[Problem], problems, right: set[str]) -> None:
        self.solutions = {p.entry_point: p.prompt + p.canonical_solution for p in humaneval}
        self.buggy = {p.entry_point: p.program for p in problems}
        self.task = {p.entry_point: p.task_id for p in problems}
        self.right = right
        self.calls: list[int] = []

    def reply(self, request: str) -> str:
        entry = next(e for e in self.buggy if f"def {e}(" in request)
        code = self.solutions[entry] if self.task[entry] in self.right else self.buggy[entry]
        return f"The condition is wrong, so the result is off.\n```python\n{code}```\nHope this helps."

    def generate(self, prompts, *, n=1, **kwargs) -> list[Completion]:
        self.calls.append(len(prompts) * n)
        return [
            Completion(self.reply(chat[-1]["content"]), [], "stop", i, j)
            for i, chat in enumerate(prompts)
            for j in range(n)
        ]


def run(tiny_llama, built, humaneval, tmp_path, **options):
    problems, problems_file, train, held = built
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    shutil.copy(problems_file, out / "problems.jsonl")
    right = {train[0].task_id, held[0].task_id}
    sampler = options.pop("sampler", None) or CannedSampler(humaneval, problems, right)
    model = LocalModel(deepcopy(tiny_llama.model), tiny_llama.tokenizer, name="tiny", revision="tiny@0")
    results = repair_train(model, humaneval, RepairConfig(**CONFIG), out_dir=out, sampler=sampler, **options)
    return results, sampler, model, out


def test_self_training_keeps_verified_fixes_and_records_everything(tiny_llama, built, humaneval, tmp_path):
    problems, _, train, held = built
    assert {p.task_id for p in problems} <= {p.task_id for p in [*train, *held]}
    assert {p.task_id for p in problems if p.task_id == held[0].task_id}, "the held-out task has a mutant"
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
        results, _, model, out = run(tiny_llama, built, humaneval, tmp_path, store=store)
        training = [p for p in problems if p.task_id != held[0].task_id]
        right = [p for p in training if p.task_id == train[0].task_id]
        assert [r.round for r in results] == [0, 1, 2]
        for result in results[1:]:
            assert result.sampled == 2 * len(training)
            assert result.kept == len(right)  # the canned right answer, twice per problem, is one example
            assert result.train["examples"] == len(right) and result.train["steps"] >= 1
        for result in results:  # the held-out task is answered right, with traces and without
            assert result.fix_rate == {
                "trace": {"pass@1": 1.0, "pass@2": 1.0},
                "plain": {"pass@1": 1.0, "pass@2": 1.0},
            }
        assert model.revision == "tiny@0+repair2"
        after = model.model.state_dict()
        assert any(not (after[k] == before[k]).all() for k in before), "training changed no weight"
        assert (out / "round02" / "model" / "config.json").is_file()
        assert all((out / f"round{r:02d}" / "done.json").is_file() for r in range(3))

        (run_record,) = store.runs()
        assert run_record.status == "finished"
        samples = store.query(method=METHOD, phase="acquire")
        assert len(samples) == 2 * 2 * len(training)
        assert Counter(e.score for e in samples) == {
            1.0: 2 * 2 * len(right),
            0.0: 2 * 2 * (len(training) - len(right)),
        }
        assert all(e.feedback["passed"] == (e.score == 1.0) and e.metadata["traced"] for e in samples)
        assert {e.metadata["round"] for e in samples} == {1, 2}
        assert "# (0)" in samples[0].prompt and samples[0].response.startswith("The condition is wrong")
        updates = store.query(method=METHOD, phase="update")
        assert [e.metadata["round"] for e in updates] == [1, 2]
        evaluations = store.query(method=METHOD, phase="evaluate")
        summaries = [e for e in evaluations if e.metadata.get("summary")]
        assert [e.metadata["round"] for e in summaries] == [0, 1, 2]
        assert len(evaluations) - len(summaries) == 3 * 2 * 2  # rounds x modes x samples for 1 problem


def test_an_interrupted_run_resumes_where_it_stopped(tiny_llama, built, humaneval, tmp_path):
    def crash(result):
        if result.round == 1:
            raise KeyboardInterrupt

    with ExperienceStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            run(tiny_llama, built, humaneval, tmp_path, store=store, on_round=crash)
        with pytest.raises(SelfEvolveError, match="already holds a repair-train run"):
            run(tiny_llama, built, humaneval, tmp_path, store=store)
        results, sampler, model, _ = run(tiny_llama, built, humaneval, tmp_path, store=store, resume=True)
        assert [r.round for r in results] == [0, 1, 2]
        training = len([p for p in built[0] if p.task_id != built[3][0].task_id])
        assert sampler.calls == [
            2 * training,
            2 * 1,
            2 * 1,
        ]  # round 2 only: its samples, then both eval modes
        assert model.revision == "tiny@0+repair2"
        assert len(store.runs()) == 1 and store.runs()[0].status == "finished"
        rounds = Counter(e.metadata["round"] for e in store.query(method=METHOD, phase="acquire"))
        assert rounds == {1: 2 * training, 2: 2 * training}  # nothing recorded twice
        summaries = [e for e in store.query(method=METHOD, phase="evaluate") if e.metadata.get("summary")]
        assert [e.metadata["round"] for e in summaries] == [0, 1, 2]


def test_rounds_without_a_verified_fix_leave_the_model_alone(tiny_llama, built, humaneval, tmp_path):
    sampler = CannedSampler(humaneval, built[0], right=set())
    results, _, model, out = run(tiny_llama, built, humaneval, tmp_path, sampler=sampler)
    assert [r.kept for r in results] == [0, 0, 0] and all(not r.train for r in results)
    assert model.revision == "tiny@0" and not (out / "round01" / "model").exists()
    assert all(r.fix_rate["plain"]["pass@1"] == 0.0 for r in results)


def test_answers_stopped_at_the_closing_fence_are_closed_again(built, humaneval):
    problems, _, train, _ = built
    problem = next(p for p in problems if p.task_id == train[0].task_id)
    solution = next(p.prompt + p.canonical_solution for p in humaneval if p.task_id == problem.task_id)

    class Stopped:  # what a model returns when the stop string "\n```\n" ended its answer
        name = "stopped"

        def generate(self, prompts, *, stop=None, n=1, **kwargs):
            assert stop == ["\n```\n"]
            return [
                Completion(f"Off by one.\n```python\n{solution.rstrip()}", [], "stop", 0, j) for j in range(n)
            ]

    tasks = {p.task_id: p for p in humaneval}
    (attempt,) = attempt_repairs(
        Stopped(), [problem], tasks, RepairConfig(**CONFIG), traced=True, n=1, temperature=0.8, seed=0
    )
    assert attempt.reply.endswith("\n```") and attempt.passed and attempt.status == "ok"


def test_resuming_with_another_config_is_refused(tiny_llama, built, humaneval, tmp_path):
    run(tiny_llama, built, humaneval, tmp_path, sampler=CannedSampler(humaneval, built[0], right=set()))
    model = LocalModel(deepcopy(tiny_llama.model), tiny_llama.tokenizer, name="tiny", revision="tiny@0")
    other = RepairConfig(**{**CONFIG, "samples": 3})
    with pytest.raises(SelfEvolveError, match="started with another config"):
        repair_train(model, humaneval, other, out_dir=tmp_path / "run", resume=True)


def test_cli_runs_rounds_and_reports(tmp_path, built):
    from typer.testing import CliRunner

    from selfevolve.cli import app

    out = tmp_path / "cli"
    out.mkdir()
    shutil.copy(built[1], out / "problems.jsonl")  # the tasks of CONFIG, already built
    args = [
        "repair-train",
        "--model",
        "tiny-random-llama",
        "--out",
        str(out),
        "--rounds",
        "1",
        "--samples",
        "1",
    ]
    args += [
        "--train-tasks",
        "2",
        "--eval-tasks",
        "1",
        "--set",
        "eval_samples=1",
        "--set",
        "max_new_tokens=4",
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1] and "round 1: kept 0/" in done.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already holds a repair-train run" in str(again.exception)
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0


def test_cli_mistakes_are_one_line(tmp_path):
    import subprocess
    import sys

    for extra, needle in (
        (["--set", "bogus=1"], "unknown config key"),
        (["--rounds", "0"], "rounds must be"),
    ):
        command = [sys.executable, "-m", "selfevolve", "repair-train", "--out", str(tmp_path / "x"), *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
