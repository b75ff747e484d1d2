"""The loop: iteration 0 evaluates the base model; each later iteration runs acquire, refine, update and
evaluate, then accepts the update only if every guard holds (else it rolls back) and ships the best accepted
model as ``DIR/model``.

Crash safety: after every step its rows go to the store together with a "step done" marker (one transaction)
and a new model to ``DIR/checkpoints/`` (a staging folder renamed into place, before the marker). A step's
randomness comes from its own seed (the run's seed, the iteration, the step's position), so no RNG state needs
saving: a run resumed after ``kill -9`` replays the unfinished step exactly and ends where an uninterrupted
run ends. Finished steps are read back from the store, never re-run; the same path serves a fresh run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.io import publish_folder, write_text
from selfevolve.loop.config import (
    RunConfig,
    config_differences,
    config_yaml,
    load_run_config,
    run_config_dict,
)
from selfevolve.loop.report import write_report
from selfevolve.loop.state import LoopState, Step
from selfevolve.runtime.model import LocalModel
from selfevolve.store import PHASES, ExperienceStore, IterationRecord, Score, StepRecord
from selfevolve.update.training import save_model

CONFIG_FILE = "config.yaml"
STORE_FILE = "store.sqlite"
MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class LoopEvent:
    """Progress: a step starts, finishes or is found finished (``resumed``); an iteration ends."""

    kind: str  # "plan" (the run), "start", "done", "resumed" (a step), "iteration" (its end), "finished"
    iteration: int  # for "plan": the first iteration still to run
    phase: str = ""
    step: str = ""
    index: int = 0  # the step's position in its iteration
    total: int = 0  # steps in the iteration; for "plan": the last iteration
    message: str = ""
    phases: tuple[tuple[str, int], ...] = ()  # for "plan": steps per phase in an iteration after the first


@dataclass
class RunSummary:
    """A finished run: every iteration, which one was shipped, whether it stopped early, and its files."""

    run_dir: Path
    run_id: str
    iterations: list[IterationRecord]
    best_iteration: int
    stopped_early: bool

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT_FILE


def step_seed(seed: int, iteration: int, index: int) -> int:
    """The seed of step ``index`` of ``iteration``: fixed by the run's seed alone, whatever ran before."""
    return (seed * 1_000_003 + iteration * 1_009 + index) % 2**31


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def _unwritable(run_dir: Path, err: OSError) -> SelfEvolveError:
    return SelfEvolveError(f"cannot write to {run_dir} ({err.strerror or err}); pass a writable --out")


@contextlib.contextmanager
def _run_dir(run_dir: Path, config: RunConfig, resume: bool) -> Iterator[None]:
    """Hold ``run_dir`` (new, empty, or holding a run of this config) for this process, with its config.yaml.

    Nothing is written until the folder is known to be new, empty or ours; two loops in one folder would
    overwrite each other's checkpoints, so ``DIR/.lock`` keeps a second one out."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        if resume:
            raise SelfEvolveError(
                f"nothing to resume in {run_dir} (no {CONFIG_FILE}); drop --resume to start a run"
            )
        if run_dir.exists() and (not run_dir.is_dir() or any(p.name != ".lock" for p in run_dir.iterdir())):
            raise SelfEvolveError(f"{run_dir} is not empty and holds no run; pass a new or empty --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "w")  # noqa: SIM115  (held until the run ends)
    except OSError as err:
        raise _unwritable(run_dir, err) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SelfEvolveError(
                f"another selfevolve evolve is running in {run_dir}; wait for it, or pass another --out"
            ) from None
        _settle_config(run_dir, config)
        yield


def _settle_config(run_dir: Path, config: RunConfig) -> None:
    """Write ``config.yaml`` for a new run; refuse another config once a step has finished (before that, a
    corrected config simply replaces the old one, e.g. after a typo in the model name)."""
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        try:
            differences = config_differences(load_run_config(saved), config)
        except SelfEvolveError as err:
            raise SelfEvolveError(f"{saved} no longer loads ({err}); pass another --out") from None
        if not differences:
            return
        if _has_progress(run_dir):
            shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
            raise SelfEvolveError(
                f"{run_dir} holds a run made by another config ({shown}); resume it with the same config "
                "(or pass the run directory itself), or pass another --out"
            )
        for name in (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"):
            (run_dir / name).unlink(missing_ok=True)
    try:
        write_text(saved, config_yaml(config))
    except OSError as err:
        raise _unwritable(run_dir, err) from None


def _has_progress(run_dir: Path) -> bool:
    """Whether any step of the run in ``run_dir`` has finished."""
    if not (run_dir / STORE_FILE).is_file():
        return False
    with ExperienceStore(run_dir / STORE_FILE) as store:
        return any(store.step_records(run.id) for run in store.runs())


class _Loop:
    """One run directory's loop; every method reads its progress back from the store."""

    def __init__(self, config: RunConfig, run_dir: Path, store: ExperienceStore, emit) -> None:
        self.config, self.run_dir, self.store, self.emit = config, run_dir, store, emit
        runs = store.runs()
        self.run_id = (
            runs[0].id if runs else store.start_run(f"evolve {run_dir.name}", run_config_dict(config))
        )
        self._base: LocalModel | None = None

    def base(self) -> LocalModel:
        from selfevolve.runtime.loading import load_model

        if self._base is None:
            self._base = load_model(
                self.config.model, device=self.config.device, dtype=self.config.dtype, seed=self.config.seed
            )
        return self._base

    def load(self, checkpoint: str | None, revision: str | None) -> LocalModel:
        """The model of a checkpoint folder (relative to the run directory), or the base model for None."""
        from selfevolve.runtime.loading import load_model

        if checkpoint is None:
            return self.base()
        model = load_model(str(self.run_dir / checkpoint), device=self.config.device, dtype=self.config.dtype)
        model.revision = revision
        return model

    def run(self) -> RunSummary:
        records = self.store.iterations(self.run_id)
        last = records[-1] if records else None
        iteration = len(records)
        phases = tuple((p, len(getattr(self.config, p))) for p in PHASES)
        self.emit(LoopEvent("plan", iteration, total=self.config.iterations, phases=phases))
        while iteration <= self.config.iterations and not (last and last.result["stopped"]):
            # each iteration starts from the current accepted model, as recorded (after a rollback: the old one)
            start = self.load(last.result["current"], last.result["revision"]) if last else self.base()
            last = self.iteration(iteration, start, last)
            records.append(last)
            iteration += 1
        if self.store.get_run(self.run_id).status == "running":
            self.store.finish_run(self.run_id)
        write_report(self.run_dir)
        self.emit(LoopEvent("finished", iteration - 1, message=last.reason))
        return RunSummary(
            self.run_dir, self.run_id, records, last.best_iteration, stopped_early=last.result["stopped"]
        )

    def iteration(self, k: int, start: LocalModel, previous: IterationRecord | None) -> IterationRecord:
        """Run (or read back) every step of iteration ``k``, then accept or roll back, and record it."""
        steps = self.config.steps(k)
        model, checkpoint, outputs = start, None, {}
        for index, (phase, name, step) in enumerate(steps):
            record = self.store.step_record(self.run_id, k, phase, name)
            event = LoopEvent("resumed", k, phase, name, index, len(steps))
            if record is None:
                self.emit(dataclasses.replace(event, kind="start"))
                seed = step_seed(self.config.seed, k, index)
                state = LoopState(model, k, self.store, self.run_id, self.run_dir, seed, outputs)
                record = self.run_step(phase, name, step, state)
                event = dataclasses.replace(event, kind="done")
            self.emit(dataclasses.replace(event, message=_describe(record)))
            outputs = {**outputs, name: record}
            if record.result.get("checkpoint"):
                checkpoint = record.result["checkpoint"]
                model = self.load(checkpoint, record.model_revision)
        scores = {f"{n}.{m}": v for n, r in outputs.items() for m, v in r.result.get("metrics", {}).items()}
        decided = self.decide(k, model, checkpoint, previous, scores)
        self.emit(LoopEvent("iteration", k, message=decided.reason))
        write_report(self.run_dir)
        return decided

    def run_step(self, phase: str, name: str, step: Step, state: LoopState) -> StepRecord:
        """Run one step with its own seed; checkpoint its model, then write its rows and marker at once."""
        _seed_everything(state.seed)
        began = time.perf_counter()
        result = step.run(state)
        revision = state.model.revision
        finite = {m: v for m, v in result.metrics.items() if math.isfinite(v)}
        metrics = {m: finite.get(m) for m in result.metrics}  # a diverged metric is kept as None (JSON null)
        summary = {"metrics": metrics, "losses": result.losses, "summary": result.summary}
        if result.model is not None:
            revision = f"{self.base_revision(state.iteration, state.model)}+i{state.iteration}.{name}"
            folder = self.run_dir / CHECKPOINTS / f"iter{state.iteration:02d}-{name}"
            result.model.revision = revision
            with publish_folder(folder) as staging:
                save_model(result.model, staging)
            summary["checkpoint"] = folder.relative_to(self.run_dir).as_posix()
        summary["seconds"] = time.perf_counter() - began
        self.store.record_step(
            self.run_id,
            state.iteration,
            phase,
            name,
            experiences=result.experiences,
            decisions=result.decisions,
            scores=[Score(metric, value, revision) for metric, value in finite.items()],
            result=summary,
            model_revision=revision,
        )
        return self.store.step_record(self.run_id, state.iteration, phase, name)

    def base_revision(self, iteration: int, model: LocalModel) -> str:
        if iteration == 0:
            return model.revision
        return self.store.iterations(self.run_id)[0].model_revision

    def decide(
        self,
        k: int,
        model: LocalModel,
        checkpoint: str | None,
        previous: IterationRecord | None,
        scores: dict[str, float | None],
    ) -> IterationRecord:
        """Guards, selection and early stop for iteration ``k`` (``scores``: "step.metric" -> value, None when
        not finite); publishes a new best as ``DIR/model``."""
        config = self.config
        for name in [config.selection_metric, *(g.metric for g in config.guards)]:
            if name not in scores:
                raise SelfEvolveError(f"iteration {k} scored no {name}; its evaluate step must report it")
            if previous is None and scores[name] is None:
                raise SelfEvolveError(
                    f"the base model's {name} is not a finite number; guard and select on other metrics"
                )
        value = scores[config.selection_metric]
        if previous is None:
            accepted, reason, best, best_value, stale = True, "the base model", 0, value, 0
            current, revision = None, model.revision
        else:
            base = previous.result["base_scores"]
            current, revision = previous.result["current"], previous.result["revision"]
            best, best_value, stale = (
                previous.best_iteration,
                previous.result["best_value"],
                previous.result["stale"],
            )
            broken = _violations(config, scores, base)
            accepted = not broken
            if broken:
                reason = "rolled back: " + "; ".join(broken)
            elif checkpoint is None:
                reason = "no update (nothing to train on)"
            else:
                reason = "accepted: every guard held"
                current, revision = checkpoint, model.revision
            if accepted and checkpoint is not None and _improves(config, value, best_value):
                best, best_value, stale = k, value, 0
                reason += f"; new best {config.selection_metric} = {value:.4g}"
            else:
                stale += 1
        stopped = stale >= config.patience and k < config.iterations
        if stopped:
            reason += f"; stopped early: {stale} iteration(s) without a new best"
        if best == k:
            self.publish(k, model, checkpoint, reason)
        result = {
            "scores": scores,
            "base_scores": scores if previous is None else previous.result["base_scores"],
            "candidate": model.revision,
            "updated": checkpoint is not None,
            "current": current,
            "revision": revision,
            "best_value": best_value,
            "stale": stale,
            "stopped": stopped,
        }
        self.store.record_iteration(
            self.run_id,
            k,
            accepted=accepted,
            reason=reason,
            best_iteration=best,
            model_revision=model.revision,
            result=result,
        )
        self.prune(keep=current)
        return self.store.iterations(self.run_id)[k]

    def publish(self, k: int, model: LocalModel, checkpoint: str | None, reason: str) -> None:
        """Make ``DIR/model`` this iteration's model (atomically), with a note of where it came from."""
        with publish_folder(self.run_dir / MODEL_DIR) as staging:
            if checkpoint is None:
                save_model(model, staging)
            else:
                _link_files(self.run_dir / checkpoint, staging)
            note = {"iteration": k, "revision": model.revision, "reason": reason}
            (staging / "loop.json").write_text(json.dumps(note, indent=2), encoding="utf-8")

    def prune(self, keep: str | None) -> None:
        """Delete step checkpoints no later iteration needs (all but the current model's)."""
        folder = self.run_dir / CHECKPOINTS
        for item in folder.iterdir() if folder.is_dir() else ():
            if keep is None or item.resolve() != (self.run_dir / keep).resolve():
                shutil.rmtree(item, ignore_errors=True)


def _link_files(source: Path, folder: Path) -> None:
    """Put the files of ``source`` into ``folder``: hard links where the file system allows, else copies."""
    for item in source.iterdir():
        try:
            os.link(item, folder / item.name)
        except OSError:
            shutil.copy2(item, folder / item.name)


def _violations(config: RunConfig, scores: dict[str, float | None], base: dict[str, float]) -> list[str]:
    """Why each broken guard is broken (a metric that is not finite breaks its guard)."""
    broken = []
    for guard in config.guards:
        value = scores[guard.metric]
        if value is None:
            broken.append(f"{guard.metric} is not a finite number")
        elif (why := guard.violation(value, base[guard.metric])) is not None:
            broken.append(why)
    return broken


def _improves(config: RunConfig, value: float | None, best: float) -> bool:
    """Whether ``value`` of the selection metric beats ``best`` by more than ``min_improvement``."""
    if value is None:
        return False
    if config.selection_mode == "min":
        return value < best - config.min_improvement
    return value > best + config.min_improvement


def _describe(record: StepRecord) -> str:
    """One line about a finished step, for progress displays."""
    result = record.result
    if result.get("metrics"):
        return ", ".join(
            f"{k} {'n/a' if v is None else format(v, '.4g')}" for k, v in result["metrics"].items()
        )
    if result.get("losses"):
        return f"{len(result['losses'])} steps, final loss {result['losses'][-1]:.4g}"
    return ", ".join(f"{k} {v}" for k, v in result.get("summary", {}).items() if not isinstance(v, dict))


def evolve(
    config: str | Path | RunConfig,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    on_event: Callable[[LoopEvent], None] | None = None,
) -> RunSummary:
    """Run (or resume) the self-evolution loop.

    Args:
        config: a run config YAML file, a :class:`RunConfig`, or a run directory (resumes it).
        out: the run directory (default: the config's ``out``).
        overrides: ``key=value`` settings over the config; a step's as ``phase.step.key=value``.
        resume: require an existing run in the directory (re-running on one resumes it anyway).
        on_event: called with a :class:`LoopEvent` as steps and iterations start and end.
    """
    if isinstance(config, RunConfig):
        if overrides:
            raise SelfEvolveError("overrides apply to a config file; set the fields of the RunConfig instead")
        run_config = config
    elif Path(config).is_dir():
        out, resume = out or config, True
        run_config = load_run_config(Path(config) / CONFIG_FILE, overrides)
    else:
        run_config = load_run_config(config, overrides)
    run_dir = Path(out if out is not None else run_config.out)
    run_config = dataclasses.replace(run_config, out=str(run_dir))
    with _run_dir(run_dir, run_config, resume), ExperienceStore(run_dir / STORE_FILE) as store:
        return _Loop(run_config, run_dir, store, on_event or (lambda event: None)).run()
