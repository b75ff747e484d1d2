"""Judge fine-tuning: the loss is the LogprobJudge's own two-label choice, and training moves P toward targets."""

from __future__ import annotations

import math

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import LogprobJudge, PairwiseTemplate
from selfevolve.records import JudgeLabel
from selfevolve.runtime import load_model
from selfevolve.update.judge_tuning import (
    JudgeTuningConfig,
    LabelObjective,
    judge_examples,
    label_margins,
    tune_judge,
)
from selfevolve.update.training import TrainingConfig

LABELS = [
    JudgeLabel("Which event happened first?", "X was born in 1801.", "Y was born in 1950.", 1.0),
    JudgeLabel("Which event happened first?", "Y was born in 1950.", "X was born in 1801.", 0.0),
    JudgeLabel("Which event happened first?", "X was born in 1801.", "Y was born in 1950.", 0.0, True),
    JudgeLabel("Which event happened first?", "Y was born in 1950.", "X was born in 1801.", 1.0, True),
]


def _judge_p(model, labels):
    judge = LogprobJudge(model)
    return [judge.prefer([(x.question, x.a, x.b)], negated=x.negated)[0] for x in labels]


def test_margin_is_the_judges_probability(tiny_llama):
    # sigmoid(log p(A) - log p(B)) = p(A) / (p(A) + p(B)): the LogprobJudge's verdict, both label paths
    examples = judge_examples(tiny_llama, LABELS)
    with torch.no_grad():
        fast = torch.sigmoid(label_margins(tiny_llama, examples, grad=False)).tolist()
        two_token = [e._replace(label_a="A A", label_b="B B") for e in examples]  # forces the general path
        general = label_margins(tiny_llama, two_token, grad=False)
    assert fast == pytest.approx(_judge_p(tiny_llama, LABELS), abs=1e-5)
    assert general.shape == (4,) and torch.isfinite(general).all()
    # negated labels use the "worse" instruction
    assert "worse" in examples[2].prompt[-1]["content"] and "better" in examples[0].prompt[-1]["content"]


def test_loss_matches_binary_cross_entropy_by_hand(tiny_llama):
    examples = judge_examples(tiny_llama, LABELS[:2])
    loss, count = LabelObjective()(tiny_llama, examples)
    p = _judge_p(tiny_llama, LABELS[:2])
    # BCE = mean(-log p for target 1, -log(1 - p) for target 0)
    expected = (-math.log(p[0]) - math.log(1 - p[1])) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert count == 2


@pytest.mark.parametrize("target", [1.0, 0.0])
def test_tuning_moves_the_judge_toward_its_targets(target):
    # The tiny random model gives ~0.5 to every prompt and cannot learn to read these texts in a few steps,
    # so the targets here are learnable without reading them: every label asks for the same answer.
    labels = [JudgeLabel(x.question, x.a, x.b, target, x.negated) for x in LABELS]
    model = load_model("tiny-random-llama", seed=0)
    before = _judge_p(model, labels)
    config = JudgeTuningConfig(
        train=TrainingConfig(epochs=4, batch_size=4, learning_rate=2e-2, warmup_ratio=0)
    )
    result = tune_judge(model, labels, config)
    after = _judge_p(model, labels)
    assert result.steps == 4 and result.losses[-1] < result.losses[0]
    # every verdict moved toward the target, the mean error by at least 0.1
    assert all(abs(a - target) < abs(b - target) for a, b in zip(after, before))
    assert sum(abs(a - target) for a in after) / 4 < sum(abs(b - target) for b in before) / 4 - 0.1


def test_text_only_models_get_the_text_prompt(tiny_llama):
    template = PairwiseTemplate()
    chat = tiny_llama.tokenizer.chat_template
    tiny_llama.tokenizer.chat_template = None
    try:
        (example,) = judge_examples(tiny_llama, LABELS[:1], template)
    finally:
        tiny_llama.tokenizer.chat_template = chat
    assert isinstance(example.prompt, str) and example.prompt.endswith("Answer:")
    assert (example.label_a, example.label_b) == (" A", " B")


def test_bad_labels_are_refused(tiny_llama):
    with pytest.raises(SelfEvolveError, match="no judge labels"):
        tune_judge(tiny_llama, [])
    with pytest.raises(SelfEvolveError, match=r"\[0, 1\]"):
        judge_examples(tiny_llama, [JudgeLabel("q", "a", "b", 1.5)])
    with pytest.raises(SelfEvolveError, match="string"):
        judge_examples(tiny_llama, [JudgeLabel("q", "a", None, 1.0)])  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_margin_equals_its_logprob_judge(smollm2):
    # SmolLM2's labels "A" and "B" are single tokens: the one-pass margin is the LogprobJudge's two-pass P
    examples = judge_examples(smollm2, LABELS)
    with torch.no_grad():
        fast = torch.sigmoid(label_margins(smollm2, examples, grad=False)).tolist()
    assert fast == pytest.approx(_judge_p(smollm2, LABELS), abs=1e-4)
