"""Update: methods that change the weights (SELF-PARAM knowledge injection, SFT baselines, PPO and CORY RL
fine-tuning) through accelerate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    "ForwardKLLoss": "selfevolve.update.losses",
    "TopKForwardKLLoss": "selfevolve.update.losses",
    "ContinuationCrossEntropy": "selfevolve.update.losses",
    "SelfParamConfig": "selfevolve.update.selfparam",
    "InjectionResult": "selfevolve.update.selfparam",
    "inject": "selfevolve.update.selfparam",
    "inject_sequential": "selfevolve.update.selfparam",
    "build_teacher_cache": "selfevolve.update.selfparam",
    "SFTConfig": "selfevolve.update.sft",
    "finetune": "selfevolve.update.sft",
    "JudgeTuningConfig": "selfevolve.update.judge_tuning",
    "tune_judge": "selfevolve.update.judge_tuning",
    "TrainingConfig": "selfevolve.update.training",
    "TrainResult": "selfevolve.update.training",
    "train": "selfevolve.update.training",
    "save_model": "selfevolve.update.training",
    "PPOConfig": "selfevolve.update.ppo",
    "CORYConfig": "selfevolve.update.cory",
    "RLConfig": "selfevolve.update.rl",
    "RLResult": "selfevolve.update.rl",
    "run_rl": "selfevolve.update.rl",
    "merge_adapter": "selfevolve.update.rl",
    "load_task": "selfevolve.update.rewards",
}

if TYPE_CHECKING:
    from selfevolve.update.cory import CORYConfig
    from selfevolve.update.judge_tuning import JudgeTuningConfig, tune_judge
    from selfevolve.update.losses import ContinuationCrossEntropy, ForwardKLLoss, TopKForwardKLLoss
    from selfevolve.update.ppo import PPOConfig
    from selfevolve.update.rewards import load_task
    from selfevolve.update.rl import RLConfig, RLResult, merge_adapter, run_rl
    from selfevolve.update.selfparam import (
        InjectionResult,
        SelfParamConfig,
        build_teacher_cache,
        inject,
        inject_sequential,
    )
    from selfevolve.update.sft import SFTConfig, finetune
    from selfevolve.update.training import TrainingConfig, TrainResult, save_model, train

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
