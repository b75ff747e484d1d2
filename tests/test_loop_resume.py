"""Crash safety: ``kill -9`` a loop during acquire, training and evaluation; each resume must end exactly where
an uninterrupted run with the same seed ends (same store rows, same scores, same shipped weights)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

CONFIG = {
    "model": "tiny-random-llama",
    "iterations": 2,
    "seed": 3,
    "acquire": [
        {"step": "fictional_documents", "count": 2},
        {
            "step": "synthesize_qa",
            "questions_per_document": 3,
            "statements_per_document": 3,
            "max_new_tokens": 24,
        },
    ],
    "refine": [{"step": "grounding_filter"}],
    "update": [{"step": "selfparam", "train": {"epochs": 3, "batch_size": 2}}],
    "evaluate": [
        {"step": "heldout_qa", "questions": "fictional:2:0", "max_new_tokens": 16},
        {"step": "retention", "max_new_tokens": 16, "max_tokens": 128},
    ],
}
# (iteration, phase, step) to kill in: one acquire, one training and one evaluation step.
TARGETS = [(1, "acquire", "synthesize_qa"), (1, "update", "selfparam"), (2, "evaluate", "retention")]
RUNNER = """
import sys
from selfevolve.loop import evolve

evolve(sys.argv[1], out=sys.argv[2], on_event=lambda e: print(e.kind, e.iteration, e.phase, e.step, flush=True))
"""


def launch(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(config), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def snapshot(run: Path) -> dict:
    """Everything a run produced that must not depend on crashes: rows, scores, decisions, weights."""
    raw = sqlite3.connect(run / "store.sqlite")
    queries = {
        "experiences": "SELECT id, iteration, phase, step, task, prompt, response, score, parent_id, model_revision,"
        " feedback, metadata FROM experiences ORDER BY id",
        "decisions": "SELECT experience_id, iteration, phase, step, kept, reason FROM decisions ORDER BY id",
        "scores": "SELECT iteration, phase, step, metric, value, model_revision FROM scores ORDER BY 1, 3, 4",
        "iterations": "SELECT iteration, accepted, reason, model_revision, best_iteration, result FROM iterations",
        "steps": "SELECT iteration, phase, step, model_revision, json_remove(result, '$.seconds') FROM steps ORDER BY 1",
    }
    data = {name: raw.execute(sql).fetchall() for name, sql in queries.items()}
    raw.close()
    data["weights"] = load_file(run / "model" / "model.safetensors")
    return data


def done(run: Path, target: tuple[int, str, str]) -> bool:
    raw = sqlite3.connect(run / "store.sqlite")
    found = raw.execute(
        "SELECT 1 FROM steps WHERE iteration = ? AND phase = ? AND step = ?", target
    ).fetchone()
    raw.close()
    return found is not None


def crash(config: Path, crashed: Path, durations: dict, rng: random.Random, scale: float) -> list | None:
    """Kill a run inside each target step in turn, at a random share of the step's uninterrupted duration;
    the kills made, or None when a step had already finished when its kill landed."""
    kills = []
    for target in TARGETS:
        process = launch(config, crashed)
        wanted = " ".join(map(str, ("start", *target)))
        for line in process.stdout:
            if line.strip() == wanted:
                break
        else:
            pytest.fail(f"the run finished without starting {target}")
        delay = rng.uniform(0.1, 0.6) * scale * durations[target]
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        if done(crashed, target):
            return None
        kills.append((target, round(delay, 3)))
    return kills


@pytest.mark.timeout(900)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_during_acquire_training_and_evaluation_then_resume_equals_an_uninterrupted_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "out": str(tmp_path / "unused")}))
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert launch(config, straight).wait(timeout=300) == 0
    expected = snapshot(straight)
    raw = sqlite3.connect(straight / "store.sqlite")
    durations = {
        (i, p, s): json.loads(r)["seconds"]
        for i, p, s, r in raw.execute("SELECT iteration, phase, step, result FROM steps")
    }
    raw.close()

    rng = random.Random()
    for attempt in range(4):  # a busy machine can finish a step before its kill: retry with earlier kills
        shutil.rmtree(crashed, ignore_errors=True)
        kills = crash(config, crashed, durations, rng, scale=0.5**attempt)
        if kills is not None:
            break
    else:
        pytest.fail("every attempt's kill landed after its step had finished")
    assert launch(config, crashed).wait(timeout=300) == 0

    resumed = snapshot(crashed)
    for name in ("experiences", "decisions", "scores", "iterations", "steps"):
        assert resumed[name] == expected[name], f"{name} differ after kills {kills}"
    assert resumed["weights"].keys() == expected["weights"].keys()
    assert all(torch.equal(resumed["weights"][k], expected["weights"][k]) for k in expected["weights"]), kills
    ids = [row[0] for row in resumed["experiences"]]
    assert len(ids) == len(set(ids)) and ids == list(range(1, len(ids) + 1))  # no duplicate, no gap
    trained = [r for r in resumed["decisions"] if r[2] == "update"]
    assert trained and any(json.loads(r[4]).get("losses") for r in resumed["steps"])  # training did happen
