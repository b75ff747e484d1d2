"""A :class:`~selfevolve.runtime.backend.Backend` over any OpenAI-compatible HTTP endpoint.

vLLM, Ollama, llama.cpp, OpenAI's API and ``selfevolve serve`` all work for ``generate``; ``score`` needs a server
that echoes prompt logprobs on ``/v1/completions`` (vLLM and ``selfevolve serve`` do, OpenAI's API does not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import (
    Completion,
    Message,
    Prompt,
    TokenScores,
    check_sampling,
    normalize_stop,
)
from selfevolve.runtime.model import as_prompt_list, cut_at_stop

PROMPTS_PER_REQUEST = 32
"""Text prompts sent together in one ``/v1/completions`` request (each chat is its own request)."""

HINTS = {
    400: "the server rejected the request",
    401: "check api_key",
    403: "check api_key and its permissions",
    404: "check the model name (GET {base}/models lists them) and that base_url ends in /v1",
    422: "the server rejected the request",
    429: "the server is rate limiting; retry later or lower concurrency",
}


def api_base(url: str) -> str:
    """``url`` without a trailing slash, with ``/v1`` added when it is a bare host such as ``http://host:8000``."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SelfEvolveError(
            f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {url!r}"
        )
    return url.rstrip("/") + ("" if parts.path else "/v1")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _server_message(body: object, fallback: str) -> str:
    """The ``message`` of an OpenAI error body (vLLM, FastAPI and others differ a little), else ``fallback``."""
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body) if body else fallback


def _extra(choice: Any, key: str) -> list[int]:
    """A vLLM extension field of a response choice (``token_ids``...), or [] when the server does not send it."""
    value = (choice.model_extra or {}).get(key)
    return list(value) if isinstance(value, list) else []


def _finish(
    text: str | None, token_ids: list[int], reason: str | None, stop: list[str], index: int, sample: int
) -> Completion:
    """A :class:`Completion`, cut at a stop string the server left in (``finish_reason`` "stop" if so)."""
    text, stopped = cut_at_stop(text or "", stop)
    return Completion(
        text, token_ids, "length" if reason == "length" and not stopped else "stop", index, sample
    )


class OpenAIBackend:
    """Generate and score through an OpenAI-compatible server, with the same calls and results as LocalModel.

    Text prompts go to ``/v1/completions`` (up to ``PROMPTS_PER_REQUEST`` per request), chats to
    ``/v1/chat/completions``; up to ``concurrency`` requests run at once. ``Completion.token_ids`` are filled when
    the server honours vLLM's ``return_token_ids`` and are empty otherwise (e.g. on OpenAI's API).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        timeout: float = 60,
        max_retries: int = 2,
        concurrency: int = 8,
    ) -> None:
        import openai

        if concurrency < 1:
            raise SelfEvolveError(f"concurrency must be at least 1, got {concurrency}")
        self.base_url = api_base(base_url)
        self.name = model
        self.timeout = timeout
        self.concurrency = concurrency
        self._ask_token_ids = True
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.name!r})"

    def _send(self, create: Callable[..., Any], body: dict[str, Any]) -> Any:
        """Ask for token ids (vLLM's ``return_token_ids``) until the server refuses the unknown field, then stop."""
        import openai

        if not self._ask_token_ids:
            return create(model=self.name, **body)
        try:
            return create(model=self.name, extra_body={"return_token_ids": True}, **body)
        except openai.BadRequestError as err:
            if "return_token_ids" not in str(err.message):
                raise
            self._ask_token_ids = False  # e.g. OpenAI's API rejects unrecognized request arguments
            return create(model=self.name, **body)

    def _call(self, path: str, create: Callable[..., Any], **body: Any) -> Any:
        """Send one request; any failure becomes a one-line SelfEvolveError naming the URL and what to check."""
        import openai

        url = f"{self.base_url}{path}"
        try:
            return self._send(create, body)
        except openai.APITimeoutError as err:
            raise SelfEvolveError(
                f"{url} did not answer within {self.timeout}s; raise timeout= or check that the server is not overloaded"
            ) from err
        except openai.APIConnectionError as err:
            reason = _one_line(err.__cause__ or err.message)
            raise SelfEvolveError(
                f"cannot connect to {url} ({reason}); check that the server is running and that base_url is right "
                "(e.g. http://localhost:8000/v1)"
            ) from err
        except openai.APIStatusError as err:
            hint = HINTS.get(err.status_code, "see the server's log").format(base=self.base_url)
            message = _one_line(_server_message(err.body, err.message))
            raise SelfEvolveError(f"{url} answered HTTP {err.status_code}: {message}; {hint}") from err
        except openai.APIError as err:
            raise SelfEvolveError(f"{url} failed: {_one_line(err.message)}; see the server's log") from err

    def _run(self, jobs: list[Callable[[], list]]) -> list:
        """Run request jobs, ``concurrency`` at a time; their result lists concatenated in job order."""
        if len(jobs) <= 1:
            return [item for job in jobs for item in job()]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return [item for result in pool.map(lambda job: job(), jobs) for item in result]

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> list[Completion]:
        """Sample ``n`` completions per prompt, prompt-major like ``LocalModel.generate``; greedy at temperature 0."""
        items = as_prompt_list(prompts)
        check_sampling(max_new_tokens, temperature, top_p, n)
        stops = normalize_stop(stop)
        options: dict[str, Any] = {
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "n": n,
        }
        options |= {"stop": stops} if stops else {}
        options |= {"seed": seed} if seed is not None else {}
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        jobs = [
            partial(self._complete, texts[k : k + PROMPTS_PER_REQUEST], items, options, stops)
            for k in range(0, len(texts), PROMPTS_PER_REQUEST)
        ]
        jobs += [
            partial(self._chat, i, item, options, stops)
            for i, item in enumerate(items)
            if not isinstance(item, str)
        ]
        return sorted(self._run(jobs), key=lambda c: (c.prompt_index, c.sample_index))

    def _complete(
        self, indices: list[int], items: list[Prompt], options: dict, stops: list[str]
    ) -> list[Completion]:
        response = self._call(
            "/completions", self.client.completions.create, prompt=[items[i] for i in indices], **options
        )
        n = options["n"]
        if len(response.choices) != len(indices) * n:
            raise SelfEvolveError(
                f"{self.base_url}/completions returned {len(response.choices)} choices for {len(indices)} prompts "
                f"with n={n}; the server does not handle a list of prompts, use a vLLM-compatible server"
            )
        completions = []
        for choice in response.choices:
            k, j = divmod(choice.index, n)  # OpenAI numbers choices prompt-major: index = prompt * n + sample
            completions.append(
                _finish(choice.text, _extra(choice, "token_ids"), choice.finish_reason, stops, indices[k], j)
            )
        return completions

    def _chat(
        self, index: int, messages: Sequence[Message], options: dict, stops: list[str]
    ) -> list[Completion]:
        response = self._call(
            "/chat/completions", self.client.chat.completions.create, messages=list(messages), **options
        )
        return [
            _finish(c.message.content, _extra(c, "token_ids"), c.finish_reason, stops, index, c.index)
            for c in response.choices
        ]

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        """Per-token log-probabilities of each continuation after its text prompt, as ``LocalModel.score`` gives.

        Each ``prompt + continuation`` is sent with ``echo=True, max_tokens=0, logprobs=1``; a token belongs to
        the continuation when it ends past the prompt (its end is the next token's offset), LocalModel's rule.
        """
        items = as_prompt_list(prompts)
        if len(items) != len(continuations):
            raise SelfEvolveError(
                f"got {len(items)} prompts but {len(continuations)} continuations; pass one each"
            )
        if not all(isinstance(c, str) for c in continuations):
            raise SelfEvolveError("continuations must be strings")
        if not all(isinstance(item, str) for item in items):
            raise SelfEvolveError(
                "OpenAIBackend.score takes text prompts only: it scores through /v1/completions, which takes raw "
                "text; render chats to text first (LocalModel.render, with the served model's chat template)"
            )
        pairs = list(zip(items, continuations))
        jobs = [
            partial(self._score_batch, pairs[k : k + PROMPTS_PER_REQUEST])
            for k in range(0, len(pairs), PROMPTS_PER_REQUEST)
        ]
        return self._run(jobs)

    def _score_batch(self, pairs: list[tuple[str, str]]) -> list[TokenScores]:
        response = self._call(
            "/completions",
            self.client.completions.create,
            prompt=[prompt + continuation for prompt, continuation in pairs],
            echo=True,
            max_tokens=0,
            logprobs=1,
            temperature=0.0,
        )
        choices = sorted(response.choices, key=lambda choice: choice.index)
        return [
            self._token_scores(prompt, continuation, choice)
            for (prompt, continuation), choice in zip(pairs, choices)
        ]

    def _token_scores(self, prompt: str, continuation: str, choice: Any) -> TokenScores:
        logprobs = choice.logprobs
        if logprobs is None or None in (logprobs.tokens, logprobs.token_logprobs, logprobs.text_offset):
            raise SelfEvolveError(
                f"{self.base_url}/completions returned no prompt logprobs; score needs a server that supports "
                "echo=true with logprobs (vLLM, selfevolve serve), not e.g. OpenAI's API"
            )
        ends = [*logprobs.text_offset[1:], len(prompt + continuation)]
        start = next((i for i, end in enumerate(ends) if end > len(prompt)), len(ends))
        if start == 0:
            raise SelfEvolveError(
                "cannot score a continuation of an empty prompt on a model without a BOS token"
            )
        ids = _extra(choice, "prompt_token_ids")
        return TokenScores(
            tokens=logprobs.tokens[start:],
            token_ids=ids[start:] if len(ids) == len(logprobs.tokens) else [],
            logprobs=[float(value) for value in logprobs.token_logprobs[start:]],
        )
