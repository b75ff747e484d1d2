"""The training every update method shares: accelerate, optional LoRA (merged at the end), checkpoints.

Two layers. :func:`trainable` is the one protocol every recipe uses: a context manager that makes a model
trainable (LoRA adapters or every weight, optimizer, schedule, accelerate), hands out a
:class:`TrainingSession` whose :meth:`~TrainingSession.step` applies one loss, and on exit either finishes the
model (adapters merged, eval mode) or, on an exception, puts it back as it was (adapters removed, flags and
mode restored). :func:`train` is the supervised recipe on top: a method supplies its examples and a *step loss*
(a function from the student and a batch to a scalar loss and its token count). A recipe that does not fit a
per-batch loss (PPO: rollouts, several epochs per batch, value heads) drives a session itself.

The data order of each epoch comes from ``seed`` and the epoch number alone, so a run resumed from a
checkpoint replays exactly the steps it had not taken yet. Runs as-is on one CPU or GPU; ``accelerate launch``
spreads each global batch over the processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.io import write_json
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
                raise SelfEvolveError(
                    f"train.{name} must be at least 1, got {getattr(self, name)}; set it to 1 or more"
                )
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise SelfEvolveError(
                f"train.learning_rate must be positive, got {self.learning_rate}; "
                "leave it unset for the LoRA or full fine-tuning default"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise SelfEvolveError(
                f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}; "
                "e.g. 0.1 warms up over the first tenth of the steps"
            )
        if not 0 <= self.lora_dropout < 1:
            raise SelfEvolveError(
                f"train.lora_dropout must be in [0, 1), got {self.lora_dropout}; 0 turns dropout off"
            )
        if self.save_every < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise SelfEvolveError(
                "train.save_every, train.max_grad_norm and train.weight_decay must not be negative, got "
                f"{self.save_every}, {self.max_grad_norm} and {self.weight_decay}; use 0 to turn one off"
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


def lora_config(
    rank: int, alpha: int, targets: str, layers: Sequence[int] | None = None, dropout: float = 0.0
):
    """A peft LoraConfig for a causal LM (``targets``: "all-linear" or comma-separated module names; ``layers``:
    the decoder layers that get adapters, None for all)."""
    from peft import LoraConfig

    modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    if layers is not None and modules == "all-linear":  # peft takes a layer subset only with module names
        modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=modules,
        layers_to_transform=list(layers) if layers is not None else None,
        task_type="CAUSAL_LM",
    )


def _with_lora(module, config: TrainingConfig):
    from peft import get_peft_model

    targets = config.lora_targets
    lora = lora_config(config.lora_rank, config.lora_alpha, targets, dropout=config.lora_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return get_peft_model(module, lora)
        except ValueError as err:
            raise SelfEvolveError(
                f"cannot add LoRA adapters with train.lora_targets={targets!r}: {err}; "
                "use 'all-linear' or names of linear layers such as q_proj,v_proj"
            ) from err


class TrainingSession:
    """One model made trainable: ``student`` (a LocalModel over the prepared module), its optimizer and schedule."""

    def __init__(self, model: LocalModel, config: TrainingConfig, total_steps: int) -> None:
        from accelerate import Accelerator, DataLoaderConfiguration
        from transformers import get_linear_schedule_with_warmup

        self.config, self.total_steps = config, total_steps
        # Each global batch is split over the processes, so the schedule advances once per optimizer step
        # (accelerate would otherwise step it once per process, as for per-process batches).
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        module = _with_lora(model.model, config) if config.lora else model.model.requires_grad_(True)
        module.train()
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.parameters, lr=config.peak_learning_rate, weight_decay=config.weight_decay
        )
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_ratio * total_steps), total_steps
        )
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, optimizer, scheduler)
        self.student = LocalModel(
            self.module,
            model.tokenizer,
            name=model.name,
            revision=model.revision,
            batch_size=model.batch_size,
        )

    def shard(self, batch: Sequence[Any]) -> tuple[Sequence[Any], bool]:
        """This process's share of a global batch, and whether it is real. A process left without examples
        (a last batch smaller than the process count) gets a stand-in that :meth:`step` weighs zero, so every
        process still takes part in the gradient exchange."""
        accelerator = self.accelerator
        share = batch[accelerator.process_index :: accelerator.num_processes]
        return (share, True) if share else (batch[:1], False)

    def step(self, loss: torch.Tensor, step: int, tokens: int | None = None) -> float:
        """Backpropagate ``loss``, clip, take one optimizer and schedule step; the loss value (finite, or an
        error).

        With several processes and ``tokens`` (this shard's target tokens, 0 for a stand-in), each shard's mean
        loss is weighted by its share of the global batch's tokens, so the update and the returned value equal
        one process's token mean over the whole batch.
        """
        accelerator = self.accelerator
        value = loss.detach()
        if accelerator.num_processes > 1 and tokens is not None:
            count = torch.tensor(float(tokens), device=loss.device)
            total = accelerator.reduce(count, reduction="sum")  # target tokens of the global batch
            loss = loss * (count * accelerator.num_processes / total)  # DDP averages: sum_p loss_p n_p / N
            value = accelerator.reduce(value * count, reduction="sum") / total
        accelerator.backward(loss)
        if self.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = float(value)
        if not math.isfinite(value):
            raise SelfEvolveError(
                f"training diverged at step {step} (loss {value}); lower train.learning_rate or use mixed_precision=no"
            )
        return value

    def save(self, folder: Path, step: int) -> None:
        """Resumable state (weights or adapters, optimizer, schedule, RNG) and the step it was taken at.

        ``progress.json`` goes first and comes back last (atomically): a crash mid-save leaves no checkpoint
        to resume from rather than a torn one."""
        progress = folder / "progress.json"
        if self.accelerator.is_main_process:
            progress.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(folder))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_json(progress, {"step": step, "total_steps": self.total_steps})

    def load(self, folder: Path) -> int:
        """Restore the state :meth:`save` wrote; the step to continue after."""
        progress = json.loads((folder / "progress.json").read_text())
        if progress["total_steps"] != self.total_steps:
            raise SelfEvolveError(
                f"checkpoint {folder} belongs to a run of {progress['total_steps']} steps, this one has "
                f"{self.total_steps}; resume with the same examples and config, or start afresh in another "
                "output folder"
            )
        self.accelerator.load_state(str(folder))
        return int(progress["step"])


@contextlib.contextmanager
def trainable(model: LocalModel, config: TrainingConfig, total_steps: int) -> Iterator[TrainingSession]:
    """Make ``model`` trainable for the ``with`` block; on success ``model.model`` becomes the trained module.

    On an exception the model is put back as it was: LoRA adapters are removed without merging (the weights
    are untouched), ``requires_grad`` flags and eval/train mode are restored. With full fine-tuning
    (``lora=false``) the steps already taken stay in the weights.
    """
    original = model.model
    flags = [(p, p.requires_grad) for p in original.parameters()]
    was_training = original.training
    session = None
    try:
        session = TrainingSession(model, config, total_steps)
        yield session
    except BaseException:
        if session is not None and config.lora:
            session.accelerator.unwrap_model(session.module).unload()  # back to the original layers
        model.model = original
        raise
    else:
        trained = session.accelerator.unwrap_model(session.module)
        if config.lora and config.merge_lora:
            trained = trained.merge_and_unload()
        model.model = trained.eval()
        was_training = False
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        original.train(was_training)


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
        model: the student. Its ``model`` attribute is replaced by the trained (merged) module; on an error it
            is left as it was (see :func:`trainable`).
        examples: anything ``step_loss`` understands; batched in a seeded order per epoch.
        step_loss: ``(student, batch) -> (loss, tokens)``; ``student`` is a LocalModel over the training module.
        config: optimisation settings.
        checkpoint_dir: where to save resumable state (end of each epoch, and every ``save_every`` steps);
            ``None`` saves nothing.
        resume: continue from the checkpoint in ``checkpoint_dir`` when there is one.
        on_step: called with (step, loss) after every optimizer step (progress, tests).
    """
    if not examples:
        raise SelfEvolveError("nothing to train on: the example list is empty")
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    folder = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    with trainable(model, config, total_steps) as session:
        start = 0
        if resume and folder is not None and (folder / "progress.json").is_file():
            start = session.load(folder)
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
                shard, real = session.shard(batch)
                with session.accelerator.autocast():
                    loss, tokens = step_loss(session.student, shard)
                tokens = tokens if real else 0
                value = session.step(loss, step, tokens)
                result.steps += 1
                result.tokens += tokens
                result.losses.append(value)
                result.step_seconds.append(time.perf_counter() - tick)
                if on_step is not None:
                    on_step(step, value)
                if folder is not None and config.save_every and step % config.save_every == 0:
                    session.save(folder, step)
            if folder is not None and step > start:
                session.save(folder, step)
        result.seconds = time.perf_counter() - began
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
