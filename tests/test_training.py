"""The shared training layer: a failed run leaves the model as it was; a recipe can drive a session itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime import load_model
from selfevolve.update.training import TrainingConfig, train, trainable

ROOT = Path(__file__).resolve().parents[1]
PROMPT = torch.tensor([[5, 17, 42, 99, 3, 64]])


def logits(lm) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=PROMPT).logits  # (1, T, V)


def lm_loss(student, batch):
    """Next-token cross-entropy of each example (a list of ids), summed over the batch."""
    ids = torch.tensor(batch)  # (B, T)
    out = student.model(input_ids=ids, labels=ids)
    return out.loss, ids.numel()


EXAMPLES = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]]


def failing_at(step: int):
    """A step loss that works until it has been called ``step - 1`` times, then raises."""
    calls = []

    def loss(student, batch):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("boom")
        return lm_loss(student, batch)

    return loss


@pytest.mark.parametrize("lora", [True, False])
def test_an_error_mid_training_leaves_the_model_as_it_was(lora):
    lm = load_model("tiny-random-llama", seed=0)
    module = lm.model
    frozen = next(iter(module.parameters()))
    frozen.requires_grad_(False)  # a flag the caller chose must survive the failed run
    flags = [p.requires_grad for p in module.parameters()]
    before = logits(lm)
    # Full fine-tuning fails before its first optimizer step (steps taken would stay in the weights);
    # LoRA fails at step 2, after one adapter update that must not leak into the weights.
    config = TrainingConfig(epochs=2, batch_size=2, lora=lora)
    with pytest.raises(RuntimeError, match="boom"):
        train(lm, EXAMPLES, failing_at(2 if lora else 1), config)
    assert lm.model is module and not module.training
    assert not any("lora" in name for name, _ in module.named_modules())
    assert [p.requires_grad for p in module.parameters()] == flags
    torch.testing.assert_close(logits(lm), before, rtol=0, atol=0)


def test_a_diverged_loss_is_an_error_and_restores_the_model():
    lm = load_model("tiny-random-llama", seed=0)
    before = logits(lm)

    def nan_loss(student, batch):
        loss, tokens = lm_loss(student, batch)
        return loss * float("nan"), tokens

    with pytest.raises(SelfEvolveError, match="diverged at step 1"):
        train(lm, EXAMPLES, nan_loss, TrainingConfig(epochs=1, batch_size=3))
    assert not any("lora" in name for name, _ in lm.model.named_modules())
    torch.testing.assert_close(logits(lm), before, rtol=0, atol=0)


def test_a_recipe_that_is_not_a_per_batch_loss_drives_a_session():
    # PPO's shape: several optimizer steps on one batch of rollouts. Two steps on one example, then merged.
    lm = load_model("tiny-random-llama", seed=0)
    before = logits(lm)
    config = TrainingConfig(lora=True, learning_rate=1e-2, warmup_ratio=0.0)
    losses = []
    with trainable(lm, config, total_steps=2) as session:
        for step in (1, 2):
            shard, real = session.shard(EXAMPLES[:1])
            loss, tokens = lm_loss(session.student, shard)
            losses.append(session.step(loss, step, tokens if real else 0))
    assert losses[1] < losses[0]  # the second step sees the first one's update
    assert not any("lora" in name for name, _ in lm.model.named_modules())  # merged into the weights
    assert not torch.allclose(logits(lm), before)
    assert not lm.model.training


def test_two_processes_under_accelerate_launch_train_as_one(tmp_path):
    # Each global batch is split over two gloo processes; token-weighted shards and a schedule stepped once
    # per optimizer step make the loss curve and the trained weights those of one process (up to float32).
    command = [sys.executable, "-m", "selfevolve", "bench", "distributed", "--model", "tiny-random-llama"]
    done = subprocess.run([*command, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    single, multi = json.loads((tmp_path / "distributed.json").read_text())["rows"]
    assert (single["processes"], multi["processes"]) == (1, 2)
    assert len(multi["losses"]) == len(single["losses"]) == 4  # 6 passages, batch 4: 2 steps x 2 epochs
    assert multi["max_loss_diff"] < 1e-5 and multi["max_logit_diff"] < 1e-4
