"""CodeJudge: a language model judges whether code is correct, without running tests.

Paper: Tong & Zhang, "CodeJudge: Evaluating Code Generation with Large Language Models", EMNLP 2024,
https://arxiv.org/abs/2410.02184 (prompts paraphrased from the paper's, same steps and catalogue).

Modes (``judge(..., mode=...)``):

* ``analyze`` (the paper's "analyze then summarize", binary): call 1 asks for a free-text analysis (list the
  functionality the problem requires, walk through the code's logic, conclude; no corrected version); call 2
  turns that analysis into "Yes" / "No". Score 1.0 or 0.0.
* ``taxonomy`` (the paper's "taxonomy-guided fault localization", graded): the judge lists inconsistencies as
  JSON, each with a severity from a fixed catalogue. Score = max(0, 100 - 100·#Fatal - 50·#Major - 5·#Small)
  / 100 (weights in :class:`CodeJudgeConfig`); an empty list, or only Negligible ones, scores 1.0.
* ``vanilla``: one call, answer Yes or No (baseline).
* ``rubric``: one call, an ICE-Score-style 0-4 functional-correctness rating; score = rating / 4 (baseline).

Each mode is a :class:`~selfevolve.judges.pointwise.PointwiseJudge` (:func:`code_judge`): a prompt hook and a
parse hook. Every judge output is parsed strictly but tolerantly; one that cannot be parsed makes an *invalid* result
(``valid=False``, ``score=None``, the raw text and the reason kept). Invalid results are counted and reported
by :func:`judge_metrics`, never given a score. Judges run through the :class:`~selfevolve.runtime.backend.Backend`
protocol, so the local model (batched) and any OpenAI-compatible endpoint work the same way.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pointwise import PointwiseJudge, UnparseableOutput, Verdict
from selfevolve.records import Candidate, Problem
from selfevolve.runtime.backend import Backend, Message

MODES = ("analyze", "taxonomy", "vanilla", "rubric")
BINARY_MODES = ("analyze", "vanilla")
SEVERITIES = ("Negligible", "Small", "Major", "Fatal")


@dataclass
class CodeJudgeConfig:
    """Severity weights (the paper's), decoding settings and per-call token budgets."""

    fatal_weight: float = 100.0  # points subtracted from 100 per Fatal inconsistency
    major_weight: float = 50.0  # per Major inconsistency
    small_weight: float = 5.0  # per Small inconsistency
    negligible_weight: float = 0.0  # per Negligible inconsistency
    temperature: float = 0.0  # 0 = greedy, as in the paper
    analysis_max_new_tokens: int = 512  # mode analyze, call 1 (the free-text analysis)
    summary_max_new_tokens: int = 10  # mode analyze, call 2 (Yes / No; the paper's max_tokens=10)
    taxonomy_max_new_tokens: int = 384  # mode taxonomy (the JSON list)
    answer_max_new_tokens: int = 10  # modes vanilla (Yes / No) and rubric (a digit)
    language: str = "python"  # names the language in the prompts
    batch_size: int = 16  # candidates per generate call (progress and timing granularity)
    seed: int = 0

    def __post_init__(self) -> None:
        weights = (self.fatal_weight, self.major_weight, self.small_weight, self.negligible_weight)
        if any(w < 0 or not math.isfinite(w) for w in weights):
            raise SelfEvolveError(
                f"severity weights must be finite and non-negative, got {weights}; set them to 0 or more"
            )
        if self.temperature < 0:
            raise SelfEvolveError(
                f"temperature must be >= 0, got {self.temperature}; use 0 for greedy decoding"
            )
        budgets = (
            self.analysis_max_new_tokens,
            self.summary_max_new_tokens,
            self.taxonomy_max_new_tokens,
            self.answer_max_new_tokens,
            self.batch_size,
        )
        if min(budgets) < 1:
            raise SelfEvolveError(
                f"token budgets and batch_size must be at least 1, got {budgets}; set each to 1 or more"
            )

    def weight(self, severity: str) -> float:
        """Points subtracted for one inconsistency of ``severity`` (one of SEVERITIES)."""
        return {
            "Fatal": self.fatal_weight,
            "Major": self.major_weight,
            "Small": self.small_weight,
            "Negligible": self.negligible_weight,
        }[severity]


@dataclass
class Inconsistency:
    """One fault the judge found (mode taxonomy)."""

    text: str
    severity: str  # one of SEVERITIES


@dataclass
class JudgeResult:
    """The judge's verdict on one candidate: a score in [0, 1], or ``valid=False`` with the reason."""

    task_id: str
    mode: str
    valid: bool
    score: float | None  # None when invalid; 1.0 / 0.0 in the binary modes
    raw: str  # the parsed output (mode analyze: the summary call's)
    analysis: str = ""  # mode analyze: call 1's free-text analysis
    inconsistencies: list[Inconsistency] | None = None  # mode taxonomy
    error: str = ""  # why the output was invalid
    seconds: float = 0.0  # judge wall time attributed to this candidate (its share of the batch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Prompts: chat messages, paraphrasing the paper's.


def _snippets(problem: str, code: str, reference: str | None, language: str) -> str:
    parts = [f"Problem Statement:\n```{language}\n{problem.rstrip()}\n```"]
    if reference is not None:
        parts.append(f"Reference Solution:\n```{language}\n{reference.rstrip()}\n```")
    parts.append(f"Code Snippet:\n```{language}\n{code.rstrip()}\n```")
    return "\n\n".join(parts)


def _given(reference: str | None, language: str) -> str:
    extra = f", and a reference solution in {language} that is known to be correct" if reference else ""
    return f"a problem statement, a code snippet in {language} that is meant to solve it{extra}"


def analyze_prompt(
    problem: str, code: str, reference: str | None = None, language: str = "python"
) -> list[Message]:
    """Mode analyze, call 1: a free-text analysis of whether the code implements the problem."""
    system = (
        f"You will be given {_given(reference, language)}. Your task is to check whether the code snippet "
        "implements the required functionality. Do not write a corrected version of the code.\n"
        "Evaluation steps:\n"
        "1. Read the problem statement and list the functionality the implementation must provide. The examples "
        + ("and the reference solution " if reference else "")
        + "help you understand the problem.\n"
        "2. Read the code snippet and walk through its logic. Check whether it covers every required "
        "functionality.\n"
        "3. Conclude your evaluation: does the code snippet implement the problem correctly?"
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _snippets(problem, code, reference, language)},
    ]


def summary_prompt(analysis: str) -> list[Message]:
    """Mode analyze, call 2: the analysis turned into Yes (correct) or No."""
    system = (
        "You will be given the analysis of a code snippet. If the analysis concludes that the code snippet is "
        'correct, answer "Yes". Otherwise answer "No". Judge the original code snippet, not any correction '
        "the analysis may suggest."
    )
    user = f'Analysis:\n"""\n{analysis.strip()}\n"""\n\nFinal answer (Yes or No):'
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


CATALOGUE = (
    ("Using a different method or algorithm to solve the problem", "Negligible"),
    ("Missing import statements for modules the code uses", "Negligible"),
    ("No error handling or validation for unexpected or invalid inputs", "Negligible"),
    ("Inefficient or unnecessary statements", "Negligible"),
    ("An edge case that is not handled", "Small"),
    ("A logic error that leads to wrong outputs", "Major"),
    ("Using functions or variables that are not defined", "Fatal"),
    ("Incomplete code: logic not implemented, only placeholders", "Fatal"),
    ("Syntax errors", "Fatal"),
    ("Code that may run forever or time out", "Fatal"),
)
"""The paper's catalogue of code inconsistencies: (description, severity)."""


def taxonomy_prompt(
    problem: str, code: str, reference: str | None = None, language: str = "python"
) -> list[Message]:
    """Mode taxonomy: the inconsistencies between problem and code as a JSON list with severities."""
    catalogue = "\n".join(f"{i}. {text}: {severity}" for i, (text, severity) in enumerate(CATALOGUE, 1))
    use_reference = (
        " The reference solution only helps you understand the problem; do not compare the code to it line "
        "by line."
        if reference
        else ""
    )
    system = (
        f"You will be given {_given(reference, language)}, and a catalogue of code inconsistencies.\n"
        "Evaluation steps:\n"
        "1. Read the problem statement and identify the functionality the implementation must provide."
        f"{use_reference}\n"
        "2. Read the code snippet and compare it with the problem statement. Check whether it covers the "
        "required functionality.\n"
        "3. Answer with a JSON list only.\n"
        '   a) If the code snippet is correct, output: [{"inconsistency": "None", "severity": "Negligible"}]\n'
        "   b) If it is incorrect, list each inconsistency you found with its severity from the catalogue, "
        'for example: [{"inconsistency": "<description>", "severity": "<severity>"}, ...]\n\n'
        f"Catalogue of code inconsistencies:\n{catalogue}"
    )
    user = _snippets(problem, code, reference, language) + "\n\nJSON output (a JSON list only):"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def vanilla_prompt(
    problem: str, code: str, reference: str | None = None, language: str = "python"
) -> list[Message]:
    """Baseline: one call, Yes or No."""
    user = (
        "Determine whether the code snippet correctly solves the problem. Output Yes or No.\n\n"
        + _snippets(problem, code, reference, language)
        + "\n\nAnswer (Yes or No only):"
    )
    return [{"role": "user", "content": user}]


def rubric_prompt(
    problem: str, code: str, reference: str | None = None, language: str = "python"
) -> list[Message]:
    """Baseline (ICE-Score style): one call, functional correctness rated 0-4."""
    compare = "the reference code and the problem" if reference else "the problem"
    system = (
        "You will be given a code snippet for a problem. Rate it on one metric only.\n\n"
        "Evaluation criteria:\n"
        "Functional Correctness (0-4): how well the code snippet, combined with the problem, would pass all "
        "possible unit tests. The length of the code does not determine its correctness; assess the logic line "
        "by line.\n"
        "- 0 (fails all possible tests): the code snippet is totally incorrect and meaningless.\n"
        "- 4 (passes all possible tests): the code snippet is totally correct and handles all cases.\n\n"
        "Evaluation steps:\n"
        "1. Read the problem carefully and identify the required functionality.\n"
        f"2. Read the code snippet and compare it to {compare}. Check whether it covers all required "
        "functionality.\n"
        "3. Assign a functional correctness score from 0 (lowest) to 4 (highest)."
    )
    user = _snippets(problem, code, reference, language) + "\n\nFunctional Correctness (score only):"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# Parsers. Each returns the decoded value or raises UnparseableOutput with the reason.

# A verdict word stands alone: "No, it fails" and "Yes." are verdicts, "No errors" and "Nope" are not.
_ALONE = r"\b(?![^\S\n]*[^\W\d_])"
_LABELLED_YES_NO = re.compile(
    # no two adjacent quantifiers may match the same characters: hostile runs of spaces must stay linear
    r"(?:final\s+answer|answer|verdict|conclusion|output|result)\s*(?:\([^)\n]{0,30}\)\s*)?[:=-]+"
    r"[\s*_`\"'(\[]*(yes|no)" + _ALONE,
    re.IGNORECASE,
)
_LEADING_YES_NO = re.compile(r"[\s*_`\"'(\[#>.:-]*(yes|no)" + _ALONE, re.IGNORECASE)
_MARKUP = " \t\n*_`\"'()[]#>-"


def parse_yes_no(text: str) -> bool:
    """True for Yes, False for No: the verdict the prompts ask for, standing alone as the reply's first word,
    after an answer label ("Final answer: No"), or as the reply's last sentence ("... is correct. Yes").
    Anything else is unparseable, even when it contains the word: "The code has no errors." is no verdict."""
    if not text.strip():
        raise UnparseableOutput("empty output")
    found = {match.lower() for match in _LABELLED_YES_NO.findall(text)}
    first = _LEADING_YES_NO.match(text)
    if first:
        found.add(first.group(1).lower())
    last = re.split(r"[.!?:;\n]", text.strip().rstrip(_MARKUP + ".!"))[-1].strip(_MARKUP).lower()
    if last in ("yes", "no"):
        found.add(last)
    if len(found) > 1:
        raise UnparseableOutput("contradictory answers (both Yes and No)")
    if not found:
        raise UnparseableOutput("no Yes or No verdict in the output")
    return found.pop() == "yes"


_RANGE_MENTION = re.compile(r"\(?\b0\s*(?:-|–|to)\s*4\b\)?")
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_FRACTION = re.compile(rf"(?<![\d.]){_NUMBER}\s*(?:/|out\s+of)\s*4\b", re.IGNORECASE)
_LABELLED_NUMBER = re.compile(
    rf"(?:score|correctness|rating)\b[^\d\n]{{0,20}}?(?<![\d.]){_NUMBER}", re.IGNORECASE
)
_LEADING_NUMBER = re.compile(rf"(?:[\s*_`\"'(\[#>:]|-(?!\d))*{_NUMBER}(?![\d.]*\w)")
_ANY_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}(?![\w.]*\d)")


def parse_rubric(text: str) -> float:
    """The 0-4 rating: "3/4" or "Score: 3", else a leading number, else the only number in the text."""
    if not text.strip():
        raise UnparseableOutput("empty output")
    cleaned = _RANGE_MENTION.sub(" ", text)  # "Functional Correctness (0-4): 3" -> the 3, not the 0
    for pattern in (_FRACTION, _LABELLED_NUMBER):
        values = {float(v) for v in pattern.findall(cleaned)}
        if values:
            break
    else:
        first = _LEADING_NUMBER.match(cleaned)
        values = {float(first.group(1))} if first else {float(v) for v in _ANY_NUMBER.findall(cleaned)}
    if not values:
        raise UnparseableOutput("no 0-4 rating in the output")
    if len(values) > 1:
        raise UnparseableOutput(f"several ratings {sorted(values)}")
    value = values.pop()
    if not 0 <= value <= 4:
        raise UnparseableOutput(f"rating {value:g} is outside 0-4")
    return value


_SEVERITY_WORDS = {
    "fatal": "Fatal",
    "critical": "Fatal",
    "blocker": "Fatal",
    "severe": "Fatal",
    "major": "Major",
    "high": "Major",
    "serious": "Major",
    "small": "Small",
    "minor": "Small",
    "low": "Small",
    "negligible": "Negligible",
    "trivial": "Negligible",
    "cosmetic": "Negligible",
    "none": "Negligible",
    "null": "Negligible",
    "n/a": "Negligible",
    "": "Negligible",
}
_SEVERITY_KEYS = ("severity", "level", "severity_level")
_TEXT_KEYS = ("inconsistency", "description", "issue", "mistake", "error", "problem")
_MAX_SPAN = 20_000  # longest bracketed span decoded (a hostile or runaway output is cut off, not parsed)
_MAX_SPANS = 50  # most opening brackets tried
_MAX_DEPTH = 16  # deeper nesting is no inconsistency list (and would exhaust the decoders' recursion)


def _balanced(text: str, start: int) -> str | None:
    """The bracketed span that opens at ``text[start]`` and closes at its match (quote-aware), or None when
    there is none within ``_MAX_SPAN`` characters or it nests deeper than ``_MAX_DEPTH``."""
    pairs = {"[": "]", "{": "}"}
    stack, quote, escaped = [], None, False
    for i in range(start, min(len(text), start + _MAX_SPAN)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
            if len(stack) > _MAX_DEPTH:
                return None
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start : i + 1]
    return None


def _decode(span: str) -> Any:
    """JSON, or JSON with trailing commas, or a Python literal (single quotes, None/True/False)."""
    try:
        return json.loads(span)
    except ValueError:
        pass
    repaired = re.sub(r",\s*([\]}])", r"\1", span)
    if re.match(r"\[\s*[\"'][^\"']*[\"']\s*:", repaired):  # ["inconsistency": ..., "severity": ...]
        repaired = "[{" + repaired[1:-1] + "}]"
    try:
        return json.loads(repaired)
    except ValueError:
        pass
    pythonic = re.sub(
        r"\bnull\b", "None", re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", repaired))
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # e.g. "invalid decimal literal" in garbage
            return ast.literal_eval(pythonic)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _inconsistency(item: Any) -> Inconsistency:
    if not isinstance(item, dict):
        raise UnparseableOutput(f"list item {str(item)[:60]!r} is not an object with a severity")
    keys = {str(k).strip().lower(): v for k, v in item.items()}
    severity_key = next((k for k in _SEVERITY_KEYS if k in keys), None)
    if severity_key is None:
        raise UnparseableOutput(f"item {str(item)[:60]!r} has no severity")
    word = str(keys[severity_key] if keys[severity_key] is not None else "none").strip().lower()
    if word not in _SEVERITY_WORDS:
        raise UnparseableOutput(f"unknown severity {str(keys[severity_key])[:40]!r}")
    text = next((keys[k] for k in _TEXT_KEYS if k in keys), "")
    return Inconsistency("" if text is None else str(text), _SEVERITY_WORDS[word])


def _inconsistencies(value: Any) -> list[Inconsistency]:
    if isinstance(value, dict):
        nested = next((v for k, v in value.items() if str(k).lower() == "inconsistencies"), None)
        value = nested if isinstance(nested, list) else [value]
    if not isinstance(value, list):
        raise UnparseableOutput("not a list of inconsistencies")
    return [_inconsistency(item) for item in value]


def parse_inconsistencies(text: str) -> list[Inconsistency]:
    """The first JSON list of ``{"inconsistency", "severity"}`` objects in ``text`` (prose and markdown fences
    around it are fine; so are trailing commas and single quotes). Objects without a list count as one list."""
    if not text.strip():
        raise UnparseableOutput("empty output")
    first_error: UnparseableOutput | None = None
    for opener in "[{":
        starts = [m.start() for m in re.finditer(re.escape(opener), text)][:_MAX_SPANS]
        objects: list[Any] = []
        end = -1
        for start in starts:
            if start < end:
                continue  # inside an object already taken
            span = _balanced(text, start)
            value = None if span is None else _decode(span)
            if value is None:
                continue
            if opener == "{":
                objects.append(value)
                end = start + len(span)
                continue
            try:
                return _inconsistencies(value)
            except UnparseableOutput as err:
                first_error = first_error or err
        if objects:
            try:
                return _inconsistencies(objects[0] if len(objects) == 1 else objects)
            except UnparseableOutput as err:
                first_error = first_error or err
    raise first_error or UnparseableOutput("no JSON list of inconsistencies in the output")


def taxonomy_score(inconsistencies: Sequence[Inconsistency], config: CodeJudgeConfig | None = None) -> float:
    """max(0, 100 - sum of the severity weights) / 100: 1.0 for no (or only Negligible) inconsistencies."""
    config = config or CodeJudgeConfig()
    return max(0.0, 100.0 - sum(config.weight(i.severity) for i in inconsistencies)) / 100.0


# Modes: each is a PointwiseJudge (a prompt hook and a parse hook) built from the config.


def _summary(analysis: str) -> list[Message]:
    return summary_prompt(analysis)


def code_judge(mode: str, config: CodeJudgeConfig | None = None) -> PointwiseJudge:
    """The pointwise judge of one mode: prompts, parser, score and token budgets from ``config``.

    Its prompt hooks take the fields ``problem``, ``code`` and ``reference`` (None without one)."""
    config = config or CodeJudgeConfig()
    language = {"language": config.language}
    if mode == "analyze":
        return PointwiseJudge(
            "analyze",
            prompt=_summary,
            parse=parse_yes_no,
            max_new_tokens=config.summary_max_new_tokens,
            analysis=partial(analyze_prompt, **language),
            analysis_max_new_tokens=config.analysis_max_new_tokens,
        )
    if mode == "taxonomy":
        return PointwiseJudge(
            "taxonomy",
            prompt=partial(taxonomy_prompt, **language),
            parse=parse_inconsistencies,
            score=partial(taxonomy_score, config=config),
            max_new_tokens=config.taxonomy_max_new_tokens,
        )
    if mode == "vanilla":
        return PointwiseJudge(
            "vanilla",
            prompt=partial(vanilla_prompt, **language),
            parse=parse_yes_no,
            max_new_tokens=config.answer_max_new_tokens,
        )
    if mode == "rubric":
        return PointwiseJudge(
            "rubric",
            prompt=partial(rubric_prompt, **language),
            parse=parse_rubric,
            score=lambda rating: rating / 4,
            max_new_tokens=config.answer_max_new_tokens,
        )
    raise SelfEvolveError(f"unknown judge mode {mode!r}; use one of {', '.join(MODES)}")


def _as_result(task_id: str, mode: str, verdict: Verdict) -> JudgeResult:
    return JudgeResult(
        task_id,
        mode,
        valid=verdict.valid,
        score=verdict.score,
        raw=verdict.raw,
        analysis=verdict.analysis,
        inconsistencies=verdict.value if verdict.valid and mode == "taxonomy" else None,
        error=verdict.error,
    )


def reparse(result: JudgeResult, config: CodeJudgeConfig | None = None) -> JudgeResult:
    """``result`` scored again from its raw output by the current parsers, without a model call (a verdict
    cached under an older parser then counts as this one reads it)."""
    verdict = code_judge(result.mode, config).read(result.raw, analysis=result.analysis)
    again = _as_result(result.task_id, result.mode, verdict)
    again.seconds = result.seconds
    return again


def judge(
    backend: Backend,
    problems: Mapping[str, Problem],
    candidates: Sequence[Candidate],
    mode: str = "analyze",
    config: CodeJudgeConfig | None = None,
    *,
    reference: bool = False,
    progress: bool = True,
) -> list[JudgeResult]:
    """Judge each candidate against its problem (``problems[task_id]``); one result per candidate, in order.

    The judge sees the problem's prompt as the problem statement, ``prompt + completion`` as the code, and with
    ``reference`` also ``prompt + canonical_solution``.
    """
    from tqdm.auto import tqdm

    config = config or CodeJudgeConfig()
    pointwise = code_judge(mode, config)
    unknown = sorted({c.task_id for c in candidates} - set(problems))
    if unknown:
        raise SelfEvolveError(
            f"candidates refer to unknown task id(s) {unknown[:5]}; pass the problems they were written for"
        )
    items = []
    for c in candidates:
        problem = problems[c.task_id]
        solution = problem.prompt + problem.canonical_solution if reference else None
        items.append(
            {"problem": problem.prompt, "code": problem.prompt + c.completion, "reference": solution}
        )
    results: list[JudgeResult] = []
    with tqdm(total=len(items), desc=f"judge {mode}", unit="sample", disable=not progress) as bar:
        for start in range(0, len(items), config.batch_size):
            chunk = items[start : start + config.batch_size]
            ids = [c.task_id for c in candidates[start : start + config.batch_size]]
            began = time.perf_counter()
            verdicts = pointwise.judge(backend, chunk, temperature=config.temperature, seed=config.seed)
            share = (time.perf_counter() - began) / len(chunk)
            for task_id, verdict in zip(ids, verdicts):
                result = _as_result(task_id, mode, verdict)
                result.seconds = share
                results.append(result)
            bar.update(len(chunk))
    return results


# Metrics against execution.


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def judge_metrics(results: Sequence[JudgeResult], candidates: Sequence[Candidate]) -> dict[str, Any]:
    """Agreement of the judge with execution (``candidate.passed``) over the valid outputs.

    ``accuracy`` (binary modes) is on valid outputs; ``accuracy_invalid_as_wrong`` counts every invalid
    output as a wrong verdict. Kendall τ (tau-b) and Spearman ρ correlate scores with pass/fail; they are
    None when undefined (fewer than two valid outputs, or constant scores or labels).
    """
    from scipy.stats import kendalltau, spearmanr

    if len(results) != len(candidates):
        raise SelfEvolveError(f"got {len(results)} judge results for {len(candidates)} candidates")
    if any(r.task_id != c.task_id for r, c in zip(results, candidates)):
        raise SelfEvolveError("judge results and candidates are not in the same order")
    labelled = [(r, bool(c.passed)) for r, c in zip(results, candidates) if c.passed is not None]
    if not labelled:
        raise SelfEvolveError("no candidate has an execution label (passed); metrics need ground truth")
    modes = {r.mode for r, _ in labelled}
    valid = [(r.score, passed) for r, passed in labelled if r.valid]
    n = len(labelled)
    metrics: dict[str, Any] = {
        "mode": modes.pop() if len(modes) == 1 else "mixed",
        "n": n,
        "n_valid": len(valid),
        "invalid_rate": 1 - len(valid) / n,
        "positive_rate": sum(passed for _, passed in labelled) / n,
        "mean_score": sum(s for s, _ in valid) / len(valid) if valid else None,
        "accuracy": None,
        "accuracy_invalid_as_wrong": None,
        "kendall_tau": None,
        "spearman_rho": None,
        "seconds_per_sample": sum(r.seconds for r, _ in labelled) / n,
    }
    if metrics["mode"] in BINARY_MODES:
        correct = sum((score >= 0.5) == passed for score, passed in valid)
        metrics["accuracy"] = correct / len(valid) if valid else None
        metrics["accuracy_invalid_as_wrong"] = correct / n
    scores, truth = [s for s, _ in valid], [float(p) for _, p in valid]
    if len(valid) >= 2 and len(set(scores)) > 1 and len(set(truth)) > 1:
        metrics["kendall_tau"] = _finite(kendalltau(scores, truth).statistic)
        metrics["spearman_rho"] = _finite(spearmanr(scores, truth).statistic)
    return metrics
