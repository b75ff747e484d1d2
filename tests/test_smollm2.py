"""Integration tests on the embedded SmolLM2-135M-Instruct (slow: CI still runs them)."""

from __future__ import annotations

import shutil
import time

import pytest

from selfevolve.runtime import load_model
from selfevolve.runtime.registry import REGISTRY

pytestmark = pytest.mark.slow


def test_answers_a_factual_question(smollm2):
    (answer,) = smollm2.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=16
    )
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"


def test_batched_greedy_equals_one_by_one(smollm2):
    prompts = [
        [{"role": "user", "content": "Name a color."}],
        [{"role": "user", "content": "Write a haiku about the sea and the wind at night."}],
        "The three primary colors are",
    ]
    batched = smollm2.generate(prompts, max_new_tokens=20)
    for prompt, together in zip(prompts, batched):
        (alone,) = smollm2.generate([prompt], max_new_tokens=20)
        assert together.token_ids == alone.token_ids


def test_score_prefers_the_true_continuation(smollm2):
    paris, london = smollm2.score(["The capital of France is"] * 2, [" Paris", " London"])
    assert paris.total > london.total + 1.0


def test_cached_copy_loads_fast_and_is_rebuilt_when_corrupt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SELFEVOLVE_CACHE", str(tmp_path))
    first = load_model("smollm2-135m-instruct")
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert (target / "model.safetensors").is_file() and REGISTRY["smollm2-135m-instruct"].cached()
    start = time.perf_counter()
    second = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - start < 5.0
    assert second.revision == first.revision
    prompt = [[{"role": "user", "content": "Say hi."}]]
    assert (
        first.generate(prompt, max_new_tokens=8)[0].token_ids
        == second.generate(prompt, max_new_tokens=8)[0].token_ids
    )
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rebuilt = load_model("smollm2-135m-instruct")
    assert "rebuilding" in caplog.text
    assert (
        rebuilt.generate(prompt, max_new_tokens=8)[0].token_ids
        == first.generate(prompt, max_new_tokens=8)[0].token_ids
    )
    assert not list(tmp_path.glob("models/.smollm2*")), "staging folders must not be left behind"
    shutil.rmtree(target)
