"""What a loop step sees (:class:`LoopState`) and what it gives back (:class:`StepResult`).

A step is a dataclass whose fields are its config, with one method ``run(state) -> StepResult``. It reads what
earlier steps of the iteration produced from the experience store (through ``state``), never from another step
object, so a step resumed after a crash sees exactly what it would have seen in one go.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.model import LocalModel
from selfevolve.store import Decision, Experience, ExperienceStore, StepRecord


class Step(Protocol):
    """A loop step: its dataclass fields are its config (the paper's defaults)."""

    PHASE: ClassVar[str]  # acquire, refine, update or evaluate
    METRICS: ClassVar[tuple[str, ...]]  # what an evaluate step scores (guards and selection name these)

    def run(self, state: LoopState) -> StepResult: ...


@dataclass
class StepResult:
    """What a step produced; the runner writes it to the store and checkpoints the model, then moves on."""

    experiences: list[Experience] = field(default_factory=list)  # new rows; parent_id names a stored one
    decisions: list[Decision] = field(default_factory=list)  # verdicts on stored experiences
    metrics: dict[str, float] = field(default_factory=dict)  # evaluate steps: the scores
    losses: list[float] = field(default_factory=list)  # update steps: the training loss per optimizer step
    model: LocalModel | None = None  # update steps: the new model (None: the model is unchanged)
    summary: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (JSON)


@dataclass
class LoopState:
    """The loop as one step sees it: the current model, where the run is, and this iteration's records."""

    model: LocalModel  # the model as it stands before this step (after this iteration's earlier updates)
    iteration: int  # 0 evaluates the base model; 1.. run every phase
    store: ExperienceStore
    run_id: str
    run_dir: Path
    seed: int  # this step's seed, fixed by the run's seed, the iteration and the step's position
    outputs: dict[str, StepRecord] = field(default_factory=dict)  # earlier steps of this iteration, by name

    def experiences(self, task: str | None = None, iteration: int | None = None) -> list[Experience]:
        """Stored experiences of this iteration (or ``iteration``), optionally of one ``task``."""
        chosen = self.iteration if iteration is None else iteration
        return self.store.query(run_id=self.run_id, iteration=chosen, task=task)

    def kept(self, task: str) -> list[Experience]:
        """This iteration's experiences of ``task`` that no decision of this iteration dropped."""
        dropped = {
            d.experience_id for d in self.store.decisions(self.run_id, iteration=self.iteration) if not d.kept
        }
        return [e for e in self.experiences(task) if e.id not in dropped]


def existing_path(value: str, what: str, fix: str = "fix the path") -> str:
    """``value`` as an absolute path ("" stays ""), so a resumed run finds it from any working directory; a
    :class:`SelfEvolveError` (a one-line config error) when nothing is there."""
    if not value:
        return value
    if not Path(value).exists():
        raise SelfEvolveError(f"{what} {value} does not exist; {fix}")
    return str(Path(value).resolve())


def clone_model(model: LocalModel) -> LocalModel:
    """An independent copy of ``model`` (weights included), for an update that must not touch the original."""
    return LocalModel(
        copy.deepcopy(model.model),
        model.tokenizer,
        name=model.name,
        revision=model.revision,
        batch_size=model.batch_size,
    )
