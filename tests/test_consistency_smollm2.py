"""The logprob judge on the real SmolLM2: a well-formed measurement on a few item sets (slow)."""

from __future__ import annotations

import math

import pytest

from selfevolve.evaluate.consistency import ConsistencyConfig, measure_consistency
from selfevolve.judges.pairwise import CachedJudge, LogprobJudge, PairwiseTemplate
from selfevolve.records import ItemSet

SETS = [
    ItemSet("Which number is larger?", ["12", "47", "3", "89"], [12, 47, 3, 89], "numbers"),
    ItemSet(
        "Which month comes first in the calendar year?",
        ["March", "July", "January"],
        [-3, -7, -1],
        "m",
    ),
]


@pytest.mark.slow
def test_smollm2_logprob_judge_is_measured_with_every_verdict_valid(smollm2):
    judge = CachedJudge(LogprobJudge(smollm2))
    assert judge.judge.chat  # the chat template, labels "A" / "B" right after the assistant turn opens
    for label in ("A", "B"):  # each label is one token after the generation prompt
        scored = smollm2.score([PairwiseTemplate().messages("q", "x", "y")], [label])[0]
        assert len(scored.token_ids) == 1
    report = measure_consistency(judge, SETS, ConsistencyConfig(k=3), progress=False)
    # 4 + 3 items: 12 + 6 ordered pairs, both polarities -> 36 verdicts, none invalid (softmax of 2 labels)
    assert report.calls == 36 and report.invalid == 0
    for name in ("s_tran", "s_comm", "s_neg", "gold_agreement"):
        metric = report.metrics[name]
        assert 0.0 <= metric.low <= metric.value <= metric.high <= 1.0 and metric.n_invalid == 0
    assert report.metrics["s_tran"].n == 5 and report.metrics["s_comm"].n == 9  # C(4,3) + C(3,3); 6 + 3
    probabilities = list(judge.cache.values())
    assert all(0.0 < p < 1.0 and not math.isnan(p) for p in probabilities)
    assert len(set(probabilities)) > 1  # the judge reads the items: not one constant answer
