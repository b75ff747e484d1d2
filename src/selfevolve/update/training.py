"""The training loop every update method shares: accelerate, optional LoRA (merged at the end), checkpoints.

A method supplies its examples and a *step loss* (a function from the student and a batch to a scalar loss and
its token count); :func:`train` does the rest. The data order of each epoch comes from ``seed`` and the epoch
number alone, so a run resumed from a checkpoint replays exactly the steps it had not taken yet.

Runs as-is on one CPU or GPU; ``accelerate launch`` spreads each global batch over the processes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.model import LocalModel

log = logging.getLogger(__name__)

StepLoss = Callable[[LocalModel, Sequence[Any]], tuple[torch.Tensor, int]]
"""``step_loss(student, batch) -> (loss, tokens)``: the scalar to minimise and how many target tokens it covered."""


@dataclass
class TrainingConfig:
    """Optimisation settings shared by every update method (nested as ``train.*`` in method configs)."""

    epochs: int = 8  # passes over the examples
    batch_size: int = 4  # examples per optimizer step (global, over all processes); small = more updates
    learning_rate: float | None = None  # AdamW peak rate; None: 2e-3 with LoRA, 3e-5 for full fine-tuning
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # share of steps with linear warmup, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    lora: bool = True  # train LoRA adapters (peft) instead of every weight
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # 0 keeps runs exactly reproducible (and resumable step for step)
    lora_targets: str = "all-linear"  # peft target_modules: "all-linear" or comma-separated module names
    merge_lora: bool = True  # fold the adapters into the weights at the end: no extra parameters remain
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # accelerate's autocast setting
    save_every: int = 0  # also checkpoint every N optimizer steps (0: only at the end of each epoch)
    seed: int = 0  # data order and LoRA initialisation

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lora_rank", "lora_alpha"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"train.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.save_every < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError(
                "train.save_every, train.max_grad_norm and train.weight_decay must not be negative"
            )

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate``, or the default for the chosen kind of training."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-3 if self.lora else 3e-5


@dataclass
class TrainResult:
    """What a training run did: steps taken (this call), tokens trained on, wall time, per-step loss and time."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    resumed_from: int = 0  # the optimizer step the run was resumed at (0: a fresh start)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def epoch_order(num_examples: int, epoch: int, seed: int) -> list[int]:
    """The example order of ``epoch``: a permutation fixed by ``seed`` and ``epoch`` only."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def _with_lora(module, config: TrainingConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    target_modules = (
        targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return get_peft_model(module, lora)
        except ValueError as err:
            raise SelfEvolveError(
                f"cannot add LoRA adapters with train.lora_targets={targets!r}: {err}; "
                "use 'all-linear' or names of linear layers such as q_proj,v_proj"
            ) from err


def _save_checkpoint(accelerator, folder: Path, step: int, total_steps: int) -> None:
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "progress.json").write_text(json.dumps({"step": step, "total_steps": total_steps}))


def _load_checkpoint(accelerator, folder: Path, total_steps: int) -> int:
    progress = json.loads((folder / "progress.json").read_text())
    if progress["total_steps"] != total_steps:
        raise SelfEvolveError(
            f"checkpoint {folder} belongs to a run of {progress['total_steps']} steps, this one has {total_steps}; "
            "resume with the same examples and config, or start afresh in another output folder"
        )
    accelerator.load_state(str(folder))
    return int(progress["step"])


def train(
    model: LocalModel,
    examples: Sequence[Any],
    step_loss: StepLoss,
    config: TrainingConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``examples`` with ``step_loss``; LoRA adapters are merged at the end.

    Args:
        model: the student. Its ``model`` attribute is replaced by the trained (merged) module.
        examples: anything ``step_loss`` understands; batched in a seeded order per epoch.
        step_loss: ``(student, batch) -> (loss, tokens)``; ``student`` is a LocalModel over the training module.
        config: optimisation settings.
        checkpoint_dir: where to save resumable state (end of each epoch, and every ``save_every`` steps);
            ``None`` saves nothing.
        resume: continue from the checkpoint in ``checkpoint_dir`` when there is one.
        on_step: called with (step, loss) after every optimizer step (progress, tests).
    """
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    if not examples:
        raise SelfEvolveError("nothing to train on: the example list is empty")
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    module = model.model
    if config.lora:
        module = _with_lora(module, config)
    else:
        module.requires_grad_(True)
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.peak_learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    student = LocalModel(
        module, model.tokenizer, name=model.name, revision=model.revision, batch_size=model.batch_size
    )

    folder = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    start = 0
    if resume and folder is not None and (folder / "progress.json").is_file():
        start = _load_checkpoint(accelerator, folder, total_steps)
        log.info("resuming from step %d of %d (%s)", start, total_steps, folder)
    result = TrainResult(resumed_from=start)
    began = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        order = epoch_order(len(examples), epoch, config.seed)
        for offset in range(0, len(order), config.batch_size):
            step += 1
            if step <= start:
                continue
            tick = time.perf_counter()
            batch = [examples[i] for i in order[offset : offset + config.batch_size]]
            shard = batch[accelerator.process_index :: accelerator.num_processes] or batch[:1]
            with accelerator.autocast():
                loss, tokens = step_loss(student, shard)
            accelerator.backward(loss)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise SelfEvolveError(
                    f"training diverged at step {step} (loss {value}); lower train.learning_rate or use mixed_precision=no"
                )
            result.steps += 1
            result.tokens += tokens
            result.losses.append(value)
            result.step_seconds.append(time.perf_counter() - tick)
            if on_step is not None:
                on_step(step, value)
            if folder is not None and config.save_every and step % config.save_every == 0:
                _save_checkpoint(accelerator, folder, step, total_steps)
        if folder is not None and step > start:
            _save_checkpoint(accelerator, folder, step, total_steps)
    result.seconds = time.perf_counter() - began
    trained = accelerator.unwrap_model(module)
    if config.lora and config.merge_lora:
        trained = trained.merge_and_unload()
    trained.eval()
    model.model = trained
    return result


def save_model(model: LocalModel, out_dir: str | Path) -> Path:
    """Write a model folder that :func:`~selfevolve.runtime.loading.load_model` reads (weights + tokenizer).

    With ``train.merge_lora=false`` the model is still a peft model and this writes only its adapter
    (load it with ``peft.PeftModel.from_pretrained`` over the base model).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    return out


def response_ids(model: LocalModel, text: str) -> list[int]:
    """Token ids of an assistant reply followed by the end-of-turn token, so the model also learns to stop."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SelfEvolveError(f"reply {text!r} has no tokens; drop empty replies before training")
    return [*ids, model.tokenizer.eos_token_id]
