"""The OpenAI-compatible server and OpenAIBackend, end to end over localhost with the tiny random model."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime import Backend, OpenAIBackend
from selfevolve.serve import serve_in_thread

CHATS = [
    [{"role": "user", "content": "Say something."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ],
]
TEXTS = ["The cat sat", "Once upon a time", "héllo wörld"]


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def url(model):
    with serve_in_thread(model) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def remote(url, model):
    return OpenAIBackend(url, model.name)


def as_tuples(completions):
    return [(c.text, c.token_ids, c.finish_reason, c.prompt_index, c.sample_index) for c in completions]


def test_backend_protocol_and_bare_host_url(url, model):
    backend = OpenAIBackend(url.removesuffix("/v1"), model.name)
    assert isinstance(backend, Backend)
    assert backend.base_url == url
    assert backend.generate("Hi", max_new_tokens=2)[0].token_ids
    with pytest.raises(SelfEvolveError, match="http"):
        OpenAIBackend("localhost:8000", model.name)


def test_greedy_generation_over_http_equals_local(remote, model):
    for prompts in (TEXTS, CHATS):
        over_http = remote.generate(prompts, max_new_tokens=12, n=2)
        local = model.generate(prompts, max_new_tokens=12, n=2)
        assert as_tuples(over_http) == as_tuples(local)
        assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for c in over_http)


def test_seeded_sampling_gives_n_reproducible_samples(remote, model):
    first = remote.generate(TEXTS[:2], max_new_tokens=8, temperature=1.0, n=3, seed=7)
    assert [(c.prompt_index, c.sample_index) for c in first] == [(i, j) for i in range(2) for j in range(3)]
    assert len({c.text for c in first}) > 1
    assert as_tuples(remote.generate(TEXTS[:2], max_new_tokens=8, temperature=1.0, n=3, seed=7)) == as_tuples(
        first
    )
    assert as_tuples(first) == as_tuples(
        model.generate(TEXTS[:2], max_new_tokens=8, temperature=1.0, n=3, seed=7)
    )
    chats = remote.generate(CHATS[0], max_new_tokens=8, temperature=1.0, n=2, seed=3)
    assert [c.sample_index for c in chats] == [0, 1]
    assert as_tuples(remote.generate(CHATS[0], max_new_tokens=8, temperature=1.0, n=2, seed=3)) == as_tuples(
        chats
    )


def test_stop_strings_cut_the_text(remote, model):
    full = remote.generate(TEXTS[0], max_new_tokens=16, temperature=1.0, seed=11)[0].text
    stop = full[5:7]
    cut = remote.generate(TEXTS[0], max_new_tokens=16, temperature=1.0, seed=11, stop=[stop])[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    assert as_tuples([cut]) == as_tuples(
        model.generate(TEXTS[0], max_new_tokens=16, temperature=1.0, seed=11, stop=[stop])
    )


def test_score_over_http_equals_local(remote, model):
    prompts, continuations = ["The capital of", "héllo", "ab", "x"], [" Paris", " wörld é!", "", "\n\ny"]
    over_http, local = remote.score(prompts, continuations), model.score(prompts, continuations)
    for got, want in zip(over_http, local):
        assert (got.tokens, got.token_ids) == (want.tokens, want.token_ids)
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert over_http[2].tokens == []
    with pytest.raises(SelfEvolveError, match="text prompts only"):
        remote.score([CHATS[0]], ["Hi"])


def test_streaming_chat_concatenates_to_the_greedy_answer(url, remote, model):
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    stream = client.chat.completions.create(
        model=model.name, messages=CHATS[1], max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == remote.generate(CHATS[1], max_new_tokens=10)[0].text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_client_usage_echo_and_logprobs(url, model):
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    chat = client.chat.completions.create(model=model.name, messages=CHATS[0], max_tokens=5, temperature=0)
    assert chat.usage.prompt_tokens == len(model.encode(CHATS[0]))
    assert (chat.usage.completion_tokens, chat.usage.total_tokens) == (5, chat.usage.prompt_tokens + 5)
    echoed = client.completions.create(model=model.name, prompt="héllo", echo=True, max_tokens=0, logprobs=2)
    logprobs = echoed.choices[0].logprobs
    assert echoed.choices[0].text == "héllo"
    assert len(logprobs.tokens) == len(model.encode("héllo")) == len(logprobs.text_offset)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(len(top) <= 2 for top in logprobs.top_logprobs[1:])
    greedy = client.completions.create(
        model=model.name, prompt="abc", max_tokens=4, temperature=0, logprobs=1
    )
    logprobs = greedy.choices[0].logprobs
    assert len(logprobs.tokens) == 4 and logprobs.text_offset[0] == 0
    for chosen, top in zip(
        logprobs.token_logprobs, logprobs.top_logprobs
    ):  # greedy picks the likeliest token
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)


def test_content_parts_are_joined_like_plain_text(url, model):
    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 6, "temperature": 0}
    answer = httpx.post(f"{url}/chat/completions", json=body).json()
    assert (
        answer["choices"][0]["message"]["content"] == model.generate(CHATS[1][1:], max_new_tokens=6)[0].text
    )


def test_models_and_health(url, model):
    listing = httpx.get(f"{url}/models").json()
    assert [entry["id"] for entry in listing["data"]] == [model.name]
    assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"


USER = '[{"role": "user", "content": "hi"}]'
HOSTILE = [
    ("chat/completions", '{"messages": [', 400),
    ("chat/completions", "", 400),
    ("chat/completions", "[1, 2]", 400),
    ("chat/completions", '{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
    ("chat/completions", '{"messages": [{"role": "user"}]}', 400),
    ("chat/completions", '{"messages": "hi"}', 400),
    ("chat/completions", '{"messages": []}', 400),
    ("chat/completions", f'{{"messages": {USER}, "max_tokens": -1}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "max_tokens": 1000000000}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "n": 0}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "n": 1000}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "temperature": "hot"}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "top_p": 0}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "stream": true, "n": 2}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "logprobs": true}}', 400),
    ("chat/completions", f'{{"messages": {USER}, "model": "gpt-4"}}', 404),
    ("completions", '{"prompt": 5}', 400),
    ("completions", '{"prompt": [1, 2, 3]}', 400),
    ("completions", '{"prompt": ""}', 400),
    ("completions", '{"prompt": []}', 400),
    ("completions", '{"prompt": "hi", "max_tokens": -5}', 400),
    ("completions", '{"prompt": "hi", "stop": 3}', 400),
    ("completions", '{"prompt": "hi", "logprobs": 1000}', 400),
    ("completions", '{"prompt": "hi", "stream": true}', 400),
    ("completions", '{"prompt": "' + "x" * 9000 + '"}', 400),
    ("no/such/route", "{}", 404),
]


@pytest.mark.parametrize(("path", "body", "status"), HOSTILE)
def test_hostile_input_gets_an_openai_error_and_the_server_survives(url, path, body, status):
    response = httpx.post(f"{url}/{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    assert {"type", "param", "code"} <= error.keys()
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_server_errors_become_one_line_selfevolve_errors(url, remote, model):
    with pytest.raises(SelfEvolveError, match="context") as caught:
        remote.generate(["x" * 9000])
    assert url in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(SelfEvolveError, match="HTTP 404"):
        OpenAIBackend(url, "no-such-model").generate(["hi"])
    with pytest.raises(SelfEvolveError, match="max_new_tokens"):
        remote.generate(["hi"], max_new_tokens=0)
    assert (
        remote.generate(["hi"], max_new_tokens=3)[0].text == model.generate(["hi"], max_new_tokens=3)[0].text
    )


def test_closed_port_is_a_one_line_error_naming_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "any", max_retries=0, timeout=5)
    with pytest.raises(SelfEvolveError) as caught:
        backend.generate(["hi"])
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/v1/completions" in message and "\n" not in message
    assert "running" in message
