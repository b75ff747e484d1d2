"""Direct Preference Optimization with LoRA, on TRL's ``DPOTrainer``: the update that trains on preference pairs
(Rafailov et al., https://arxiv.org/abs/2305.18290), used to measure what cleaning preference data is worth.

The reference model is the policy with its LoRA adapter switched off (TRL's PEFT path), so the trainer never
reloads a reference from the model's name; without LoRA an explicit frozen copy is passed. The held-out
measure is DPO's implicit reward r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x)): its accuracy is the share
of pairs whose chosen reply gets the higher reward.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.records import PreferencePair
from selfevolve.runtime.model import LocalModel


@dataclass
class DPOSettings:
    """DPO's beta (the paper's 0.1) and a small LoRA run's optimisation settings."""

    beta: float = 0.1
    learning_rate: float = 5e-5
    epochs: float = 1.0
    batch_size: int = 4
    max_prompt_tokens: int = 128  # the prompt keeps its last tokens
    max_reply_tokens: int = 96  # each reply keeps its first tokens
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise SelfEvolveError(f"beta must be positive, got {self.beta}")
        if self.batch_size < 1 or self.max_prompt_tokens < 1 or self.max_reply_tokens < 1:
            raise SelfEvolveError("batch_size, max_prompt_tokens and max_reply_tokens must be at least 1")


def _truncated(model: LocalModel, pairs: Sequence[PreferencePair], settings: DPOSettings) -> list[dict]:
    """prompt / chosen / rejected texts cut to the token budget (the prompt from the left, replies from the
    right); pairs whose cut replies coincide are left out."""
    tokenizer = model.tokenizer
    rows = []
    for pair in pairs:
        prompt_ids = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"][
            -settings.max_prompt_tokens :
        ]
        cut = [
            tokenizer.decode(tokenizer(r, add_special_tokens=False)["input_ids"][: settings.max_reply_tokens])
            for r in (pair.chosen, pair.rejected)
        ]
        if cut[0] != cut[1]:
            rows.append({"prompt": tokenizer.decode(prompt_ids), "chosen": cut[0], "rejected": cut[1]})
    return rows


def train_dpo(
    model: LocalModel, pairs: Sequence[PreferencePair], settings: DPOSettings | None = None
) -> tuple:
    """Train a copy of ``model`` with DPO on ``pairs``; returns (the trained LocalModel, its training losses).
    With LoRA the returned model's module is a PEFT model whose disabled adapter is the reference."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    settings = settings or DPOSettings()
    rows = _truncated(model, pairs, settings)
    if not rows:
        raise SelfEvolveError("DPO needs at least one pair whose replies differ")
    policy = copy.deepcopy(model.model).float()
    tokenizer = model.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config, reference = None, None
    if settings.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
    else:  # an explicit frozen reference: TRL would otherwise reload one by the model's name
        reference = copy.deepcopy(model.model).float().eval()
    with tempfile.TemporaryDirectory(prefix="selfevolve-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,
            beta=settings.beta,
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            max_length=settings.max_prompt_tokens + settings.max_reply_tokens + 8,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=settings.seed,
            use_cpu=model.device.type == "cpu",
            bf16=False,  # the policy trains in float32; TRL's bf16 default would also fix the process-wide
            fp16=False,  # accelerate state to bf16 and break every later Accelerator(mixed_precision="no")
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.remove_callback(PrinterCallback)  # the losses are returned, not printed per step
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained = trainer.model.eval()
    return LocalModel(trained, tokenizer, name=model.name, revision=f"{model.revision}+dpo"), losses


def _reply_logprobs(module, tokenizer, rows: Sequence[dict], key: str, batch_size: int = 8) -> torch.Tensor:
    """(N,) summed log-probabilities of each row's ``key`` reply after its prompt."""
    device = next(module.parameters()).device
    totals = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in chunk]
        replies = [tokenizer(r[key], add_special_tokens=False)["input_ids"] for r in chunk]
        width = max(len(p) + len(c) for p, c in zip(prompts, replies))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        target = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (p, c) in enumerate(zip(prompts, replies)):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            target[i, len(p) : len(p) + len(c)] = True
        with torch.inference_mode():
            logits = module(
                input_ids=ids.to(device), attention_mask=mask.to(device)
            ).logits.float()  # (B, T, V)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): position t predicts token t+1
        picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1).to(device)).squeeze(-1)  # (B, T-1)
        totals.append((picked * target[:, 1:].to(device)).sum(-1).cpu())  # (B,)
    return torch.cat(totals)


def implicit_reward_accuracy(
    policy: LocalModel,
    pairs: Sequence[PreferencePair],
    settings: DPOSettings | None = None,
    reference: LocalModel | None = None,
) -> float:
    """Share of ``pairs`` whose chosen reply gets the higher implicit reward beta * log(pi / pi_ref); the
    reference is ``reference`` or, for a LoRA policy, the policy with its adapter disabled."""
    settings = settings or DPOSettings()
    rows = _truncated(policy, pairs, settings)
    if not rows:
        raise SelfEvolveError("no held-out pair with distinct replies to measure")
    module, tokenizer = policy.model, policy.tokenizer
    margin = _reply_logprobs(module, tokenizer, rows, "chosen") - _reply_logprobs(
        module, tokenizer, rows, "rejected"
    )
    if reference is not None:
        ref_module = reference.model
        ref = _reply_logprobs(ref_module, tokenizer, rows, "chosen") - _reply_logprobs(
            ref_module, tokenizer, rows, "rejected"
        )
    elif hasattr(module, "disable_adapter"):
        with module.disable_adapter():
            ref = _reply_logprobs(module, tokenizer, rows, "chosen") - _reply_logprobs(
                module, tokenizer, rows, "rejected"
            )
    else:
        raise SelfEvolveError("pass reference= for a policy without a LoRA adapter")
    rewards = settings.beta * (margin - ref)  # (N,): r(chosen) - r(rejected)
    return float((rewards > 0).float().mean())
