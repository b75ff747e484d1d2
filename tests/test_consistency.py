"""Consistency metrics on hand-built judges whose values are derived by hand in the comments."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.consistency import (
    ConsistencyConfig,
    bootstrap_ci,
    commutativity_units,
    is_transitive,
    load_item_sets,
    measure_consistency,
    negation_units,
    transitivity_units,
    verdicts,
)
from selfevolve.judges.pairwise import CachedJudge, CallableJudge
from selfevolve.records import ItemSet

NUMBERS = ItemSet("Which number is larger?", ["3", "17", "8", "42", "1", "25"], [3, 17, 8, 42, 1, 25], "n")


def total_order(question, a, b, *, negated):
    """Follows the numeric order exactly, and negates properly."""
    better = float(int(a) > int(b))
    return 1.0 - better if negated else better


def always_first(question, a, b, *, negated):
    return 1.0


BEATS = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}


def rock_paper_scissors(question, a, b, *, negated):
    """rock > scissors > paper > rock; dynamite beats all three."""
    better = float(a == "dynamite" or (a, b) in BEATS)
    return 1.0 - better if negated else better


def measure(fn, sets, **config):
    return measure_consistency(CallableJudge(fn), sets, ConsistencyConfig(**config), progress=False)


def test_a_total_order_judge_scores_one_on_everything():
    report = measure(total_order, [NUMBERS])
    for name in ("s_tran", "s_comm", "s_neg", "gold_agreement"):
        metric = report.metrics[name]
        assert (metric.value, metric.low, metric.high, metric.n_invalid) == (1.0, 1.0, 1.0, 0)
    # 6 items: 30 ordered pairs asked, and 30 negated ones; C(6,5) = 6 subsets, all <= 200, so all scored
    assert report.calls == 60 and report.invalid == 0
    assert (
        report.metrics["s_tran"].n == 6
        and report.metrics["s_comm"].n == 15
        and report.metrics["s_neg"].n == 30
    )
    assert report.metrics["s_comm"].calls == 30 and report.metrics["s_neg"].calls == 60
    assert report.metrics["gold_agreement"].n == 15


def test_an_always_first_judge_has_no_commutativity_and_no_negation_invariance():
    report = measure(always_first, [NUMBERS])
    # (i, j) -> first better, (j, i) -> first better: the opposite never holds, so every pair fails
    assert report.metrics["s_comm"].value == 0.0 and report.metrics["s_comm"].high == 0.0
    # "worse" also picks the first, the same as "better" rather than its opposite
    assert report.metrics["s_neg"].value == 0.0
    # order-averaged preference (1 + 1 - 1) / 2 = 0.5 on every pair: all ties, a consistent (flat) order; the
    # tie earns half credit against gold
    assert report.metrics["s_tran"].value == 1.0 and report.metrics["gold_agreement"].value == 0.5
    assert report.tie_rate == 1.0 and measure(total_order, [NUMBERS]).tie_rate == 0.0
    # with one order only, P[i, j] = 1 for i < j is the total order by position: transitive, and against gold
    # it is right exactly on the pairs whose lower-index item has the larger number: 3<17 no, 3<8 no, 3<42 no,
    # 3>1 yes, 3<25 no, 17>8 yes, 17<42 no, 17>1 yes, 17<25 no, 8<42 no, 8>1 yes, 8<25 no, 42>1 yes, 42>25 yes,
    # 1<25 no -> 6 of 15
    single = measure(always_first, [NUMBERS], both_orders=False)
    assert single.metrics["s_tran"].value == 1.0 and single.metrics["gold_agreement"].value == pytest.approx(
        6 / 15
    )


def test_rock_paper_scissors_transitivity_derived_by_hand():
    rps = ItemSet("Which wins?", ["rock", "paper", "scissors"], None, "rps")
    report = measure(rock_paper_scissors, [rps], k=3)
    # one subset of 3, {rock, paper, scissors}, and it is a cycle: s_tran(3) = 0
    assert report.metrics["s_tran"].value == 0.0 and report.metrics["s_tran"].n == 1
    assert report.metrics["s_comm"].value == 1.0 and report.metrics["s_neg"].value == 1.0
    assert "gold_agreement" not in report.metrics  # no gold: absent, not scored
    assert any("without gold" in note for note in report.notes)
    four = ItemSet("Which wins?", ["rock", "paper", "scissors", "dynamite"], None, "rps4")
    report = measure(rock_paper_scissors, [four], k=3)
    # C(4, 3) = 4 subsets: {rock, paper, scissors} is the cycle; each of the other three holds dynamite, which
    # beats both others, and the remaining pair is decided (e.g. paper > rock): a total order. s_tran(3) = 3/4
    assert report.metrics["s_tran"].value == 0.75 and report.metrics["s_tran"].n == 4
    # s_tran(4): the one 4-subset contains the cycle -> 0
    assert measure(rock_paper_scissors, [four], k=3 + 1).metrics["s_tran"].value == 0.0


def test_ties_enter_transitivity_as_equal_items():
    # v[i, j] = +1: i better; 0: tie
    a_gt_b_eq_c_eq_a = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 0]])  # a > b, b = c, c = a -> b = a: cycle
    assert not is_transitive(a_gt_b_eq_c_eq_a)
    all_equal = np.zeros((3, 3))
    assert is_transitive(all_equal)
    a_gt_b_eq_c_a_gt_c = np.array([[0, 1, 1], [-1, 0, 0], [-1, 0, 0]])
    assert is_transitive(a_gt_b_eq_c_a_gt_c)
    assert not is_transitive(np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]]))  # a > b > c > a
    np.testing.assert_array_equal(verdicts(np.array([0.5, 0.55, 0.45, 0.9, np.nan]), 0.05)[:4], [0, 0, 0, 1])
    assert math.isnan(verdicts(np.array([np.nan]))[0])
    # s_comm: a tie both ways is consistent, a tie one way and a preference the other is not
    prefs = np.array([[np.nan, 0.5, 0.5], [0.5, np.nan, 1.0], [0.9, 1.0, np.nan]])
    units, invalid = commutativity_units(prefs)
    assert units == [1.0, 0.0, 0.0] and invalid == 0  # {0,1} tie/tie; {0,2} tie/+1; {1,2} +1/+1
    negated = np.array([[np.nan, 0.5, 0.0], [0.5, np.nan, 0.0], [np.nan, 0.0, np.nan]])
    units, invalid = negation_units(prefs, negated)
    # (0,1) tie/tie ok; (0,2) tie/-1 no; (1,0) ok; (1,2) +1/-1 ok; (2,0) nan invalid; (2,1) +1/-1 ok
    assert units == [1.0, 0.0, 1.0, 1.0, 1.0] and invalid == 1


def test_invalid_verdicts_are_counted_never_scored():
    def partly_garbage(question, a, b, *, negated):
        return "no idea" if "1" in (a, b) else total_order(question, a, b, negated=negated)

    judge = CachedJudge(CallableJudge(partly_garbage))
    report = measure_consistency(judge, [NUMBERS], ConsistencyConfig(), progress=False)
    # item "1" is in 5 of the 15 unordered pairs (10 ordered, 10 negated): 20 invalid verdicts out of 60
    assert report.invalid == 20 and judge.invalid == 20
    assert report.metrics["s_comm"].n == 10 and report.metrics["s_comm"].n_invalid == 5
    assert report.metrics["s_neg"].n == 20 and report.metrics["s_neg"].n_invalid == 10
    # the 5-subsets without "1": only {3, 17, 8, 42, 25} -> 1 scored, 5 invalid
    assert report.metrics["s_tran"].n == 1 and report.metrics["s_tran"].n_invalid == 5
    assert all(m.value == 1.0 for m in report.metrics.values())


def test_every_ordered_pair_is_asked_once_across_metrics_and_repeats():
    judge = CachedJudge(CallableJudge(total_order))
    measure_consistency(judge, [NUMBERS], ConsistencyConfig(negation=False), progress=False)
    assert judge.calls == 30
    again = measure_consistency(judge, [NUMBERS], ConsistencyConfig(), progress=False)
    assert judge.calls == 60 and again.calls == 30 and "s_neg" in again.metrics


def test_subsets_are_all_of_them_or_a_distinct_sample():
    eight = np.zeros((8, 8))
    units, _, needed = transitivity_units(eight, 5)
    assert len(units) == math.comb(8, 5) == 56 and len(needed) == 56  # every ordered pair needed
    units, _, _ = transitivity_units(eight, 5, subsets=10, rng=np.random.default_rng(1))
    assert len(units) == 10


def test_bootstrap_interval():
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0, 1.0)
    mean, low, high = bootstrap_ci([0.0, 1.0] * 20, seed=3)
    assert mean == 0.5 and low < 0.5 < high and low > 0.3 and high < 0.7
    assert bootstrap_ci([]) == (None, None, None)


def test_fewer_than_k_items():
    small = ItemSet("Which number is larger?", ["1", "2", "3"], [1, 2, 3], "small")
    with pytest.raises(SelfEvolveError, match=r"no item set has k=5 items .*largest has 3.*--k"):
        measure(total_order, [small])
    report = measure(total_order, [small, NUMBERS])
    assert report.metrics["s_tran"].n == 6 and report.metrics["s_comm"].n == 3 + 15
    assert any("fewer than k=5" in note for note in report.notes)
    for bad in ({"k": 2}, {"tie_margin": 0.5}, {"subsets": 0}, {"confidence": 1.0}):
        with pytest.raises(SelfEvolveError):
            ConsistencyConfig(**bad)
    with pytest.raises(SelfEvolveError, match="no item sets"):
        measure(total_order, [])


def test_a_judge_out_of_range_is_an_error():
    with pytest.raises(SelfEvolveError, match=r"outside \[0, 1\]"):
        measure(lambda q, a, b, *, negated: 7, [NUMBERS])


def write(tmp_path, lines):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_load_item_sets_and_hostile_lines(tmp_path):
    good = {"question": "Which is larger?", "items": ["1", "2"], "gold": [1, 2]}
    sets = load_item_sets(write(tmp_path, [good, "", {"question": "Q", "items": ["a", "b", "c"], "id": "x"}]))
    assert sets[0] == ItemSet("Which is larger?", ["1", "2"], [1.0, 2.0], "line1")
    assert sets[1].gold is None and sets[1].id == "x"
    bad_lines = {
        "not valid JSON": "{oops",
        "not a JSON object": "[1, 2]",
        "non-empty string 'question'": {"items": ["a", "b"]},
        "list of non-empty strings": {"question": "Q", "items": "ab"},
        "at least 2 items": {"question": "Q", "items": ["a"]},
        "repeats an item": {"question": "Q", "items": ["a", "a"]},
        "one finite number per item": {"question": "Q", "items": ["a", "b"], "gold": [1]},
    }
    for message, line in bad_lines.items():
        with pytest.raises(SelfEvolveError, match=f"line 2.*{message}|line 2: {message}"):
            load_item_sets(write(tmp_path, [good, line]))
    for gold in ("[1, NaN]", "[true, false]", '["1", "2"]', "[1, Infinity]"):
        with pytest.raises(SelfEvolveError, match=r"line 1.*finite number"):
            load_item_sets(write(tmp_path, ['{"question": "Q", "items": ["a", "b"], "gold": ' + gold + "}"]))
    with pytest.raises(SelfEvolveError, match="repeats an earlier"):
        load_item_sets(write(tmp_path, [{**good, "id": "a"}, {**good, "id": "a"}]))
    with pytest.raises(SelfEvolveError, match="no item sets"):
        load_item_sets(write(tmp_path, [""]))
    with pytest.raises(SelfEvolveError, match="not found"):
        load_item_sets(tmp_path / "missing.jsonl")


def test_metrics_match_a_brute_force_count_on_a_random_judge():
    rng = np.random.default_rng(0)
    prefs = rng.random((6, 6))
    np.fill_diagonal(prefs, np.nan)
    units, _, _ = transitivity_units(prefs, 3, both_orders=False)
    # brute force: a 3-subset (i < j < k) decided by P[i, j] etc. is intransitive iff it is a directed 3-cycle
    cyclic = 0
    for i, j, k in itertools.combinations(range(6), 3):
        ij, jk, ik = prefs[i, j] > 0.5, prefs[j, k] > 0.5, prefs[i, k] > 0.5
        cyclic += (ij and jk and not ik) or (not ij and not jk and ik)
    assert sum(units) == 20 - cyclic


def test_the_loop_step_measures_the_current_model_as_a_judge(tmp_path, tiny_llama):
    import yaml

    from selfevolve.judges.pairwise import LogprobJudge
    from selfevolve.loop import STEPS, evolve
    from selfevolve.loop.state import LoopState
    from selfevolve.store import ExperienceStore

    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"question": NUMBERS.question, "items": NUMBERS.items, "gold": NUMBERS.gold}) + "\n"
    )
    step = STEPS["judge_consistency"](items=str(items), consistency=ConsistencyConfig(k=4))
    state = LoopState(model=tiny_llama, iteration=0, store=None, run_id="", run_dir=tmp_path, seed=0)
    result = step.run(state)
    expected = measure_consistency(
        LogprobJudge(tiny_llama), [NUMBERS], ConsistencyConfig(k=4), progress=False
    )
    assert set(result.metrics) == {"s_tran", "s_comm", "s_neg", "gold_agreement", "invalid_rate"}
    for name, metric in expected.metrics.items():
        assert result.metrics[name] == pytest.approx(metric.value)
    assert result.metrics["invalid_rate"] == 0.0 and result.summary["calls"] == 60
    no_gold = tmp_path / "no_gold.jsonl"
    no_gold.write_text(json.dumps({"question": "Q", "items": ["a", "b", "c"]}) + "\n")
    verdict = STEPS["judge_consistency"](
        items=str(no_gold), kind="verdict", consistency=ConsistencyConfig(k=3)
    )
    metrics = verdict.run(state).metrics
    assert math.isnan(metrics["gold_agreement"]) and 0.0 <= metrics["invalid_rate"] <= 1.0
    default = STEPS["judge_consistency"]()  # generated number sets: no file needed
    assert default.items == "numbers:4:0"
    with pytest.raises(SelfEvolveError, match="does not exist"):
        STEPS["judge_consistency"](items=str(tmp_path / "missing.jsonl"))
    with pytest.raises(SelfEvolveError, match="kind"):
        STEPS["judge_consistency"](items=str(items), kind="pointwise")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n")
    with pytest.raises(SelfEvolveError, match="line 1"):
        STEPS["judge_consistency"](items=str(broken))

    # in a run: the base model (iteration 0) is measured, and its scores are stored by name
    config = {
        "model": "tiny-random-llama",
        "out": str(tmp_path / "run"),
        "iterations": 0,
        "selection_metric": "judge_consistency.s_comm",
        "evaluate": [
            {"step": "judge_consistency", "items": str(items), "consistency": {"k": 4, "subsets": 5}}
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    evolve(path)
    store = ExperienceStore(tmp_path / "run" / "store.sqlite")
    (run,) = store.runs()
    scores = {s.metric: s.value for s in store.scores(run.id, step="judge_consistency")}
    store.close()
    assert scores["s_comm"] == pytest.approx(expected.metrics["s_comm"].value)


def test_generated_number_sets_have_an_exact_gold_order():
    from selfevolve.evaluate.consistency import item_sets_from, number_item_sets

    sets = item_sets_from("numbers:3:7")
    assert len(sets) == 3 and sets == number_item_sets(3, 7)
    for item_set in sets:
        assert len(set(item_set.items)) == 5 and item_set.gold == [float(t) for t in item_set.items]
    report = measure(total_order, sets)
    assert report.metrics["gold_agreement"].value == 1.0 and report.metrics["s_tran"].value == 1.0
    with pytest.raises(SelfEvolveError):
        number_item_sets(0)
