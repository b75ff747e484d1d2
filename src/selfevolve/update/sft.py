"""Supervised baselines for knowledge injection, on the shared training loop.

* ``target="qa"``: SFT on the synthesized question–answer pairs and statements (cross-entropy on the reply).
* ``target="document"``: language-model fine-tuning on the raw document text (cross-entropy on every token
  after the first of each chunk).

Both are the baselines of SELF-PARAM (https://arxiv.org/abs/2410.00487, Table 1: "SFT" and "LM fine-tuning").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.prompts import qa_prompt, split_passages, text_example
from selfevolve.records import Document, SynthesizedItem
from selfevolve.runtime.backend import Prompt
from selfevolve.runtime.model import LocalModel
from selfevolve.update.losses import ContinuationCrossEntropy
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, train


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings (the same optimisation defaults as SELF-PARAM, for a fair comparison)."""

    train: TrainingConfig = field(default_factory=TrainingConfig)
    target: Literal["qa", "document"] = "qa"
    chunk_words: int = 120  # document target: documents are split into passages of at most this many words


def sft_examples(model: LocalModel, items: Sequence[SynthesizedItem]) -> list[tuple[Prompt, list[int]]]:
    """(prompt without the document, reply ids) for every synthesized item."""
    return [(qa_prompt(item.request), response_ids(model, item.response)) for item in items]


def document_examples(
    model: LocalModel, documents: Sequence[Document], chunk_words: int = 120
) -> list[tuple[Prompt, list[int]]]:
    """(first token, remaining ids) for every passage of every document."""
    return [text_example(model, p) for d in documents for p in split_passages(d.text, chunk_words)]


class CrossEntropyObjective:
    """Step loss: cross-entropy of each example's target ids after its prompt."""

    def __init__(self) -> None:
        self.loss = ContinuationCrossEntropy()

    def __call__(
        self, student: LocalModel, batch: Sequence[tuple[Prompt, list[int]]]
    ) -> tuple[torch.Tensor, int]:
        out = student.continuation_logits([p for p, _ in batch], [ids for _, ids in batch], grad=True)
        return self.loss(out.logits, out.target_ids, out.mask), int(out.mask.sum())


def finetune(
    model: LocalModel,
    config: SFTConfig,
    *,
    items: Sequence[SynthesizedItem] = (),
    documents: Sequence[Document] = (),
) -> TrainResult:
    """Fine-tune ``model`` in place on ``items`` (target ``qa``) or ``documents`` (target ``document``)."""
    if config.target == "qa":
        if not items:
            raise SelfEvolveError("SFT on QA needs synthesized items; run synthesis first")
        examples = sft_examples(model, items)
    else:
        if not documents:
            raise SelfEvolveError("LM fine-tuning needs documents")
        examples = document_examples(model, documents, config.chunk_words)
    return train(model, examples, CrossEntropyObjective(), config.train)
