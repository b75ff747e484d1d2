"""Pointwise judges: a model rates one output through a prompt hook and a parse hook; unparseable outputs are
counted invalid, never scored.

The form of CodeJudge's modes (Tong & Zhang, "CodeJudge: Evaluating Code Generation with Large Language
Models", EMNLP 2024, https://arxiv.org/abs/2410.02184): one call ("vanilla", "rubric", "taxonomy"), or two
calls whose first reply (a free-text analysis) feeds the second prompt ("analyze then summarize").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selfevolve.runtime.backend import Backend, Message


class UnparseableOutput(ValueError):
    """A judge output that says nothing decidable; the message says why."""


@dataclass
class Verdict:
    """One pointwise verdict: ``score`` in [0, 1] and the parsed ``value``, or ``valid=False`` with the reason."""

    valid: bool
    score: float | None  # None when invalid
    raw: str  # the parsed reply
    value: Any = None  # what ``parse`` returned (None when invalid)
    error: str = ""  # why the reply was invalid
    analysis: str = ""  # two-call judges: the first call's reply


def _identity_score(value: Any) -> float:
    return float(value)


@dataclass
class PointwiseJudge:
    """A prompt hook and a parse hook: ``prompt(**fields)`` -> messages, ``parse(reply)`` -> a value (or
    :class:`UnparseableOutput`), ``score(value)`` -> [0, 1]. With ``analysis``, a first call's reply is passed
    to ``prompt`` as ``analysis=`` (``prompt`` then takes only that)."""

    name: str
    prompt: Callable[..., list[Message]]
    parse: Callable[[str], Any]
    score: Callable[[Any], float] = _identity_score
    max_new_tokens: int = 10  # for the reply that is parsed
    analysis: Callable[..., list[Message]] | None = None  # two-call judges: fields -> the first prompt
    analysis_max_new_tokens: int = 512

    def read(self, raw: str, analysis: str = "") -> Verdict:
        """The verdict a reply gives: parsed and scored, or invalid with the parser's reason."""
        try:
            value = self.parse(raw)
        except UnparseableOutput as err:
            return Verdict(False, None, raw, error=str(err), analysis=analysis)
        return Verdict(True, self.score(value), raw, value=value, analysis=analysis)

    def judge(
        self,
        backend: Backend,
        items: Sequence[Mapping[str, Any]],
        *,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Verdict]:
        """One verdict per item (its fields go to the prompt hooks), with one batched generate call per step."""
        if not items:
            return []

        def ask(prompts: list[list[Message]], max_new_tokens: int) -> list[str]:
            replies = backend.generate(
                prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
            )
            return [c.text for c in replies]

        if self.analysis is None:
            replies = ask([self.prompt(**item) for item in items], self.max_new_tokens)
            return [self.read(raw) for raw in replies]
        analyses = ask([self.analysis(**item) for item in items], self.analysis_max_new_tokens)
        replies = ask([self.prompt(analysis=a) for a in analyses], self.max_new_tokens)
        return [self.read(raw, analysis=a) for a, raw in zip(analyses, replies)]
