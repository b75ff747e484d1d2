"""The run config: model, output folder, iterations, seed, guards, selection, and the steps of each phase.

A YAML file names, per phase, an ordered list of steps, each ``{step: NAME, ...its config fields}``::

    model: smollm2-135m-instruct
    iterations: 2
    guards: [{metric: retention.perplexity, max_increase: 0.10}]
    selection_metric: heldout_qa.f1
    acquire: [{step: fictional_documents, count: 1}, {step: synthesize_qa}]
    refine: [{step: grounding_filter}]
    update: [{step: selfparam, train: {epochs: 4}}]
    evaluate: [{step: heldout_qa, questions: "fictional:1:0"}, {step: retention}]

Overrides address a step by phase and name: ``update.selfparam.train.epochs=2``. Defaults, then the file, then
the overrides, every key and type checked by :mod:`selfevolve.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfevolve.config import _build, _merge, config_to_dict, parse_overrides, read_yaml
from selfevolve.errors import SelfEvolveError
from selfevolve.loop.state import Step
from selfevolve.loop.steps import STEPS
from selfevolve.runtime.registry import DEFAULT_MODEL
from selfevolve.store import PHASES


@dataclass
class Guard:
    """An update is accepted only while ``metric`` stays within this tolerance of the base model's value."""

    metric: str  # "step.metric", e.g. "retention.perplexity"
    max_increase: float | None = None  # 0.10: at most 10% above the base value (absolute when relative=False)
    max_decrease: float | None = None
    relative: bool = True  # tolerances as a share of the base value, or in the metric's own units

    def __post_init__(self) -> None:
        if self.max_increase is None and self.max_decrease is None:
            raise SelfEvolveError(
                f"guard {self.metric} has no tolerance, so it can never be broken; "
                "set max_increase or max_decrease"
            )
        if min(v for v in (self.max_increase, self.max_decrease) if v is not None) < 0:
            raise SelfEvolveError(
                f"guard {self.metric}: tolerances must not be negative, got max_increase={self.max_increase} "
                f"and max_decrease={self.max_decrease}; use 0 for no change allowed"
            )

    def violation(self, value: float, base: float) -> str | None:
        """Why ``value`` breaks the guard against the ``base`` value, or None when it holds."""
        for bound, sign, word in ((self.max_increase, 1, "rose"), (self.max_decrease, -1, "fell")):
            if bound is None:
                continue
            limit = base * (1 + sign * bound) if self.relative else base + sign * bound
            if sign * (value - limit) > 0:
                allowed = f"{bound:.0%}" if self.relative else f"{bound:g}"
                return f"{self.metric} {word} to {value:.4g} from {base:.4g} (allowed: {allowed})"
        return None


@dataclass
class RunConfig:
    """One loop run. Each phase is an ordered list of step objects (see :data:`selfevolve.loop.steps.STEPS`)."""

    model: str = DEFAULT_MODEL  # registry name, model folder, .gguf or hub id
    out: str = "runs/evolve"  # the run directory (``--out`` overrides it)
    iterations: int = 2  # update iterations after the base evaluation (iteration 0)
    seed: int = 0  # fixes every step's randomness (a step's seed: this, the iteration, its position)
    patience: int = 2  # stop after this many iterations in a row without a new best
    min_improvement: float = 0.0  # a new best must beat the old one by more than this
    selection_metric: str = "heldout_qa.f1"  # "step.metric": DIR/model is the accepted model best on it
    selection_mode: Literal["max", "min"] = "max"
    guards: list[Guard] = field(default_factory=list)
    device: str = "auto"
    dtype: str = "auto"
    acquire: list[Any] = field(default_factory=list)
    refine: list[Any] = field(default_factory=list)
    update: list[Any] = field(default_factory=list)
    evaluate: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.patience < 1 or self.min_improvement < 0:
            raise SelfEvolveError(
                "iterations must be >= 0, patience >= 1 and min_improvement >= 0, got "
                f"{self.iterations}, {self.patience} and {self.min_improvement}; "
                "raise the one below its minimum"
            )
        if not self.evaluate:
            raise SelfEvolveError(
                "evaluate lists no step, so no update could be judged; add one, e.g. {step: heldout_qa}"
            )
        metrics = [f"{step_name(s)}.{m}" for s in self.evaluate for m in type(s).METRICS]
        for name in [self.selection_metric, *(g.metric for g in self.guards)]:
            if name not in metrics:
                raise SelfEvolveError(
                    f"metric {name!r} is not scored by an evaluate step; use one of {', '.join(metrics)}"
                )

    def steps(self, iteration: int) -> list[tuple[str, str, Step]]:
        """(phase, name, step) in the order they run; iteration 0 only evaluates the base model."""
        phases = ("evaluate",) if iteration == 0 else PHASES
        return [(phase, step_name(s), s) for phase in phases for s in getattr(self, phase)]


def step_name(step: Step) -> str:
    """The registry name of a step object."""
    for name, cls in STEPS.items():
        if type(step) is cls:
            return name
    raise SelfEvolveError(f"{type(step).__name__} is not in selfevolve.loop.steps.STEPS; add it there")


def _entries(phase: str, value: Any) -> list[dict[str, Any]]:
    """A phase's list of ``{step: NAME, ...}`` mappings, checked."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, Mapping) and "step" in e for e in value):
        raise SelfEvolveError(f"{phase} must be a list of {{step: NAME, ...}} mappings, got {value!r}")
    names = [e["step"] for e in value]
    for name in names:
        cls = STEPS.get(name)
        if cls is None:
            raise SelfEvolveError(f"unknown step {name!r} in {phase}; known steps: {', '.join(STEPS)}")
        if phase != cls.PHASE:
            raise SelfEvolveError(f"step {name!r} belongs to {cls.PHASE}, not {phase}; move it there")
    if len(set(names)) < len(names):
        raise SelfEvolveError(f"{phase} lists a step twice ({names}); a step runs once per phase")
    return [dict(e) for e in value]


def build_run_config(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """A :class:`RunConfig` from parsed YAML and ``key=value`` overrides (``phase.step.key=value`` for steps)."""
    tree = parse_overrides(overrides)
    values = dict(values)
    steps: dict[str, list[Step]] = {}
    for phase in PHASES:
        entries = _entries(phase, values.pop(phase, None))
        patch = tree.pop(phase, {})
        if not isinstance(patch, Mapping):
            raise SelfEvolveError(f"override {phase}={patch!r}: write {phase}.STEP.KEY=VALUE")
        for name, fields in patch.items():
            index = next((i for i, e in enumerate(entries) if e["step"] == name), None)
            if index is None or not isinstance(fields, Mapping):
                listed = ", ".join(e["step"] for e in entries) or "none"
                raise SelfEvolveError(
                    f"override {phase}.{name}: {phase} has no step {name!r} (it has: {listed}); "
                    f"write {phase}.STEP.KEY=VALUE"
                )
            entries[index] = _merge(entries[index], fields)
        steps[phase] = [
            _build(STEPS[e["step"]], {k: v for k, v in e.items() if k != "step"}, f"{phase}.{e['step']}.")
            for e in entries
        ]
    return _build(RunConfig, {**_merge(values, tree), **steps})


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The run config in the YAML file at ``path``, with ``key=value`` overrides applied."""
    return build_run_config(read_yaml(path), overrides)


def run_config_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as plain YAML data, each step written ``{step: NAME, ...its fields}``."""
    data: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if spec.name in PHASES:
            value = [{"step": step_name(s), **config_to_dict(s)} for s in value]
        elif spec.name == "guards":
            value = [config_to_dict(g) for g in value]
        data[spec.name] = value
    return data


def config_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(run_config_dict(config), sort_keys=False)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if not prefix and key in PHASES:
            flat[key] = [e["step"] for e in value]
            for entry in value:
                flat |= _flatten({k: v for k, v in entry.items() if k != "step"}, f"{key}.{entry['step']}.")
        elif isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_differences(old: RunConfig, new: RunConfig, ignore: Sequence[str] = ("out",)) -> list[str]:
    """``key: old -> new`` for every setting that differs (steps named ``phase.step.key``)."""
    before, after = _flatten(run_config_dict(old)), _flatten(run_config_dict(new))
    missing = "(absent)"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(before.keys() | after.keys())
        if key not in ignore and before.get(key, missing) != after.get(key, missing)
    ]
