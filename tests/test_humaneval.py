"""HumanEval execution ground truth: the canonical solutions pass in the sandbox, wrong ones fail (forgers
included), pass@k is the unbiased estimator, and ``selfevolve exec humaneval`` turns bad input into one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import load_humaneval, load_samples, pass_at_k, pass_at_k_table, read_jsonl
from selfevolve.records import Sample
from selfevolve.sandbox.humaneval import SampleResult, check_job, evaluate_samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def selfevolve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args], capture_output=True, text=True, timeout=300
    )


def test_packaged_and_shared_copies_are_the_same_164_problems(problems):
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert load_humaneval(SHARED) == problems
    assert {p.entry_point for p in problems[:3]} == {
        "has_close_elements",
        "separate_paren_groups",
        "truncate_number",
    }


def test_plain_jsonl_reads_like_gzip(problems, tmp_path):
    plain = tmp_path / "two.jsonl"
    plain.write_text("\n".join(json.dumps(vars(p)) for p in problems[:2]) + "\n\n")
    assert load_humaneval(plain) == problems[:2]


def test_every_canonical_solution_passes(problems):
    samples = [Sample(p.task_id, p.canonical_solution) for p in problems]
    results = evaluate_samples(problems, samples, timeout_s=20)
    failures = [(r.task_id, r.status, r.detail) for r in results if not r.passed]
    assert failures == []
    assert pass_at_k_table(results, [1]) == {1: 1.0}


def test_wrong_completions_fail(problems):
    first = problems[0]
    samples = [
        Sample(first.task_id, "    return True\n"),
        Sample(first.task_id, "    import os\n    os._exit(0)\n"),
        Sample(first.task_id, "    while True:\n        pass\n"),
        Sample(first.task_id, first.canonical_solution),
    ]
    results = evaluate_samples(problems, samples, timeout_s=4)
    assert [r.status for r in results] == ["failed", "failed", "timeout", "ok"]
    assert [r.completion_id for r in results] == [0, 1, 2, 3]
    assert "AssertionError" in results[0].detail and "before the tests finished" in results[1].detail
    assert pass_at_k_table(results, [1, 2, 5]) == {1: 0.25, 2: 0.5}


# A completion written as a new user would try it (it knows nothing of the harness): on its first call it
# collects every secret-looking string from its descriptors and its interpreter's objects, echoes them as
# fake reports to every descriptor, and exits 0.
GENERIC_FORGERY = """    import gc, os, re
    secret = re.compile(rb"(?<![0-9a-f])[0-9a-f]{16,64}(?![0-9a-f])")
    found = set(secret.findall(open("/proc/self/cmdline", "rb").read()))
    for fd in range(256):
        try:
            os.set_blocking(fd, False)
            found.update(secret.findall(os.read(fd, 1 << 16)))
        except (OSError, ValueError):
            pass
    found.update(s.encode() for s in gc.get_objects() if isinstance(s, str) and secret.fullmatch(s.encode()))
    for fd in range(256):
        for token in found or {b"x"}:
            try:
                os.write(fd, b'{"event": "end", "proof": "' + token + b'"}\\n' + token + b"\\nok\\n")
            except OSError:
                break
    os._exit(0)
"""


def test_forging_completions_never_pass(problems):
    """The forgery of the issue (the generic one, 1 to 5 passes in 20 under the old completion proof), and
    completions that replace the tests' helpers or builtins: no pass on any of the first 20 tasks."""
    replace_builtins = "    import builtins\n    builtins.abs = builtins.len = lambda x: 0\n    return None\n"
    shadow = "    return None\n\ndef poly(*a):\n    return 0\n\nisclose = abs = lambda *a: 0\n"
    samples = [
        Sample(p.task_id, forgery)
        for p in problems[:20]
        for forgery in (GENERIC_FORGERY, replace_builtins, shadow)
    ]
    results = evaluate_samples(problems, samples, timeout_s=10)
    assert [(r.task_id, r.status) for r in results if r.passed] == []
    assert {r.status for r in results} <= {"failed", "killed"}


def test_the_program_is_the_completion_and_the_tests_run_outside(problems):
    problem = problems[2]
    program, tests = check_job(problem, "    return number % 1.0\n")
    assert program == problem.prompt + "    return number % 1.0\n\n"
    assert tests.setup == problem.prompt and tests.functions == ("truncate_number",)
    assert tests.code == problem.test + "\ncheck(truncate_number)\n"


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 5, 1.0),
        (10, 3, 1, 0.3),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 1, 4, 1.0),  # n - c < k: any 4 of 4 include the correct one
        (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
    ],
)
def test_pass_at_k_matches_the_binomial_formula(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(SelfEvolveError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_table_averages_over_tasks_and_skips_k_beyond_the_samples():
    results = [SampleResult("a", i, i == 0, "", "", 0.0) for i in range(2)]
    results += [SampleResult("b", i, True, "", "", 0.0) for i in range(3)]
    # a: n=2, c=1 -> pass@1 = 0.5, pass@2 = 1; b: n=3, c=3 -> 1 and 1; k=3 > 2 samples of a
    assert pass_at_k_table(results, [1, 2, 3]) == {1: 0.75, 2: 1.0}


def test_samples_file_errors_name_the_line(problems, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{not json\n')
    with pytest.raises(SelfEvolveError, match="line 2: not valid JSON"):
        load_samples(bad, problems)
    bad.write_text(
        '{"task_id": "HumanEval/0", "completion": "x"}\n\n{"task_id": "Nope/1", "completion": ""}\n'
    )
    with pytest.raises(SelfEvolveError, match="line 3: unknown task_id 'Nope/1'"):
        load_samples(bad, problems)
    bad.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(SelfEvolveError, match="line 1 needs string fields"):
        load_samples(bad, problems)
    with pytest.raises(SelfEvolveError, match="not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_cli_prints_pass_at_k_and_writes_results(problems, tmp_path):
    samples, out = tmp_path / "samples.jsonl", tmp_path / "out" / "results.jsonl"
    lines = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems[:2]]
    lines.append({"task_id": problems[0].task_id, "completion": "    return True\n"})
    lines.append({"task_id": problems[1].task_id, "completion": "    import os\n    os._exit(0)\n"})
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = selfevolve(
        "exec",
        "humaneval",
        "--samples",
        str(samples),
        "--problems",
        str(SHARED),
        "--k",
        "1,2,10",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "pass@1" in done.stdout and "0.5000" in done.stdout and "pass@2" in done.stdout
    assert "pass@10 skipped" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["completion_id"], r["passed"]) for r in rows] == [
        ("HumanEval/0", 0, True),
        ("HumanEval/1", 0, True),
        ("HumanEval/0", 1, False),
        ("HumanEval/1", 1, False),
    ]


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n', [], "line 2: not valid JSON"),
        ('{"task_id": "HumanEval/999", "completion": "x"}\n', [], "unknown task_id 'HumanEval/999'"),
        ('["not", "an", "object"]\n', [], "line 1: not a JSON object"),
        (None, [], "not found"),
        ('{"task_id": "HumanEval/0", "completion": "x"}\n', ["--k", "0"], "--k must be"),
        (
            '{"task_id": "HumanEval/0", "completion": "x"}\n',
            ["--problems", "/nonexistent.jsonl"],
            "not found",
        ),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, content, extra, needle):
    samples = tmp_path / "samples.jsonl"
    if content is not None:
        samples.write_text(content)
    done = selfevolve("exec", "humaneval", "--samples", str(samples), *extra)
    assert done.returncode == 2, done
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_rejects_unknown_suites(tmp_path):
    done = selfevolve("exec", "mbpp", "--samples", str(tmp_path / "s.jsonl"))
    assert done.returncode == 2 and "unknown suite 'mbpp'; available: humaneval" in done.stderr
