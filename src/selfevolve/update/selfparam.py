"""SELF-PARAM: inject documents into the weights by distilling the model-with-document into the model-without.

Recipe, per set of documents:

1. **Synthesize** questions, answers and statements about each document with the model itself
   (:func:`~selfevolve.acquire.synthesize.synthesize`), done by the caller: the loop's ``synthesize_qa``
   step, or :func:`~selfevolve.loop.recipes.inject_documents` for ``selfevolve inject``.
2. **Teacher cache**: the frozen model *with the document in its system message* scores every synthesized
   response once; its per-token distributions (full vocabulary in float16, or top-k) are kept. They never
   change, so no teacher forward pass happens during training and no second model copy is held.
3. **Train** the student (the same model, *without* the document) to minimise KL(teacher ‖ student) per token
   over the response tokens, plus optionally ``regularizer_weight`` × KL(base ‖ student) on unrelated text.
   Full fine-tuning or LoRA (merged at the end); through accelerate; checkpointed and resumable.

Modes: ``single`` and ``batch`` inject a set at once; ``sequential`` injects it in ``rounds`` that arrive one
after another (each round's teacher is the model as it stands at the start of that round).

Paper: https://arxiv.org/abs/2410.00487 (Wang et al., 2024, "Self-Updatable Large Language Models with
Parameter Integration").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.prompts import qa_prompt, text_example
from selfevolve.records import Document, SynthesizedItem
from selfevolve.runtime.backend import Prompt
from selfevolve.runtime.model import LocalModel
from selfevolve.update.losses import ForwardKLLoss, TopKForwardKLLoss
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, train


@dataclass
class SelfParamConfig:
    """SELF-PARAM settings. Values marked *(inferred)* are not fixed by the paper: they are our defaults.

    The paper trains on generated QA with the full-vocabulary KL; it does not publish LoRA ranks or learning
    rates for small models, so ``train`` holds ours, tuned on SmolLM2-135M (docs/benchmarks-inject.md).
    """

    # *(inferred)* LoRA r=16 on all linear layers, lr 2e-3, 8 epochs, batch 4
    train: TrainingConfig = field(default_factory=TrainingConfig)
    mode: Literal["single", "batch", "sequential"] = "batch"
    rounds: int = 5  # sequential mode: documents arrive in this many rounds
    # 0: full-vocabulary KL (the paper); k > 0: the teacher's top-k plus a "rest" bucket (cache V/k smaller)
    top_k: int = 0
    # *(inferred)* weight of KL(base ‖ student) on unrelated text; 0 disables it
    regularizer_weight: float = 0.0
    teacher_batch_size: int = 8  # examples per teacher forward pass when building the cache

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise SelfEvolveError(f"rounds must be at least 1, got {self.rounds}; set it to 1 or more")
        if self.top_k < 0:
            raise SelfEvolveError(
                f"top_k must be 0 (full vocabulary) or positive, got {self.top_k}; use 0 or e.g. 64"
            )
        if self.regularizer_weight < 0:
            raise SelfEvolveError(
                f"regularizer_weight must not be negative, got {self.regularizer_weight}; "
                "use 0 to turn it off"
            )
        if self.teacher_batch_size < 1:
            raise SelfEvolveError(
                f"teacher_batch_size must be at least 1, got {self.teacher_batch_size}; set it to 1 or more"
            )


class DistillExample(NamedTuple):
    """What the student sees, what the teacher saw, and the shared target tokens."""

    student_prompt: Prompt
    teacher_prompt: Prompt
    target_ids: list[int]


class TeacherTargets(NamedTuple):
    """One example's cached teacher distribution: log-probs (T, V) or top-k log-probs (T, K) with ids (T, K)."""

    logprobs: torch.Tensor
    ids: torch.Tensor | None


def qa_examples(
    model: LocalModel, items: Sequence[SynthesizedItem], documents: Sequence[Document]
) -> list[DistillExample]:
    """Distillation examples from synthesized items: the teacher's prompt adds the document as system message."""
    by_id = {d.id: d for d in documents}
    return [
        DistillExample(
            qa_prompt(item.request),
            qa_prompt(item.request, by_id[item.doc_id].text),
            response_ids(model, item.response),
        )
        for item in items
    ]


def text_examples(model: LocalModel, texts: Sequence[str], max_tokens: int = 128) -> list[DistillExample]:
    """Regularizer examples: plain text, same prompt for teacher and student (KL to the unchanged model)."""
    examples = []
    for text in texts:
        prompt, ids = text_example(model, text)
        examples.append(DistillExample(prompt, prompt, ids[: max_tokens - 1]))
    return examples


def build_teacher_cache(
    model: LocalModel, examples: Sequence[DistillExample], *, top_k: int = 0, batch_size: int = 8
) -> list[TeacherTargets]:
    """Score every example's targets once with the teacher prompt; keep float16 log-probs (all, or top-k)."""
    cache: list[TeacherTargets] = []
    with model.lock, torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = model.continuation_logits(
                [e.teacher_prompt for e in chunk], [e.target_ids for e in chunk]
            )
            logprobs = torch.log_softmax(batch.logits.float(), dim=-1)  # (B, T, V)
            for row, example in enumerate(chunk):
                rows = logprobs[row, : len(example.target_ids)]  # (T, V)
                if top_k:
                    values, ids = rows.topk(min(top_k, rows.shape[-1]), dim=-1)  # (T, K)
                    cache.append(TeacherTargets(values.half().cpu(), ids.int().cpu()))
                else:
                    cache.append(TeacherTargets(rows.half().cpu(), None))
    return cache


def _stack(targets: Sequence[TeacherTargets], width: int, device: torch.device) -> TeacherTargets:
    """Right-pad cached targets to (B, width, ·) on ``device``."""
    logprobs = torch.nn.utils.rnn.pad_sequence([t.logprobs for t in targets], batch_first=True)
    logprobs = torch.nn.functional.pad(logprobs, (0, 0, 0, width - logprobs.shape[1]))
    if targets[0].ids is None:
        return TeacherTargets(logprobs.to(device), None)
    ids = torch.nn.utils.rnn.pad_sequence([t.ids for t in targets], batch_first=True)
    ids = torch.nn.functional.pad(ids, (0, 0, 0, width - ids.shape[1]))
    return TeacherTargets(logprobs.to(device), ids.to(device))


class DistillationObjective:
    """The SELF-PARAM step loss: KL to the cached teacher, plus the optional KL-to-base regularizer.

    Training examples are indices into ``examples``. A step adds the regularizer on one unrelated text, number
    ``batch[0] % len(regularizer)``, so a step's loss depends only on its batch (exact resume) and the
    regularizer costs one short sequence per step however large the batch.
    """

    def __init__(
        self,
        examples: Sequence[DistillExample],
        cache: Sequence[TeacherTargets],
        *,
        regularizer: Sequence[DistillExample] = (),
        regularizer_cache: Sequence[TeacherTargets] = (),
        regularizer_weight: float = 0.0,
    ) -> None:
        if len(examples) != len(cache) or len(regularizer) != len(regularizer_cache):
            raise SelfEvolveError("the teacher cache does not match the examples; rebuild it")
        self.examples, self.cache = examples, cache
        self.regularizer, self.regularizer_cache = regularizer, regularizer_cache
        self.weight = regularizer_weight if regularizer else 0.0
        self.full, self.topk = ForwardKLLoss(), TopKForwardKLLoss()

    def kl(self, student: LocalModel, examples: Sequence[DistillExample], cached: Sequence[TeacherTargets]):
        batch = student.continuation_logits(
            [e.student_prompt for e in examples], [e.target_ids for e in examples], grad=True
        )
        teacher = _stack(cached, batch.logits.shape[1], batch.logits.device)
        if teacher.ids is None:
            return self.full(batch.logits, teacher.logprobs, batch.mask), int(batch.mask.sum())
        return self.topk(batch.logits, teacher.logprobs, teacher.ids, batch.mask), int(batch.mask.sum())

    def __call__(self, student: LocalModel, batch: Sequence[int]) -> tuple[torch.Tensor, int]:
        loss, tokens = self.kl(student, [self.examples[i] for i in batch], [self.cache[i] for i in batch])
        if self.weight:
            pick = batch[0] % len(self.regularizer)
            extra, _ = self.kl(student, [self.regularizer[pick]], [self.regularizer_cache[pick]])
            loss = loss + self.weight * extra
        return loss, tokens


@dataclass
class InjectionResult:
    """What one injection did: the items it trained on, the teacher cache's time, and the training run."""

    documents: list[str]
    items: list[SynthesizedItem]
    teacher_seconds: float
    train: TrainResult

    def summary(self) -> dict:
        return {
            "documents": len(self.documents),
            "synthesized_items": len(self.items),
            "teacher_seconds": self.teacher_seconds,
            "train_seconds": self.train.seconds,
            "train_steps": self.train.steps,
            "train_tokens": self.train.tokens,
            "tokens_per_second": self.train.tokens_per_second,
            "final_loss": self.train.losses[-1] if self.train.losses else None,
            "resumed_from_step": self.train.resumed_from,
        }


def inject(
    model: LocalModel,
    documents: Sequence[Document],
    items: Sequence[SynthesizedItem],
    config: SelfParamConfig | None = None,
    *,
    regularizer_texts: Sequence[str] = (),
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> InjectionResult:
    """Inject ``documents`` into ``model``'s weights (in place), all at once.

    Args:
        model: the model to update; afterwards it answers without the documents in its prompt.
        documents: what to inject.
        items: the synthesized experiences about ``documents`` to train on.
        config: see :class:`SelfParamConfig`.
        regularizer_texts: unrelated text for the KL-to-base regularizer (when ``regularizer_weight`` > 0).
        out_dir: where the checkpoints go (``None``: nothing is written).
        resume: continue from the latest checkpoint found in ``out_dir`` (the teacher cache is rebuilt from
            ``model``, which must be the same model the interrupted run started from).
    """
    config = config or SelfParamConfig()
    if not documents:
        raise SelfEvolveError("no documents to inject; pass at least one document")
    items = list(items)
    if not items:
        raise SelfEvolveError(
            "no synthesized items to train on; synthesize some about the documents first (acquire.synthesize)"
        )
    stray = sorted({item.doc_id for item in items} - {d.id for d in documents})
    if stray:
        raise SelfEvolveError(
            f"items name document id(s) {stray} that are not being injected; pass those documents too"
        )
    if config.regularizer_weight > 0 and not regularizer_texts:
        raise SelfEvolveError(
            "regularizer_weight > 0 needs unrelated text (regularizer_texts); pass some or set it to 0"
        )
    began = time.perf_counter()
    examples = qa_examples(model, items, documents)
    regularizer = text_examples(model, regularizer_texts) if config.regularizer_weight > 0 else []
    # The teacher is the model as passed in (before any update), so a resumed run rebuilds the same cache.
    cache = build_teacher_cache(model, examples, top_k=config.top_k, batch_size=config.teacher_batch_size)
    regularizer_cache = build_teacher_cache(
        model, regularizer, top_k=config.top_k, batch_size=config.teacher_batch_size
    )
    teacher_seconds = time.perf_counter() - began

    objective = DistillationObjective(
        examples,
        cache,
        regularizer=regularizer,
        regularizer_cache=regularizer_cache,
        regularizer_weight=config.regularizer_weight,
    )
    result = train(
        model, list(range(len(examples))), objective, config.train, checkpoint_dir=out_dir, resume=resume
    )
    return InjectionResult([d.id for d in documents], items, teacher_seconds, result)


def rounds_of(documents: Sequence[Document], rounds: int) -> list[list[Document]]:
    """Split documents into ``rounds`` consecutive, nearly equal groups (no empty group)."""
    if rounds > len(documents):
        raise SelfEvolveError(
            f"cannot split {len(documents)} document(s) into {rounds} rounds; use rounds <= {len(documents)}"
        )
    size, extra = divmod(len(documents), rounds)
    groups, start = [], 0
    for index in range(rounds):
        end = start + size + (index < extra)
        groups.append(list(documents[start:end]))
        start = end
    return groups


def inject_sequential(
    model: LocalModel,
    documents: Sequence[Document],
    items: Sequence[SynthesizedItem],
    config: SelfParamConfig | None = None,
    *,
    regularizer_texts: Sequence[str] = (),
    out_dir: str | Path | None = None,
    resume: bool = False,
    after_round: Callable[[int, list[Document], InjectionResult], None] | None = None,
) -> list[InjectionResult]:
    """Inject ``documents`` in ``config.rounds`` rounds, one after another, each on its documents' ``items``;
    ``after_round(k, seen, result)`` is called after each (e.g. to measure retention of everything injected
    so far). Other arguments as in :func:`inject`; round ``k`` checkpoints into ``out_dir/roundKK``."""
    config = config or SelfParamConfig()
    results, seen = [], []
    for index, group in enumerate(rounds_of(documents, config.rounds)):
        ids = {d.id for d in group}
        result = inject(
            model,
            group,
            [item for item in items if item.doc_id in ids],
            config,
            regularizer_texts=regularizer_texts,
            out_dir=Path(out_dir) / f"round{index:02d}" if out_dir is not None else None,
            resume=resume,
        )
        seen.extend(group)
        results.append(result)
        if after_round is not None:
            after_round(index, list(seen), result)
    return results
