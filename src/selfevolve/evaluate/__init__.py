"""Evaluate: QA scoring (SQuAD F1, exact match, answer recall), retrieval-augmented answering, perplexity,
HumanEval execution (pass@k), CodeJudge, and the memorization audit (GCG, MiniPrompt, ACR)."""

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
        "perplexity",
        "score_answers",
        "token_f1",
    )
}
_EXPORTS |= {name: "selfevolve.evaluate.gcg" for name in ("GCGConfig", "GCGResult", "gcg")}
_EXPORTS |= {name: "selfevolve.evaluate.humaneval" for name in ("load_humaneval", "pass_at_k")}
_EXPORTS |= {
    "normalize_answer": "selfevolve.prompts",
    "qa_prompt": "selfevolve.prompts",
    "Problem": "selfevolve.records",
}
_EXPORTS |= {
    name: "selfevolve.evaluate.codejudge"
    for name in ("CodeJudgeConfig", "JudgeResult", "judge", "judge_metrics")
}
_EXPORTS |= {
    name: "selfevolve.evaluate.memorization"
    for name in ("ACRResult", "MiniPromptConfig", "acr_audit", "audit_memorization", "minprompt_search")
}
_EXPORTS |= {
    name: "selfevolve.evaluate.acr_targets" for name in ("Target", "builtin_targets", "load_targets")
}

if TYPE_CHECKING:
    from selfevolve.evaluate.acr_targets import Target, builtin_targets, load_targets
    from selfevolve.evaluate.codejudge import CodeJudgeConfig, JudgeResult, judge, judge_metrics
    from selfevolve.evaluate.gcg import GCGConfig, GCGResult, gcg
    from selfevolve.evaluate.humaneval import load_humaneval, pass_at_k
    from selfevolve.evaluate.memorization import (
        ACRResult,
        MiniPromptConfig,
        acr_audit,
        audit_memorization,
        minprompt_search,
    )
    from selfevolve.evaluate.qa import (
        QAResult,
        Retriever,
        answer_questions,
        answer_recall,
        exact_match,
        perplexity,
        score_answers,
        token_f1,
    )
    from selfevolve.prompts import normalize_answer, qa_prompt
    from selfevolve.records import Problem

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
