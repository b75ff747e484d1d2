"""The instruction-hierarchy loop steps on a tiny random model: data acquired and stored, trained on, attacked."""

from __future__ import annotations

import yaml

from selfevolve.attacks import build_attacks, write_attacks
from selfevolve.loop import evolve
from selfevolve.store import ExperienceStore

COUNTS = {"synthesis": 1, "ignorance": 2, "extraction": 1, "jailbreak": 0, "lookalike": 1, "ordinary": 1}


def test_hierarchy_steps_in_a_loop_run(tmp_path):
    heldout = build_attacks(("heldout",), per_family=1)
    attacks = write_attacks(
        heldout[:4] + heldout[-2:], tmp_path / "attacks.jsonl"
    )  # 4 attacks, 2 look-alikes
    config = {
        "model": "tiny-random-qwen2",
        "out": str(tmp_path / "run"),
        "iterations": 1,
        "selection_metric": "hierarchy_robustness.robustness",
        "guards": [{"metric": "hierarchy_robustness.compliance", "max_decrease": 1.0, "relative": False}],
        "acquire": [{"step": "hierarchy_data", "data": {**COUNTS, "max_new_tokens": 4}}],
        "update": [{"step": "hierarchy_sft", "train": {"epochs": 1}}],
        "evaluate": [{"step": "hierarchy_robustness", "attacks": str(attacks), "max_new_tokens": 4}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    evolve(path)
    store = ExperienceStore(tmp_path / "run" / "store.sqlite")
    (run,) = store.runs()
    data = store.query(run_id=run.id, iteration=1, task="hierarchy")
    trained = [d for d in store.decisions(run.id, iteration=1) if d.kept and d.reason == "trained on"]
    attacked = store.query(run_id=run.id, iteration=1, task="ih-attack")
    scores = {(s.iteration, s.metric): s.value for s in store.scores(run.id, step="hierarchy_robustness")}
    store.close()
    assert len(data) == 6 and {e.metadata["kind"] for e in data} == {
        "synthesis",
        "ignorance",
        "refusal",
        "lookalike",
        "ordinary",
    }
    assert {d.experience_id for d in trained} == {e.id for e in data}  # every example was trained on
    assert len(attacked) == 6 and all(e.score in (0.0, 1.0) for e in attacked)
    assert {(0, "robustness"), (1, "robustness"), (0, "compliance"), (1, "compliance")} <= set(scores)
