"""CORY: cooperative two-agent RL fine-tuning (Ma et al., "Coevolving with the Other You",
https://arxiv.org/abs/2410.06101).

The policy is duplicated into a *pioneer* and an *observer*. The pioneer answers the query; the observer answers
the same query with the pioneer's answer in its prompt (knowledge transfer). Both are trained by PPO
(:mod:`selfevolve.update.ppo`) on the collective reward r(q, a₁) + r(q, a₂), each with its own value head and
KL penalty to the reference. Every ``exchange_every`` iterations the two swap roles (role exchange), so each
learns to answer alone as well as with help. Unlike the reference code, a swap keeps each adapter's optimizer
state: a :class:`~selfevolve.update.ppo.Policy` owns its optimizer, and roles only point at policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import Prompt
from selfevolve.update.ppo import FixedKLController, Policy, PPOConfig, PPOStats, Rollout, ppo_update
from selfevolve.update.rewards import RLTask, score_all

ROLES = ("pioneer", "observer")


@dataclass
class CORYConfig:
    """CORY's own settings (the PPO ones are in :class:`~selfevolve.update.ppo.PPOConfig`)."""

    exchange_every: int = 5  # T: swap pioneer and observer after every T iterations (the paper's T = 5)
    role_exchange: bool = True  # ablation: False keeps the roles fixed
    knowledge_transfer: bool = True  # ablation: False shows the observer the query alone
    observer_template: str = ""  # {query} and {pioneer}; "" uses the task's default

    def __post_init__(self) -> None:
        if self.exchange_every < 1:
            raise SelfEvolveError(f"cory.exchange_every must be at least 1, got {self.exchange_every}")
        if self.observer_template and (
            "{query}" not in self.observer_template or "{pioneer}" not in self.observer_template
        ):
            raise SelfEvolveError(
                f"cory.observer_template {self.observer_template!r} must contain {{query}} and {{pioneer}}"
            )


@dataclass
class AgentStats:
    """One agent's iteration: its own task reward r(q, a), the PPO statistics (on the collective reward)."""

    role: str
    adapter: str
    task_reward: float  # mean r(q, a) of this agent's own answers
    kl_coef: float
    ppo: PPOStats

    @property
    def combined(self) -> float:
        """Task reward − β·KL: what the agent earns once the KL penalty is paid."""
        return self.task_reward - self.kl_coef * self.ppo.kl


Sampler = Callable[[Policy, list[Prompt], str], tuple[Rollout, list[str]]]
"""``sampler(policy, prompts, where) -> (rollout, texts)``: one checked rollout (see ``update/rl.py``)."""


def observer_queries(task: RLTask, queries: list[str], answers: list[str], config: CORYConfig) -> list[str]:
    """The observer's queries: each query with the pioneer's answer filled into the template (or the query
    alone without knowledge transfer)."""
    if not config.knowledge_transfer:
        return list(queries)
    template = config.observer_template or task.observer_template
    return [template.format(query=q, pioneer=a) for q, a in zip(queries, answers, strict=True)]


def exchange_roles(roles: dict[str, str]) -> dict[str, str]:
    """The roles swapped: the pioneer's adapter becomes the observer's and back. Optimizer states, value heads
    and KL coefficients stay with their adapters."""
    return {"pioneer": roles["observer"], "observer": roles["pioneer"]}


def exchanges_after(iteration: int, config: CORYConfig) -> bool:
    """Whether the roles swap after ``iteration`` (1-based)."""
    return config.role_exchange and iteration % config.exchange_every == 0


def cory_iteration(
    module: nn.Module,
    policies: dict[str, Policy],
    roles: dict[str, str],
    kl: dict[str, FixedKLController],
    task: RLTask,
    queries: list[str],
    references: list[str],
    sampler: Sampler,
    config: CORYConfig,
    ppo: PPOConfig,
    *,
    where: str,
    accelerator=None,
    generator: torch.Generator | None = None,
) -> dict[str, AgentStats]:
    """One CORY iteration: pioneer and observer answer, share the collective reward, and each takes a PPO step.

    ``kl`` maps each adapter to its KL controller; ``where`` (e.g. "iteration 3") prefixes every error.
    """
    pioneer, observer = policies[roles["pioneer"]], policies[roles["observer"]]
    first, first_texts = sampler(pioneer, [task.prompt(q) for q in queries], f"{where}, step pioneer rollout")
    first_scores = score_all(task.reward, queries, first_texts, references, f"{where}, step pioneer reward")
    seen = observer_queries(task, queries, first_texts, config)
    second, second_texts = sampler(
        observer, [task.prompt(q) for q in seen], f"{where}, step observer rollout"
    )
    second_scores = score_all(
        task.reward, queries, second_texts, references, f"{where}, step observer reward"
    )
    collective = torch.tensor(first_scores, device=first.scores.device) + torch.tensor(
        second_scores, device=first.scores.device
    )  # (B,) r(q, a₁) + r(q, a₂)
    results = {}
    for role, policy, rollout, own in (
        ("pioneer", pioneer, first, first_scores),
        ("observer", observer, second, second_scores),
    ):
        coef = kl[policy.adapter].value
        stats = ppo_update(
            module, policy, rollout._replace(scores=collective), coef, ppo, accelerator, generator
        )
        kl[policy.adapter].update(stats.kl, len(queries))
        results[role] = AgentStats(role, policy.adapter, sum(own) / len(own), coef, stats)
    return results
