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
    RepairFixRate,
    Retention,
)
from selfevolve.loop.steps.refine import CodeJudgeFilter, ExecutionFilter, GroundingFilter
from selfevolve.loop.steps.update import SFT, HierarchySFT, RepairSFT, SelfParam

STEPS: dict[str, type] = {
    "fictional_documents": FictionalDocuments,
    "documents": Documents,
    "synthesize_qa": SynthesizeQA,
    "repair_problems": RepairProblems,
    "sample_repairs": SampleRepairs,
    "grounding_filter": GroundingFilter,
    "execution_filter": ExecutionFilter,
    "codejudge_filter": CodeJudgeFilter,
    "selfparam": SelfParam,
    "sft": SFT,
    "repair_sft": RepairSFT,
    "heldout_qa": HeldoutQA,
    "retention": Retention,
    "repair_fix_rate": RepairFixRate,
    "acr": InjectedMemorization,
    "hierarchy_data": HierarchyData,
    "hierarchy_sft": HierarchySFT,
    "hierarchy_robustness": HierarchyRobustness,
}
