"""Every loop step by name: the one place a config's ``step: NAME`` is looked up.

A step is a dataclass (its fields are its config) with a ``PHASE``, the ``METRICS`` it scores, and one method
``run(state) -> StepResult``; see :mod:`selfevolve.loop.state`.
"""

from __future__ import annotations

from selfevolve.loop.steps.acquire import Documents, FictionalDocuments, SynthesizeQA
from selfevolve.loop.steps.evaluate import HeldoutQA, Retention
from selfevolve.loop.steps.refine import GroundingFilter
from selfevolve.loop.steps.update import SFT, SelfParam

STEPS: dict[str, type] = {
    "fictional_documents": FictionalDocuments,
    "documents": Documents,
    "synthesize_qa": SynthesizeQA,
    "grounding_filter": GroundingFilter,
    "selfparam": SelfParam,
    "sft": SFT,
    "heldout_qa": HeldoutQA,
    "retention": Retention,
}
