"""Instruction hierarchy end to end: generate the privilege-aware data with the model, fine-tune it, save a
normal Hugging Face folder (https://arxiv.org/abs/2404.13208).

A recipe of the loop layer (it composes ``acquire/hierarchy`` and ``update/hierarchy``). ``out_dir`` gets
``data.jsonl`` (the examples; reused on a rerun), ``checkpoint/`` (resumable training), ``model/`` (weights +
tokenizer: ``selfevolve serve DIR/model`` serves it) and ``train.json`` (loss curve, counts, time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfevolve.acquire.hierarchy import (
    SEED_TASKS,
    HierarchyDataConfig,
    generate_hierarchy_data,
    load_examples,
    write_examples,
)
from selfevolve.io import publish_folder, write_json
from selfevolve.runtime.model import LocalModel
from selfevolve.update.hierarchy import HierarchyTrainConfig, train_hierarchy
from selfevolve.update.training import save_model


@dataclass
class InstructionHierarchyConfig:
    """Data and training settings (``data.*`` and ``sft.*`` in a config file)."""

    data: HierarchyDataConfig = field(default_factory=HierarchyDataConfig)
    sft: HierarchyTrainConfig = field(default_factory=HierarchyTrainConfig)


def instruction_hierarchy(
    model: LocalModel,
    out_dir: str | Path,
    config: InstructionHierarchyConfig | None = None,
    *,
    seed_tasks: Sequence[str] = SEED_TASKS,
    data: str | Path | None = None,
    resume: bool = False,
    on_progress=None,
) -> dict:
    """Generate (or read ``data``) and train on instruction-hierarchy examples; ``model`` is trained in place and
    saved to ``out_dir/model``. Returns the run summary written to ``out_dir/train.json``."""
    config = config or InstructionHierarchyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "data.jsonl"
    if data is not None:
        examples = load_examples(data)
    elif resume and data_path.is_file():
        examples = load_examples(data_path)
    else:
        examples = generate_hierarchy_data(model, config.data, seed_tasks, on_batch=on_progress)
    write_examples(examples, data_path)
    trained = train_hierarchy(model, examples, config.sft, checkpoint_dir=out, resume=resume)
    with publish_folder(out / "model") as staging:
        save_model(model, staging)
    summary = {
        "examples": len(examples),
        "kinds": dict(Counter(e.kind for e in examples)),
        "steps": trained.steps,
        "tokens": trained.tokens,
        "seconds": trained.seconds,
        "losses": trained.losses,
        "model": str(out / "model"),
    }
    write_json(out / "train.json", summary)
    return summary
