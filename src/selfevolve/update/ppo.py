"""PPO for causal language models, small and readable (https://arxiv.org/abs/1707.06347, in the RLHF form of
Ziegler et al. https://arxiv.org/abs/1909.08593): a per-token KL penalty to the reference, GAE, clipped policy
and value losses.

The RL math is pure tensor functions (:func:`kl_penalty_rewards`, :func:`estimate_advantages`,
:func:`policy_loss`, :func:`value_loss`); rollouts and statistics are the :class:`Rollout` and :class:`PPOStats`
named tuples; :func:`ppo_update` is the one training function over them.

Memory design: one frozen base model wrapped in a ``peft.PeftModel`` that holds one named LoRA adapter per
policy; each :class:`Policy` is an adapter name, its value head and its own optimizer. The reference model is
the same base with the adapters disabled, so two policies plus the reference cost about one model of memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import Prompt
from selfevolve.runtime.model import LocalModel
from selfevolve.update.losses import masked_mean


@dataclass
class PPOConfig:
    """PPO settings; defaults are the CORY paper's (γ = 1, λ = 0.95, clip 0.2, value coefficient 0.1)."""

    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    clip_range: float = 0.2  # policy ratio clip ε
    clip_range_value: float = 0.2  # value clip around the rollout's values
    value_coef: float = 0.1  # weight of the value loss
    kl_coef: float = 0.2  # β of the per-token KL penalty (initial value when adaptive)
    adaptive_kl: bool = False  # Ziegler et al.'s proportional controller towards kl_target
    kl_target: float = 6.0  # adaptive: the per-sequence KL the controller steers to
    kl_horizon: int = 10000  # adaptive: samples over which β adapts
    epochs: int = 4  # optimisation passes over each rollout batch
    mini_batch_size: int = 8  # sequences per optimizer step
    whiten_advantages: bool = True  # normalise advantages over the batch's real tokens
    learning_rate: float = 1e-4  # AdamW, per adapter and value head (LoRA)
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise SelfEvolveError(
                f"ppo.gamma and ppo.lam must be in [0, 1], got {self.gamma} and {self.lam}; the paper uses 1 and 0.95"
            )
        if self.clip_range <= 0 or self.clip_range_value <= 0:
            raise SelfEvolveError(
                f"ppo.clip_range and ppo.clip_range_value must be positive, got {self.clip_range} and "
                f"{self.clip_range_value}; the paper uses 0.2"
            )
        if self.kl_coef < 0 or self.value_coef < 0 or self.kl_target <= 0 or self.kl_horizon < 1:
            raise SelfEvolveError(
                "ppo.kl_coef and ppo.value_coef must not be negative, ppo.kl_target and ppo.kl_horizon must be "
                f"positive; got {self.kl_coef}, {self.value_coef}, {self.kl_target}, {self.kl_horizon}"
            )
        if self.epochs < 1 or self.mini_batch_size < 1 or self.learning_rate <= 0:
            raise SelfEvolveError(
                f"ppo.epochs, ppo.mini_batch_size and ppo.learning_rate must be positive, got {self.epochs}, "
                f"{self.mini_batch_size} and {self.learning_rate}"
            )


class Rollout(NamedTuple):
    """One batch of sampled answers with everything PPO needs, fixed at sampling time.

    Queries are left-padded and responses right-padded, so ``cat(query_ids, response_ids)`` is one sequence.
    """

    query_ids: torch.Tensor  # (B, Q) left-padded prompt ids
    query_mask: torch.Tensor  # (B, Q) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) right-padded answer ids
    response_mask: torch.Tensor  # (B, T) True on real answer tokens
    logprobs: torch.Tensor  # (B, T) log π_old(a_t | s_t)
    ref_logprobs: torch.Tensor  # (B, T) log π_ref(a_t | s_t)
    values: torch.Tensor  # (B, T) V_old(s_t)
    scores: torch.Tensor  # (B,) the task reward of each answer (CORY: the collective reward)


class PPOStats(NamedTuple):
    """What one :func:`ppo_update` did, averaged over its optimizer steps (``kl``: mean per-sequence KL)."""

    loss: float
    policy_loss: float
    value_loss: float
    clip_fraction: float
    kl: float  # Σ_t (log π_old − log π_ref), mean over sequences: the KL to the reference at sampling time
    score: float  # mean task reward
    reward: float  # mean of score − β·KL per sequence (the combined reward PPO maximises)


# --------------------------------------------------------------------------------------------- the RL math


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` shifted to mean 0 and scaled to variance 1 over the masked-in positions (0 elsewhere)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return torch.where(mask.bool(), (values - mean) * torch.rsqrt(variance + 1e-8), torch.zeros_like(values))


def kl_penalty_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −β·(log π − log π_ref) at every answer token, plus the score at the last one.

    Args:
        scores: (B,) task reward per answer.
        logprobs, ref_logprobs: (B, T) the policy's and the reference's log-probabilities of the answer tokens.
        mask: (B, T) True on real answer tokens (right padding).
        kl_coef: β.

    Returns:
        rewards (B, T) and the per-token KL estimate (B, T), both 0 on padding.
    """
    mask = mask.bool()
    kl = torch.where(mask, logprobs - ref_logprobs, torch.zeros_like(logprobs))  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    last = (mask.long().sum(-1) - 1).clamp(min=0)  # (B,) index of each answer's last token
    has_tokens = mask.any(-1)  # (B,) an empty answer gets no score (it has no token to credit)
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype))
    rewards = rewards.scatter_add(1, last.unsqueeze(-1), bonus.unsqueeze(-1))  # (B, T)
    return rewards, kl


def estimate_advantages(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (https://arxiv.org/abs/1506.02438) over right-padded answers.

    δ_t = r_t + γ V_{t+1} − V_t (V after the last token is 0), A_t = δ_t + γλ A_{t+1}, returns = A + V.

    Args:
        values: (B, T) V(s_t); rewards: (B, T); mask: (B, T) True on real tokens.

    Returns:
        advantages (B, T) and returns (B, T), 0 on padding.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask  # (B, T) padding contributes nothing
    steps = values.shape[-1]
    advantages = torch.zeros_like(values)  # (B, T)
    running = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        running = (delta + gamma * lam * running) * mask[:, t]  # (B,)
        advantages[:, t] = running
    returns = advantages + values  # (B, T)
    return advantages, returns * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over real tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π/π_old.

    Args:
        logprobs: (B, T) under the policy being trained; old_logprobs: (B, T) at sampling time.
        advantages: (B, T); mask: (B, T) True on real tokens.

    Returns:
        the loss (scalar) and the fraction of tokens where the clipped term was taken (scalar).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> torch.Tensor:
    """Clipped value loss: ½ · mean over real tokens of max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²).

    Args:
        values: (B, T) current predictions; old_values: (B, T) at sampling time; returns: (B, T); mask: (B, T).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # (B, T)
    worst = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # (B, T)
    return 0.5 * masked_mean(worst, mask)


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, samples: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: β ← β · (1 + clip(KL/target − 1, ±0.2) · samples/horizon)."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current_kl: float, samples: int) -> None:
        """Move β towards the value that keeps the per-sequence KL at ``target``."""
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * samples / self.horizon


def kl_controller(config: PPOConfig) -> FixedKLController | AdaptiveKLController:
    """The controller ``config`` asks for."""
    if config.adaptive_kl:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    return FixedKLController(config.kl_coef)


# ------------------------------------------------------------------------------------ policies on one base


class ValueHead(nn.Module):
    """A scalar value per position from the model's last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)  # (B, L, H) -> (B, L)


@dataclass
class Policy:
    """One trainable policy: a named LoRA adapter on the shared base, its value head and its own optimizer
    (whose state belongs to the adapter, whatever role the policy plays)."""

    adapter: str
    value_head: ValueHead
    optimizer: torch.optim.Optimizer

    def parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """The adapter's LoRA weights and the value head's weights."""
        lora = [p for n, p in module.named_parameters() if f".{self.adapter}." in n and "lora_" in n]
        return lora + list(self.value_head.parameters())


def add_policies(
    model: LocalModel, names: Sequence[str], config, learning_rate: float, seed: int = 0
) -> tuple[nn.Module, dict[str, Policy]]:
    """Wrap ``model.model`` (frozen) in one PeftModel with an adapter per name; a Policy for each.

    ``config`` is a peft LoraConfig (see :func:`selfevolve.update.training.lora_config`). Every adapter starts from the same seed, so all
    policies begin as the same model (the reference, since LoRA's B matrices start at zero)."""
    from peft import get_peft_model

    base = model.model.requires_grad_(False)
    hidden = base.config.get_text_config().hidden_size
    policies: dict[str, Policy] = {}
    peft_model = None
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if peft_model is None:
                peft_model = get_peft_model(base, config, adapter_name=name)
            else:
                peft_model.add_adapter(name, config)
            head = ValueHead(hidden).to(model.device)
        policies[name] = Policy(name, head, None)  # type: ignore[arg-type]
    for policy in policies.values():
        policy.optimizer = torch.optim.AdamW(policy.parameters(peft_model), lr=learning_rate)
    return peft_model, policies


@contextlib.contextmanager
def active(module: nn.Module, adapter: str | None) -> Iterator[None]:
    """Run ``module`` (a PeftModel) as the policy ``adapter``, or as the reference when ``adapter`` is None."""
    if adapter is None:
        with module.disable_adapter():
            yield
        return
    module.set_adapter(adapter)
    yield


def response_logprobs(
    module: nn.Module,
    value_head: ValueHead | None,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the answer tokens (B, T) and, with a value head, V(s_t) (B, T) for each.

    The state before answer token t is the position right before it, so both come from positions Q−1 … Q+T−2.
    """
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (B, Q + T)
    attention = torch.cat([query_mask.long(), response_mask.long()], dim=1)  # (B, Q + T)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, Q + T) left padding does not shift positions
    steps = response_ids.shape[1]
    out = module(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        logits_to_keep=steps + 1,
        output_hidden_states=value_head is not None,
    )
    logits = out.logits[:, :-1].float()  # (B, T, V): position Q−1+t predicts answer token t
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    if value_head is None:
        return logprobs, None
    hidden = out.hidden_states[-1][:, -steps - 1 : -1]  # (B, T, H)
    return logprobs, value_head(hidden).float()  # (B, T)


def _pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max((len(r) for r in rows), default=0), 1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(list(row), dtype=torch.long)
            mask[i, span] = True
    return ids, mask


def sample(
    student: LocalModel,
    policy: Policy,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    ignore_eos: bool = False,
    seed: int | None = None,
) -> tuple[Rollout, list[str]]:
    """Sample one answer per prompt from ``policy`` (the runtime's batched generation) and score it under the
    policy and the reference; the rollout's ``scores`` are zeros until the caller sets them. Also the texts."""
    module = student.model
    module.eval()
    config = module.get_base_model().generation_config
    top_k, config.top_k = config.top_k, 0  # sample the full distribution: transformers' default top-k of 50
    try:  # would make the behaviour policy differ from π, biasing the ratios and the KL estimate
        with active(module, policy.adapter):
            completions = student.generate(
                list(prompts),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                ignore_eos=ignore_eos,
                seed=seed,
            )
    finally:
        config.top_k = top_k
    pad = student.tokenizer.pad_token_id
    query_ids, query_mask = _pad([student.encode(p) for p in prompts], pad, left=True)
    response_ids, response_mask = _pad([c.token_ids for c in completions], pad, left=False)
    tensors = [t.to(student.device) for t in (query_ids, query_mask, response_ids, response_mask)]
    with torch.no_grad():
        with active(module, policy.adapter):
            logprobs, values = response_logprobs(module, policy.value_head, *tensors)
        with active(module, None):
            ref_logprobs, _ = response_logprobs(module, None, *tensors)
    scores = torch.zeros(len(completions), device=student.device)
    rollout = Rollout(*tensors, logprobs, ref_logprobs, values, scores)
    return rollout, [c.text for c in completions]


def ppo_update(
    module: nn.Module,
    policy: Policy,
    rollout: Rollout,
    kl_coef: float,
    config: PPOConfig,
    accelerator=None,
    generator: torch.Generator | None = None,
) -> PPOStats:
    """Train ``policy`` on one rollout: KL-penalised rewards, GAE, then ``epochs`` passes of clipped PPO in
    shuffled mini-batches. ``accelerator`` (accelerate) does the backward pass and clipping when given."""
    mask = rollout.response_mask
    rewards, kl = kl_penalty_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef)
    advantages, returns = estimate_advantages(rollout.values, rewards, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    module.train()
    module.set_adapter(policy.adapter)
    parameters = policy.parameters(module)
    size = rollout.response_ids.shape[0]
    totals = {"loss": 0.0, "policy": 0.0, "value": 0.0, "clip": 0.0}
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, config.mini_batch_size):
            rows = order[start : start + config.mini_batch_size].to(mask.device)
            new_logprobs, new_values = response_logprobs(
                module,
                policy.value_head,
                rollout.query_ids[rows],
                rollout.query_mask[rows],
                rollout.response_ids[rows],
                mask[rows],
            )
            pg, clip = policy_loss(
                new_logprobs, rollout.logprobs[rows], advantages[rows], mask[rows], config.clip_range
            )
            vf = value_loss(
                new_values, rollout.values[rows], returns[rows], mask[rows], config.clip_range_value
            )
            loss = pg + config.value_coef * vf
            if not torch.isfinite(loss):
                raise SelfEvolveError(
                    f"PPO loss of policy {policy.adapter!r} is {float(loss)}; lower ppo.learning_rate"
                )
            if accelerator is not None:
                accelerator.backward(loss)
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            else:
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            policy.optimizer.step()
            policy.optimizer.zero_grad(set_to_none=True)
            for key, value in (("loss", loss), ("policy", pg), ("value", vf), ("clip", clip)):
                totals[key] += float(value.detach())
            steps += 1
    module.eval()
    sequence_kl = kl.sum(-1)  # (B,)
    return PPOStats(
        loss=totals["loss"] / steps,
        policy_loss=totals["policy"] / steps,
        value_loss=totals["value"] / steps,
        clip_fraction=totals["clip"] / steps,
        kl=float(sequence_kl.mean()),
        score=float(rollout.scores.mean()),
        reward=float((rollout.scores - kl_coef * sequence_kl).mean()),
    )
