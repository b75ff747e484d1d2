"""Distillation and language-modelling losses over continuation tokens, each a standalone ``nn.Module``.

The math lives in pure tensor functions (:func:`forward_kl`, :func:`topk_forward_kl`,
:func:`continuation_cross_entropy`); the modules wrap them for use in a recipe. All average over the real
(masked-in) tokens of the batch, so a long continuation weighs more than a short one, as in SFT.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_token`` (B, T) over positions where ``mask`` (B, T, bool or 0/1) is set; 0 for an empty
    mask. Masked-out positions never enter the sum, so an inf or nan there cannot leak in."""
    mask = mask.bool()  # (B, T)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    return per_token.sum() / mask.sum().clamp(min=1)


def forward_kl(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) = Σ_v p_t(v) (log p_t(v) − log p_s(v)), full vocabulary.

    Args:
        student_logits: (B, T, V) raw student logits.
        teacher_logprobs: (B, T, V) teacher log-probabilities (log-softmaxed; any float dtype).
        mask: (B, T) True on real continuation tokens.
    """
    student = F.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    teacher = teacher_logprobs.float()  # (B, T, V)
    per_token = (teacher.exp() * (teacher - student)).sum(-1)  # (B, T)
    return masked_mean(per_token, mask)


def topk_forward_kl(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher ‖ student) over k + 1 outcomes: the teacher's top-k tokens, and "any other token".

    The rest bucket holds the probability mass outside the top-k (1 − Σ top-k) for each model, so the value
    is a true KL between two distributions, never negative, and equals :func:`forward_kl` when k = V.

    Args:
        student_logits: (B, T, V) raw student logits.
        teacher_logprobs: (B, T, K) the teacher's top-k log-probabilities (of the full softmax).
        teacher_ids: (B, T, K) their token ids.
        mask: (B, T) True on real continuation tokens.
    """
    student = F.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    student_top = student.gather(-1, teacher_ids.long())  # (B, T, K)
    teacher_top = teacher_logprobs.float()  # (B, T, K)
    tiny = torch.finfo(torch.float32).tiny
    teacher_rest = (1 - teacher_top.exp().sum(-1)).clamp(min=0)  # (B, T)
    student_rest = (1 - student_top.exp().sum(-1)).clamp(min=tiny)  # (B, T)
    top = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)  # (B, T)
    rest = torch.xlogy(teacher_rest, teacher_rest) - torch.xlogy(teacher_rest, student_rest)  # (B, T)
    return masked_mean(top + rest, mask)


def continuation_cross_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood of ``target_ids`` (B, T) under ``logits`` (B, T, V), over ``mask`` (B, T)."""
    per_token = F.cross_entropy(logits.float().transpose(1, 2), target_ids, reduction="none")  # (B, T)
    return masked_mean(per_token, mask)


class ForwardKLLoss(nn.Module):
    """Per-token KL(teacher ‖ student) over the full vocabulary, the SELF-PARAM objective.

    Paper: https://arxiv.org/abs/2410.00487 (Wang et al., 2024, "Self-Updatable Large Language Models with
    Parameter Integration"). ``forward(student_logits (B,T,V), teacher_logprobs (B,T,V), mask (B,T))``.
    """

    def forward(
        self, student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return forward_kl(student_logits, teacher_logprobs, mask)


class TopKForwardKLLoss(nn.Module):
    """KL(teacher ‖ student) over the teacher's top-k tokens plus one bucket for the rest of the vocabulary.

    Caching k log-probabilities per token instead of V makes the teacher cache V/k times smaller.
    Paper: https://arxiv.org/abs/2410.00487 (top-k is our option, the paper uses the full vocabulary).
    ``forward(student_logits (B,T,V), teacher_logprobs (B,T,K), teacher_ids (B,T,K), mask (B,T))``.
    """

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logprobs: torch.Tensor,
        teacher_ids: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return topk_forward_kl(student_logits, teacher_logprobs, teacher_ids, mask)


class ContinuationCrossEntropy(nn.Module):
    """Next-token cross-entropy on continuation tokens: the SFT and raw-document LM baselines' loss."""

    def forward(self, logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return continuation_cross_entropy(logits, target_ids, mask)
