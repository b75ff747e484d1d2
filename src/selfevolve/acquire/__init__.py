"""Acquire: where experience comes from (documents and knowledge sets, model-written QA about them)."""

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
    from selfevolve.acquire.synthesize import SynthesisConfig, SynthesizedItem, synthesize

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
