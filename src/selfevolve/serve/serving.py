"""What the endpoints do with the model: OpenAI-shaped answers from :class:`LocalModel`, and the limits they check.

Every method here blocks (it runs the model); the routes in ``app.py`` are plain ``def`` functions, so FastAPI
calls them in its threadpool and the event loop stays free.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from itertools import accumulate

from jinja2 import TemplateError

from selfevolve.runtime.backend import Completion, Prompt
from selfevolve.runtime.model import LocalModel
from selfevolve.serve.logprobs import encode_with_offsets, legacy_logprobs
from selfevolve.serve.protocol import APIError, ChatRequest, CompletionRequest, error_body

DEFAULT_BUDGET = 512
"""New tokens for a chat that sets no max_tokens, on a model whose context length is unknown."""


def sse(payload: dict) -> str:
    """One server-sent event as the OpenAI streaming clients read it."""
    return f"data: {json.dumps(payload)}\n\n"


def usage(prompt_tokens: int, completions: list[Completion]) -> dict:
    """The ``usage`` block: prompt tokens (each prompt counted once) and generated tokens over all samples."""
    generated = sum(len(completion.token_ids) for completion in completions)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": prompt_tokens + generated,
    }


class Serving:
    """The served model with its name and context length, and the logic behind each endpoint."""

    def __init__(self, backend: LocalModel) -> None:
        self.backend = backend
        self.context = getattr(backend.model.config, "max_position_embeddings", None)
        self.created = int(time.time())

    def model_card(self) -> dict:
        """The one entry of ``GET /v1/models``."""
        return {
            "id": self.backend.name,
            "object": "model",
            "created": self.created,
            "owned_by": "selfevolve",
            "root": self.backend.revision,
            "max_model_len": self.context,
        }

    def check_model(self, requested: str | None) -> None:
        """A request may omit ``model``; naming another one is a 404, as on OpenAI and vLLM."""
        if requested is not None and requested != self.backend.name:
            raise APIError(
                404,
                f"model {requested!r} is not served here; this server serves {self.backend.name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def encode(self, prompt: Prompt, param: str) -> list[int]:
        """Token ids of a prompt; an empty one or a chat the template refuses is the caller's mistake (400)."""
        try:
            ids = self.backend.encode(prompt)
        except TemplateError as err:
            raise APIError(
                400, f"the model's chat template rejected the messages: {err}", param=param
            ) from err
        if not ids:
            raise APIError(400, f"{param} is empty: it encodes to no tokens; send some text", param=param)
        return ids

    def budget(self, used: int, wanted: int | None, param: str) -> int:
        """New tokens to generate: ``wanted``, or what is left of the context when None; 400 past the context."""
        if self.context is None:
            return DEFAULT_BUDGET if wanted is None else wanted
        if used + (1 if wanted is None else wanted) > self.context:
            raise APIError(
                400,
                f"this model's context is {self.context} tokens, but {param} has {used} tokens and max_tokens asks "
                f"for {wanted if wanted is not None else 'at least 1'} more; shorten {param} or lower max_tokens",
                param=param,
                code="context_length_exceeded",
            )
        return self.context - used if wanted is None else wanted

    def _head(self, prefix: str, kind: str) -> dict:
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.backend.name,
        }

    def chat(self, request: ChatRequest) -> dict:
        """``POST /v1/chat/completions`` without streaming: ``n`` answers to one conversation."""
        self.check_model(request.model)
        messages = [message.as_message() for message in request.messages]
        prompt_ids = self.encode(messages, "messages")
        max_new = self.budget(len(prompt_ids), request.budget, "messages")
        completions = self.backend.generate(
            [messages],
            max_new_tokens=max_new,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            n=request.n,
        )
        choices = []
        for completion in completions:
            choice = {
                "index": completion.sample_index,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
            if request.return_token_ids:
                choice["token_ids"] = completion.token_ids
            choices.append(choice)
        answer = self._head("chatcmpl", "chat.completion") | {"choices": choices}
        if request.return_token_ids:
            answer["prompt_token_ids"] = prompt_ids
        return answer | {"usage": usage(len(prompt_ids), completions)}

    def chat_stream(self, request: ChatRequest) -> Iterator[str]:
        """``POST /v1/chat/completions`` with ``stream=true``: checks now, then SSE chunks ending in ``[DONE]``."""
        self.check_model(request.model)
        if request.n != 1:
            raise APIError(
                400,
                f"stream=true supports n=1 only, got n={request.n}; stream one sample per request",
                param="n",
            )
        messages = [message.as_message() for message in request.messages]
        max_new = self.budget(len(self.encode(messages, "messages")), request.budget, "messages")
        return self._stream_chunks(request, messages, max_new)

    def _stream_chunks(self, request: ChatRequest, messages: list, max_new: int) -> Iterator[str]:
        head = self._head("chatcmpl", "chat.completion.chunk")

        def chunk(delta: dict, finish: str | None = None) -> str:
            return sse(
                head | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            )

        yield chunk({"role": "assistant", "content": ""})
        text = ""
        try:
            for piece in self.backend.stream(
                messages,
                max_new_tokens=max_new,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop,
                seed=request.seed,
            ):
                text += piece
                yield chunk({"content": piece})
        except Exception as err:  # the 200 header is already sent: report in-band, as vLLM does
            yield sse(error_body(f"generation failed: {type(err).__name__}: {err}", kind="internal_error"))
            yield "data: [DONE]\n\n"
            return
        # LocalModel.stream does not say why it ended; a text shorter than the budget ended on EOS or a stop string.
        generated = len(self.backend.tokenizer(text, add_special_tokens=False)["input_ids"])
        yield chunk({}, "length" if generated >= max_new else "stop")
        yield "data: [DONE]\n\n"

    def complete(self, request: CompletionRequest) -> dict:
        """``POST /v1/completions``: ``n`` completions per prompt, optionally echoed and with legacy logprobs."""
        self.check_model(request.model)
        prompt_ids = [self.encode(prompt, "prompt") for prompt in request.prompt]
        for ids in prompt_ids:
            self.budget(len(ids), request.max_tokens, "prompt")
        if request.max_tokens > 0:
            completions = self.backend.generate(
                request.prompt,
                max_new_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop,
                seed=request.seed,
                n=request.n,
            )
        else:
            completions = [
                Completion("", [], "length", i, j)
                for i in range(len(request.prompt))
                for j in range(request.n)
            ]
        choices = [self._completion_choice(request, completion, prompt_ids) for completion in completions]
        answer = self._head("cmpl", "text_completion") | {"choices": choices}
        return answer | {"usage": usage(sum(len(ids) for ids in prompt_ids), completions)}

    def _completion_choice(
        self, request: CompletionRequest, completion: Completion, prompt_ids: list
    ) -> dict:
        prompt = request.prompt[completion.prompt_index]
        choice = {
            "index": completion.prompt_index * request.n + completion.sample_index,
            "text": (prompt if request.echo else "") + completion.text,
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }
        if request.logprobs is not None:
            choice["logprobs"] = self._logprobs(request, prompt, completion)
        if request.return_token_ids:
            choice["token_ids"] = completion.token_ids
            choice["prompt_token_ids"] = prompt_ids[completion.prompt_index]
        return choice

    def _logprobs(self, request: CompletionRequest, prompt: str, completion: Completion) -> dict:
        """Legacy logprobs of the echoed prompt (with ``echo``) then of the generated tokens, in one pass over both."""
        ids, offsets = encode_with_offsets(self.backend, prompt)
        pieces = [self.backend.tokenizer.decode([token]) for token in completion.token_ids]
        base = len(prompt) if request.echo else 0
        generated = [base + length for length in accumulate((len(piece) for piece in pieces), initial=0)][:-1]
        if request.echo:
            return legacy_logprobs(
                self.backend, ids + completion.token_ids, offsets + generated, 0, request.logprobs
            )
        return legacy_logprobs(
            self.backend, ids + completion.token_ids, generated, len(ids), request.logprobs
        )
