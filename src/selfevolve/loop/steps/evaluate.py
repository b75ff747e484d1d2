"""Evaluate steps: score the iteration's model. Each answer is stored as an ``evaluate`` experience, so the
report can show the base model's and the shipped model's answers side by side."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

from selfevolve.acquire.knowledge import fictional_spec, load_documents, load_questions
from selfevolve.acquire.trace import token_counter
from selfevolve.attacks import build_attacks, load_attacks
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.acr_targets import Target
from selfevolve.evaluate.consistency import METRICS as CONSISTENCY_METRICS
from selfevolve.evaluate.consistency import (
    NUMBERS_SPEC,
    ConsistencyConfig,
    item_sets_from,
    measure_consistency,
)
from selfevolve.evaluate.gcg import GCGConfig
from selfevolve.evaluate.general import GENERAL_QUESTIONS, GENERAL_TEXTS
from selfevolve.evaluate.hierarchy import run_attacks
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.evaluate.memorization import MiniPromptConfig, audit_memorization
from selfevolve.evaluate.qa import QAResult, answer_questions, perplexity
from selfevolve.judges.pairwise import KINDS, LogprobJudge, VerdictJudge
from selfevolve.loop.repair import (
    RepairConfig,
    attempt_repairs,
    build_problems,
    fix_rates,
    repair_request,
    split_tasks,
)
from selfevolve.loop.state import LoopState, StepResult, existing_path
from selfevolve.loop.steps.acquire import stored_documents
from selfevolve.records import QAItem
from selfevolve.store import Experience

HELDOUT = "heldout-qa"
PROBE = "retention-probe"
MEMORIZATION = "acr-target"
ATTACK = "ih-attack"


def _answers(task: str, result: QAResult, revision: str) -> list[Experience]:
    return [
        Experience(
            run_id="",
            task=task,
            prompt=row["question"],
            response=row["prediction"],
            phase="evaluate",
            feedback={"answers": row["answers"], "f1": row["f1"], "recall": row["recall"]},
            score=row["recall"],
            model_revision=revision,
            metadata={"doc_id": row["doc_id"]},
        )
        for row in result.rows
    ]


@dataclass
class HeldoutQA:
    """Held-out QA: SQuAD token F1, exact match and answer recall (the gold answer inside the reply) on
    questions worded differently from any the model trained on."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("f1", "recall", "exact_match")

    questions: str = "fictional:1:0"  # fictional:COUNT:SEED (the test questions of that set) or a JSONL file
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if fictional_spec(self.questions) is None:
            self.questions = existing_path(
                self.questions, "questions", "pass a JSONL file or fictional:COUNT:SEED"
            )

    def items(self) -> list[QAItem]:
        knowledge = fictional_spec(self.questions)
        return load_questions(self.questions) if knowledge is None else list(knowledge.test)

    def run(self, state: LoopState) -> StepResult:
        result = answer_questions(state.model, self.items(), max_new_tokens=self.max_new_tokens)
        return StepResult(
            experiences=_answers(HELDOUT, result, state.model.revision),
            metrics={"f1": result.f1, "recall": result.recall, "exact_match": result.exact_match},
        )


@dataclass
class Retention:
    """What an update costs elsewhere: perplexity on unrelated text, and the share of the general probe
    questions the base model (iteration 0) answered right that the model still answers right."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("perplexity", "recall")

    texts: str = ""  # unrelated text (.txt, folder, .jsonl); empty: the built-in paragraphs
    probes: str = ""  # general questions (JSONL: question, answer); empty: the built-in 20
    max_new_tokens: int = 32
    max_tokens: int = 256  # per text, for perplexity

    def __post_init__(self) -> None:
        fix = "fix the path or leave it empty"
        self.texts = existing_path(self.texts, "retention.texts", fix)
        self.probes = existing_path(self.probes, "retention.probes", fix)

    def run(self, state: LoopState) -> StepResult:
        texts = [d.text for d in load_documents(self.texts)] if self.texts else list(GENERAL_TEXTS)
        probes = (
            load_questions(self.probes)
            if self.probes
            else [QAItem("general", q, (a,)) for q, a in GENERAL_QUESTIONS]
        )
        answered = answer_questions(state.model, probes, max_new_tokens=self.max_new_tokens)
        base = answered.rows if state.iteration == 0 else None
        if base is None:
            base = [{"question": e.prompt, "recall": e.score} for e in state.experiences(PROBE, iteration=0)]
        known = {row["question"] for row in base if row["recall"] == 1.0}
        still = [row["recall"] for row in answered.rows if row["question"] in known]
        try:
            ppl = perplexity(state.model, texts, max_tokens=self.max_tokens)
        except OverflowError:  # a collapsed model: exp(mean NLL) overflows a float
            ppl = math.inf
        return StepResult(
            experiences=_answers(PROBE, answered, state.model.revision),
            metrics={"perplexity": ppl, "recall": sum(still) / len(still) if still else 1.0},
            summary={"base_known": len(known), "probes": len(probes)},
        )


@dataclass
class RepairFixRate:
    """NExT's measure: the share of held-out buggy programs the model repairs (pass@1 and pass@k, the fixes
    run against every test of their task in the sandbox). The held-out tasks come from the same seeded split as
    ``repair_problems``, so none of them is trained on."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("pass_at_1", "pass_at_k")

    train_tasks: int = 16  # these three must match repair_problems'
    eval_tasks: int = 8
    seed: int = 0
    mutants_per_task: int = 1
    samples: int = 4  # answers per problem: pass@1 and pass@k with k = samples
    temperature: float = 0.8
    max_new_tokens: int = 384
    traced: bool = True  # evaluate with the inline trace in the prompt (False: the plain buggy code)
    problems: str = ""  # HumanEval-format JSONL; empty: the bundled HumanEval

    def __post_init__(self) -> None:
        self.config()
        self.problems = existing_path(self.problems, "problems", "pass a HumanEval-format JSONL file")

    def config(self) -> RepairConfig:
        return RepairConfig(
            train_tasks=self.train_tasks,
            eval_tasks=self.eval_tasks,
            mutants_per_task=self.mutants_per_task,
            seed=self.seed,
            eval_samples=self.samples,
            eval_temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
        )

    def run(self, state: LoopState) -> StepResult:
        config = self.config()
        _, held_out = split_tasks(load_humaneval(self.problems or None), config)
        problems = build_problems(held_out, config, token_counter(state.model.tokenizer))
        humaneval = {p.task_id: p for p in held_out}
        # the same seed every iteration (as repair_train), so iterations differ only by their model
        attempts = attempt_repairs(
            state.model,
            problems,
            humaneval,
            config,
            traced=self.traced,
            n=self.samples,
            temperature=self.temperature,
            seed=self.seed + 1000,
        )
        rates = fix_rates(attempts, self.samples)
        by_key = {p.key: p for p in problems}
        experiences = [
            Experience(
                run_id="",
                task="repair-eval",
                prompt=repair_request(by_key[a.problem], a.traced),
                response=a.reply,
                phase="evaluate",
                feedback={"passed": a.passed, "status": a.status},
                score=float(a.passed),
                model_revision=state.model.revision,
                metadata={"problem": a.problem, "sample": a.sample},
            )
            for a in attempts
        ]
        return StepResult(
            experiences=experiences,
            metrics={"pass_at_1": rates["pass@1"], "pass_at_k": rates[f"pass@{self.samples}"]},
            summary={"problems": len(problems)},
        )


def _first_sentences(text: str, count: int) -> list[str]:
    """The first ``count`` sentences of a document (split after '. ')."""
    sentences = [part.strip() for part in text.replace("\n", " ").split(". ") if part.strip()]
    return [s if s.endswith(".") else s + "." for s in sentences[:count]]


@dataclass
class InjectedMemorization:
    """Was what the loop injected memorized verbatim, or integrated? The adversarial compression ratio
    (ACR, https://arxiv.org/abs/2404.15146) of the first sentences of this iteration's documents: a sentence is
    memorized when a MiniPrompt search finds a prompt shorter than it that makes the model emit it exactly."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("memorized", "best_acr")

    sentences: int = 1  # first sentences of each document to audit
    search: MiniPromptConfig = field(default_factory=lambda: MiniPromptConfig(gcg=GCGConfig(steps=20)))

    def __post_init__(self) -> None:
        if self.sentences < 1:
            raise SelfEvolveError(
                f"acr.sentences is {self.sentences}: at least one sentence per document is audited; set it to 1 or more"
            )

    def run(self, state: LoopState) -> StepResult:
        targets = [
            Target(f"{doc.id}-{k}", sentence, "injected")
            for doc in stored_documents(state).values()
            for k, sentence in enumerate(_first_sentences(doc.text, self.sentences))
        ]
        if not targets:  # the base model's iteration acquires nothing
            return StepResult(metrics={"memorized": 0.0, "best_acr": 0.0}, summary={"targets": 0})
        rows = audit_memorization(state.model, targets, self.search, progress=False).rows
        experiences = [
            Experience(
                run_id="",
                task=MEMORIZATION,
                prompt=row["prompt"] or "",
                response=row["target"],
                phase="evaluate",
                feedback={"acr": row["acr"], "memorized": row["memorized"], "success": row["success"]},
                score=row["acr"],
                model_revision=state.model.revision,
                metadata={"target": row["id"]},
            )
            for row in rows
        ]
        memorized = [row["acr"] for row in rows if row["memorized"]]
        return StepResult(
            experiences=experiences,
            metrics={"memorized": len(memorized) / len(rows), "best_acr": max(memorized, default=0.0)},
            summary={"targets": len(rows)},
        )


@dataclass
class JudgeConsistency:
    """The current model as a pairwise judge (https://arxiv.org/abs/2410.02205): s_tran(K), s_comm, s_neg and
    gold agreement on the item sets of a JSONL file. A metric that cannot be measured (no gold, or no verdict
    valid) is nan (stored as null); ``invalid_rate`` is the share of the judge's verdicts that were garbage."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = (*CONSISTENCY_METRICS, "invalid_rate")

    items: str = "numbers:4:0"  # JSONL (question, items, optional gold) or numbers:COUNT:SEED (generated)
    kind: str = "logprob"  # logprob (label probabilities) or verdict (the written A / B)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        if not NUMBERS_SPEC.match(self.items):
            self.items = existing_path(
                self.items, "judge_consistency.items", "pass a JSONL file of item sets or numbers:COUNT:SEED"
            )
        if self.kind not in KINDS:
            raise SelfEvolveError(f"judge_consistency.kind is {self.kind!r}; use one of {', '.join(KINDS)}")
        item_sets_from(self.items)  # a malformed file fails when the run is configured, not hours later

    def run(self, state: LoopState) -> StepResult:
        judge = VerdictJudge(state.model) if self.kind == "verdict" else LogprobJudge(state.model)
        report = measure_consistency(judge, item_sets_from(self.items), self.consistency, progress=False)
        metrics = {
            name: math.nan
            if name not in report.metrics or report.metrics[name].value is None
            else report.metrics[name].value
            for name in CONSISTENCY_METRICS
        }
        metrics["invalid_rate"] = report.invalid / report.calls if report.calls else math.nan
        return StepResult(metrics=metrics, summary=report.as_dict())


@dataclass
class HierarchyRobustness:
    """Instruction-hierarchy attack harness (https://arxiv.org/abs/2404.13208): robustness on held-out attack
    families and compliance on benign look-alikes, checked automatically (no LLM judge)."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("robustness", "compliance")

    attacks: str = ""  # JSONL of attacks; default: the built-in held-out families
    per_family: int = 2
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        self.attacks = existing_path(self.attacks, "attacks")
        if self.per_family < 1:
            raise SelfEvolveError(f"per_family must be at least 1, got {self.per_family}")

    def run(self, state: LoopState) -> StepResult:
        attacks = (
            load_attacks(self.attacks)
            if self.attacks
            else build_attacks(("heldout",), per_family=self.per_family)
        )
        report = run_attacks(state.model, attacks, max_new_tokens=self.max_new_tokens)
        attack_rows = [r for r in report.rows if r["check"] != "comply"]
        benign = [r for r in report.rows if r["check"] == "comply"]
        metrics = {
            "robustness": sum(r["defended"] for r in attack_rows) / len(attack_rows)
            if attack_rows
            else math.nan,
            "compliance": sum(r["defended"] for r in benign) / len(benign) if benign else math.nan,
        }
        experiences = [
            Experience(
                run_id="",
                task=ATTACK,
                prompt=json.dumps(list(a.messages)),
                response=r["reply"],
                phase="evaluate",
                feedback={"check": r["check"], "value": r["value"], "defended": r["defended"]},
                score=float(r["defended"]),
                model_revision=state.model.revision,
                metadata={"category": r["category"], "family": r["family"], "split": r["split"]},
            )
            for a, r in zip(attacks, report.rows)
        ]
        return StepResult(experiences=experiences, metrics=metrics, summary={"categories": report.categories})
