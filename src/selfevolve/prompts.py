"""The prompt formats and text helpers every phase shares: how a question is put to a model (with or without
its document), plain text as a training example, passages of a document, and SQuAD answer normalisation."""

from __future__ import annotations

import re
import string

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import Prompt
from selfevolve.runtime.model import LocalModel

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def text_example(model: LocalModel, text: str) -> tuple[str, list[int]]:
    """Plain text as (prompt, continuation ids): the first token as the prompt, every other token as target."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise SelfEvolveError(f"text {text[:40]!r} is too short: it needs at least two tokens")
    return model.tokenizer.decode(ids[:1]), ids[1:]


def split_passages(text: str, max_words: int = 120) -> list[str]:
    """Sentences of ``text`` packed greedily into passages of at most ``max_words`` words."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
    passages, current = [], []
    for sentence in sentences:
        if current and len(" ".join([*current, sentence]).split()) > max_words:
            passages.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        passages.append(" ".join(current))
    return passages


def qa_prompt(question: str, context: str | None = None) -> Prompt:
    """The chat every method answers with: the question as the user turn, any context as the system message.

    Teacher (with the document) and student (without it) thus share the user turn word for word.
    """
    messages = [{"role": "system", "content": context}] if context else []
    return [*messages, {"role": "user", "content": question}]


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())
