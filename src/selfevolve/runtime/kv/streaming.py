"""StreamingLLM: keep the first tokens (attention sinks) and a window of the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.kv.base import KVPolicy


@dataclass
class StreamingLLM(KVPolicy):
    """StreamingLLM's cache (Xiao et al., 2023, https://arxiv.org/abs/2309.17453), applied once at prefill.

    Keeps the first ``sinks`` real tokens of the prompt and its last ``recent`` ones: ``sinks + recent``
    positions per head, whatever the content. The position-only baseline SnapKV must beat.

    Parameters
    ----------
    sinks : int, default=4
        Leading tokens kept (the "attention sinks").
    recent : int, default=1020
        Trailing tokens kept (at least 1, so the cache is never empty).
    """

    sinks: int = 4
    recent: int = 1020

    def __post_init__(self) -> None:
        if not isinstance(self.sinks, int) or isinstance(self.sinks, bool) or self.sinks < 0:
            raise SelfEvolveError(f"StreamingLLM sinks must be an int >= 0 (e.g. 4), got {self.sinks!r}")
        if not isinstance(self.recent, int) or isinstance(self.recent, bool) or self.recent < 1:
            raise SelfEvolveError(f"StreamingLLM recent must be an int >= 1, got {self.recent!r}")

    def budget_for(self, length: int) -> int:
        return self.sinks + self.recent

    def score(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        padding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        rank = padding.long().cumsum(dim=-1) - 1  # (B, T) index among the real tokens
        length = padding.sum(dim=-1, keepdim=True)  # (B, 1)
        keep = (rank < self.sinks) | (rank >= length - self.recent)  # (B, T)
        return keep[:, None].expand(-1, keys.shape[1], -1).float()  # (B, Hkv, T)
