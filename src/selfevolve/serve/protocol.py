"""Request schemas of the OpenAI-compatible server, and the OpenAI error body every failure answers with.

Union-typed fields (``prompt``, ``stop``, message ``content``) are normalised by ``before`` validators, so a
wrong type gives one clear message instead of one pydantic error per union member.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from selfevolve.runtime.backend import Message
from selfevolve.runtime.model import ROLES

MAX_SAMPLES = 64
"""Largest ``n`` one request may ask for."""


class APIError(Exception):
    """A request the server refuses, with the HTTP status and the fields of the OpenAI error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(message: str, *, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI clients parse."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _string_list(value: Any) -> list[str]:
    """A string or a list of strings as a list; anything else is a clear error."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts."""

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            return "".join(part["text"] for part in content)
        raise ValueError("must be a string or a list of {'type': 'text', 'text': '...'} parts")

    def as_message(self) -> Message:
        """The plain dict that LocalModel's chat template takes."""
        return {"role": self.role, "content": self.content}


class SamplingRequest(BaseModel):
    """Fields both endpoints share. Unknown fields (``user``, ``stream_options``...) are ignored."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_SAMPLES)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    return_token_ids: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, stop: Any) -> list[str]:
        return [] if stop is None else [s for s in _string_list(stop) if s]


class ChatRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: bool) -> bool:
        if logprobs:
            raise ValueError("chat logprobs are not supported; score text with /v1/completions and echo=true")
        return logprobs

    @property
    def budget(self) -> int | None:
        """The requested number of new tokens (``max_completion_tokens`` wins), or None for "up to the context"."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``; ``echo=true, max_tokens=0, logprobs=k`` scores the prompt itself."""

    prompt: list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_list(cls, prompt: Any) -> list[str]:
        return _string_list(prompt)

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("streaming is only supported on /v1/chat/completions; send stream=false here")
        return stream
