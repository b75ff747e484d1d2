"""REPAIR: noisy pairwise judge labels -> one ranking -> every pair that ranking implies (both orders, negated).

A pairwise judge contradicts itself (A > B and B > A when the order is swapped; A > B > C > A). REPAIR
(Liu et al., "Aligning with Logic", https://arxiv.org/abs/2410.02205, §4) aggregates the judge's labels on
an item set into one ranking, by win-loss rate (the paper's default), Bradley-Terry or Elo, derives every pair
the ranking implies, in both orders and optionally with the negated question ("Which is worse?"), and
fine-tunes the judge on those consistent labels (:mod:`selfevolve.update.judge_tuning`).

A label is ``(i, j, p)``: the judge's probability that item ``i`` is better than item ``j``. ``nan`` marks an
invalid verdict: it is skipped by every aggregator and counted by :func:`count_invalid`, never scored.
Ties: a label of exactly 0.5 is half a win for each side (win-loss, Elo) or one win each (Bradley-Terry); two
items whose aggregate scores are equal imply no pair.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import PairwiseJudge
from selfevolve.records import ItemSet, JudgeLabel

Label = tuple[int, int, float]
"""``(i, j, p)``: P(item ``i`` is better than item ``j``), or nan for an invalid verdict."""


def _check(n: int, labels: Sequence[Label]) -> list[Label]:
    """The valid labels; a SelfEvolveError for an out-of-range index or probability."""
    if n < 1:
        raise SelfEvolveError(f"need at least one item to rank, got {n}")
    valid = []
    for i, j, p in labels:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise SelfEvolveError(f"label ({i}, {j}, {p}) names items outside 0..{n - 1} or an item twice")
        if isinstance(p, float) and math.isnan(p):
            continue
        if not 0 <= p <= 1:
            raise SelfEvolveError(f"label ({i}, {j}, {p}) is not a probability in [0, 1]")
        valid.append((i, j, float(p)))
    return valid


def count_invalid(labels: Sequence[Label]) -> int:
    """How many labels are invalid verdicts (nan)."""
    return sum(isinstance(p, float) and math.isnan(p) for _, _, p in labels)


def win_loss(n: int, labels: Sequence[Label]) -> list[float]:
    """Each item's win rate: the mean, over the labels it takes part in, of its probability of winning
    (the paper's default aggregator). An item in no valid label scores 0.5."""
    wins, games = [0.0] * n, [0] * n
    for i, j, p in _check(n, labels):
        wins[i] += p
        wins[j] += 1 - p
        games[i] += 1
        games[j] += 1
    return [w / g if g else 0.5 for w, g in zip(wins, games)]


def bradley_terry(n: int, labels: Sequence[Label], alpha: float = 0.01) -> list[float]:
    """Bradley-Terry strengths (choix ILSR, L2 regularisation ``alpha``; log scale, mean 0) from the labels
    made hard: p > 0.5 a win for ``i``, p < 0.5 for ``j``, p = 0.5 one win each."""
    import choix

    outcomes = []
    for i, j, p in _check(n, labels):
        if p >= 0.5:
            outcomes.append((i, j))
        if p <= 0.5:
            outcomes.append((j, i))
    if n == 1 or not outcomes:
        return [0.0] * n
    return [float(x) for x in choix.ilsr_pairwise(n, outcomes, alpha=alpha)]


def elo(
    n: int, labels: Sequence[Label], k: float = 32.0, initial: float = 1000.0, rounds: int = 1
) -> list[float]:
    """Elo ratings after playing the labels in order ``rounds`` times; a label scores ``p`` for ``i`` and
    ``1 - p`` for ``j`` against the expected score 1 / (1 + 10^((R_j - R_i) / 400))."""
    if rounds < 1:
        raise SelfEvolveError(f"elo rounds must be at least 1, got {rounds}")
    ratings = [initial] * n
    valid = _check(n, labels)
    for _ in range(rounds):
        for i, j, p in valid:
            expected = 1 / (1 + 10 ** ((ratings[j] - ratings[i]) / 400))
            ratings[i] += k * (p - expected)
            ratings[j] -= k * (p - expected)
    return ratings


AGGREGATORS: dict[str, Callable[[int, Sequence[Label]], list[float]]] = {
    "win_loss": win_loss,
    "bradley_terry": bradley_terry,
    "elo": elo,
}


def aggregate(n: int, labels: Sequence[Label], method: str = "win_loss") -> list[float]:
    """One score per item (higher is better) by ``method``: win_loss, bradley_terry or elo."""
    if method not in AGGREGATORS:
        raise SelfEvolveError(f"unknown aggregator {method!r}; use one of {', '.join(AGGREGATORS)}")
    return AGGREGATORS[method](n, labels)


def ranking(scores: Sequence[float]) -> list[int]:
    """Item indices best first; equal scores keep their index order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def implied_pairs(
    question: str,
    items: Sequence[str],
    scores: Sequence[float],
    *,
    both_orders: bool = True,
    negated: bool = False,
    tolerance: float = 1e-9,
) -> list[JudgeLabel]:
    """Every pair the scores order (``|s_i - s_j| > tolerance``) as judge training labels: (better, worse)
    with target 1, and with ``both_orders`` also (worse, better) with target 0; with ``negated`` each again
    under the negated question, where the target is P(a is worse)."""
    if len(items) != len(scores):
        raise SelfEvolveError(f"got {len(items)} items but {len(scores)} scores; pass one score per item")
    pairs = []
    for rank, better in enumerate(order := ranking(scores)):
        for worse in order[rank + 1 :]:
            if scores[better] - scores[worse] <= tolerance:
                continue
            orders = [(better, worse, 1.0)] + ([(worse, better, 0.0)] if both_orders else [])
            for a, b, target in orders:
                pairs.append(JudgeLabel(question, items[a], items[b], target, False))
                if negated:
                    pairs.append(JudgeLabel(question, items[a], items[b], 1.0 - target, True))
    return pairs


@dataclass(frozen=True)
class Repaired:
    """REPAIR on one item set: the aggregate scores, the ranking they give and the implied training labels."""

    scores: list[float]
    order: list[int]
    pairs: list[JudgeLabel]
    invalid: int  # labels that were invalid verdicts (skipped)


def repair(
    question: str,
    items: Sequence[str],
    labels: Sequence[Label],
    *,
    method: str = "win_loss",
    both_orders: bool = True,
    negated: bool = False,
) -> Repaired:
    """Aggregate ``labels`` on ``items`` by ``method`` and derive every implied pair (REPAIR, one item set)."""
    scores = aggregate(len(items), labels, method)
    pairs = implied_pairs(question, items, scores, both_orders=both_orders, negated=negated)
    return Repaired(scores, ranking(scores), pairs, count_invalid(labels))


def judge_labels(judge: PairwiseJudge, question: str, items: Sequence[str]) -> list[Label]:
    """The judge's label on every ordered pair of ``items`` (n (n - 1) verdicts, one batch)."""
    pairs = list(itertools.permutations(range(len(items)), 2))
    values = judge.prefer([(question, items[i], items[j]) for i, j in pairs])
    if len(values) != len(pairs):
        raise SelfEvolveError(f"judge {judge.name} returned {len(values)} verdicts for {len(pairs)} pairs")
    return [(i, j, float(p)) for (i, j), p in zip(pairs, values)]


def repair_item_sets(
    judge: PairwiseJudge,
    item_sets: Sequence[ItemSet],
    *,
    method: str = "win_loss",
    both_orders: bool = True,
    negated: bool = True,
) -> list[Repaired]:
    """REPAIR with ``judge`` as the labeller: its labels on every ordered pair of each set, aggregated."""
    return [
        repair(
            s.question,
            s.items,
            judge_labels(judge, s.question, s.items),
            method=method,
            both_orders=both_orders,
            negated=negated,
        )
        for s in item_sets
    ]
