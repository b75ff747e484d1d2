"""The full cache: no compression, the reference every policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from selfevolve.runtime.kv.base import KVPolicy


@dataclass
class FullKV(KVPolicy):
    """Keep every prompt position: the same results as no policy at all, through the same code path.

    The upper bound of the SnapKV paper's comparisons (https://arxiv.org/abs/2404.14469).
    """

    def budget_for(self, length: int) -> int:
        return length
