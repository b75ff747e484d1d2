"""SELF-PARAM end to end on the embedded SmolLM2: injection raises held-out answer recall above the base model."""

from __future__ import annotations

import copy

import pytest

from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
from selfevolve.evaluate.qa import answer_questions
from selfevolve.runtime import LocalModel
from selfevolve.update.selfparam import SelfParamConfig, inject
from selfevolve.update.training import TrainingConfig

pytestmark = pytest.mark.slow


def test_injection_raises_held_out_recall_above_base(smollm2):
    knowledge = fictional_knowledge("single", seed=0)
    # Model-written questions are slow to sample on a CPU; the set's training questions (answered by the
    # model with the document) and the document's sentences keep this test short.
    synthesis = SynthesisConfig(questions_per_document=0, statements_per_document=0)
    model = LocalModel(
        copy.deepcopy(smollm2.model), smollm2.tokenizer, name="smollm2", revision="copy", batch_size=16
    )
    before = answer_questions(model, knowledge.test, max_new_tokens=24)
    items = synthesize(model, knowledge.documents, synthesis, given_questions=knowledge.train)
    result = inject(model, knowledge.documents, items, SelfParamConfig(train=TrainingConfig(epochs=8)))
    after = answer_questions(model, knowledge.test, max_new_tokens=24)
    assert result.train.losses[-1] < result.train.losses[0]
    assert after.recall >= before.recall + 0.25, (before.rows, after.rows)
    assert after.f1 > before.f1
