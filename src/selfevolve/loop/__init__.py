"""The self-evolution loop: acquire, refine, update, evaluate, again and again, unattended and resumable.

``evolve(CONFIG)`` runs a YAML run config (see :mod:`selfevolve.loop.config`); steps are looked up by name in
:data:`selfevolve.loop.steps.STEPS`; ``write_report(RUN_DIR)`` renders the run as one HTML file. One method on
its own, with what other phases add around it, is a recipe (:mod:`selfevolve.loop.recipes`; NExT's ReST-EM
rounds, which acquire, filter, train and evaluate, in :mod:`selfevolve.loop.repair`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    "evolve": "selfevolve.loop.runner",
    "LoopEvent": "selfevolve.loop.runner",
    "RunSummary": "selfevolve.loop.runner",
    "RunConfig": "selfevolve.loop.config",
    "Guard": "selfevolve.loop.config",
    "load_run_config": "selfevolve.loop.config",
    "LoopState": "selfevolve.loop.state",
    "StepResult": "selfevolve.loop.state",
    "STEPS": "selfevolve.loop.steps",
    "write_report": "selfevolve.loop.report",
    "InjectConfig": "selfevolve.loop.recipes",
    "inject_documents": "selfevolve.loop.recipes",
    "judge_samples": "selfevolve.loop.recipes",
    "RepairConfig": "selfevolve.loop.repair",
    "RoundResult": "selfevolve.loop.repair",
    "repair_train": "selfevolve.loop.repair",
}

if TYPE_CHECKING:
    from selfevolve.loop.config import Guard, RunConfig, load_run_config
    from selfevolve.loop.recipes import InjectConfig, inject_documents, judge_samples
    from selfevolve.loop.repair import RepairConfig, RoundResult, repair_train
    from selfevolve.loop.report import write_report
    from selfevolve.loop.runner import LoopEvent, RunSummary, evolve
    from selfevolve.loop.state import LoopState, StepResult
    from selfevolve.loop.steps import STEPS

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
