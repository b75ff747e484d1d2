"""Acquire steps: documents to learn from, and the QA pairs and statements SELF-PARAM synthesizes about them.

Every document is stored as an experience of task ``document`` (prompt: its title, response: its text); every
synthesized item as one of task ``qa`` whose parent is its document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from selfevolve.acquire.knowledge import (
    Document,
    QAItem,
    fictional_knowledge,
    load_documents,
    load_questions,
)
from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
from selfevolve.errors import SelfEvolveError
from selfevolve.loop.state import LoopState, StepResult
from selfevolve.store import Experience

DOCUMENT = "document"
QA = "qa"


def _document_experiences(documents: list[Document], questions: list[QAItem], step: str) -> StepResult:
    """Documents as experiences; each carries the training questions about it (never held-out ones)."""
    by_doc: dict[str, list[dict]] = {}
    for item in questions:
        by_doc.setdefault(item.doc_id, []).append({"question": item.question, "answers": list(item.answers)})
    stray = sorted(set(by_doc) - {d.id for d in documents})
    if stray:
        raise SelfEvolveError(f"{step}: questions name unknown document id(s) {stray}; fix their doc_id")
    experiences = [
        Experience(
            run_id="",
            task=DOCUMENT,
            prompt=d.title,
            response=d.text,
            phase="acquire",
            method=step,
            metadata={"doc_id": d.id, "questions": by_doc.get(d.id, [])},
        )
        for d in documents
    ]
    return StepResult(experiences=experiences, summary={"documents": len(documents)})


def stored_documents(state: LoopState) -> dict[int, Document]:
    """This iteration's documents, by the id of their experience."""
    return {e.id: Document(e.metadata["doc_id"], e.prompt, e.response) for e in state.experiences(DOCUMENT)}


@dataclass
class FictionalDocuments:
    """A fictional knowledge set (invented people, organisations, places) that no model can already know."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    count: int = 1  # documents in the set
    seed: int = 0  # fixes every name, date and number (heldout_qa's "fictional:COUNT:SEED" must match)
    train_questions: bool = True  # attach the set's training questions, for synthesis to answer and train on

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")

    def run(self, state: LoopState) -> StepResult:
        knowledge = fictional_knowledge(self.count, seed=self.seed)
        questions = list(knowledge.train) if self.train_questions else []
        return _document_experiences(list(knowledge.documents), questions, "fictional_documents")


@dataclass
class Documents:
    """Documents from the user's files: a .txt file, a folder of them, or JSONL (text, id, title)."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    path: str = ""  # where the documents are
    questions: str = ""  # optional JSONL of training questions (question, answer(s), doc_id)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError(
                "documents.path is empty; set it to a .txt file, a folder of them or a .jsonl file"
            )
        for name in ("path", "questions"):
            value = getattr(self, name)
            if value and not Path(value).exists():
                raise ValueError(f"documents.{name} {value} does not exist; fix the path")

    def run(self, state: LoopState) -> StepResult:
        questions = load_questions(self.questions) if self.questions else []
        return _document_experiences(load_documents(self.path), questions, "documents")


@dataclass
class SynthesizeQA:
    """SELF-PARAM's experience synthesis: the model, with the document in its prompt, writes and answers
    questions and states facts (https://arxiv.org/abs/2410.00487). Filtering is left to refine steps."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    questions_per_document: int = 8  # questions sampled per document
    statements_per_document: int = 4  # factual statements sampled per document
    document_sentences: bool = True  # each sentence of the document is a statement too
    given_questions: bool = True  # also answer the documents' training questions
    temperature: float = 0.9
    max_new_tokens: int = 48

    def run(self, state: LoopState) -> StepResult:
        documents = stored_documents(state)
        if not documents:
            raise SelfEvolveError(
                "synthesize_qa found no documents in this iteration; put fictional_documents or documents "
                "before it in acquire"
            )
        given = [
            QAItem(e.metadata["doc_id"], q["question"], tuple(q["answers"]))
            for e in state.experiences(DOCUMENT)
            for q in (e.metadata.get("questions", []) if self.given_questions else [])
        ]
        config = SynthesisConfig(
            questions_per_document=self.questions_per_document,
            statements_per_document=self.statements_per_document,
            document_sentences=self.document_sentences,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            min_support=0.0,  # keep everything: grounding_filter decides, and its decisions are recorded
            seed=state.seed,
        )
        items = synthesize(state.model, list(documents.values()), config, given_questions=given)
        parent = {d.id: key for key, d in documents.items()}
        experiences = [
            Experience(
                run_id="",
                task=QA,
                prompt=item.request,
                response=item.response,
                phase="acquire",
                score=item.support,
                method="self-param-synthesis",
                model_revision=state.model.revision,
                metadata={"doc_id": item.doc_id, "source": item.source},
                parent_id=parent[item.doc_id],
            )
            for item in items
        ]
        sources: dict[str, int] = {}
        for item in items:
            sources[item.source] = sources.get(item.source, 0) + 1
        return StepResult(experiences=experiences, summary={"items": len(items), "sources": sources})
