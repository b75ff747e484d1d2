"""Ranking by merge sort with a pairwise judge as the comparator (PairS, Liu et al. 2024,
https://arxiv.org/abs/2403.16950), the logic-dependent algorithm on which judge consistency shows
(https://arxiv.org/abs/2410.02205, §4: an intransitive or order-biased judge sorts badly).

A comparison asks ``judge.prefer((question, left, right))``; with ``both_orders`` it also asks the swapped
pair and averages P(left better) = (p + 1 - p_swapped) / 2, which cancels a pure position bias at twice the
calls. Merge sort needs at most n⌈log2 n⌉ - 2^⌈log2 n⌉ + 1 comparisons. Ties (P = 0.5) and invalid verdicts
(nan, counted) keep the left item first, so the sort is stable and never stalls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import PairwiseJudge
from selfevolve.records import ItemSet


@dataclass
class SortResult:
    """The judge's ranking of one item set (indices, best first) and what it cost."""

    order: list[int]
    comparisons: int
    calls: int  # judge verdicts asked (2 per comparison with both_orders)
    invalid: int  # verdicts that were nan (the comparison kept the left item first)
    spearman: float | None  # against gold, None without gold (nan when gold is constant)


class _Comparator:
    def __init__(self, judge: PairwiseJudge, question: str, items: Sequence[str], both_orders: bool) -> None:
        self.judge, self.question, self.items, self.both_orders = judge, question, items, both_orders
        self.comparisons = self.calls = self.invalid = 0

    def left_first(self, i: int, j: int) -> bool:
        """Whether item ``i`` should come before item ``j`` (P(i better) >= 0.5; nan counts as a tie)."""
        q, a, b = self.question, self.items[i], self.items[j]
        triples = [(q, a, b), (q, b, a)] if self.both_orders else [(q, a, b)]
        verdicts = list(self.judge.prefer(triples))
        if len(verdicts) != len(triples):
            raise SelfEvolveError(
                f"judge {self.judge.name} returned {len(verdicts)} verdicts for {len(triples)}"
            )
        self.comparisons += 1
        self.calls += len(triples)
        self.invalid += sum(math.isnan(v) for v in verdicts)
        if any(math.isnan(v) for v in verdicts):
            return True
        p = (verdicts[0] + 1 - verdicts[1]) / 2 if self.both_orders else verdicts[0]
        return p >= 0.5


def _merge_sort(indices: list[int], compare: _Comparator) -> list[int]:
    if len(indices) <= 1:
        return indices
    middle = len(indices) // 2
    left, right = _merge_sort(indices[:middle], compare), _merge_sort(indices[middle:], compare)
    merged = []
    while left and right:
        merged.append(left.pop(0) if compare.left_first(left[0], right[0]) else right.pop(0))
    return merged + left + right


def spearman(gold: Sequence[float], order: Sequence[int]) -> float:
    """Spearman correlation between ``gold`` (higher is better) and the ranking ``order`` (best first)."""
    from scipy.stats import spearmanr

    position = [0.0] * len(order)
    for rank, index in enumerate(order):
        position[index] = float(len(order) - rank)  # best first gets the highest score
    if len(set(gold)) < 2:
        return math.nan
    return float(spearmanr(gold, position).statistic)


def merge_sort_ranking(
    judge: PairwiseJudge,
    question: str,
    items: Sequence[str],
    *,
    gold: Sequence[float] | None = None,
    both_orders: bool = False,
) -> SortResult:
    """Sort ``items`` best first by merge sort with ``judge`` as the comparator; Spearman against ``gold``."""
    if gold is not None and len(gold) != len(items):
        raise SelfEvolveError(f"got {len(items)} items but {len(gold)} gold scores; pass one per item")
    compare = _Comparator(judge, question, items, both_orders)
    order = _merge_sort(list(range(len(items))), compare)
    rho = None if gold is None else spearman(gold, order)
    return SortResult(order, compare.comparisons, compare.calls, compare.invalid, rho)


@dataclass
class RankingSummary:
    """Merge-sort ranking over many item sets: mean Spearman (sets with gold), calls and invalid verdicts."""

    spearman: float
    calls: int
    comparisons: int
    invalid: int
    sets: int


def rank_item_sets(
    judge: PairwiseJudge, sets: Sequence[ItemSet], *, both_orders: bool = False
) -> RankingSummary:
    """Merge-sort every item set with ``judge``; the mean Spearman over sets whose gold is not constant."""
    if not sets:
        raise SelfEvolveError("no item sets to rank; pass at least one")
    results = [
        merge_sort_ranking(judge, s.question, s.items, gold=s.gold, both_orders=both_orders) for s in sets
    ]
    scored = [r.spearman for r in results if r.spearman is not None and not math.isnan(r.spearman)]
    return RankingSummary(
        spearman=sum(scored) / len(scored) if scored else math.nan,
        calls=sum(r.calls for r in results),
        comparisons=sum(r.comparisons for r in results),
        invalid=sum(r.invalid for r in results),
        sets=len(results),
    )
