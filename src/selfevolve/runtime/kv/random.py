"""Random eviction: the floor any scoring policy has to beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.kv.base import KVPolicy, check_budget, resolve_budget


@dataclass
class RandomKV(KVPolicy):
    """Keep ``budget`` uniformly random prompt positions per KV head (the random baseline of the SnapKV paper,
    https://arxiv.org/abs/2404.14469, and kvpress's ``RandomPress``).

    Parameters
    ----------
    budget : int or float, default=1024
        Positions kept per head: a token count, or the share of the prompt to keep.
    seed : int, default=0
        Seed of the draw; each layer draws from ``seed + layer index``, so runs are reproducible.
    """

    budget: int | float = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SelfEvolveError(f"RandomKV seed must be an int, got {self.seed!r}")

    def budget_for(self, length: int) -> int:
        return resolve_budget(self.budget, length)

    def score(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        padding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        generator = torch.Generator(device=keys.device).manual_seed(self.seed + module.layer_idx)
        return torch.rand(keys.shape[:3], generator=generator, device=keys.device)  # (B, Hkv, T)
