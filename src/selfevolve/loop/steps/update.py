"""Update steps: train a copy of the model on this iteration's kept experiences (through ``update/training.py``,
so ``accelerate launch`` spreads it over processes). The copy is the step's new model; the runner keeps the old
one until the evaluation's guards accept the update."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from selfevolve.acquire.knowledge import load_documents
from selfevolve.errors import SelfEvolveError
from selfevolve.loop.repair import answer_target, repair_prompt
from selfevolve.loop.state import LoopState, StepResult, clone_model, existing_path
from selfevolve.loop.steps.acquire import (
    HIERARCHY,
    QA,
    REPAIR,
    REPAIR_PROBLEM,
    repair_problem,
    stored_documents,
)
from selfevolve.loop.steps.refine import JUDGE_PAIR
from selfevolve.records import JudgeLabel, SynthesizedItem
from selfevolve.store import Decision, Experience
from selfevolve.update.cory import CORYConfig
from selfevolve.update.hierarchy import HierarchyTrainConfig, train_hierarchy
from selfevolve.update.judge_tuning import JudgeTuningConfig, tune_judge
from selfevolve.update.rl import RLConfig, final_summary, merge_adapter, run_rl
from selfevolve.update.selfparam import SelfParamConfig, inject
from selfevolve.update.sft import CrossEntropyObjective, SFTConfig, finetune
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, train

TRAINED = "trained on"


def _items(experiences: list[Experience]) -> list[SynthesizedItem]:
    return [
        SynthesizedItem(e.metadata["doc_id"], e.prompt, e.response, e.metadata["source"], e.score or 0.0)
        for e in experiences
    ]


def _result(model, experiences: list[Experience], trained: TrainResult) -> StepResult:
    return StepResult(
        decisions=[Decision(e.id, True, TRAINED) for e in experiences],
        losses=trained.losses,
        model=model,
        summary={"examples": len(experiences), "steps": trained.steps, "tokens": trained.tokens},
    )


@dataclass
class SelfParam:
    """SELF-PARAM injection: the model without the document learns the model-with-document's answers by KL
    (https://arxiv.org/abs/2410.00487); trains on the kept ``qa`` experiences."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    train: TrainingConfig = field(default_factory=TrainingConfig)  # LoRA r=16, lr 2e-3, 8 epochs, batch 4
    top_k: int = 0  # 0: full-vocabulary KL (the paper); k: the teacher's top-k plus a "rest" bucket
    regularizer_weight: float = 0.0  # weight of KL to the unchanged model on regularizer_texts
    regularizer_texts: str = ""  # unrelated text (.txt, folder, .jsonl) for the regularizer
    teacher_batch_size: int = 8

    def __post_init__(self) -> None:
        self.config()  # the library's own checks, at config time
        if self.regularizer_weight > 0 and not self.regularizer_texts:
            raise SelfEvolveError(
                f"regularizer_weight={self.regularizer_weight} needs regularizer_texts, which is empty; "
                "set a text file or the weight to 0"
            )
        self.regularizer_texts = existing_path(self.regularizer_texts, "regularizer_texts")

    def config(self) -> SelfParamConfig:
        return SelfParamConfig(
            train=self.train,
            top_k=self.top_k,
            regularizer_weight=self.regularizer_weight,
            teacher_batch_size=self.teacher_batch_size,
        )

    def run(self, state: LoopState) -> StepResult:
        kept = state.kept(QA)
        if not kept:
            return StepResult(summary={"skipped": "no kept qa experience to train on"})
        texts = [d.text for d in load_documents(self.regularizer_texts)] if self.regularizer_texts else []
        model = clone_model(state.model)
        documents = list(stored_documents(state).values())
        injected = inject(model, documents, _items(kept), self.config(), regularizer_texts=texts)
        return _result(model, kept, injected.train)


@dataclass
class SFT:
    """Supervised fine-tuning (cross-entropy on the reply, LoRA merged) on the kept ``qa`` experiences."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    train: TrainingConfig = field(default_factory=TrainingConfig)

    def run(self, state: LoopState) -> StepResult:
        kept = state.kept(QA)
        if not kept:
            return StepResult(summary={"skipped": "no kept qa experience to train on"})
        model = clone_model(state.model)
        trained = finetune(model, SFTConfig(train=self.train, target="qa"), items=_items(kept))
        return _result(model, kept, trained)


@dataclass
class RepairSFT:
    """NExT's M-step: fine-tune on the kept repairs (prompt with trace -> rationale and fix), each distinct
    answer to a problem once (https://arxiv.org/abs/2404.14662)."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    # *(inferred)* short SFT per round, as loop/repair.py: LoRA r=16, lr 5e-4, 2 epochs
    train: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=2, learning_rate=5e-4))

    def run(self, state: LoopState) -> StepResult:
        problems = {e.id: repair_problem(e)[0] for e in state.experiences(REPAIR_PROBLEM)}
        chosen: dict[tuple[str, str], Experience] = {}
        for e in state.kept(REPAIR):
            if e.metadata.get("fix"):
                chosen.setdefault((e.metadata["problem"], answer_target(e.response)), e)
        if not chosen:
            return StepResult(summary={"skipped": "no kept repair to train on"})
        model = clone_model(state.model)
        examples = [
            (
                repair_prompt(problems[e.parent_id], e.metadata["traced"], e.metadata["exemplar"]),
                response_ids(model, target),
            )
            for (_, target), e in sorted(chosen.items())
        ]
        trained = train(model, examples, CrossEntropyObjective(), self.train)
        return _result(model, list(chosen.values()), trained)


def _rl_step(state: LoopState, config: RLConfig, keep: str) -> StepResult:
    """Train a copy of the model by PPO or CORY (in ``run_dir/rl/iteration-N``, resumable) and return it with
    the ``keep`` agent's adapter merged in."""
    model = clone_model(state.model)
    out = state.run_dir / "rl" / f"iteration-{state.iteration}"
    result = run_rl(model, config, out, resume=True, progress=False)
    model.model = merge_adapter(result.module, result.roles[keep], inplace=True)
    return StepResult(
        losses=[row["loss"] for row in result.rows if row["agent"] == keep],
        model=model,
        summary={"out": str(out), "kept": keep, "agents": final_summary(result.rows)},
    )


@dataclass
class PPO:
    """Single-agent PPO on a task reward (KL penalty to the model before the step; our own PPO, LoRA merged at
    the end)."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    rl: RLConfig = field(default_factory=lambda: RLConfig(method="ppo"))

    def __post_init__(self) -> None:
        if self.rl.method != "ppo":
            raise SelfEvolveError(
                f"step ppo needs rl.method=ppo, got {self.rl.method!r}; use step cory for CORY"
            )

    def run(self, state: LoopState) -> StepResult:
        return _rl_step(state, self.rl, "ppo")


@dataclass
class CORY:
    """CORY cooperative two-agent RL (https://arxiv.org/abs/2410.06101); the ``keep`` agent's adapter (the one
    in that role after the last iteration) is merged into the step's model."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    rl: RLConfig = field(default_factory=lambda: RLConfig(method="cory", cory=CORYConfig()))
    keep: str = "pioneer"  # pioneer answers alone, so it is the one that serves without a partner

    def __post_init__(self) -> None:
        if self.rl.method != "cory":
            raise SelfEvolveError(
                f"step cory needs rl.method=cory, got {self.rl.method!r}; use step ppo for PPO"
            )
        if self.keep not in ("pioneer", "observer"):
            raise SelfEvolveError(f"step cory: keep must be pioneer or observer, got {self.keep!r}")

    def run(self, state: LoopState) -> StepResult:
        return _rl_step(state, self.rl, self.keep)


@dataclass
class JudgeTuning:
    """REPAIR's update step: fine-tune the model as a log-probability judge on this iteration's kept
    ``judge-pair`` labels (https://arxiv.org/abs/2410.02205)."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    train: TrainingConfig = field(default_factory=lambda: JudgeTuningConfig().train)  # LoRA, 5e-4, 2 epochs

    def run(self, state: LoopState) -> StepResult:
        kept = state.kept(JUDGE_PAIR)
        if not kept:
            return StepResult(summary={"skipped": "no kept judge-pair label to train on"})
        labels = [
            JudgeLabel(
                e.prompt, e.metadata["a"], e.metadata["b"], e.metadata["target"], e.metadata["negated"]
            )
            for e in kept
        ]
        model = clone_model(state.model)
        trained = tune_judge(model, labels, JudgeTuningConfig(train=self.train))
        return _result(model, kept, trained)


@dataclass
class _Conversation:
    messages: list[dict]
    target: str


@dataclass
class HierarchySFT:
    """Instruction-hierarchy fine-tuning on the kept ``hierarchy`` experiences (cross-entropy on the target,
    LoRA merged; https://arxiv.org/abs/2404.13208)."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    train: TrainingConfig = field(
        default_factory=lambda: HierarchyTrainConfig().train
    )  # LoRA, lr 3e-4, batch 4, 2 epochs
    prose: int = HierarchyTrainConfig.prose  # plain-prose passages mixed in (language modelling); 0: none

    def run(self, state: LoopState) -> StepResult:
        kept = state.kept(HIERARCHY)
        if not kept:
            return StepResult(summary={"skipped": "no kept hierarchy experience to train on"})
        model = clone_model(state.model)
        conversations = [_Conversation(json.loads(e.prompt), e.response) for e in kept]
        trained = train_hierarchy(
            model, conversations, HierarchyTrainConfig(train=self.train, prose=self.prose)
        )
        return _result(model, kept, trained)
