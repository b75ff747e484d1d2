"""SnapKV: keep the prompt positions that the last prompt tokens (the observation window) attend to most."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.kv.base import KVPolicy, check_budget, resolve_budget, rotate_half

POOLINGS = ("max", "avg")
GQA_MODES = ("kv_head", "query_head")


@dataclass
class SnapKV(KVPolicy):
    """SnapKV prompt-cache compression (Li et al., 2024, https://arxiv.org/abs/2404.14469).

    At prefill, per layer and head: the attention of the last ``window`` prompt tokens over the earlier ones
    is summed over the window, pooled along positions (``pooling`` over ``kernel`` neighbours, so kept tokens
    come with their context), and the top ``budget - window`` positions are kept with the window itself.

    Parameters
    ----------
    budget : int or float, default=1024
        Positions kept per head, window included: a token count, or the share of the prompt (``0.25`` keeps a
        quarter). Never below ``window``: the observation window is always kept.
    window : int, default=32
        Observation window: the last prompt tokens whose attention scores the rest. In query-aware use the
        question sits inside it (the paper's setting).
    kernel : int, default=7
        Pooling width along positions (odd, so scores stay aligned with their positions).
    pooling : {"max", "avg"}, default="max"
        Pooling of the scores (the original code's default is max pooling).
    gqa : {"kv_head", "query_head"}, default="kv_head"
        ``kv_head`` selects per KV head, the scores averaged over its query group, so the cache shrinks to
        ``budget`` positions per KV head. ``query_head`` selects per query head, as the original code does for
        grouped-query models: the cache is repeated to one copy per query head first, so it holds
        ``num_attention_heads / num_key_value_heads`` times more memory than ``kv_head`` at the same budget
        (3x on SmolLM2), and it is only usable inside the policy's context.
    """

    budget: int | float = 1024
    window: int = 32
    kernel: int = 7
    pooling: str = "max"
    gqa: str = "kv_head"

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if not isinstance(self.window, int) or self.window < 1:
            raise SelfEvolveError(f"SnapKV window must be an int >= 1 (32 in the paper), got {self.window!r}")
        if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise SelfEvolveError(f"SnapKV kernel must be an odd int >= 1 (e.g. 7), got {self.kernel!r}")
        if self.pooling not in POOLINGS:
            raise SelfEvolveError(
                f"SnapKV pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}"
            )
        if self.gqa not in GQA_MODES:
            raise SelfEvolveError(f"SnapKV gqa must be one of {', '.join(GQA_MODES)}, got {self.gqa!r}")
        if isinstance(self.budget, int) and self.budget < self.window:
            raise SelfEvolveError(
                f"SnapKV budget {self.budget} is smaller than its observation window {self.window}, which is "
                "always kept; raise the budget or lower the window"
            )

    @property
    def per_query_head(self) -> bool:
        return self.gqa == "query_head"

    def budget_for(self, length: int) -> int:
        return max(resolve_budget(self.budget, length), self.window)

    def score(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        padding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        batch, kv_heads, width, dim = keys.shape
        window = self.window  # < width: the base only scores prompts longer than the budget
        groups = module.config.num_attention_heads // kv_heads
        queries = module.q_proj(hidden_states[:, -window:])  # (B, w, Hq * D)
        queries = queries.view(batch, window, kv_heads * groups, dim).transpose(1, 2)  # (B, Hq, w, D)
        cos, sin = (p[:, -window:].unsqueeze(1) for p in position_embeddings)  # (B or 1, 1, w, D)
        queries = queries * cos + rotate_half(queries) * sin
        queries = queries.view(batch, kv_heads, groups, window, dim)  # (B, Hkv, g, w, D)
        logits = queries @ keys[:, :, None].transpose(-1, -2) * module.scaling  # (B, Hkv, g, w, T)
        rows = torch.arange(width - window, width, device=keys.device)  # positions of the window's queries
        visible = torch.arange(width, device=keys.device)[None, :] <= rows[:, None]  # (w, T) causal
        visible = visible[None] & padding[:, None, :]  # (B, w, T)
        logits = logits.masked_fill(~visible[:, None, None], torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=-1, dtype=torch.float32)  # (B, Hkv, g, w, T)
        weights = weights * padding[:, None, None, -window:, None]  # padding queries count for nothing
        scores = weights.sum(dim=-2)[..., : width - window]  # (B, Hkv, g, T - w)
        scores = scores.flatten(1, 2) if self.per_query_head else scores.mean(dim=2)  # (B, H, T - w)
        pool = F.max_pool1d if self.pooling == "max" else F.avg_pool1d
        pooled = pool(scores.flatten(0, 1)[:, None], self.kernel, stride=1, padding=self.kernel // 2)
        pooled = pooled.view(batch, -1, width - window)  # (B, H, T - w)
        return F.pad(pooled, (0, window), value=float("inf"))  # (B, H, T): the window is always kept
