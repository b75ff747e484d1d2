"""Merge-sort ranking with a judge as comparator: exact orders, hand-counted comparisons and calls."""

from __future__ import annotations

import math

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.ranking import merge_sort_ranking, rank_item_sets, spearman
from selfevolve.judges.pairwise import CallableJudge
from selfevolve.records import ItemSet


def _perfect(question, a, b, *, negated=False):
    better = float(int(a) > int(b))
    return 1.0 - better if negated else better


def _first_biased(question, a, b, *, negated=False):
    # right about the order, but always leans to the first position: 0.8 when a is better, 0.6 when worse
    return 0.8 if int(a) > int(b) else 0.6


def test_a_perfect_judge_sorts_exactly_within_n_log_n():
    items = ["3", "1", "4", "0", "2", "7", "5", "6"]
    result = merge_sort_ranking(CallableJudge(_perfect), "q", items, gold=[float(i) for i in items])
    assert [items[i] for i in result.order] == ["7", "6", "5", "4", "3", "2", "1", "0"]
    assert result.spearman == pytest.approx(1.0)
    assert result.comparisons <= len(items) * math.log2(len(items))  # 24 for n = 8
    assert result.calls == result.comparisons and result.invalid == 0


def test_comparison_counts_by_hand():
    judge = CallableJudge(_perfect)
    # already best first, n = 4: merge(0|1) 1, merge(2|3) 1, merge(01|23): 0 vs 2, 1 vs 2, then left is empty: 2
    assert merge_sort_ranking(judge, "q", ["4", "3", "2", "1"]).comparisons == 4
    # interleaved gold 4, 2, 3, 1: merge(0|1) 1, merge(2|3) 1, merge([4, 2] | [3, 1]): 4v3, 2v3, 2v1: 3 -> 5,
    # the worst case n*ceil(log2 n) - 2^ceil(log2 n) + 1 = 8 - 4 + 1
    result = merge_sort_ranking(judge, "q", ["4", "2", "3", "1"], both_orders=True)
    assert result.comparisons == 5
    assert result.calls == 10  # both orders: two verdicts per comparison
    assert result.order == [0, 2, 1, 3]


def test_averaging_both_orders_cancels_a_position_bias():
    items = ["1", "3", "0", "2"]
    gold = [1.0, 3.0, 0.0, 2.0]
    judge = CallableJudge(_first_biased)
    single = merge_sort_ranking(judge, "q", items, gold=gold)
    # every verdict is above 0.5, so the left item always stays first: the input order comes back
    assert single.order == [0, 1, 2, 3]
    # both orders: a better -> (0.8 + 1 - 0.6) / 2 = 0.6, a worse -> (0.6 + 1 - 0.8) / 2 = 0.4: exact
    both = merge_sort_ranking(judge, "q", items, gold=gold, both_orders=True)
    assert [items[i] for i in both.order] == ["3", "2", "1", "0"]
    assert both.spearman == pytest.approx(1.0) and single.spearman < 1.0


def test_spearman_by_hand():
    assert spearman([1.0, 2.0, 3.0], [0, 1, 2]) == pytest.approx(-1.0)  # worst item ranked first
    assert spearman([1.0, 2.0, 3.0], [2, 1, 0]) == pytest.approx(1.0)
    # order [2, 0, 1] gives items 0, 1, 2 the position scores (2, 1, 3); gold ranks (1, 2, 3):
    # d = (-1, 1, 0), sum d^2 = 2, rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5
    assert spearman([1.0, 2.0, 3.0], [2, 0, 1]) == pytest.approx(0.5)
    assert math.isnan(spearman([1.0, 1.0], [0, 1]))


def test_garbage_verdicts_are_counted_not_scored():
    judge = CallableJudge(lambda q, a, b, *, negated=False: "A")  # not a number: an invalid verdict
    result = merge_sort_ranking(judge, "q", ["a", "b", "c"])
    assert result.order == [0, 1, 2]  # ties keep the left item first
    # merge(1|2): 1 comparison; merge(0|12): 0 v 1 keeps 0, the left run is empty: 1 -> 2 in all
    assert result.invalid == result.comparisons == 2


def test_rank_item_sets_averages_over_sets_with_gold():
    sets = [
        ItemSet("q", ["1", "2", "3"], [1.0, 2.0, 3.0]),
        ItemSet("q", ["2", "1"], [2.0, 1.0]),
        ItemSet("q", ["1", "2"], None),  # no gold: ranked, not scored
    ]
    summary = rank_item_sets(CallableJudge(_perfect), sets, both_orders=True)
    assert summary.spearman == pytest.approx(1.0)
    # comparisons: 3 items -> merge(1|2) 1 + merge(0|12) 2 = 3; each 2-item set 1: 5, calls 10
    assert (summary.comparisons, summary.calls, summary.sets) == (5, 10, 3)


def test_bad_input_is_refused():
    with pytest.raises(SelfEvolveError, match="gold"):
        merge_sort_ranking(CallableJudge(_perfect), "q", ["1", "2"], gold=[1.0])
    with pytest.raises(SelfEvolveError, match="no item sets"):
        rank_item_sets(CallableJudge(_perfect), [])
    with pytest.raises(SelfEvolveError, match="outside"):
        merge_sort_ranking(CallableJudge(lambda q, a, b, *, negated=False: 7), "q", ["1", "2"])
