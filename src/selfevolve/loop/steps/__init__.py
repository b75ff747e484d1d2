"""Every loop step by name: the one place a config's ``step: NAME`` is looked up.

A step is a dataclass (its fields are its config) with a ``PHASE``, the ``METRICS`` it scores, and one method
``run(state) -> StepResult``; see :mod:`selfevolve.loop.state`.
"""

from __future__ import annotations

from selfevolve.loop.steps.acquire import (
    Documents,
    FictionalDocuments,
    HierarchyData,
    RepairProblems,
    SampleRepairs,
    SynthesizeQA,
)
from selfevolve.loop.steps.evaluate import (
    HeldoutQA,
    HierarchyRobustness,
    InjectedMemorization,
    JudgeConsistency,
    RepairFixRate,
    Retention,
)
from selfevolve.loop.steps.refine import (
    CodeJudgeFilter,
    ExecutionFilter,
    GroundingFilter,
    JudgeRepair,
    SourceAwareCleaning,
)
from selfevolve.loop.steps.update import CORY, PPO, SFT, HierarchySFT, JudgeTuning, RepairSFT, SelfParam

STEPS: dict[str, type] = {
    "fictional_documents": FictionalDocuments,
    "documents": Documents,
    "synthesize_qa": SynthesizeQA,
    "repair_problems": RepairProblems,
    "sample_repairs": SampleRepairs,
    "hierarchy_data": HierarchyData,
    "grounding_filter": GroundingFilter,
    "execution_filter": ExecutionFilter,
    "codejudge_filter": CodeJudgeFilter,
    "sac": SourceAwareCleaning,
    "judge_repair": JudgeRepair,
    "selfparam": SelfParam,
    "sft": SFT,
    "repair_sft": RepairSFT,
    "ppo": PPO,
    "cory": CORY,
    "judge_tuning": JudgeTuning,
    "hierarchy_sft": HierarchySFT,
    "heldout_qa": HeldoutQA,
    "retention": Retention,
    "repair_fix_rate": RepairFixRate,
    "acr": InjectedMemorization,
    "judge_consistency": JudgeConsistency,
    "hierarchy_robustness": HierarchyRobustness,
}
