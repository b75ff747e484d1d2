"""The OpenAI-compatible server with the real embedded model: answers, and agreement with the local model."""

from __future__ import annotations

import pytest

from selfevolve.runtime import OpenAIBackend
from selfevolve.serve import serve_in_thread

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def remote(model):
    with serve_in_thread(model) as base_url:
        yield OpenAIBackend(base_url, model.name, timeout=300)


def test_chat_over_http_knows_the_capital_of_france(remote):
    assert "Paris" in remote.generate(FRANCE, max_new_tokens=24)[0].text


def test_http_and_local_greedy_answers_agree(remote, model):
    for prompts in (["The capital of France is", "def fibonacci(n):"], [FRANCE]):
        over_http = remote.generate(prompts, max_new_tokens=16)
        local = model.generate(prompts, max_new_tokens=16)
        assert [(c.text, c.token_ids, c.finish_reason) for c in over_http] == [
            (c.text, c.token_ids, c.finish_reason) for c in local
        ]


def test_http_and_local_scores_agree(remote, model):
    prompts = ["The capital of France is", "Question: 2 + 2 =", model.render(FRANCE)]
    continuations = [" Paris.", " 4, and héllo wörld", "The capital of France is Paris."]
    for got, want in zip(remote.score(prompts, continuations), model.score(prompts, continuations)):
        assert (got.tokens, got.token_ids) == (want.tokens, want.token_ids)
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
        assert got.total < 0
