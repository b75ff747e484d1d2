"""Pairwise judges: label log-probabilities, written verdicts, user callables, the cache and load_judge."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import (
    CachedJudge,
    CallableJudge,
    LogprobJudge,
    PairwiseJudge,
    PairwiseTemplate,
    VerdictJudge,
    load_judge,
    parse_verdict,
)
from selfevolve.runtime.backend import Completion

TRIPLES = [
    ("Which is larger?", "7", "3"),
    ("Which is larger?", "3", "7"),
    ("Which is older?", "Rome", "Oslo"),
]


class Counting:
    """Wraps a backend and counts its score / generate calls (to check batching)."""

    def __init__(self, backend, text_only=False):
        self.backend, self.name = backend, backend.name
        self.score_calls, self.generate_calls, self.prompts = 0, 0, []
        if not text_only:
            self.render, self.tokenizer = backend.render, backend.tokenizer

    def score(self, prompts, continuations):
        self.score_calls += 1
        self.prompts += list(prompts)
        return self.backend.score(prompts, continuations)

    def generate(self, prompts, **kwargs):
        self.generate_calls += 1
        return self.backend.generate(prompts, **kwargs)


def test_logprob_judge_is_the_softmax_of_the_two_label_scores_in_one_batched_call(tiny_llama):
    backend = Counting(tiny_llama)
    judge = LogprobJudge(backend)
    assert isinstance(judge, PairwiseJudge) and judge.chat and judge.name == "logprob:tiny-random-llama"
    got = judge.prefer(TRIPLES)
    assert backend.score_calls == 1 and len(backend.prompts) == 2 * len(TRIPLES)
    t = PairwiseTemplate()
    assert t(*TRIPLES[0]) == t.messages(*TRIPLES[0]) and "better" in t(*TRIPLES[0])[-1]["content"]
    for (q, a, b), p in zip(TRIPLES, got):
        la, lb = (s.total for s in tiny_llama.score([t.messages(q, a, b)] * 2, ["A", "B"]))
        # P(A) = e^la / (e^la + e^lb) = 1 / (1 + e^(lb - la))
        assert p == pytest.approx(1 / (1 + math.exp(lb - la)), abs=1e-6)
    negated = judge.prefer(TRIPLES[:1], negated=True)
    assert "worse" in backend.prompts[-1][-1]["content"] and 0 < negated[0] < 1
    assert judge.prefer([]) == []
    custom = LogprobJudge(tiny_llama, PairwiseTemplate(better="Which is larger? A or B."))
    assert custom.name.startswith("logprob:tiny-random-llama+template-") and custom.name != judge.name


def test_logprob_judge_scores_text_prompts_on_a_text_only_backend(tiny_llama):
    backend = Counting(tiny_llama, text_only=True)
    judge = LogprobJudge(backend)
    assert not judge.chat
    (p,) = judge.prefer(TRIPLES[:1])
    prompt = PairwiseTemplate().text(*TRIPLES[0])
    assert backend.prompts == [prompt, prompt] and prompt.endswith("Answer:")
    la, lb = (s.total for s in tiny_llama.score([prompt] * 2, [" A", " B"]))
    assert p == pytest.approx(1 / (1 + math.exp(lb - la)), abs=1e-6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", 1.0),
        (" B", 0.0),
        ("**A**", 1.0),
        ("B.", 0.0),
        ("Candidate A", 1.0),
        ("Answer: B", 0.0),
        ("A, because it is larger", 1.0),
        ("It's a tie", 0.5),
        ("Both are equal", 0.5),
        ("", math.nan),
        ("\n\n\n", math.nan),
        ("I cannot decide", math.nan),
        ("Apple", math.nan),
        ("Both A and B", 0.5),
        ("<|im_start|>system", math.nan),
        ("A" * 10_000, math.nan),
    ],
)
def test_parse_verdict(text, expected):
    got = parse_verdict(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


class Scripted:
    name = "scripted"

    def __init__(self, replies):
        self.replies, self.calls = replies, 0

    def generate(self, prompts, **kwargs):
        self.calls += 1
        assert kwargs["temperature"] == 0.0 and len(prompts) == len(self.replies)
        return [Completion(text=r) for r in self.replies]


def test_verdict_judge_parses_one_batched_generation_and_keeps_the_raw_replies():
    backend = Scripted(["A", "B is better", "hmm"])
    judge = VerdictJudge(backend, max_new_tokens=4)
    got = judge.prefer(TRIPLES)
    assert backend.calls == 1 and got[:2] == [1.0, 0.0] and math.isnan(got[2])
    assert judge.last_raw == ["A", "B is better", "hmm"] and judge.name == "verdict:scripted"
    with pytest.raises(SelfEvolveError, match="max_new_tokens"):
        VerdictJudge(backend, max_new_tokens=0)


def test_verdict_judge_on_a_real_model_gives_valid_or_counted_invalid_verdicts(tiny_llama):
    got = VerdictJudge(tiny_llama).prefer(TRIPLES)
    assert len(got) == 3 and all(math.isnan(p) or p in (0.0, 0.5, 1.0) for p in got)


def test_callable_judge_counts_garbage_invalid_and_rejects_out_of_range():
    replies = iter([0.75, "yes", None, math.nan, True, 1])

    def fn(question, a, b, *, negated):
        return next(replies)

    judge = CallableJudge(fn, name="fn")
    got = judge.prefer([TRIPLES[0]] * 6)
    assert got[0] == 0.75 and got[5] == 1.0 and all(math.isnan(p) for p in got[1:5])
    for bad in (1.5, -0.1, math.inf, 100):
        with pytest.raises(SelfEvolveError, match=r"outside \[0, 1\]"):
            CallableJudge(lambda q, a, b, *, negated, v=bad: v).prefer(TRIPLES[:1])
    with pytest.raises(SelfEvolveError, match="ZeroDivisionError"):
        CallableJudge(lambda q, a, b, *, negated: 1 / 0).prefer(TRIPLES[:1])
    with pytest.raises(SelfEvolveError, match="callable"):
        CallableJudge(3)
    with pytest.raises(SelfEvolveError, match="triples"):
        judge.prefer([("only", "two")])


def test_cached_judge_asks_each_ordered_pair_once_and_resumes_from_its_file(tmp_path):
    asked = []

    def fn(question, a, b, *, negated):
        asked.append((a, b, negated))
        return math.nan if a == "garbage" else (0.9 if a > b else 0.1) if not negated else 0.2

    path = tmp_path / "cache.jsonl"
    judge = CachedJudge(CallableJudge(fn, name="fn"), path)
    batch = [("q", "b", "a"), ("q", "a", "b"), ("q", "b", "a"), ("q", "garbage", "a")]
    first = judge.prefer(batch)
    assert first[:3] == [0.9, 0.1, 0.9] and math.isnan(first[3])
    assert judge.calls == 3 and judge.invalid == 1 and len(asked) == 3  # the repeated pair is asked once
    assert judge.prefer(batch) == pytest.approx(first, nan_ok=True) and judge.calls == 3
    assert (
        judge.prefer([("q", "b", "a")], negated=True) == [0.2] and judge.calls == 4
    )  # polarity is a new pair
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4 and records[2]["p"] is None and records[3]["negated"] is True

    resumed = CachedJudge(CallableJudge(fn, name="fn"), path)
    assert resumed.prefer(batch) == pytest.approx(first, nan_ok=True) and resumed.calls == 0
    assert len(asked) == 4

    with path.open("a") as handle:
        handle.write('{"judge": "fn", "quest')  # torn by a crash: ignored, asked again
    assert CachedJudge(CallableJudge(fn, name="fn"), path).prefer([("q", "b", "a")]) == [0.9]
    with pytest.raises(SelfEvolveError, match="holds verdicts of judge 'fn'"):
        CachedJudge(CallableJudge(fn, name="other"), path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    with pytest.raises(SelfEvolveError, match="line 1"):
        CachedJudge(CallableJudge(fn, name="fn"), bad)


def test_cached_judge_rejects_a_wrong_number_of_verdicts():
    class Short:
        name = "short"

        def prefer(self, triples, *, negated=False):
            return [0.5]

    with pytest.raises(SelfEvolveError, match="returned 1 verdicts for 2"):
        CachedJudge(Short()).prefer(TRIPLES[:2])


def test_load_judge_specs(monkeypatch, tiny_llama):
    module = types.ModuleType("judge_mod_for_tests")
    module.first = lambda q, a, b, *, negated: 1.0
    module.not_callable = 3
    monkeypatch.setitem(sys.modules, "judge_mod_for_tests", module)
    judge = load_judge("judge_mod_for_tests:first")
    assert isinstance(judge, CallableJudge) and judge.prefer(TRIPLES[:1]) == [1.0]
    with pytest.raises(SelfEvolveError, match="no attribute"):
        load_judge("judge_mod_for_tests:missing")
    with pytest.raises(SelfEvolveError, match="not callable"):
        load_judge("judge_mod_for_tests:not_callable")
    with pytest.raises(SelfEvolveError, match="cannot import"):
        load_judge("no_such_module_xyz:fn")
    with pytest.raises(SelfEvolveError, match="unknown judge kind"):
        load_judge("tiny-random-llama", kind="pointwise")
    with pytest.raises(SelfEvolveError, match="empty judge spec"):
        load_judge(" ")
    assert isinstance(load_judge("tiny-random-llama"), LogprobJudge)
    assert isinstance(load_judge("tiny-random-llama", kind="verdict"), VerdictJudge)


def test_load_judge_over_http_matches_the_local_text_prompt_judge(tiny_llama):
    from selfevolve.serve import serve_in_thread

    with serve_in_thread(tiny_llama) as url:
        remote = load_judge(url)
        assert isinstance(remote, LogprobJudge) and not remote.chat
        local = LogprobJudge(Counting(tiny_llama, text_only=True))
        assert remote.prefer(TRIPLES) == pytest.approx(local.prefer(TRIPLES), abs=1e-4)
        verdict = load_judge(url, kind="verdict")
        assert isinstance(verdict, VerdictJudge)
        local_verdict = VerdictJudge(tiny_llama)
        assert verdict.prefer(TRIPLES) == pytest.approx(local_verdict.prefer(TRIPLES), nan_ok=True)
        assert verdict.last_raw == local_verdict.last_raw  # greedy over HTTP = greedy locally
    with pytest.raises(SelfEvolveError, match="cannot list the models"):
        load_judge("http://127.0.0.1:9/v1")


def test_pointwise_judge_prompt_and_parse_hooks_count_unparseable_replies_invalid():
    from selfevolve.judges.pointwise import PointwiseJudge, UnparseableOutput

    def parse(text):
        if not text.strip().isdigit():
            raise UnparseableOutput(f"no digit in {text!r}")
        return int(text)

    prompts = []

    class Backend:
        name = "scripted"

        def generate(self, batch, **kwargs):
            prompts.append((list(batch), kwargs["max_new_tokens"]))
            replies = ["3", "seven"] if kwargs["max_new_tokens"] == 4 else ["analysis one", "analysis two"]
            return [Completion(text=r) for r in replies]

    judge = PointwiseJudge(
        "rating",
        prompt=lambda text: [{"role": "user", "content": f"Rate 0-4: {text}"}],
        parse=parse,
        score=lambda v: v / 4,
        max_new_tokens=4,
    )
    good, bad = judge.judge(Backend(), [{"text": "x"}, {"text": "y"}])
    assert (good.valid, good.score, good.value) == (True, 0.75, 3)
    assert (bad.valid, bad.score, bad.error) == (False, None, "no digit in 'seven'")
    assert len(prompts) == 1 and prompts[0][0][1][0]["content"] == "Rate 0-4: y"
    two_step = PointwiseJudge(
        "two",
        prompt=lambda analysis: [{"role": "user", "content": f"Summarize: {analysis}"}],
        parse=parse,
        max_new_tokens=4,
        analysis=lambda text: [{"role": "user", "content": f"Analyze {text}"}],
        analysis_max_new_tokens=9,
    )
    prompts.clear()
    first, _ = two_step.judge(Backend(), [{"text": "x"}, {"text": "y"}])
    assert [m for _, m in prompts] == [9, 4] and prompts[1][0][0][0]["content"] == "Summarize: analysis one"
    assert first.analysis == "analysis one" and first.score == 3.0
    assert judge.judge(Backend(), []) == []
