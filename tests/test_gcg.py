"""GCG on tiny random models: it finds prompts for reachable targets, and its success checks are exact."""

from __future__ import annotations

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.gcg import (
    GCGConfig,
    _gradient,
    _score,
    allowed_tokens,
    gcg,
    greedy_match,
    layout,
    teacher_forced_match,
)


def reachable(model, template: str, seed: int, n: int = 5, length: int = 6) -> tuple[list[int], list[int]]:
    """A random printable prompt of ``n`` tokens and its greedy continuation (a target some prompt emits)."""
    lay = layout(model, [0], template)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(65, 120, (n,), generator=generator).tolist()
    ids = torch.tensor([lay.ids(prompt)])
    out = model.model.generate(
        input_ids=ids, max_new_tokens=length, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
    )
    return prompt, out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("template", ["none", "chat"])
def test_gcg_finds_a_prompt_that_makes_the_model_emit_a_reachable_target(tiny_llama, template):
    _, target = reachable(tiny_llama, template, seed=3)
    result = gcg(tiny_llama, target, 5, GCGConfig(steps=150, batch=64, template=template, seed=1))
    assert result.success, result
    assert len(result.prompt_ids) == 5 and result.steps <= 150 and result.seconds > 0
    lay = layout(tiny_llama, target, template)
    assert teacher_forced_match(tiny_llama, lay, result.prompt_ids)
    assert greedy_match(tiny_llama, lay, result.prompt_ids)


def test_the_found_prompt_text_tokenizes_back_to_the_same_ids(tiny_llama):
    _, target = reachable(tiny_llama, "none", seed=5)
    result = gcg(tiny_llama, target, 5, GCGConfig(steps=150, batch=64, seed=2))
    assert tiny_llama.tokenizer(result.prompt)["input_ids"] == result.prompt_ids


def test_teacher_forced_success_agrees_with_greedy_generation(tiny_qwen2):
    for trial in range(10):
        prompt, target = reachable(tiny_qwen2, "none", seed=trial, n=4, length=5)
        if trial % 2:  # every other target differs from what the prompt produces in one token
            target[2] = (target[2] + 1) % 200
        lay = layout(tiny_qwen2, target, "none")
        emitted = teacher_forced_match(tiny_qwen2, lay, prompt)
        assert emitted == greedy_match(tiny_qwen2, lay, prompt) == (trial % 2 == 0)


@pytest.mark.parametrize("template", ["none", "chat"])
def test_candidate_losses_with_the_reused_prefix_cache_equal_plain_forward_passes(tiny_llama, template):
    lay = layout(tiny_llama, "a target", template)
    prompt = torch.tensor([70, 71, 72, 73, 74, 75])
    current = _gradient(tiny_llama, lay, prompt)
    positions = torch.tensor([5, 0, 3, 3, 1, 2, 4])
    candidates = prompt.repeat(len(positions), 1)
    candidates[torch.arange(len(positions)), positions] = torch.tensor([80, 81, 82, 83, 84, 85, 86])
    losses, exact = _score(tiny_llama, lay, candidates, positions, current.kv, eval_batch=3)
    for row in range(len(candidates)):
        ids = torch.tensor([lay.ids(candidates[row].tolist()) + lay.target])
        with torch.no_grad():
            logits = tiny_llama.model(input_ids=ids).logits[0, -len(lay.target) - 1 : -1]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(lay.target))
        assert losses[row] == pytest.approx(float(expected), abs=1e-4)
        assert bool(exact[row]) == bool((logits.argmax(-1) == torch.tensor(lay.target)).all())
    assert current.loss == pytest.approx(float(_gradient(tiny_llama, lay, prompt).loss), abs=1e-6)
    assert current.grad.shape == (6, tiny_llama.model.get_input_embeddings().weight.shape[0])


def test_gcg_is_deterministic_for_a_seed(tiny_llama):
    config = GCGConfig(steps=6, batch=16, seed=7)
    first, second = gcg(tiny_llama, "xyz!", 4, config), gcg(tiny_llama, "xyz!", 4, config)
    assert first.prompt_ids == second.prompt_ids and first.losses == second.losses


def test_gcg_warm_starts_from_an_initial_prompt(tiny_llama):
    init = tiny_llama.tokenizer("hello", add_special_tokens=False)["input_ids"]
    result = gcg(tiny_llama, "zz", 3, GCGConfig(steps=1, batch=1), init=init)
    assert len(result.prompt_ids) == 3
    assert result.losses  # one step was taken from the warm start: "llo"


def test_allowed_tokens_exclude_special_tokens_and_optionally_non_ascii(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    vocab = tiny_llama.model.get_input_embeddings().weight.shape[0]
    every = set(allowed_tokens(tokenizer, vocab, False).tolist())
    ascii_ = set(allowed_tokens(tokenizer, vocab, True).tolist())
    assert not every & set(tokenizer.all_special_ids)
    assert ascii_ < every
    assert all(tokenizer.decode([i]).isascii() and tokenizer.decode([i]).isprintable() for i in ascii_)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 10**9}, "absurd"),
        ({"topk": -1}, "topk"),
        ({"batch": 0}, "batch"),
        ({"template": "alpaca"}, "template"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(SelfEvolveError, match=needle):
        GCGConfig(**kwargs)


def test_bad_targets_and_lengths_are_errors(tiny_llama):
    with pytest.raises(SelfEvolveError, match="empty"):
        gcg(tiny_llama, "   ", 5)
    with pytest.raises(SelfEvolveError, match="at least one token"):
        gcg(tiny_llama, "abc", 0)
