"""``selfevolve inject``: put documents into a model's weights with SELF-PARAM, and save the updated model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.registry import DEFAULT_MODEL

MODES = ("single", "batch", "sequential")


def _documents(source: str, out: Path):
    """Documents, the questions to train on beside the synthesized ones, and held-out questions (if known)."""
    from selfevolve.acquire.knowledge import (
        fictional_knowledge,
        load_documents,
        write_documents,
        write_questions,
    )

    if not source.startswith("fictional:"):
        return load_documents(source), [], []
    size, _, seed = source.removeprefix("fictional:").partition(":")
    try:
        count = int(size) if size.isdigit() else size
        knowledge = fictional_knowledge(count, seed=int(seed or 0))
    except ValueError as err:
        raise SelfEvolveError(
            f"{source!r} is not fictional:N or fictional:N:SEED (N a count or a size name)"
        ) from err
    write_documents(knowledge.documents, out / "documents.jsonl")
    write_questions(knowledge.test, out / "questions.jsonl")
    return list(knowledge.documents), list(knowledge.train), list(knowledge.test)


def main(
    docs: str = typer.Argument(
        ...,
        help="A .txt file, a folder of .txt files, a .jsonl file (text, id, title), or fictional:N[:SEED].",
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: model/, report.json, config.yaml, checkpoints."
    ),
    lora: bool = typer.Option(
        None, "--lora/--full", help="LoRA adapters (merged at the end) or full fine-tuning."
    ),
    mode: str = typer.Option(
        None, "--mode", help="single, batch or sequential (default: the config's, batch)."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with SelfParamConfig values."),
    overrides: list[str] = typer.Option(
        None, "--set", help="Config override key=value, e.g. train.epochs=3."
    ),
    questions: Path = typer.Option(
        None,
        "--questions",
        help="Held-out questions (JSONL) to score before and after (fictional sets bring theirs).",
    ),
    regularizer_text: Path = typer.Option(
        None,
        "--regularizer-text",
        help="Unrelated text (.txt, folder or .jsonl) for the KL-to-base regularizer that keeps general "
        "knowledge; turns it on with regularizer_weight=1.0 unless --set gives a weight.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    store: Path = typer.Option(
        None, "--store", help="Experience store file to record the synthesized experiences."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Inject documents into a model's weights (SELF-PARAM) and write the updated model and a report."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.acquire.knowledge import load_documents, load_questions
    from selfevolve.config import config_to_dict, load_config, save_config
    from selfevolve.evaluate.qa import answer_questions
    from selfevolve.runtime import load_model
    from selfevolve.store import ExperienceStore
    from selfevolve.update.selfparam import SelfParamConfig, inject, inject_sequential
    from selfevolve.update.training import save_model

    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    extra = [
        *(overrides or []),
        *([f"mode={mode}"] if mode else []),
        *([f"train.lora={lora}"] if lora is not None else []),
    ]
    if regularizer_text is not None and not any(o.startswith("regularizer_weight=") for o in extra):
        extra.insert(0, "regularizer_weight=1.0")
    cfg = load_config(SelfParamConfig, config, extra)
    out.mkdir(parents=True, exist_ok=True)
    documents, given, held_out = _documents(docs, out)
    unrelated = [d.text for d in load_documents(regularizer_text)] if regularizer_text is not None else []
    if questions is not None:
        held_out = load_questions(questions)
    if cfg.mode == "single" and len(documents) != 1:
        raise SelfEvolveError(
            f"--mode single injects one document, got {len(documents)}; use --mode batch or sequential"
        )
    save_config(cfg, out / "config.yaml")
    backend = load_model(model, device=device)

    def evaluate(doc_ids: set[str] | None = None) -> dict | None:
        chosen = [q for q in held_out if doc_ids is None or q.doc_id in doc_ids]
        return answer_questions(backend, chosen).as_dict() if chosen else None

    experience = ExperienceStore(store) if store is not None else None
    run_id = (
        experience.start_run("self-param inject", config_to_dict(cfg)) if experience is not None else None
    )
    report: dict = {
        "model": backend.revision,
        "documents": len(documents),
        "mode": cfg.mode,
        "before": evaluate(),
    }
    options = dict(
        given_questions=given,
        regularizer_texts=unrelated,
        out_dir=out,
        resume=resume,
        store=experience,
        run_id=run_id,
    )
    if cfg.mode == "sequential":
        rounds: list[dict] = []
        groups: list[set[str]] = []

        def after_round(index: int, seen, result) -> None:
            groups.append(set(result.documents))
            retention = [evaluate(group) for group in groups]  # F1 on each round's documents so far
            rounds.append({"round": index, **result.summary(), "retention": retention})
            typer.echo(f"round {index}: " + json.dumps({"round": index, "retention": retention}))

        inject_sequential(backend, documents, cfg, after_round=after_round, **options)
        report["rounds"] = rounds
    else:
        result = inject(backend, documents, cfg, **options)
        report |= result.summary()
    report["after"] = evaluate()
    save_model(backend, out / "model")
    if experience is not None:
        experience.finish_run(run_id)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    typer.echo(
        f"before: {report['before']}\nafter:  {report['after']}\nwrote {out / 'model'} and {out / 'report.json'}"
    )
