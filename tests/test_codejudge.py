"""CodeJudge: output parsers, the severity score, metrics against execution, every mode on a canned backend,
the tiny random model (invalid outputs counted, not scored), and ``selfevolve judge-code``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from selfevolve.cli import app
from selfevolve.config import load_config
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.codejudge import (
    CodeJudgeConfig,
    Inconsistency,
    JudgeResult,
    UnparseableOutput,
    judge,
    judge_metrics,
    parse_inconsistencies,
    parse_rubric,
    parse_yes_no,
    reparse,
    taxonomy_score,
)
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.records import Candidate
from selfevolve.runtime.backend import Completion

runner = CliRunner()


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_humaneval()[:3]}


# Yes / No: the prompts end "Final answer (Yes or No):" and "Answer (Yes or No only):", so the verdict is the
# reply's first word, a labelled answer, or a last sentence of its own; the word elsewhere is no verdict.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        ("no", False),
        ("No.", False),
        ("**Yes**", True),
        ('"Yes"', True),
        ("  yes, the code is correct", True),
        ("No, it returns None for an empty list.", False),
        ("Yes\n\nThe code handles every case.", True),
        ("Answer: yes", True),
        ("Final Answer (Yes or No): No", False),
        ("Final answer: **No**", False),
        ("The analysis concludes the code is wrong.\nVerdict: NO", False),
        ("The code snippet is correct. Yes", True),  # the last sentence is the verdict alone
        ("The code misses the empty list.\n\nNo.", False),
        ("Yes. Although there is no docstring, it works.", True),  # the "no" inside a sentence is no verdict
    ],
)
def test_yes_no_reads_the_verdict_the_prompt_asks_for(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "maybe",
        "Nope",  # no whole word yes/no
        "It is not clear.",
        # the words inside a sentence are no verdict: the old fallback read this one as No, and counted it valid
        "The code has no errors and handles all cases correctly.",
        "No errors were found, so the code is correct.",  # a leading "No" that is not the answer
        "Answer: No issues, the function works.",  # nor after a label
        "Based on the analysis, no.",  # nor at the end of a longer sentence
        "The analysis found no bug, so yes",
        "Answer: Yes\nAnswer: No",  # contradictory labels
        "Yes. Final answer: No",  # first word and label disagree
        "eyes nose",
        "x" * 100_000,
        "Answer:" + " " * 100_000 + "maybe",  # would backtrack quadratically in a careless regex
        "No" + " " * 100_000 + "x",
        "\n" * 100_000 + "x",
    ],
)
def test_yes_no_counts_everything_else_as_invalid(text):
    with pytest.raises(UnparseableOutput):
        parse_yes_no(text)


def test_a_reply_with_no_in_a_sentence_is_an_invalid_verdict_not_a_no(problems):
    # End to end through the vanilla judge: the sentence below used to score 0.0 (a valid "No").
    reply = "The code has no errors and handles all cases correctly."
    candidates = _candidates(problems)
    results = judge(CannedBackend(lambda prompt: reply), problems, candidates, "vanilla", progress=False)
    assert [(r.valid, r.score) for r in results] == [(False, None)] * 3
    metrics = judge_metrics(results, candidates)
    assert metrics["invalid_rate"] == 1.0 and metrics["accuracy"] is None
    assert metrics["accuracy_invalid_as_wrong"] == 0.0


def test_reparse_scores_a_cached_verdict_as_the_current_parsers_read_it():
    # what the old fallback parser stored for this reply: a valid "No"
    stale = JudgeResult("t", "vanilla", True, 0.0, "The code has no errors.", seconds=2.5)
    fresh = reparse(stale)
    assert (fresh.valid, fresh.score, fresh.seconds) == (False, None, 2.5)
    assert "no Yes or No verdict" in fresh.error
    analysis = JudgeResult("t", "analyze", False, None, "Yes.", analysis="It works.", error="old")
    assert reparse(analysis) == JudgeResult("t", "analyze", True, 1.0, "Yes.", analysis="It works.")
    # taxonomy: one Major (50) and one Small (5): (100 - 55) / 100 = 0.45, or 0.0 with a Major weight of 100
    raw = '[{"inconsistency": "a", "severity": "Major"}, {"inconsistency": "b", "severity": "minor"}]'
    taxonomy = JudgeResult("t", "taxonomy", False, None, raw)
    assert reparse(taxonomy).score == pytest.approx(0.45)
    assert reparse(taxonomy, CodeJudgeConfig(major_weight=100)).score == 0.0
    assert reparse(JudgeResult("t", "rubric", False, None, "Score: 3")).score == 0.75  # 3 / 4


# Rubric 0-4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("4\n\nExplanation: it handles 2 cases", 4),
        ("Functional Correctness (0-4): 2", 2),
        ("Functional Correctness (score only): 0", 0),
        ("Score: 4/4", 4),
        ("I would give it 1 out of 4.", 1),
        ("**3**", 3),
        ("The snippet deserves a 2.", 2),
        ("2.5", 2.5),
    ],
)
def test_rubric_reads_the_rating(text, expected):
    assert parse_rubric(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "great code", "5", "Score: 7", "-1", "0-4", "Score: 1/4 or maybe 3/4", "It fails 3 of 10 tests"],
)
def test_rubric_rejects_missing_out_of_range_or_ambiguous_ratings(text):
    with pytest.raises(UnparseableOutput):
        parse_rubric(text)


# Inconsistency lists


def _severities(text: str) -> list[str]:
    return [i.severity for i in parse_inconsistencies(text)]


@pytest.mark.parametrize(
    ("text", "severities"),
    [
        ("[]", []),
        ('[{"inconsistency": "None", "severity": "Negligible"}]', ["Negligible"]),
        ('["inconsistency": None, "severity": "Negligible"]', ["Negligible"]),  # the paper's own example
        (
            'Here is my answer:\n```json\n[\n  {"inconsistency": "off by one", "severity": "Major"},\n'
            '  {"inconsistency": "empty list", "severity": "small"},\n]\n```\nHope this helps.',
            ["Major", "Small"],
        ),
        ("[{'inconsistency': 'reads x[0] of an empty list', 'severity': 'FATAL'}]", ["Fatal"]),
        (
            '{"inconsistency": "a", "severity": "Major"}, {"inconsistency": "b", "severity": "Minor"}',
            ["Major", "Small"],
        ),
        ('{"inconsistencies": [{"issue": "undefined helper", "level": "critical"}]}', ["Fatal"]),
        ('Steps: [1, 2, 3]. Output: [{"inconsistency": null, "severity": null}]', ["Negligible"]),
        ('[{"inconsistency": "nested {\\"a\\": [1, 2]}", "severity": "High"}]', ["Major"]),
        ('[{"Inconsistency": "x", "Severity": " Trivial "}]', ["Negligible"]),
    ],
)
def test_inconsistencies_are_found_in_prose_fences_and_loose_json(text, severities):
    assert _severities(text) == severities


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The code looks fine to me.",
        '[{"inconsistency": "<description>", "severity": "<severity>"}]',  # the prompt's placeholder
        '[{"inconsistency": "x", "severity": "Catastrophic"}]',
        '[{"inconsistency": "no severity given"}]',
        "[1, 2, 3]",
        '["a string"]',
        "[" * 50_000,
        '[{"inconsistency": "unterminated", "severity": "Major"',
        "{" * 5000 + "}" * 5000,
        "[" * 5000 + "]" * 5000,  # deeper than any decoder's recursion limit
        '{"a": ' * 3000 + "1" + "}" * 3000,
    ],
)
def test_inconsistencies_reject_garbage_placeholders_and_unknown_severities(text):
    with pytest.raises(UnparseableOutput):
        parse_inconsistencies(text)


def test_huge_outputs_parse_quickly():
    filler = "word " * 200_000
    assert _severities(filler + '[{"inconsistency": "x", "severity": "Small"}]') == ["Small"]


# The severity score


def _found(*severities: str) -> list[Inconsistency]:
    return [Inconsistency(f"issue {k}", s) for k, s in enumerate(severities)]


@pytest.mark.parametrize(
    ("severities", "expected"),
    [
        ((), 1.0),  # nothing found
        (("Negligible", "Negligible"), 1.0),  # negligible ones cost nothing
        (("Small",), 0.95),  # 100 - 5
        (("Small", "Small", "Major"), 0.40),  # 100 - 5 - 5 - 50
        (("Major",), 0.5),
        (("Major", "Major"), 0.0),  # 100 - 100
        (("Fatal",), 0.0),
        (("Major", "Major", "Major", "Small"), 0.0),  # 100 - 155 clamps at 0
    ],
)
def test_taxonomy_score_matches_the_paper(severities, expected):
    assert taxonomy_score(_found(*severities)) == pytest.approx(expected)


def test_taxonomy_weights_are_configurable_and_load_from_yaml(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("major_weight: 20\nsmall_weight: 10\nnegligible_weight: 1\n")
    config = load_config(CodeJudgeConfig, path, ["fatal_weight=60"])
    assert (config.fatal_weight, config.major_weight, config.small_weight) == (60.0, 20.0, 10.0)
    # 100 - 20 - 10 - 1 = 69; then 100 - 60 - 20 = 20
    assert taxonomy_score(_found("Major", "Small", "Negligible"), config) == pytest.approx(0.69)
    assert taxonomy_score(_found("Fatal", "Major"), config) == pytest.approx(0.20)
    with pytest.raises(SelfEvolveError, match="non-negative"):
        load_config(CodeJudgeConfig, None, ["small_weight=-5"])
    with pytest.raises(SelfEvolveError, match="unknown config key"):
        load_config(CodeJudgeConfig, None, ["weight=5"])


# Metrics


def _result(score: float | None, mode: str = "taxonomy", task_id: str = "t") -> JudgeResult:
    return JudgeResult(task_id, mode, valid=score is not None, score=score, raw="", seconds=0.5)


def _labelled(*passed: bool | None) -> list[Candidate]:
    return [Candidate("t", "file", "", p) for p in passed]


def test_metrics_match_hand_computed_kendall_and_spearman():
    # scores s = [0, .5, 1, 1], truth y = [0, 0, 1, 1]. Pairs: 4 concordant, 0 discordant; one pair tied in s
    # (3,4), two tied in y ((1,2), (3,4)): tau_b = 4 / sqrt((6-1)(6-2)) = 4 / sqrt(20).
    # Ranks: s -> [1, 2, 3.5, 3.5], y -> [1.5, 1.5, 3.5, 3.5]; Pearson of the ranks = 4 / sqrt(4.5 * 4).
    results = [_result(s) for s in (0.0, 0.5, 1.0, 1.0)]
    metrics = judge_metrics(results, _labelled(False, False, True, True))
    assert metrics["kendall_tau"] == pytest.approx(4 / math.sqrt(20))
    assert metrics["spearman_rho"] == pytest.approx(4 / math.sqrt(18))
    assert metrics["accuracy"] is None  # graded mode
    assert metrics["invalid_rate"] == 0 and metrics["n"] == 4 and metrics["seconds_per_sample"] == 0.5


def test_metrics_count_invalid_outputs_instead_of_scoring_them():
    # Valid verdicts: yes/pass (right), no/fail (right), yes/fail (wrong); two invalid outputs.
    results = [_result(s, "vanilla") for s in (1.0, 0.0, 1.0, None, None)]
    metrics = judge_metrics(results, _labelled(True, False, False, True, False))
    assert metrics["n"] == 5 and metrics["n_valid"] == 3
    assert metrics["invalid_rate"] == pytest.approx(2 / 5)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy_invalid_as_wrong"] == pytest.approx(2 / 5)
    assert metrics["positive_rate"] == pytest.approx(2 / 5)


def test_metrics_are_none_when_undefined_and_skip_unlabelled_candidates():
    constant = judge_metrics([_result(1.0, "vanilla")] * 3, _labelled(True, False, None))
    assert constant["n"] == 2 and constant["kendall_tau"] is None and constant["spearman_rho"] is None
    assert constant["accuracy"] == 0.5
    all_invalid = judge_metrics([_result(None, "analyze")] * 2, _labelled(True, False))
    assert all_invalid["invalid_rate"] == 1.0 and all_invalid["accuracy"] is None
    assert all_invalid["accuracy_invalid_as_wrong"] == 0.0
    with pytest.raises(SelfEvolveError, match="execution label"):
        judge_metrics([_result(1.0)], _labelled(None))
    with pytest.raises(SelfEvolveError, match="2 candidates"):
        judge_metrics([_result(1.0)], _labelled(True, False))


# Every mode end to end on a canned backend


class CannedBackend:
    """A Backend that answers each prompt with ``answer(prompt)`` and records every call."""

    name = "canned"

    def __init__(self, answer: Callable[[list[dict]], str]) -> None:
        self.answer = answer
        self.calls: list[tuple[list, dict]] = []

    def generate(self, prompts, **options) -> list[Completion]:
        self.calls.append((list(prompts), options))
        return [Completion(self.answer(p), prompt_index=i) for i, p in enumerate(prompts)]

    def score(self, prompts, continuations):
        raise NotImplementedError


def _text(prompt: list[dict]) -> str:
    return "\n".join(m["content"] for m in prompt)


def _candidates(problems) -> list[Candidate]:
    first, second = list(problems.values())[:2]
    return [
        Candidate(first.task_id, "canonical", first.canonical_solution, True),
        Candidate(first.task_id, "mutant", "    return None\n", False),
        Candidate(second.task_id, "canonical", second.canonical_solution, True),
    ]


def test_analyze_mode_makes_two_batched_calls_and_passes_the_analysis_on(problems):
    def answer(prompt):
        text = _text(prompt)
        if "Analysis:" in text:  # call 2: summarize the analysis
            return "No" if "BROKEN" in text else "Yes"
        assert "Do not write a corrected version" in text and "Code Snippet" in text
        return "The code returns None: BROKEN." if "return None" in text else "It implements everything."

    backend = CannedBackend(answer)
    candidates = _candidates(problems)
    results = judge(backend, problems, candidates, "analyze", progress=False)
    assert len(backend.calls) == 2 and all(len(prompts) == 3 for prompts, _ in backend.calls)
    assert backend.calls[0][1]["temperature"] == 0.0 and backend.calls[1][1]["max_new_tokens"] == 10
    assert [r.score for r in results] == [1.0, 0.0, 1.0]
    assert results[1].analysis == "The code returns None: BROKEN." and results[1].raw == "No"
    assert all(r.seconds > 0 for r in results)
    metrics = judge_metrics(results, candidates)
    assert metrics["accuracy"] == 1.0 and metrics["kendall_tau"] == pytest.approx(1.0)


def test_taxonomy_mode_scores_by_severity_and_marks_garbage_invalid(problems):
    def answer(prompt):
        text = _text(prompt)
        assert "Catalogue of code inconsistencies" in text and "Fatal" in text
        if "return None" in text:
            return '[{"inconsistency": "returns None", "severity": "Major"}, {"inconsistency": "x", "severity": "Small"}]'
        return "I cannot decide" if "separate_paren_groups" in text else "[]"

    results = judge(CannedBackend(answer), problems, _candidates(problems), "taxonomy", progress=False)
    assert [r.valid for r in results] == [True, True, False]
    assert results[0].score == 1.0 and results[1].score == pytest.approx(0.45)
    assert [i.severity for i in results[1].inconsistencies] == ["Major", "Small"]
    assert (
        results[2].score is None
        and results[2].raw == "I cannot decide"
        and "no JSON list" in results[2].error
    )


def test_vanilla_and_rubric_modes_and_the_reference_solution(problems):
    seen = []

    def answer(prompt):
        seen.append(_text(prompt))
        return "Functional Correctness: 3" if "Functional Correctness (0-4)" in seen[-1] else "Answer: no"

    candidates = _candidates(problems)
    vanilla = judge(CannedBackend(answer), problems, candidates, "vanilla", reference=True, progress=False)
    assert [r.score for r in vanilla] == [0.0, 0.0, 0.0]
    assert all("Reference Solution" in text for text in seen)
    seen.clear()
    rubric = judge(CannedBackend(answer), problems, candidates, "rubric", progress=False)
    assert [r.score for r in rubric] == [0.75] * 3 and not any("Reference Solution" in t for t in seen)


def test_judge_batches_by_config_and_rejects_bad_arguments(problems):
    backend = CannedBackend(lambda prompt: "Yes")
    candidates = _candidates(problems)
    judge(backend, problems, candidates, "vanilla", CodeJudgeConfig(batch_size=2), progress=False)
    assert [len(prompts) for prompts, _ in backend.calls] == [2, 1]
    with pytest.raises(SelfEvolveError, match="unknown judge mode"):
        judge(backend, problems, candidates, "telepathy")
    with pytest.raises(SelfEvolveError, match="unknown task id"):
        judge(backend, problems, [Candidate("HumanEval/9999", "file", "", None)], "vanilla")


def test_tiny_random_judge_outputs_are_counted_invalid_not_scored(tiny_llama, problems):
    config = CodeJudgeConfig(analysis_max_new_tokens=8, taxonomy_max_new_tokens=8, answer_max_new_tokens=4)
    candidates = _candidates(problems)
    for mode in ("analyze", "taxonomy", "vanilla", "rubric"):
        results = judge(tiny_llama, problems, candidates, mode, config, progress=False)
        assert len(results) == 3
        invalid = [r for r in results if not r.valid]
        assert all(r.score is None and r.error for r in invalid)
        metrics = judge_metrics(results, candidates)
        assert metrics["invalid_rate"] == pytest.approx(len(invalid) / 3)
        assert metrics["n_valid"] == 3 - len(invalid)


def test_judging_over_http_matches_judging_locally(tiny_llama, problems, tmp_path):
    from selfevolve.runtime import OpenAIBackend
    from selfevolve.serve import serve_in_thread

    config = CodeJudgeConfig(analysis_max_new_tokens=6, taxonomy_max_new_tokens=6, answer_max_new_tokens=4)
    candidates = _candidates(problems)
    with serve_in_thread(tiny_llama) as url:
        remote = OpenAIBackend(url, tiny_llama.name)
        for mode in ("analyze", "taxonomy"):
            over_http = judge(remote, problems, candidates, mode, config, progress=False)
            local = judge(tiny_llama, problems, candidates, mode, config, progress=False)
            assert [(r.raw, r.analysis, r.valid) for r in over_http] == [
                (r.raw, r.analysis, r.valid) for r in local
            ]
        samples = _samples(
            tmp_path / "s.jsonl", [{"task_id": "HumanEval/2", "completion": "    return 0.0\n"}]
        )
        args = ["judge-code", "--samples", samples, "--mode", "rubric", "--judge", tiny_llama.name]
        result = runner.invoke(app, [*args, "--base-url", url, "--set", "answer_max_new_tokens=2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 1


# The command line


def _samples(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_judge_code_cli_writes_verdicts_and_metrics(tmp_path):
    samples = _samples(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "HumanEval/0", "completion": "    return False\n", "passed": False},
            {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n", "passed": True},
            {"task_id": "HumanEval/2", "completion": "    return 0.0\n"},
        ],
    )
    out = tmp_path / "verdicts.jsonl"
    args = ["judge-code", "--samples", samples, "--mode", "vanilla", "--judge", "tiny-random-llama"]
    result = runner.invoke(
        app, [*args, "--out", str(out), "--limit", "2", "--set", "answer_max_new_tokens=3"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 2 and summary["mode"] == "vanilla" and "invalid_rate" in summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [False, True] and all("raw" in r for r in rows)


def selfevolve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args], capture_output=True, text=True, timeout=300
    )


def test_judge_code_user_errors_are_one_line(tmp_path):
    good = _samples(tmp_path / "good.jsonl", [{"task_id": "HumanEval/0", "completion": "    pass\n"}])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": oops}\n')
    unknown = _samples(
        tmp_path / "unknown.jsonl", [{"task_id": "HumanEval/9999", "completion": "    pass\n"}]
    )
    no_completion = _samples(tmp_path / "short.jsonl", [{"task_id": "HumanEval/0"}])
    cases = [
        (["--samples", str(tmp_path / "missing.jsonl")], "not found"),
        (["--samples", str(bad_json)], "line 2: not valid JSON"),
        (["--samples", good, "--mode", "telepathy"], "unknown --mode 'telepathy'"),
        (["--samples", unknown], "HumanEval/9999"),
        (["--samples", no_completion], "task_id and completion"),
        (["--samples", good, "--problems", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
        (["--samples", good, "--set", "small_weight=-1"], "non-negative"),
    ]
    for args, needle in cases:
        done = selfevolve("judge-code", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
