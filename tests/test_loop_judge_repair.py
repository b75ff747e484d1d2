"""REPAIR in the loop: judge_repair stores the implied pairs of a judge's ranking, judge_tuning trains on them."""

from __future__ import annotations

import re

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.loop.state import LoopState
from selfevolve.loop.steps import STEPS
from selfevolve.loop.steps.refine import JUDGE_PAIR, JudgeRepair, item_sets_from
from selfevolve.loop.steps.update import JudgeTuning
from selfevolve.runtime import load_model
from selfevolve.store import ExperienceStore
from selfevolve.update.training import TrainingConfig

ORACLE = """
import re

def earlier(question, a, b, *, negated=False):
    ya, yb = (int(re.search(r"(\\d{4})\\.$", t)[1]) for t in (a, b))
    first = 1.0 if ya < yb else 0.0
    return 1.0 - first if negated else first
"""


@pytest.fixture
def oracle(tmp_path, monkeypatch):
    (tmp_path / "oracle_judge_16b.py").write_text(ORACLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "oracle_judge_16b:earlier"


def _year(text: str) -> int:
    return int(re.search(r"(\d{4})\.$", text)[1])


def test_steps_are_registered():
    assert STEPS["judge_repair"] is JudgeRepair and STEPS["judge_tuning"] is JudgeTuning
    assert JudgeRepair().items == "temporal:8:5:0"  # usable with its defaults


def test_repair_then_tuning(tmp_path, oracle):
    model = load_model("tiny-random-llama", seed=0)
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        state = LoopState(model, 1, store, store.start_run("judge"), tmp_path, seed=0)
        result = JudgeRepair(items="temporal:2:4:0", judge=oracle).run(state)
        # 2 sets of 4 items: C(4, 2) = 6 ordered-by-ranking pairs, x2 orders, x2 (plain and negated) = 24 each
        assert len(result.experiences) == 48 and result.summary["pairs"] == 48
        assert result.summary["ranking_spearman"] == pytest.approx(1.0)  # the oracle's ranking is gold's
        for e in result.experiences:
            earlier = _year(e.metadata["a"]) < _year(e.metadata["b"])
            assert e.metadata["target"] == float(earlier != e.metadata["negated"])
        store.record_step(state.run_id, 1, "refine", "judge_repair", experiences=result.experiences)
        before = [p.detach().clone() for p in model.model.parameters()]
        config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-2)
        tuned = JudgeTuning(train=config).run(state)
        assert tuned.model is not None and tuned.model is not model
        assert len(tuned.decisions) == 48 and all(d.kept for d in tuned.decisions)
        assert len(tuned.losses) == 3  # ceil(48 / 16) steps
        # the update trained a copy: the current model is untouched, the new one differs
        assert all(torch.equal(a, p) for a, p in zip(before, model.model.parameters()))
        assert any(not torch.equal(a, p) for a, p in zip(before, tuned.model.model.parameters()))


def test_tuning_without_pairs_skips(tmp_path):
    model = load_model("tiny-random-llama", seed=0)
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        state = LoopState(model, 1, store, store.start_run("judge"), tmp_path, seed=0)
        assert JudgeTuning().run(state).summary == {"skipped": "no kept judge-pair label to train on"}
    assert JUDGE_PAIR == "judge-pair"


def test_item_sets_from_files(tmp_path):
    path = tmp_path / "sets.jsonl"
    path.write_text('{"question": "q", "items": ["a", "b"], "gold": [1, 0]}\n')
    (item_set,) = item_sets_from(str(path))
    assert item_set.items == ["a", "b"] and item_set.gold == [1.0, 0.0]
    assert len(item_sets_from("temporal:3:4:1")) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"items": ""}, "needs items"),
        ({"items": "nope.jsonl"}, "does not exist"),
        ({"items": "temporal:2:4:0", "method": "borda"}, "unknown method"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(SelfEvolveError, match=message):
        JudgeRepair(**kwargs)


@pytest.mark.parametrize("spec", ["temporal:2:4", "temporal:x:4:0", "temporal:2:4:0:9"])
def test_bad_temporal_specs_are_refused(spec):
    with pytest.raises(SelfEvolveError, match="temporal:SETS:ITEMS:SEED"):
        item_sets_from(spec)


def test_a_garbage_judge_is_counted(tmp_path, monkeypatch):
    (tmp_path / "garbage_judge_16b.py").write_text("def judge(q, a, b, *, negated=False):\n    return 'A'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("tiny-random-llama", seed=0)
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        state = LoopState(model, 1, store, store.start_run("judge"), tmp_path, seed=0)
        result = JudgeRepair(items="temporal:1:3:0", judge="garbage_judge_16b:judge").run(state)
    # every verdict is invalid (6 ordered pairs): counted, and no ranking, so no pair is implied
    assert result.summary["invalid"] == 6
    assert result.experiences == []


def test_the_example_loop_runs_repair_end_to_end(tmp_path):
    from pathlib import Path

    from selfevolve.loop import evolve

    example = Path(__file__).resolve().parents[1] / "examples" / "judge-repair-loop.yaml"
    summary = evolve(
        example,
        out=tmp_path / "run",
        overrides=["model=tiny-random-llama", "refine.judge_repair.items=temporal:1:3:0"],
    )
    base, first = summary.iterations
    assert first.iteration == 1
    assert "judge_consistency.s_comm" in base.result["scores"]
    with ExperienceStore(tmp_path / "run" / "store.sqlite") as store:
        pairs = store.query(run_id=summary.run_id, iteration=1, task=JUDGE_PAIR)
        trained = store.step_record(summary.run_id, 1, "update", "judge_tuning").result["summary"]
    # the tiny judge's ranking of 3 items: 3 pairs x 2 orders x (plain, negated) = 12 labels, all trained on
    assert len(pairs) == 12 and trained["examples"] == 12
