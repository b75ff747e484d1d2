"""What every model backend returns, and the protocol they share.

Methods in selfevolve talk to models only through :class:`Backend`, so a judge or a generator can be the local
transformers model or any OpenAI-compatible endpoint (vLLM, Ollama, an API) with the same call and result type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from selfevolve.errors import SelfEvolveError

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant" | "tool", "content": "..."}``."""

Prompt = str | Sequence[Message]
"""A raw text prompt (completion style) or a list of chat messages (the chat template is applied)."""

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One sampled answer.

    ``generate`` returns ``len(prompts) * n`` of these, prompt-major: sample ``j`` of prompt ``i`` is at
    ``i * n + j``. ``text`` never contains the stop string that ended it; ``token_ids`` are the generated ids
    (empty when a remote endpoint does not report them).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = "length"
    prompt_index: int = 0
    sample_index: int = 0


@dataclass
class TokenScores:
    """Per-token log-probabilities of a continuation given its prompt."""

    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]

    @property
    def total(self) -> float:
        """Log-probability of the whole continuation."""
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        """Mean per-token log-probability (0.0 for an empty continuation)."""
        return self.total / len(self.logprobs) if self.logprobs else 0.0


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, n: int) -> None:
    """The argument checks every backend makes before generating (or sending anything)."""
    if max_new_tokens < 1:
        raise SelfEvolveError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise SelfEvolveError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    if n < 1:
        raise SelfEvolveError(f"n (samples per prompt) must be at least 1, got {n}")


def normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    """Stop strings as a list without empties; a single string is one stop string, not its characters."""
    return [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]


@runtime_checkable
class Backend(Protocol):
    """A model that can sample answers and score continuations."""

    name: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> list[Completion]:
        """Sample ``n`` answers per prompt; ``temperature == 0`` means greedy."""
        ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        """Log-probability of each token of ``continuations[i]`` after ``prompts[i]``."""
        ...
