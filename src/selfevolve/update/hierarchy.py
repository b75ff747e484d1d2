"""Instruction-hierarchy fine-tuning: cross-entropy on each conversation's target reply, LoRA merged
(https://arxiv.org/abs/2404.13208: supervised fine-tuning on the generated data mixed with ordinary data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from selfevolve.attacks import chat_for
from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.model import LocalModel
from selfevolve.update.sft import CrossEntropyObjective
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, train


@dataclass
class HierarchyTrainConfig:
    """SFT settings. *(inferred)* The paper does not publish its optimisation. LoRA r=16 (all linear layers),
    lr 3e-4, batch 4, 2 epochs: on SmolLM2-135M with 88 examples this gave +24 points on held-out attacks at
    +23% perplexity on unrelated prose; 1e-3 gave +31 points at +61%, 1.5e-4 +10 points at +8%
    (docs/benchmarks.md). Batch 4 keeps memory low: the loss holds (batch, tokens, vocabulary) logits."""

    train: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=2, learning_rate=3e-4, batch_size=4)
    )


def hierarchy_examples(model: LocalModel, conversations: Sequence) -> list[tuple[list[dict], list[int]]]:
    """(chat prompt the template can render, target ids + end of turn) for every example (anything with
    ``messages`` and ``target``)."""
    return [(chat_for(model.tokenizer, c.messages), response_ids(model, c.target)) for c in conversations]


def train_hierarchy(
    model: LocalModel, conversations: Sequence, config: HierarchyTrainConfig | None = None, **train_kwargs
) -> TrainResult:
    """Fine-tune ``model`` in place on the conversations' targets (through the shared training loop)."""
    config = config or HierarchyTrainConfig()
    if not conversations:
        raise SelfEvolveError("no instruction-hierarchy examples to train on; generate them first (ih-data)")
    if not model.tokenizer.chat_template:
        raise SelfEvolveError(f"model {model.name!r} has no chat template; train a chat model")
    return train(
        model, hierarchy_examples(model, conversations), CrossEntropyObjective(), config.train, **train_kwargs
    )
