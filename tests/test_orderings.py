"""Item sets with gold orderings: temporal events, implementations ranked by tests passed, HH pairs, JSONL."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from selfevolve.acquire.orderings import (
    TEMPORAL_QUESTION,
    correctness_item_sets,
    dated_events,
    hh_item_sets,
    passed_shares,
    temporal_item_sets,
    write_item_sets,
)
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.consistency import load_item_sets
from selfevolve.records import ItemSet, Problem

ADD = Problem(
    task_id="Toy/0",
    prompt='def add(a, b):\n    """Add two numbers."""\n',
    entry_point="add",
    canonical_solution="    return a + b\n",
    test=(
        "def check(candidate):\n"
        "    assert candidate(1, 2) == 3\n"
        "    assert candidate(0, 0) == 0\n"
        "    assert candidate(2, 2) == 4\n"
        "    assert candidate(-1, 1) == 0\n"
    ),
)


def test_temporal_sets_have_distinct_years_and_gold_minus_year():
    sets = temporal_item_sets(3, 5, seed=0)
    assert len(sets) == 3
    for item_set in sets:
        assert item_set.question == TEMPORAL_QUESTION
        years = [int(re.search(r"in (\d{4})\.$", text)[1]) for text in item_set.items]
        assert item_set.gold == [-float(y) for y in years]  # the earliest event has the highest gold
        assert len(set(years)) == 5
    assert temporal_item_sets(3, 5, seed=0) == sets  # deterministic
    held_out = temporal_item_sets(3, 5, seed=1)
    assert not {t for s in sets for t in s.items} & {t for s in held_out for t in s.items}


def test_dated_events_are_the_births_and_foundings():
    # fictional sets cycle person, organisation, place: each has exactly one dated fact
    events = dated_events(6, seed=0)
    assert len(events) == 6
    assert [text.split()[-3] for text, _ in events] == ["born", "founded", "founded"] * 2
    assert all(text.endswith(f"in {year}.") for text, year in events)


def test_temporal_refuses_impossible_sizes():
    with pytest.raises(SelfEvolveError, match="distinct years"):
        temporal_item_sets(1, 5, num_documents=3)
    with pytest.raises(SelfEvolveError, match="items_per_set"):
        temporal_item_sets(1, 1)


def test_passed_shares_count_each_assert():
    completions = [
        "    return a + b\n",  # passes all 4
        "    return a * b\n",  # 1*2=2 (no), 0*0=0 (yes), 2*2=4 (yes), -1*1=-1 (no): 2/4
        "    return a - b\n",  # -1 (no), 0 (yes), 0 (no), -2 (no): 1/4
        "    raise AssertionError('selfevolve-share 4/4')\n",  # every call raises: 0/4, the forged text is data
        "    while True:\n        pass\n",  # times out: 0
    ]
    assert passed_shares(ADD, completions, timeout_s=2.0) == [1.0, 0.5, 0.25, 0.0, 0.0]


def test_correctness_sets_rank_canonical_above_its_mutants():
    # the mutants of `return a + b` (only wrong_return applies: no comparison, constant, branch or
    # non-commutative operator) are `return a` (only add(0, 0) passes: 1/4) and `return None` (0/4);
    # with the canonical solution (4/4) that is three distinct shares.
    (item_set,) = correctness_item_sets([ADD], 3, timeout_s=2.0)
    assert sorted(item_set.gold) == [0.0, 0.25, 1.0]
    assert item_set.items[item_set.gold.index(1.0)].strip() == "return a + b"
    assert item_set.items[item_set.gold.index(0.25)].strip() == "return a"
    assert "def add(a, b)" in item_set.question
    assert correctness_item_sets([ADD], 4, timeout_s=2.0) == []  # only three distinct shares exist


def test_hh_sets_hold_the_two_final_replies(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."},
        {
            "chosen": "\n\nHuman: a\n\nAssistant: x",
            "rejected": "\n\nHuman: b\n\nAssistant: y",
        },  # differ early
    ]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    (item_set,) = hh_item_sets(path, 1)
    assert "Human: hi" in item_set.question
    assert dict(zip(item_set.items, item_set.gold)) == {"Hello!": 1.0, "Go away.": 0.0}
    with pytest.raises(SelfEvolveError, match="usable pairs"):
        hh_item_sets(path, 2)


def test_item_sets_round_trip(tmp_path):
    sets = [ItemSet("q", ["a", "b"], [1.0, 0.0], "s1"), ItemSet("q2", ["x", "y", "z"], None, "s2")]
    path = write_item_sets(tmp_path / "sets.jsonl", sets)
    assert load_item_sets(path) == sets  # the judge-consistency reader


def test_missing_files_are_refused(tmp_path):
    with pytest.raises(SelfEvolveError, match="does not exist"):
        hh_item_sets(tmp_path / "nope.jsonl", 1)
