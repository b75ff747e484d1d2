"""Refine steps: decide which acquired experiences to keep, and record why each one was dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from selfevolve.acquire.synthesize import support
from selfevolve.evaluate.qa import normalize_answer
from selfevolve.loop.state import LoopState, StepResult
from selfevolve.loop.steps.acquire import QA, stored_documents
from selfevolve.store import Decision


@dataclass
class GroundingFilter:
    """Keep a synthesized QA pair or statement only when its document supports it, and only once.

    Support is the share of the response's content words that occur in its document (SELF-PARAM's filter);
    a duplicate is a pair whose normalized request and response were already kept.
    """

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    min_support: float = 0.6
    dedupe: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_support <= 1:
            raise ValueError(f"min_support must be in [0, 1], got {self.min_support}")

    def run(self, state: LoopState) -> StepResult:
        documents = stored_documents(state)
        seen: set[tuple[str, str]] = set()
        decisions = []
        for experience in state.kept(QA):
            key = (normalize_answer(experience.prompt), normalize_answer(experience.response))
            score = support(experience.response, documents[experience.parent_id].text)
            if score < self.min_support:
                decisions.append(Decision(experience.id, False, f"support below {self.min_support:g}"))
            elif self.dedupe and key in seen:
                decisions.append(Decision(experience.id, False, "duplicate"))
            else:
                seen.add(key)
                decisions.append(Decision(experience.id, True, "supported"))
        kept = sum(d.kept for d in decisions)
        return StepResult(decisions=decisions, summary={"kept": kept, "dropped": len(decisions) - kept})
