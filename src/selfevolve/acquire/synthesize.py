"""Experience synthesis for SELF-PARAM: the model writes questions and statements about each document.

For every document the generator model (the model being updated, by default) samples questions and factual
statements with the document in its prompt (the document's own sentences serve as statements too); the questions are then answered by the model *with* the document
(the teacher's view). Items are cleaned, de-duplicated, and kept only when supported by the document: most of
the content words of an answer or statement must occur in the document. Everything kept can be recorded in the
experience store with its provenance (document, source, generator revision, support score).

Paper: https://arxiv.org/abs/2410.00487 (the paper generates QA pairs with a strong instruction model; here
the generator is any :class:`~selfevolve.runtime.model.LocalModel`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from selfevolve.errors import SelfEvolveError
from selfevolve.prompts import normalize_answer, qa_prompt, split_passages
from selfevolve.records import Document, QAItem, SynthesizedItem
from selfevolve.runtime.model import LocalModel
from selfevolve.store import Experience, ExperienceStore

QUESTION_INSTRUCTION = "Write one question about a fact in the text above."
STATEMENT_INSTRUCTION = "Write one sentence that states a fact from the text above."
STATEMENT_REQUEST = "Tell me a fact about {title}."
_STOPWORD_TEXT = (
    "a an the of in on at to for from by with and or but is are was were be been being it its this that these "
    "those what which who whom whose when where why how do does did has have had he she they his her their "
    "there as about into than then so not no yes i you we our your can could would should will may might "
    "one also very text above fact called known best"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass
class SynthesisConfig:
    """How many items to write per document, and how strictly to filter them."""

    questions_per_document: int = 8  # questions sampled per document (before filtering)
    statements_per_document: int = 4  # factual statements sampled per document (before filtering)
    document_sentences: bool = True  # also use each sentence of the document itself as a statement
    temperature: float = 0.9  # sampling temperature for questions and statements (diversity)
    max_new_tokens: int = 48  # cap on each question, statement and answer
    min_support: float = 0.6  # share of an answer's content words that must occur in the document
    seed: int = 0

    def __post_init__(self) -> None:
        if self.questions_per_document < 0 or self.statements_per_document < 0:
            raise SelfEvolveError(
                "synthesis.questions_per_document and statements_per_document must not be negative, got "
                f"{self.questions_per_document} and {self.statements_per_document}; set them to 0 or more"
            )
        if self.questions_per_document + self.statements_per_document == 0 and not self.document_sentences:
            raise SelfEvolveError(
                "synthesis writes nothing: questions_per_document and statements_per_document are 0 and "
                "document_sentences is off; raise questions_per_document or statements_per_document"
            )
        if not 0 <= self.min_support <= 1:
            raise SelfEvolveError(
                f"synthesis.min_support must be in [0, 1], got {self.min_support}; 0 keeps every answer"
            )
        if self.temperature <= 0 or self.max_new_tokens < 1:
            raise SelfEvolveError(
                "synthesis.temperature must be positive and max_new_tokens at least 1, got "
                f"{self.temperature} and {self.max_new_tokens}; raise the one below its minimum"
            )


def content_words(text: str) -> list[str]:
    """Normalized words of ``text`` that carry content (no stopwords)."""
    return [w for w in normalize_answer(text).split() if w not in _STOPWORDS]


def support(text: str, document: str) -> float:
    """Share of ``text``'s content words that also occur in ``document`` (0 when it has none)."""
    words = content_words(text)
    vocabulary = set(normalize_answer(document).split())
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def clean_question(text: str) -> str | None:
    """The first question in a generated text (up to its '?'), or None when there is none."""
    text = re.sub(r"^\s*(question\s*\d*\s*[:.)-]|q\s*[:.)-]|\d+\s*[.)])\s*", "", text.strip(), flags=re.I)
    text = text.strip().strip("\"'*").strip()
    if "?" not in text:
        return None
    question = text[: text.index("?") + 1].strip().strip("\"'*").strip()
    return question if 3 <= len(question.split()) <= 40 else None


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence (a short reply trains faster and scores better)."""
    text = text.strip().strip("\"'*").strip()
    match = re.match(r"(.+?[.!])(\s|$)", text, flags=re.S)
    return (match.group(1) if match else text).strip()


def clean_statement(text: str) -> str | None:
    """The first sentence of a generated text, or None when it is too short or a question."""
    sentence = first_sentence(text)
    return sentence if 4 <= len(sentence.split()) <= 60 and "?" not in sentence else None


def _sample(
    model: LocalModel, document: Document, instruction: str, n: int, config: SynthesisConfig, seed: int
):
    if n == 0:
        return []
    prompt = [{"role": "user", "content": f"{document.text}\n\n{instruction}"}]
    completions = model.generate(
        [prompt],
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        n=n,
        seed=seed,
        stop="\n",
    )
    return [c.text for c in completions]


def synthesize(
    model: LocalModel,
    documents: Sequence[Document],
    config: SynthesisConfig | None = None,
    *,
    generator: LocalModel | None = None,
    given_questions: Sequence[QAItem] = (),
    store: ExperienceStore | None = None,
    run_id: str | None = None,
) -> list[SynthesizedItem]:
    """Write, answer, filter and de-duplicate QA pairs and statements for every document.

    Args:
        model: answers the questions with the document in its prompt (the SELF-PARAM teacher's view).
        documents: the documents to write about.
        config: counts and filters.
        generator: writes the questions and statements (default: ``model`` itself).
        given_questions: extra questions (e.g. a knowledge set's training questions), answered the same way.
        store, run_id: when given, every kept item is recorded as an ``acquire`` experience with provenance.
    """
    config = config or SynthesisConfig()
    generator = generator or model
    if not documents:
        raise SelfEvolveError("no documents to synthesize experience from")
    if (store is None) != (run_id is None):
        raise SelfEvolveError("pass both store and run_id to record the experiences, or neither")
    known = {d.id for d in documents}
    stray = sorted({q.doc_id for q in given_questions} - known)
    if stray:
        raise SelfEvolveError(f"given questions refer to unknown document id(s) {stray}")
    pending: list[tuple[Document, str, str]] = []  # (document, question, source)
    items: list[SynthesizedItem] = []
    for index, document in enumerate(documents):
        seed = config.seed * 1_000_003 + index
        seen: set[str] = set()
        candidates = [(q.question, "given") for q in given_questions if q.doc_id == document.id]
        for text in _sample(
            generator, document, QUESTION_INSTRUCTION, config.questions_per_document, config, seed
        ):
            question = clean_question(text)
            if question is not None and support(question, document.text) > 0:
                candidates.append((question, "question"))
        for question, source in candidates:
            key = normalize_answer(question)
            if key not in seen:
                seen.add(key)
                pending.append((document, question, source))
        request = STATEMENT_REQUEST.format(title=document.title)
        if config.document_sentences:
            for sentence in split_passages(document.text, max_words=1):  # one sentence per passage
                seen.add(normalize_answer(sentence))
                items.append(SynthesizedItem(document.id, request, sentence, "sentence", 1.0))
        statements = _sample(
            generator, document, STATEMENT_INSTRUCTION, config.statements_per_document, config, seed
        )
        for text in statements:
            statement = clean_statement(text)
            if statement is None or normalize_answer(statement) in seen:
                continue
            score = support(statement, document.text)
            if score >= config.min_support:
                seen.add(normalize_answer(statement))
                items.append(SynthesizedItem(document.id, request, statement, "statement", score))
    if pending:
        prompts = [qa_prompt(question, document.text) for document, question, _ in pending]
        answers = model.generate(prompts, max_new_tokens=config.max_new_tokens, temperature=0.0)
        for (document, question, source), completion in zip(pending, answers):
            answer = first_sentence(completion.text)
            score = support(answer, document.text)
            if answer and score >= config.min_support:
                items.append(SynthesizedItem(document.id, question, answer, source, score))
    if store is not None:
        store.add_many(
            Experience(
                run_id=run_id,
                task=f"self-param:{item.doc_id}",
                prompt=item.request,
                response=item.response,
                phase="acquire",
                score=item.support,
                method="self-param-synthesis",
                model_revision=generator.revision,
                metadata={"doc_id": item.doc_id, "source": item.source, "answered_by": model.revision},
            )
            for item in items
        )
    return items
