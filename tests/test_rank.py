"""REPAIR's aggregators and implied pairs, on hand-made label sets with hand-derived results."""

from __future__ import annotations

import math

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.judges.pairwise import CallableJudge
from selfevolve.records import ItemSet, JudgeLabel
from selfevolve.refine.rank import (
    aggregate,
    bradley_terry,
    count_invalid,
    elo,
    implied_pairs,
    judge_labels,
    ranking,
    repair,
    repair_item_sets,
    win_loss,
)

NAN = float("nan")


def test_win_loss_is_the_mean_probability_of_winning():
    labels = [(0, 1, 1.0), (1, 2, 1.0), (0, 2, 0.5), (1, 0, 0.0)]
    # item 0: 1 (beats 1) + 0.5 (tie with 2) + (1 - 0.0) (as j in (1, 0, 0.0)) = 2.5 over 3 games
    # item 1: (1 - 1.0) + 1.0 + 0.0 = 1 over 3 games; item 2: (1 - 1.0) + (1 - 0.5) = 0.5 over 2 games
    assert win_loss(3, labels) == pytest.approx([2.5 / 3, 1 / 3, 0.25])
    assert ranking(win_loss(3, labels)) == [0, 1, 2]


def test_invalid_labels_are_skipped_and_counted():
    labels = [(0, 1, NAN), (1, 0, 1.0)]
    # only (1, 0, 1.0) counts: item 1 wins its one game, item 0 loses it
    assert win_loss(2, labels) == [0.0, 1.0]
    assert count_invalid(labels) == 1
    # an item in no valid label scores 0.5
    assert win_loss(3, labels)[2] == 0.5
    assert repair("q", ["a", "b"], labels).invalid == 1


def test_bradley_terry_matches_the_closed_form():
    # item 0 wins 3 of 4 games against item 1 (labels made hard at 0.5). Without regularisation the BT
    # maximum-likelihood estimate solves e^t0 / (e^t0 + e^t1) = 3/4, so t0 - t1 = ln 3 = 1.0986.
    labels = [(0, 1, 0.9), (0, 1, 0.9), (1, 0, 0.3), (1, 0, 0.8)]
    strengths = bradley_terry(2, labels, alpha=0.0)
    assert strengths[0] - strengths[1] == pytest.approx(math.log(3), abs=1e-4)


def test_bradley_terry_orders_a_consistent_judge():
    # a judge that follows 2 > 0 > 1 on every pair, in both orders
    labels = [(2, 0, 1.0), (0, 2, 0.0), (0, 1, 1.0), (1, 0, 0.0), (2, 1, 1.0), (1, 2, 0.0)]
    assert ranking(bradley_terry(3, labels)) == [2, 0, 1]
    assert ranking(aggregate(3, labels, "win_loss")) == [2, 0, 1]
    assert ranking(aggregate(3, labels, "elo")) == [2, 0, 1]


def test_elo_updates_by_hand():
    # game 1: both at 1000, expected 0.5; R0 = 1000 + 32 * (1 - 0.5) = 1016, R1 = 984
    assert elo(2, [(0, 1, 1.0)]) == pytest.approx([1016.0, 984.0])
    # game 2: expected for 0 = 1 / (1 + 10^((984 - 1016) / 400)) = 1 / (1 + 10^-0.08) = 0.545922;
    # R0 = 1016 + 32 * 0.454078 = 1030.5305, R1 = 984 - 14.5305 = 969.4695
    assert elo(2, [(0, 1, 1.0), (0, 1, 1.0)]) == pytest.approx([1030.5305, 969.4695], abs=1e-3)
    # a soft label of 0.5 between equals changes nothing
    assert elo(2, [(0, 1, 0.5)]) == [1000.0, 1000.0]


def test_implied_pairs_cover_every_ordered_pair_in_both_orders():
    scores = [0.2, 0.9, 0.5]  # ranking: y (0.9), z (0.5), x (0.2)
    pairs = implied_pairs("Which is best?", ["x", "y", "z"], scores)
    assert {(p.a, p.b, p.target) for p in pairs} == {
        ("y", "z", 1.0),
        ("z", "y", 0.0),
        ("y", "x", 1.0),
        ("x", "y", 0.0),
        ("z", "x", 1.0),
        ("x", "z", 0.0),
    }  # n (n - 1) = 6 ordered pairs
    assert all(not p.negated for p in pairs)
    one_order = implied_pairs("q", ["x", "y", "z"], scores, both_orders=False)
    assert {(p.a, p.b) for p in one_order} == {("y", "z"), ("y", "x"), ("z", "x")}
    negated = implied_pairs("q", ["x", "y", "z"], scores, negated=True)
    assert len(negated) == 12
    # under "which is worse?" the better item first is the wrong answer: target 0
    assert JudgeLabel("q", "y", "x", 0.0, True) in negated
    assert JudgeLabel("q", "x", "y", 1.0, True) in negated


def test_tied_scores_imply_no_pair():
    pairs = implied_pairs("q", ["a", "b", "c"], [0.5, 0.5, 0.1])
    # a ~ b: no pair between them; a > c and b > c in both orders: 4 labels
    assert sorted((p.a, p.b) for p in pairs) == [("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")]


def test_repair_turns_a_cycle_into_a_consistent_order():
    # a rock-paper-scissors judge with one stronger opinion: 0 > 1 (0.9), 1 > 2 (0.6), 2 > 0 (0.6)
    labels = [(0, 1, 0.9), (1, 2, 0.6), (2, 0, 0.6)]
    # win rates: item 0 = (0.9 + 0.4) / 2 = 0.65, item 1 = (0.1 + 0.6) / 2 = 0.35, item 2 = (0.4 + 0.6) / 2 = 0.5
    result = repair("q", ["r", "p", "s"], labels)
    assert result.scores == pytest.approx([0.65, 0.35, 0.5])
    assert result.order == [0, 2, 1]
    better = {(p.a, p.b) for p in result.pairs if p.target == 1.0}
    assert better == {("r", "s"), ("r", "p"), ("s", "p")}  # transitive: no cycle left


@pytest.mark.parametrize(
    "labels",
    [[(0, 3, 1.0)], [(0, 0, 1.0)], [(-1, 0, 1.0)], [(0, 1, 1.5)], [(0, 1, -0.1)]],
)
def test_hostile_labels_are_refused(labels):
    with pytest.raises(SelfEvolveError):
        win_loss(2, labels)


def test_bad_arguments_are_refused():
    with pytest.raises(SelfEvolveError, match="unknown aggregator"):
        aggregate(2, [], "borda")
    with pytest.raises(SelfEvolveError, match="one score per item"):
        implied_pairs("q", ["a", "b"], [1.0])
    with pytest.raises(SelfEvolveError, match="at least one item"):
        win_loss(0, [])
    with pytest.raises(SelfEvolveError, match="rounds"):
        elo(2, [], rounds=0)


def test_judge_labels_ask_every_ordered_pair_once():
    asked = []

    def shorter(question, a, b, *, negated=False):
        asked.append((a, b))
        return 1.0 if len(a) < len(b) else 0.0

    labels = judge_labels(CallableJudge(shorter), "q", ["aaa", "a", "aa"])
    assert len(labels) == len(set(asked)) == 6  # n (n - 1) for n = 3
    assert (1, 0, 1.0) in labels and (0, 1, 0.0) in labels
    (result,) = repair_item_sets(CallableJudge(shorter), [ItemSet("q", ["aaa", "a", "aa"], None)])
    assert result.order == [1, 2, 0]  # win rates: "a" 4/4, "aa" 2/4, "aaa" 0/4
    assert len(result.pairs) == 12  # 3 pairs x 2 orders x (plain, negated): negated is on by default


def test_a_purely_position_biased_judge_implies_no_pair():
    # "always the first": every item wins all its games as first and loses all as second -> every win rate is
    # (n - 1) / (2 (n - 1)) = 0.5, a four-way tie, so REPAIR derives nothing to train on
    (result,) = repair_item_sets(
        CallableJudge(lambda q, a, b, *, negated=False: 1.0), [ItemSet("q", ["w", "x", "y", "z"], None)]
    )
    assert result.scores == [0.5] * 4 and result.pairs == []
