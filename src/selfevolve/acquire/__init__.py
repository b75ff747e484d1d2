"""Acquire: where experience comes from (knowledge sets, model-written QA, program mutants, execution traces)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    "Document": "selfevolve.records",
    "QAItem": "selfevolve.records",
    "KnowledgeSet": "selfevolve.acquire.knowledge",
    "SIZES": "selfevolve.acquire.knowledge",
    "fictional_knowledge": "selfevolve.acquire.knowledge",
    "load_documents": "selfevolve.acquire.knowledge",
    "load_questions": "selfevolve.acquire.knowledge",
    "write_documents": "selfevolve.acquire.knowledge",
    "write_questions": "selfevolve.acquire.knowledge",
    "SynthesisConfig": "selfevolve.acquire.synthesize",
    "SynthesizedItem": "selfevolve.records",
    "synthesize": "selfevolve.acquire.synthesize",
    "Candidate": "selfevolve.records",
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
        KnowledgeSet,
        fictional_knowledge,
        load_documents,
        load_questions,
        write_documents,
        write_questions,
    )
    from selfevolve.acquire.mutate import Mutant, labelled_candidates, mutants
    from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
    from selfevolve.acquire.trace import Trace, TraceConfig, trace_call, trace_many
    from selfevolve.records import Candidate, Document, QAItem, SynthesizedItem

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
