"""Mutation operators on hand-written functions, labelled candidates on real HumanEval problems (run in the
sandbox), model samples and candidate files."""

from __future__ import annotations

import ast
import json

import pytest

from selfevolve.acquire.mutate import (
    METHOD,
    OPERATORS,
    extract_completion,
    label_by_execution,
    labelled_candidates,
    load_candidates,
    model_samples,
    mutants,
    normalized_solution,
    save_candidates,
)
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.records import Candidate, Problem
from selfevolve.runtime.backend import Completion
from selfevolve.store import ExperienceStore

CLIP_PROMPT = '''def helper(a, b):
    return a < b


def clip(xs, low, high):
    """Clip every x into [low, high].
    >>> clip([0, 5, 9], 1, 8) == [1, 5, 8]
    """
'''
CLIP_SOLUTION = """    out = []
    for i in range(len(xs)):
        if xs[i] < low:  # below the range
            out.append(low)
        elif xs[i] > high:
            out.append(high)
        else:
            out.append(xs[i] - 0)
    return out
"""
CLIP_TEST = """
def check(candidate):
    assert candidate([0, 5, 9], 1, 8) == [1, 5, 8]
    assert candidate([], 1, 8) == []
"""


def _problem(
    prompt: str, solution: str, entry_point: str, test: str = "", task_id: str = "Hand/0"
) -> Problem:
    return Problem(
        task_id=task_id, prompt=prompt, entry_point=entry_point, canonical_solution=solution, test=test
    )


@pytest.fixture(scope="module")
def clip():
    return _problem(CLIP_PROMPT, CLIP_SOLUTION, "clip", CLIP_TEST)


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def _codes(problem: Problem, operator: str) -> list[str]:
    return [m.completion for m in mutants(problem, per_operator=100) if m.operator == operator]


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("flip_comparison", ["if xs[i] >= low:", "elif xs[i] <= high:"]),
        ("off_by_one", ["range(len(xs) + 1)", "range(len(xs) - 1)", "xs[i] - 1", "xs[i] - -1"]),
        ("swap_operands", ["0 - xs[i]", "if low < xs[i]:", "elif high > xs[i]:"]),
        ("drop_branch", ["if xs[i] < low:\n            pass\n        elif"]),
        ("wrong_return", ["return None", "return xs\n"]),
    ],
)
def test_each_operator_writes_valid_different_programs(clip, operator, expected):
    codes = _codes(clip, operator)
    assert codes, operator
    original = normalized_solution(clip)
    for code in codes:
        program = ast.parse(CLIP_PROMPT + code)  # valid Python
        assert code != original
        assert ast.get_docstring(program.body[-1]) == ast.get_docstring(ast.parse(CLIP_PROMPT).body[-1])
    for fragment in expected:
        assert any(fragment in code for code in codes), (fragment, codes)
    assert len(codes) == len(set(codes))


def test_drop_branch_also_removes_else_parts(clip):
    codes = _codes(clip, "drop_branch")
    assert any("elif" not in code and "out.append(high)" not in code for code in codes)  # elif chain dropped
    assert any("else:" not in code and "out.append(xs[i] - 0)" not in code for code in codes)


def test_mutants_leave_the_prompt_alone():
    # The helper in the prompt has a comparison and a return; neither may be mutated (the prompt is fixed).
    every = mutants(_problem(CLIP_PROMPT, CLIP_SOLUTION, "clip"), per_operator=100)
    assert every and all("a < b" not in m.description and "return a" not in m.description for m in every)
    assert {m.operator for m in every} == set(OPERATORS)


def test_wrong_return_negates_booleans_and_flips_constants():
    prompt = 'def positive(x):\n    """Is x above zero?"""\n'
    problem = _problem(prompt, "    if x is None:\n        return False\n    return x > 0\n", "positive")
    codes = _codes(problem, "wrong_return")
    assert any("return True" in code for code in codes)  # the constant flipped, not `not False`
    assert any("return not x > 0" in code for code in codes)
    assert any(code.endswith("    return x\n") for code in codes)  # the first argument
    assert not any("not False" in code for code in codes)


def test_mutants_are_deterministic_deduplicated_and_sampled_per_operator(clip, humaneval):
    assert mutants(clip, seed=3) == mutants(clip, seed=3)
    assert mutants(humaneval[10], seed=1) == mutants(humaneval[10], seed=1)
    one = mutants(clip, per_operator=1, seed=0)
    assert sorted(m.operator for m in one) == sorted(OPERATORS)
    seeds = {tuple(m.completion for m in mutants(clip, per_operator=1, seed=s)) for s in range(6)}
    assert len(seeds) > 1  # the seed picks among the sites
    for problem in humaneval[:40]:
        found = mutants(problem, per_operator=3)
        completions = [m.completion for m in found]
        assert len(completions) == len(set(completions))
        assert normalized_solution(problem) not in completions
        for m in found:
            compile(problem.prompt + m.completion, problem.task_id, "exec")
    assert mutants(clip, per_operator=0) == []
    with pytest.raises(SelfEvolveError, match="per_operator"):
        mutants(clip, per_operator=-1)


def test_a_solution_that_does_not_parse_is_a_clear_error():
    with pytest.raises(SelfEvolveError, match="do not parse"):
        mutants(_problem("def f(x):\n", "    return (x\n", "f"))
    with pytest.raises(SelfEvolveError, match="no function 'g'"):
        mutants(_problem("def f(x):\n", "    return x\n", "g"))


def test_labelled_candidates_keep_only_mutants_that_fail_and_record_them(humaneval, tmp_path):
    problems = [humaneval[i] for i in (0, 2, 12)]
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        run = store.start_run("candidates")
        candidates = labelled_candidates(problems, mutants_per_problem=2, store=store, run_id=run, workers=2)
        recorded = store.query(run_id=run, method=METHOD)
    canonical = [c for c in candidates if c.source == "canonical"]
    kept = [c for c in candidates if c.source == "mutant"]
    assert [c.task_id for c in canonical] == [p.task_id for p in problems]
    assert all(c.passed is True and c.status == "ok" for c in canonical)
    assert kept and all(c.passed is False and c.status != "ok" and c.operator in OPERATORS for c in kept)
    assert all(sum(c.task_id == p.task_id for c in kept) <= 2 for p in problems)
    assert len(recorded) == len(candidates)
    assert {(e.score, e.metadata["source"]) for e in recorded} == {(1.0, "canonical"), (0.0, "mutant")}
    assert all(e.phase == "acquire" and e.metadata["status"] == e.feedback["status"] for e in recorded)
    assert {e.metadata["operator"] for e in recorded if e.metadata["source"] == "mutant"} <= set(OPERATORS)
    with pytest.raises(SelfEvolveError, match="both store and run_id"):
        labelled_candidates(problems, store=store)


def test_mutants_of_real_problems_mostly_fail_their_tests(humaneval):
    problems = {p.task_id: p for p in humaneval[20:24]}
    tried = [
        Candidate(m.task_id, "mutant", m.completion, None, operator=m.operator)
        for p in problems.values()
        for m in mutants(p, per_operator=1)
    ]
    label_by_execution(list(problems.values()), tried, workers=2)
    assert all(c.status for c in tried)
    assert sum(c.passed is False for c in tried) >= 0.7 * len(tried)


# Model samples


def test_extract_completion_takes_the_body_and_helpers(humaneval):
    problem = humaneval[2]  # truncate_number(number: float) -> float
    reply = (
        "Sure! Here it is:\n```python\nimport math\n\n"
        'def truncate_number(number: float) -> float:\n    """Decimal part."""\n    return _frac(number)\n\n'
        "def _frac(x):\n    return x - math.floor(x)\n\nprint(truncate_number(3.5))\n```\nDone."
    )
    completion = extract_completion(problem, reply)
    assert completion.startswith("    return _frac(number)\n") and "print(" not in completion
    body_only = extract_completion(problem, "    return number % 1.0\n")
    broken = extract_completion(problem, "```python\ndef truncate_number(number):\n    return (number\n")
    candidates = [Candidate(problem.task_id, "model", c, None) for c in (completion, body_only, broken)]
    label_by_execution([problem], candidates)
    assert [c.passed for c in candidates] == [True, True, False]


class _Canned:
    name = "canned"

    def generate(self, prompts, **options):
        assert options["n"] == 2 and options["temperature"] == 0.5
        reply = "```python\ndef truncate_number(number):\n    return number % 1.0\n```"
        return [
            Completion(reply, prompt_index=i, sample_index=j) for i in range(len(prompts)) for j in range(2)
        ]


def test_model_samples_are_labelled_with_the_other_candidates(humaneval, tiny_llama):
    problem = humaneval[2]
    samples = model_samples(_Canned(), [problem], n=2, temperature=0.5)
    assert [(s.source, s.passed) for s in samples] == [("model", None)] * 2
    noise = model_samples(tiny_llama, [problem], n=1, temperature=1.0, max_new_tokens=6)
    candidates = labelled_candidates([problem], mutants_per_problem=1, samples=samples + noise, workers=2)
    assert [c.source for c in candidates] == ["canonical", "mutant", "model", "model", "model"]
    assert [c.passed for c in candidates] == [True, False, True, True, False]  # random tokens fail


# Candidate files


def test_candidates_round_trip_through_jsonl(tmp_path):
    candidates = [
        Candidate("HumanEval/0", "mutant", "    return 1\n", False, "failed", "off_by_one", "`0` -> `1`"),
        Candidate("HumanEval/1", "file", "    pass\n", None),
    ]
    path = save_candidates(tmp_path / "c.jsonl", candidates)
    assert load_candidates(path) == candidates
    minimal = tmp_path / "minimal.jsonl"
    minimal.write_text(json.dumps({"task_id": "HumanEval/3", "completion": "x", "extra": 1}) + "\n\n")
    assert load_candidates(minimal) == [Candidate("HumanEval/3", "file", "x", None)]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("{}", "task_id and completion"),
        ('{"task_id": 3, "completion": "x"}', "must be strings"),
        ('{"task_id": "a", "completion": "x", "passed": "yes"}', "passed must be"),
        ('{"task_id": "a", "completion": "x", "source": 1}', "source must be a string"),
    ],
)
def test_bad_candidate_files_name_the_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "a", "completion": "x"}\n' + line + "\n")
    with pytest.raises(SelfEvolveError, match=f"line 2: .*{needle}"):
        load_candidates(path)
