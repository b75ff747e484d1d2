"""An RL fine-tuning run, single-agent PPO or CORY (https://arxiv.org/abs/2410.06101), with metrics,
checkpoints and resume.

:func:`run_rl` wraps the model once in a PeftModel holding one LoRA adapter per agent (``ppo``, or ``agent1``
and ``agent2`` for CORY), runs the iterations through accelerate, appends one line per iteration and agent to
``metrics.jsonl``, checkpoints atomically and writes each adapter at the end (and, with ``merge``, each merged
into a plain Hugging Face folder). A run resumed in the same folder continues after its last checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from selfevolve.config import save_config
from selfevolve.errors import SelfEvolveError
from selfevolve.io import append_jsonl, publish_folder, read_jsonl, write_json, write_jsonl
from selfevolve.runtime.backend import Prompt
from selfevolve.runtime.model import LocalModel
from selfevolve.update.cory import (
    AgentStats,
    CORYConfig,
    cory_iteration,
    exchange_roles,
    exchanges_after,
)
from selfevolve.update.ppo import (
    Policy,
    PPOConfig,
    Rollout,
    add_policies,
    kl_controller,
    ppo_update,
    sample,
)
from selfevolve.update.rewards import RLTask, load_task, score_all
from selfevolve.update.training import epoch_order, lora_config

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    """An RL run: method, task, budget (iterations × batch × tokens), sampling, LoRA, PPO and CORY settings."""

    method: Literal["ppo", "cory"] = "cory"
    task: Literal["sentiment", "gsm8k"] = "sentiment"
    data: str = ""  # gsm8k: the JSONL file of problems
    reward: str = ""  # module:function replacing the task's reward: reward(query, response, reference)
    queries: int = 512  # size of the query pool, cycled in a seeded order
    iterations: int = 20
    batch_size: int = 8  # queries per iteration (CORY: each agent answers every one)
    max_new_tokens: int = 20
    temperature: float = 1.0  # of the rollouts; 1 samples from π itself, as PPO's ratios and the KL assume
    top_p: float = 1.0
    max_context: int = 0  # tokens a prompt plus its answer may take; 0: the model's own limit
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: str = "all-linear"
    lora_layers: int = 0  # adapters on the top N decoder layers only (cheaper backward); 0: every layer
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    save_every: int = 1  # checkpoint every N iterations (and always at the end)
    merge: bool = False  # also write every adapter merged into a plain model folder
    seed: int = 0
    ppo: PPOConfig = field(default_factory=PPOConfig)
    cory: CORYConfig = field(default_factory=CORYConfig)

    def __post_init__(self) -> None:
        if self.method not in ("ppo", "cory"):
            raise SelfEvolveError(f"method must be ppo or cory, got {self.method!r}")
        if self.lora_layers < 0:
            raise SelfEvolveError(
                f"lora_layers must not be negative, got {self.lora_layers}; 0 adapts every layer"
            )
        for name in ("queries", "iterations", "batch_size", "max_new_tokens", "lora_rank", "save_every"):
            if getattr(self, name) < 1:
                raise SelfEvolveError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise SelfEvolveError(f"temperature must be positive for PPO's sampling, got {self.temperature}")

    @property
    def adapters(self) -> tuple[str, ...]:
        return ("ppo",) if self.method == "ppo" else ("agent1", "agent2")


@dataclass
class RLResult:
    """A finished run: the metrics rows, the trained PeftModel, the policies and who plays which role."""

    rows: list[dict]
    module: nn.Module
    policies: dict[str, Policy]
    roles: dict[str, str]
    resumed_from: int = 0
    seconds: float = 0.0

    def final(self, agent: str, last: int = 10) -> dict[str, float]:
        """Mean reward, KL and combined reward of ``agent`` over its last ``last`` iterations."""
        rows = [r for r in self.rows if r["agent"] == agent][-last:]
        return {k: sum(r[k] for r in rows) / len(rows) for k in ("reward", "kl", "combined")}


def batch_indices(pool: int, iteration: int, batch_size: int, seed: int) -> list[int]:
    """The queries of ``iteration`` (1-based): consecutive slices of seeded per-epoch permutations."""
    positions = range((iteration - 1) * batch_size, iteration * batch_size)
    return [epoch_order(pool, p // pool, seed)[p % pool] for p in positions]


def context_limit(model: LocalModel, config: RLConfig) -> int:
    """Tokens a prompt plus its answer may take."""
    if config.max_context:
        return config.max_context
    text = model.model.config.get_text_config()
    return int(getattr(text, "max_position_embeddings", 0) or 1 << 30)


def make_sampler(student: LocalModel, config: RLConfig, task: RLTask, iteration: int) -> Callable:
    """The checked rollout of this iteration: prompts that fit the context, and not every answer empty."""
    limit = context_limit(student, config)
    calls = [0]

    def sampler(policy: Policy, prompts: list[Prompt], where: str) -> tuple[Rollout, list[str]]:
        for prompt in prompts:
            length = len(student.encode(prompt))
            if length + config.max_new_tokens > limit:
                raise SelfEvolveError(
                    f"{where}: a prompt of {length} tokens plus max_new_tokens={config.max_new_tokens} exceeds "
                    f"the context of {limit} tokens; shorten the prompts or lower max_new_tokens"
                )
        calls[0] += 1
        rollout, texts = sample(
            student,
            policy,
            prompts,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            ignore_eos=task.ignore_eos,
            seed=config.seed * 1_000_003 + iteration * 10 + calls[0],
        )
        if not bool(rollout.response_mask.any()):
            raise SelfEvolveError(
                f"{where}: empty rollout, every sampled answer has no tokens; check the prompts and the "
                "model's end-of-turn token, or raise max_new_tokens"
            )
        return rollout, texts

    return sampler


def ppo_iteration(
    module: nn.Module,
    policy: Policy,
    kl: dict,
    task: RLTask,
    queries: list[str],
    references: list[str],
    sampler: Callable,
    config: RLConfig,
    where: str,
    accelerator=None,
    gen: torch.Generator | None = None,
) -> dict[str, AgentStats]:
    """One single-agent PPO iteration on the task reward."""
    rollout, texts = sampler(policy, [task.prompt(q) for q in queries], f"{where}, step ppo rollout")
    scores = score_all(task.reward, queries, texts, references, f"{where}, step ppo reward")
    coef = kl[policy.adapter].value
    tensor = torch.tensor(scores, device=rollout.scores.device)  # (B,)
    stats = ppo_update(module, policy, rollout._replace(scores=tensor), coef, config.ppo, accelerator, gen)
    kl[policy.adapter].update(stats.kl, len(queries))
    return {"ppo": AgentStats("ppo", policy.adapter, sum(scores) / len(scores), coef, stats)}


def _row(iteration: int, stats: AgentStats, seconds: float) -> dict:
    return {
        "iteration": iteration,
        "agent": stats.role,
        "adapter": stats.adapter,
        "reward": stats.task_reward,
        "kl": stats.ppo.kl,
        "combined": stats.combined,
        "kl_coef": stats.kl_coef,
        "collective": stats.ppo.score,
        "loss": stats.ppo.loss,
        "policy_loss": stats.ppo.policy_loss,
        "value_loss": stats.ppo.value_loss,
        "clip_fraction": stats.ppo.clip_fraction,
        "seconds": seconds,
    }


def save_checkpoint(folder: Path, module, policies, roles, kl, iteration: int) -> None:
    """Everything a resumed run needs, published atomically (a crash leaves the previous checkpoint)."""
    from peft import get_peft_model_state_dict

    state = {
        "iteration": iteration,
        "roles": roles,
        "adapters": {n: get_peft_model_state_dict(module, adapter_name=n) for n in policies},
        "value_heads": {n: p.value_head.state_dict() for n, p in policies.items()},
        "optimizers": {n: p.optimizer.state_dict() for n, p in policies.items()},
        "kl_coef": {n: c.value for n, c in kl.items()},
        "rng": torch.get_rng_state(),
    }
    with publish_folder(folder) as staging:
        torch.save(state, staging / "state.pt")
        write_json(staging / "progress.json", {"iteration": iteration, "roles": roles})


def load_checkpoint(folder: Path, module, policies, kl) -> tuple[int, dict[str, str]]:
    """Restore :func:`save_checkpoint`'s state; the iteration it was taken after and the roles."""
    from peft import set_peft_model_state_dict

    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    if set(state["adapters"]) != set(policies):
        raise SelfEvolveError(
            f"checkpoint {folder} holds adapters {sorted(state['adapters'])}, this run has {sorted(policies)}; "
            "resume with the same method, or start afresh in another folder"
        )
    for name, policy in policies.items():
        set_peft_model_state_dict(module, state["adapters"][name], adapter_name=name)
        policy.value_head.load_state_dict(state["value_heads"][name])
        policy.optimizer.load_state_dict(state["optimizers"][name])
        kl[name].value = state["kl_coef"][name]
    torch.set_rng_state(state["rng"])
    return int(state["iteration"]), dict(state["roles"])


def merge_adapter(module, adapter: str, *, inplace: bool = False) -> nn.Module:
    """A plain transformers model with ``adapter`` folded into the base weights (the others dropped).

    Without ``inplace`` the PeftModel is copied first, so the other adapters stay usable."""
    target = module if inplace else copy.deepcopy(module)
    for other in [n for n in target.peft_config if n != adapter]:
        target.delete_adapter(other)
    target.set_adapter(adapter)
    return target.merge_and_unload().eval()


def save_outputs(out: Path, model: LocalModel, module, policies, roles, merge: bool) -> None:
    """Each adapter as a peft folder under ``out/adapters/NAME`` (and merged under ``out/merged/NAME``)."""
    for name in policies:
        with publish_folder(out / "adapters" / name) as staging:
            module.save_pretrained(str(staging), selected_adapters=[name])
            nested = staging / name  # peft nests every adapter but "default" in a folder of its name
            if nested.is_dir():
                for item in nested.iterdir():
                    item.rename(staging / item.name)
                nested.rmdir()
        if merge:
            with publish_folder(out / "merged" / name) as staging:
                merge_adapter(module, name).save_pretrained(str(staging))
                model.tokenizer.save_pretrained(str(staging))
    write_json(out / "roles.json", roles)


def _resume_metrics(path: Path, iteration: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [row for _, row in read_jsonl(path) if row["iteration"] <= iteration]
    write_jsonl(path, rows)  # drop lines of iterations after the checkpoint
    return rows


def run_rl(
    model: LocalModel,
    config: RLConfig,
    out_dir: str | Path,
    *,
    task: RLTask | None = None,
    resume: bool = False,
    progress: bool = True,
    on_iteration: Callable[[int, dict[str, AgentStats]], None] | None = None,
) -> RLResult:
    """Train ``model`` by PPO or CORY for ``config.iterations`` iterations; write metrics, checkpoints and
    adapters under ``out_dir``.

    ``model.model`` becomes the PeftModel holding the adapters (the base weights stay frozen and unchanged).
    ``task`` defaults to ``config.task``. With ``resume`` the run continues after the checkpoint in
    ``out_dir/checkpoint``; errors name the iteration and step, and never touch that checkpoint.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    out = Path(out_dir)
    task = task or load_task(
        config.task, count=config.queries, data=config.data, reward=config.reward, seed=config.seed
    )
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=model.device.type == "cpu")
    if accelerator.num_processes > 1:
        raise SelfEvolveError("RL fine-tuning runs as one process; start it without accelerate launch")
    depth = model.model.config.get_text_config().num_hidden_layers
    layers = range(max(depth - config.lora_layers, 0), depth) if config.lora_layers else None
    lora = lora_config(config.lora_rank, config.lora_alpha, config.lora_targets, layers)
    module, policies = add_policies(model, config.adapters, lora, config.ppo.learning_rate, config.seed)
    for policy in policies.values():
        policy.optimizer = accelerator.prepare(policy.optimizer)
    model.model = module
    kl = {name: kl_controller(config.ppo) for name in policies}
    roles = {"ppo": "ppo"} if config.method == "ppo" else {"pioneer": "agent1", "observer": "agent2"}
    folder = out / "checkpoint"
    metrics = out / "metrics.jsonl"
    start = 0
    if resume and (folder / "progress.json").is_file():
        start, roles = load_checkpoint(folder, module, policies, kl)
        log.info("resuming after iteration %d (%s)", start, folder)
    rows = _resume_metrics(metrics, start) if resume else []
    if not resume:
        metrics.unlink(missing_ok=True)
    began = time.perf_counter()
    bar = tqdm(total=config.iterations, initial=start, desc=config.method, disable=not progress)
    try:
        for iteration in range(start + 1, config.iterations + 1):
            tick = time.perf_counter()
            picked = batch_indices(len(task.queries), iteration, config.batch_size, config.seed)
            queries = [task.queries[i] for i in picked]
            references = [task.references[i] for i in picked]
            sampler = make_sampler(model, config, task, iteration)
            generator = torch.Generator().manual_seed(config.seed * 7919 + iteration)
            where = f"iteration {iteration}"
            with accelerator.autocast():
                if config.method == "ppo":
                    stats = ppo_iteration(
                        module, policies["ppo"], kl, task, queries, references, sampler, config, where,
                        accelerator, generator,
                    )  # fmt: skip
                else:
                    stats = cory_iteration(
                        module, policies, roles, kl, task, queries, references, sampler, config.cory,
                        config.ppo, where=where, accelerator=accelerator, generator=generator,
                    )  # fmt: skip
            seconds = time.perf_counter() - tick
            for agent_stats in stats.values():
                row = _row(iteration, agent_stats, seconds)
                append_jsonl(metrics, row)
                rows.append(row)
            if config.method == "cory" and exchanges_after(iteration, config.cory):
                roles = exchange_roles(roles)
            if iteration % config.save_every == 0 or iteration == config.iterations:
                save_checkpoint(folder, module, policies, roles, kl, iteration)
            bar.update(1)
            bar.set_postfix({s.role: f"r={s.task_reward:.2f} kl={s.ppo.kl:.2f}" for s in stats.values()})
            if on_iteration is not None:
                on_iteration(iteration, stats)
    finally:
        bar.close()
    save_outputs(out, model, module, policies, roles, config.merge)
    return RLResult(rows, module, policies, roles, start, time.perf_counter() - began)


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    return [row for _, row in read_jsonl(Path(out_dir) / "metrics.jsonl")]


def final_summary(rows: list[dict], last: int = 10) -> dict[str, dict[str, float]]:
    """Per agent: mean reward of the first and last ``last`` iterations and the final KL."""
    summary = {}
    for agent in dict.fromkeys(r["agent"] for r in rows):
        mine = [r for r in rows if r["agent"] == agent]
        head, tail = mine[:last], mine[-last:]
        summary[agent] = {
            "first_reward": sum(r["reward"] for r in head) / len(head),
            "last_reward": sum(r["reward"] for r in tail) / len(tail),
            "last_kl": sum(r["kl"] for r in tail) / len(tail),
            "last_combined": sum(r["combined"] for r in tail) / len(tail),
        }
    return summary


__all__ = ["RLConfig", "RLResult", "final_summary", "merge_adapter", "read_metrics", "run_rl"]
