"""Fine-tune a log-probability judge on pairwise labels (REPAIR's update step, Liu et al. "Aligning with Logic",
https://arxiv.org/abs/2410.02205, §4: train on every pair the aggregated ranking implies, both orders).

The judge is :class:`~selfevolve.judges.pairwise.LogprobJudge`: P(a) = softmax over the log-probabilities of
the two answer labels ("A", "B" of its :class:`~selfevolve.judges.pairwise.PairwiseTemplate`) after the
prompt. The loss is exactly that two-way choice: binary cross-entropy of ``log p(A) - log p(B)`` against the
label's target (soft targets allowed), on the same prompt the judge scores, through the shared accelerate
loop (LoRA by default). When both labels are single tokens one forward pass per example gives both
log-probabilities; otherwise each label is scored as its own continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import LogprobJudge, PairwiseTemplate
from selfevolve.records import JudgeLabel
from selfevolve.runtime.model import LocalModel
from selfevolve.update.training import TrainingConfig, TrainResult, train


@dataclass
class JudgeTuningConfig:
    """Judge fine-tuning settings. *(inferred)* The paper fine-tunes briefly on the augmented pairs; here LoRA
    r=16 at 5e-4 for 2 epochs, batch 8 (a few hundred pairs per run)."""

    train: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=2, batch_size=8, learning_rate=5e-4)
    )
    template: PairwiseTemplate = field(default_factory=PairwiseTemplate)


class JudgeExample(NamedTuple):
    """One training row: the judge's prompt, its two label continuations, and P(label A) to learn."""

    prompt: Any  # chat messages or text, exactly as LogprobJudge builds it
    label_a: str
    label_b: str
    target: float


def judge_examples(
    model: LocalModel, labels: Sequence[JudgeLabel], template: PairwiseTemplate | None = None
) -> list[JudgeExample]:
    """The prompts :class:`LogprobJudge` would score for ``labels`` (negated ones with the negated question)."""
    judge = LogprobJudge(model, template)
    t = judge.template
    examples = []
    for label in labels:
        if not 0 <= label.target <= 1:
            raise SelfEvolveError(f"judge label target must be in [0, 1], got {label.target!r}")
        if not all(isinstance(x, str) for x in (label.question, label.a, label.b)):
            raise SelfEvolveError("judge labels need string question, a and b")
        if judge.chat:
            prompt: Any = t.messages(label.question, label.a, label.b, label.negated)
            la, lb = t.label_a, t.label_b
        else:
            prompt = t.text(label.question, label.a, label.b, label.negated)
            la, lb = " " + t.label_a, " " + t.label_b
        examples.append(JudgeExample(prompt, la, lb, float(label.target)))
    return examples


def _single_token(model: LocalModel, text: str) -> int | None:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def label_margins(student: LocalModel, batch: Sequence[JudgeExample], *, grad: bool = True) -> torch.Tensor:
    """``log p(label A) - log p(label B)`` after each prompt, (B,); sigmoid of it is the judge's P(a)."""
    la, lb = batch[0].label_a, batch[0].label_b
    id_a, id_b = _single_token(student, la), _single_token(student, lb)
    prompts = [e.prompt for e in batch]
    if id_a is not None and id_b is not None:
        out = student.continuation_logits(prompts, [[id_a]] * len(batch), grad=grad)
        logprobs = torch.log_softmax(out.logits[:, 0].float(), dim=-1)  # (B, V): the token after the prompt
        return logprobs[:, id_a] - logprobs[:, id_b]  # (B,)
    out = student.continuation_logits(prompts + prompts, [la] * len(batch) + [lb] * len(batch), grad=grad)
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # (2B, T, V)
    picked = logprobs.gather(-1, out.target_ids.unsqueeze(-1)).squeeze(-1)  # (2B, T)
    totals = torch.where(out.mask, picked, torch.zeros_like(picked)).sum(-1)  # (2B,)
    return totals[: len(batch)] - totals[len(batch) :]  # (B,)


class LabelObjective:
    """Step loss: binary cross-entropy of the two-label margin against each example's target."""

    def __call__(self, student: LocalModel, batch: Sequence[JudgeExample]) -> tuple[torch.Tensor, int]:
        margins = label_margins(student, batch)  # (B,)
        targets = torch.tensor([e.target for e in batch], device=margins.device)  # (B,)
        return F.binary_cross_entropy_with_logits(margins, targets), len(batch)


def tune_judge(
    model: LocalModel, labels: Sequence[JudgeLabel], config: JudgeTuningConfig | None = None
) -> TrainResult:
    """Fine-tune ``model`` in place so its LogprobJudge gives each label's target (LoRA merged at the end)."""
    config = config or JudgeTuningConfig()
    if not labels:
        raise SelfEvolveError(
            "no judge labels to train on; run REPAIR (refine/rank.py) on some item sets first"
        )
    examples = judge_examples(model, labels, config.template)
    return train(model, examples, LabelObjective(), config.train)
