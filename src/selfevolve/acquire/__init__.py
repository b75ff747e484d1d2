"""Acquire: where experience comes from (knowledge sets, model-written QA, program mutants, execution traces)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    "Document": "selfevolve.acquire.knowledge",
    "QAItem": "selfevolve.acquire.knowledge",
    "KnowledgeSet": "selfevolve.acquire.knowledge",
    "SIZES": "selfevolve.acquire.knowledge",
    "fictional_knowledge": "selfevolve.acquire.knowledge",
    "load_documents": "selfevolve.acquire.knowledge",
    "load_questions": "selfevolve.acquire.knowledge",
    "write_documents": "selfevolve.acquire.knowledge",
    "write_questions": "selfevolve.acquire.knowledge",
    "SynthesisConfig": "selfevolve.acquire.synthesize",
    "SynthesizedItem": "selfevolve.acquire.synthesize",
    "synthesize": "selfevolve.acquire.synthesize",
    "Candidate": "selfevolve.acquire.mutate",
    "Mutant": "selfevolve.acquire.mutate",
    "labelled_candidates": "selfevolve.acquire.mutate",
    "mutants": "selfevolve.acquire.mutate",
    "Trace": "selfevolve.acquire.trace",
    "TraceConfig": "selfevolve.acquire.trace",
    "trace_call": "selfevolve.acquire.trace",
    "trace_many": "selfevolve.acquire.trace",
}

if TYPE_CHECKING:
    from selfevolve.acquire.knowledge import (
        SIZES,
        Document,
        KnowledgeSet,
        QAItem,
        fictional_knowledge,
        load_documents,
        load_questions,
        write_documents,
        write_questions,
    )
    from selfevolve.acquire.mutate import Candidate, Mutant, labelled_candidates, mutants
    from selfevolve.acquire.synthesize import SynthesisConfig, SynthesizedItem, synthesize
    from selfevolve.acquire.trace import Trace, TraceConfig, trace_call, trace_many

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
