"""Refine steps: decide which acquired experiences to keep, and record why each one was dropped. A filter
sees only what earlier filters of the iteration kept."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from selfevolve.acquire.orderings import temporal_item_sets
from selfevolve.acquire.synthesize import support
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.codejudge import judge
from selfevolve.evaluate.consistency import load_item_sets
from selfevolve.evaluate.ranking import spearman
from selfevolve.loop.state import LoopState, StepResult, existing_path
from selfevolve.loop.steps.acquire import QA, REPAIR, REPAIR_PROBLEM, repair_problem, stored_documents
from selfevolve.prompts import normalize_answer
from selfevolve.records import Candidate, ItemSet, Problem, Sample
from selfevolve.refine.rank import AGGREGATORS, repair_item_sets
from selfevolve.sandbox.humaneval import evaluate_samples
from selfevolve.store import Decision, Experience


@dataclass
class GroundingFilter:
    """Keep a synthesized QA pair or statement only when its document supports it, and only once.

    Support is the share of the response's content words that occur in its document (SELF-PARAM's filter);
    a duplicate is a pair whose normalized request and response were already kept.
    """

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    min_support: float = 0.6
    dedupe: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_support <= 1:
            raise SelfEvolveError(
                f"min_support must be in [0, 1], got {self.min_support}; 0 keeps every answer"
            )

    def run(self, state: LoopState) -> StepResult:
        documents = stored_documents(state)
        seen: set[tuple[str, str]] = set()
        decisions = []
        for experience in state.kept(QA):
            key = (normalize_answer(experience.prompt), normalize_answer(experience.response))
            score = support(experience.response, documents[experience.parent_id].text)
            if score < self.min_support:
                decisions.append(Decision(experience.id, False, f"support below {self.min_support:g}"))
            elif self.dedupe and key in seen:
                decisions.append(Decision(experience.id, False, "duplicate"))
            else:
                seen.add(key)
                decisions.append(Decision(experience.id, True, "supported"))
        kept = sum(d.kept for d in decisions)
        return StepResult(decisions=decisions, summary={"kept": kept, "dropped": len(decisions) - kept})


def _repairs(state: LoopState) -> tuple[list[Experience], dict[int, Problem]]:
    """This iteration's kept repairs, and each repair problem's HumanEval task by the problem's experience id."""
    tasks = {e.id: repair_problem(e)[1] for e in state.experiences(REPAIR_PROBLEM)}
    return state.kept(REPAIR), tasks


@dataclass
class ExecutionFilter:
    """Keep a sampled repair only when its fixed function passes every test of its task in the sandbox
    (NExT's filter, https://arxiv.org/abs/2404.14662)."""

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    timeout_s: float = 5.0  # per sandboxed run of a task's tests

    def run(self, state: LoopState) -> StepResult:
        repairs, tasks = _repairs(state)
        runnable = [e for e in repairs if e.metadata.get("fix")]
        samples = [Sample(tasks[e.parent_id].task_id, "\n" + e.metadata["fix"]) for e in runnable]
        verdicts = evaluate_samples(tasks.values(), samples, timeout_s=self.timeout_s) if samples else []
        status = {e.id: v for e, v in zip(runnable, verdicts)}
        decisions = [
            Decision(e.id, True, "passed")
            if e.id in status and status[e.id].passed
            else Decision(e.id, False, f"tests {status[e.id].status}" if e.id in status else "no code")
            for e in repairs
        ]
        kept = sum(d.kept for d in decisions)
        return StepResult(decisions=decisions, summary={"kept": kept, "dropped": len(decisions) - kept})


@dataclass
class CodeJudgeFilter:
    """Keep a repair only when an LLM judge accepts its code without running it (CodeJudge,
    https://arxiv.org/abs/2410.02184); each verdict is stored as a ``judge-verdict`` experience."""

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    mode: Literal["analyze", "taxonomy", "vanilla", "rubric"] = "analyze"
    threshold: float = 0.5  # keep when the judge's score is at least this (binary modes: 1 = yes)
    judge: str = ""  # the judge model (registry name, folder, .gguf); empty: the model being trained
    reference: bool = False  # show the judge the task's reference solution
    keep_invalid: bool = False  # keep repairs whose judge output could not be parsed

    def run(self, state: LoopState) -> StepResult:
        from selfevolve.runtime.loading import load_model

        repairs, tasks = _repairs(state)
        runnable = [e for e in repairs if e.metadata.get("fix")]
        candidates = [
            Candidate(tasks[e.parent_id].task_id, "model", "\n" + e.metadata["fix"], None) for e in runnable
        ]
        backend = state.model
        if self.judge and candidates:
            backend = load_model(self.judge, device=str(state.model.device))
        problems = {p.task_id: p for p in tasks.values()}
        results = judge(backend, problems, candidates, self.mode, reference=self.reference, progress=False)
        decisions, verdicts = [], []
        by_id = dict(zip((e.id for e in runnable), results))
        for experience in repairs:
            result = by_id.get(experience.id)
            if result is None:
                decisions.append(Decision(experience.id, False, "no code"))
                continue
            if not result.valid:
                decisions.append(Decision(experience.id, self.keep_invalid, "judge output invalid"))
            else:
                accepted = result.score >= self.threshold
                decisions.append(
                    Decision(experience.id, accepted, "judge accepted" if accepted else "judge rejected")
                )
            verdicts.append(
                Experience(
                    run_id="",
                    task="judge-verdict",
                    prompt=result.analysis or experience.metadata["fix"],
                    response=result.raw,
                    phase="refine",
                    feedback={"valid": result.valid, "error": result.error, "mode": self.mode},
                    score=result.score,
                    method="codejudge",
                    model_revision=backend.revision,
                    parent_id=experience.id,
                )
            )
        kept = sum(d.kept for d in decisions)
        return StepResult(
            experiences=verdicts,
            decisions=decisions,
            summary={
                "kept": kept,
                "dropped": len(decisions) - kept,
                "invalid": sum(not r.valid for r in results),
            },
        )


PREFERENCE = (
    "preference"  # an experience holding a pair: prompt, response = the chosen reply, metadata rejected
)
SAC_AUDIT = "sac-audit"


@dataclass
class SourceAwareCleaning:
    """Audit preference pairs with a committee and clean them by source (SAC,
    https://arxiv.org/abs/2410.01957v1): confident mis-labels flipped (or removed), both-bad pairs dropped.

    The pairs are this iteration's kept ``preference`` experiences or, with ``data``, a JSONL file (stored
    here as ``preference`` experiences). Every audit row is stored as a ``sac-audit`` refine experience whose
    parent is its pair; a flipped pair is dropped and stored again flipped, so later steps see the cleaned set.
    """

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    data: str = ""  # a preference JSONL (prompt/chosen/rejected or HH dialogues); "": stored preferences
    members: tuple[str, ...] = ("crossfit:minilm", "crossfit:tfidf", "crossfit:surface")
    folds: int = 5
    policy: Literal["flip", "remove"] = "flip"
    high_agreement: float = 0.75
    no_agreement: float = 0.0
    mislabel_confidence: float = 0.6

    def __post_init__(self) -> None:
        self.data = existing_path(self.data, "sac data", "pass an existing preference JSONL")

    def run(self, state: LoopState) -> StepResult:
        from selfevolve.records import PreferencePair
        from selfevolve.refine.committee import build_member
        from selfevolve.refine.preferences import LoadedPairs, load_pairs
        from selfevolve.refine.sac import SACConfig, clean

        if self.data:
            loaded = load_pairs(self.data)
            stored: list[Experience | None] = [None] * len(loaded.pairs)  # the file is the provenance
        else:
            stored = list(state.kept(PREFERENCE))
            pairs = [
                PreferencePair(e.prompt, e.response, e.metadata["rejected"], k) for k, e in enumerate(stored)
            ]
            loaded = LoadedPairs("store", "pairs", pairs, [{} for _ in pairs])
        if not stored:
            raise SelfEvolveError("sac found no preference pairs; set data: or add a step that acquires them")
        config = SACConfig(
            high_agreement=self.high_agreement,
            no_agreement=self.no_agreement,
            mislabel_confidence=self.mislabel_confidence,
            policy=self.policy,
        )
        committee = [
            build_member(s, folds=self.folds, seed=state.seed, model=state.model) for s in self.members
        ]
        result = clean(loaded, committee, config)
        experiences, decisions = [], []
        parent = None
        for experience, pair, row in zip(stored, loaded.pairs, result.rows):
            parent = experience.id if experience is not None else None
            experiences.append(
                Experience(
                    run_id="",
                    task=SAC_AUDIT,
                    prompt=pair.prompt,
                    response=row.action,
                    phase="refine",
                    feedback={"evidence": row.evidence, "scores": row.scores},
                    score=float(row.votes),
                    method="sac",
                    metadata={
                        k: getattr(row, k)
                        for k in ("index", "votes", "members", "bucket", "margin", "category", "action")
                    },
                    parent_id=parent,
                )
            )
            if experience is None:
                experiences[-1].metadata.update(chosen=pair.chosen, rejected=pair.rejected)
            if row.action == "flip" or (experience is None and row.action == "keep"):
                flip = row.action == "flip"
                experiences.append(
                    Experience(
                        "",
                        PREFERENCE,
                        pair.prompt,
                        pair.rejected if flip else pair.chosen,
                        "refine",
                        method="sac",
                        metadata={"rejected": pair.chosen if flip else pair.rejected, "flipped": flip},
                        parent_id=parent,
                    )
                )
            if experience is not None:
                reason = f"{row.bucket} agreement" + (f", {row.category}" if row.category else "")
                decisions.append(Decision(experience.id, row.action == "keep", f"{reason}: {row.action}"))
        return StepResult(experiences=experiences, decisions=decisions, summary=result.summary())


JUDGE_PAIR = "judge-pair"
"""Task of the training labels REPAIR derives: prompt = the question, metadata a, b, target, negated."""


def item_sets_from(spec: str) -> list[ItemSet]:
    """Item sets from a JSONL file, or ``temporal:SETS:ITEMS:SEED`` (dated events of a fictional set)."""
    if spec.startswith("temporal:"):
        parts = spec.removeprefix("temporal:").split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise SelfEvolveError(
                f"item-set spec {spec!r} is malformed; write temporal:SETS:ITEMS:SEED, e.g. temporal:8:5:0"
            )
        sets, items, seed = map(int, parts)
        return temporal_item_sets(sets, items, seed=seed)
    return load_item_sets(spec)


@dataclass
class JudgeRepair:
    """REPAIR's refine step: the judge's labels on every ordered pair of each item set, aggregated into one
    ranking per set, and every pair that ranking implies stored as a ``judge-pair`` experience (both orders,
    optionally negated; https://arxiv.org/abs/2410.02205)."""

    PHASE: ClassVar[str] = "refine"
    METRICS: ClassVar[tuple[str, ...]] = ()

    items: str = "temporal:8:5:0"  # a JSONL file of item sets, or temporal:SETS:ITEMS:SEED
    method: str = "win_loss"  # the paper's default; bradley_terry or elo
    negated: bool = True  # also derive the labels for the negated question ("which is worse?")
    judge: str = (
        ""  # a judge spec (model, http URL, module:function); empty: the current model's LogprobJudge
    )

    def __post_init__(self) -> None:
        if self.method not in AGGREGATORS:
            raise SelfEvolveError(f"unknown method {self.method!r}; use one of {', '.join(AGGREGATORS)}")
        if not self.items:
            raise SelfEvolveError(
                "judge_repair needs items: a JSONL file of item sets or temporal:SETS:ITEMS:SEED"
            )
        if not self.items.startswith("temporal:"):
            self.items = existing_path(self.items, "item-set file", "pass a JSONL file of item sets")

    def run(self, state: LoopState) -> StepResult:
        from selfevolve.judges.pairwise import LogprobJudge, load_judge

        sets = item_sets_from(self.items)
        judge = load_judge(self.judge) if self.judge else LogprobJudge(state.model)
        repaired = repair_item_sets(judge, sets, method=self.method, negated=self.negated)
        experiences, agreement = [], []
        for item_set, result in zip(sets, repaired):
            if item_set.gold is not None:
                agreement.append(spearman(item_set.gold, result.order))
            experiences += [
                Experience(
                    run_id="",
                    task=JUDGE_PAIR,
                    prompt=p.question,
                    response=f"{p.target:g}",
                    phase="refine",
                    score=p.target,
                    method="repair",
                    model_revision=state.model.revision,
                    metadata={
                        "a": p.a,
                        "b": p.b,
                        "target": p.target,
                        "negated": p.negated,
                        "set": item_set.id,
                    },
                )
                for p in result.pairs
            ]
        finite = [a for a in agreement if not math.isnan(a)]
        summary = {
            "sets": len(sets),
            "pairs": len(experiences),
            "invalid": sum(r.invalid for r in repaired),
            "judge": judge.name,
        }
        if finite:
            summary["ranking_spearman"] = sum(finite) / len(finite)  # the repaired ranking against gold
        return StepResult(experiences=experiences, summary=summary)
