"""Evaluate: QA scoring (SQuAD F1, exact match, answer recall), retrieval-augmented answering, perplexity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    name: "selfevolve.evaluate.qa"
    for name in (
        "QAResult",
        "Retriever",
        "answer_questions",
        "answer_recall",
        "exact_match",
        "normalize_answer",
        "perplexity",
        "qa_prompt",
        "score_answers",
        "token_f1",
    )
}

if TYPE_CHECKING:
    from selfevolve.evaluate.qa import (
        QAResult,
        Retriever,
        answer_questions,
        answer_recall,
        exact_match,
        normalize_answer,
        perplexity,
        qa_prompt,
        score_answers,
        token_f1,
    )

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
