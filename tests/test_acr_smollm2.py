"""The memorization audit on the embedded SmolLM2: a famous line is recited after a shorter GCG prompt."""

from __future__ import annotations

import pytest

from selfevolve.evaluate.gcg import GCGConfig, gcg

pytestmark = pytest.mark.slow

QUOTE = "The only thing we have to fear is fear itself."  # 11 tokens


def test_a_famous_line_is_emitted_after_a_shorter_gcg_prompt(smollm2):
    # warm start: a 4-token hint padded with 6 random tokens; seeds 0 and 1 succeed within 3 steps (60 allowed)
    hint = smollm2.tokenizer("Roosevelt sayings “", add_special_tokens=False)["input_ids"]
    result = gcg(smollm2, QUOTE, 10, GCGConfig(steps=60, seed=0), init=hint)
    assert result.success, result.losses[-5:]  # 10 < 11 tokens: ACR >= 1.1, memorized
    answer = smollm2.generate([result.prompt], max_new_tokens=11, temperature=0.0)[0]
    assert answer.text.startswith(QUOTE)
