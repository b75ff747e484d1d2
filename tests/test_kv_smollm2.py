"""SnapKV on the embedded SmolLM2-135M: exact when nothing is evicted, and a pass key survives a small budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfevolve.runtime.kv import SnapKV, StreamingLLM

pytestmark = pytest.mark.slow

HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "haystack"
KEY = "60494"


def pass_key_prompt(lm, tokens: int, depth: float) -> str:
    """A chat asking for a pass key hidden at ``depth`` of about ``tokens`` tokens of essays."""
    assert HAYSTACK.is_dir(), (
        f"the essays are missing from {HAYSTACK}: the tests need ../shared/data beside the repo"
    )
    essays = "\n\n".join(path.read_text() for path in sorted(HAYSTACK.glob("*.txt")))
    text = lm.tokenizer.decode(lm.tokenizer(essays)["input_ids"][:tokens])
    cut = text.rfind(". ", 0, int(depth * len(text))) + 2
    needle = f"\n\nThe pass key is {KEY}. Remember it. {KEY} is the pass key.\n\n"
    content = (
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
        f"I will quiz you about the pass key.\n\n{text[:cut]}{needle}{text[cut:]}\n\nWhat is the pass key?"
    )
    return lm.render([{"role": "user", "content": content}]) + "The pass key is"


def test_budget_above_the_prompt_is_token_exact(smollm2):
    prompts = [
        [{"role": "user", "content": "Name three colours of the rainbow."}],
        [{"role": "user", "content": "Write one sentence about the sea, then one about the mountains."}],
    ]
    expected = [c.token_ids for c in smollm2.generate(prompts, max_new_tokens=24)]
    for policy in (SnapKV(budget=4096), SnapKV(budget=1.0, gqa="query_head")):
        got = [c.token_ids for c in smollm2.generate(prompts, max_new_tokens=24, kv_compression=policy)]
        assert got == expected


def test_pass_key_survives_a_small_snapkv_budget(smollm2):
    prompt = pass_key_prompt(smollm2, 1500, depth=0.4)
    assert 1400 < len(smollm2.encode(prompt)) < 1700

    def answer(policy):
        text = smollm2.generate([prompt], max_new_tokens=8, kv_compression=policy)[0].text
        if policy is not None:  # the answer really came from a 256-position cache
            record = policy.last_report.last
            assert record.kept_tokens == 256 and record.ratio == record.prompt_tokens / 256
        return text

    assert KEY in answer(None)
    assert KEY in answer(SnapKV(budget=256, kernel=15))
    assert KEY not in answer(StreamingLLM(sinks=4, recent=252))
