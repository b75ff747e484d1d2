"""DPO with LoRA on TRL's DPOTrainer: the loss is logged and falls, the adapter trains, the original is untouched."""

from __future__ import annotations

import torch

from selfevolve.records import PreferencePair
from selfevolve.update.dpo import DPOSettings, implicit_reward_accuracy, train_dpo


def test_dpo_learns_the_preferred_reply_and_leaves_the_model_alone(tiny_llama):
    pairs = [PreferencePair(f"Q{i}: say yes", " yes yes", " no no", i) for i in range(16)]
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    policy, losses = train_dpo(tiny_llama, pairs, DPOSettings(learning_rate=1e-2, epochs=2, batch_size=4))
    assert len(losses) == 8 and abs(losses[0] - 0.6931) < 1e-3  # step 1: policy == reference, loss = log 2
    assert losses[-1] < losses[0]
    assert implicit_reward_accuracy(policy, pairs) == 1.0
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.model.state_dict().items())
