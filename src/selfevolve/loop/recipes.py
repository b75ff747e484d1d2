"""One method run on its own, with what other phases add around it: the library side of ``selfevolve inject``
(synthesis, SELF-PARAM injection, held-out QA before and after) and ``selfevolve judge-code`` (candidate files,
CodeJudge, agreement with execution labels). The CLI parses, calls one of these, and prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfevolve.acquire.knowledge import (
    fictional_spec,
    load_documents,
    load_questions,
    write_documents,
    write_questions,
)
from selfevolve.acquire.mutate import load_candidates
from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
from selfevolve.config import config_to_dict, save_config
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.codejudge import CodeJudgeConfig, judge, judge_metrics
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.evaluate.qa import answer_questions
from selfevolve.io import publish_folder, read_jsonl, write_json, write_jsonl
from selfevolve.records import Document, QAItem, SynthesizedItem
from selfevolve.runtime.loading import load_model
from selfevolve.runtime.model import LocalModel
from selfevolve.store import ExperienceStore
from selfevolve.update.selfparam import InjectionResult, SelfParamConfig, inject, inject_sequential
from selfevolve.update.training import save_model

ITEMS_FILE = "synthesized.jsonl"


@dataclass
class InjectConfig(SelfParamConfig):
    """``selfevolve inject``'s settings: SELF-PARAM's, plus the synthesis that writes its training items."""

    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


def _knowledge(source: str, out: Path) -> tuple[list[Document], list[QAItem], list[QAItem]]:
    """Documents, training questions and held-out questions of ``source``: a .txt file, a folder of them or a
    .jsonl file (no questions), or ``fictional:N[:SEED]`` (its documents and test questions are written to
    ``out``)."""
    knowledge = fictional_spec(source)
    if knowledge is None:
        return load_documents(source), [], []
    write_documents(knowledge.documents, out / "documents.jsonl")
    write_questions(knowledge.test, out / "questions.jsonl")
    return list(knowledge.documents), list(knowledge.train), list(knowledge.test)


def _synthesized(
    model: LocalModel,
    documents: Sequence[Document],
    config: SynthesisConfig,
    given: Sequence[QAItem],
    path: Path,
    resume: bool,
    store: ExperienceStore | None,
    run_id: str | None,
) -> list[SynthesizedItem]:
    """The items of an interrupted run (``resume``) or freshly synthesized ones, kept in ``path``."""
    if resume and path.is_file():
        return [SynthesizedItem(**record) for _, record in read_jsonl(path)]
    items = synthesize(model, documents, config, given_questions=given, store=store, run_id=run_id)
    if not items:
        raise SelfEvolveError(
            "synthesis kept no usable item for these documents (every answer failed the support filter); "
            "lower synthesis.min_support, raise synthesis.questions_per_document, or pass given questions"
        )
    write_jsonl(path, (asdict(item) for item in items))
    return items


def inject_documents(
    source: str,
    out: Path,
    config: InjectConfig,
    *,
    model: str,
    device: str = "auto",
    questions: Path | None = None,
    regularizer_text: Path | None = None,
    resume: bool = False,
    store: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Inject the documents of ``source`` (a .txt file, a folder of them, a .jsonl file, or
    ``fictional:N[:SEED]``) into ``model`` with SELF-PARAM.

    The model synthesizes its training items (kept in ``out/synthesized.jsonl``, reused by ``resume``; recorded
    in the experience store file ``store`` if given), is updated by
    :func:`~selfevolve.update.selfparam.inject` (or ``inject_sequential``, and ``on_round`` gets each round's
    report row), and answers the held-out ``questions`` (a fictional set brings its own) before and after.
    Writes ``out/config.yaml``, ``out/model/`` and ``out/report.json``; returns the report.
    """
    out.mkdir(parents=True, exist_ok=True)
    documents, given, held_out = _knowledge(source, out)
    unrelated = [d.text for d in load_documents(regularizer_text)] if regularizer_text is not None else []
    if questions is not None:
        held_out = load_questions(questions)
    if config.mode == "single" and len(documents) != 1:
        raise SelfEvolveError(
            f"mode single injects one document, got {len(documents)}; use mode batch or sequential"
        )
    save_config(config, out / "config.yaml")
    backend = load_model(model, device=device)

    def evaluate(doc_ids: set[str] | None = None) -> dict | None:
        chosen = [q for q in held_out if doc_ids is None or q.doc_id in doc_ids]
        return answer_questions(backend, chosen).as_dict() if chosen else None

    with ExperienceStore(store) if store is not None else nullcontext() as experience:
        run_id = (
            experience.start_run("self-param inject", config_to_dict(config))
            if experience is not None
            else None
        )
        report: dict[str, Any] = {
            "model": backend.revision,
            "documents": len(documents),
            "mode": config.mode,
            "before": evaluate(),
        }
        began = time.perf_counter()
        items = _synthesized(
            backend, documents, config.synthesis, given, out / ITEMS_FILE, resume, experience, run_id
        )
        report |= {"synthesized_items": len(items), "synthesis_seconds": time.perf_counter() - began}
        options = dict(regularizer_texts=unrelated, out_dir=out, resume=resume)
        if config.mode == "sequential":
            rounds: list[dict] = []
            groups: list[set[str]] = []

            def after_round(index: int, seen: list[Document], result: InjectionResult) -> None:
                groups.append(set(result.documents))
                retention = [evaluate(group) for group in groups]  # F1 on each round's documents so far
                rounds.append({"round": index, **result.summary(), "retention": retention})
                if on_round is not None:
                    on_round(rounds[-1])

            inject_sequential(backend, documents, items, config, after_round=after_round, **options)
            report["rounds"] = rounds
        else:
            report |= inject(backend, documents, items, config, **options).summary()
        report["after"] = evaluate()
        with publish_folder(out / "model") as staging:
            save_model(backend, staging)
        if experience is not None:
            experience.finish_run(run_id)
    write_json(out / "report.json", report)
    return report


def judge_samples(
    samples: Path,
    config: CodeJudgeConfig,
    *,
    judge_model: str,
    mode: str = "analyze",
    problems: Path | None = None,
    reference: bool = False,
    base_url: str | None = None,
    api_key: str = "EMPTY",
    limit: int | None = None,
    out: Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Judge the code samples of a JSONL file without running them (CodeJudge's ``mode`` or a baseline) with
    ``judge_model``, loaded here or served at ``base_url``; write each verdict with its label to ``out``.

    Returns the summary: judge, mode, counts, mean score, and agreement with the samples' ``passed`` labels
    when any are given. Bad files fail here, before the judge is loaded."""
    candidates = load_candidates(samples)[:limit]
    if not candidates:
        raise SelfEvolveError(f"{samples} holds no samples; write one JSON object per line")
    by_id = {p.task_id: p for p in load_humaneval(problems)}
    unknown = sorted({c.task_id for c in candidates} - set(by_id))
    if unknown:
        where = problems or "the bundled HumanEval"
        raise SelfEvolveError(
            f"task id(s) {unknown[:5]} of {samples} are not in {where}; check the samples and problems files"
        )
    if base_url:
        from selfevolve.runtime.http import OpenAIBackend

        backend = OpenAIBackend(base_url, model=judge_model, api_key=api_key)
    else:
        backend = load_model(judge_model, device=device)
    results = judge(backend, by_id, candidates, mode, config, reference=reference)
    if out is not None:
        write_jsonl(out, ({**r.as_dict(), "passed": c.passed} for c, r in zip(candidates, results)))
    valid = [r for r in results if r.valid]
    summary = {
        "judge": getattr(backend, "revision", backend.name),
        "mode": mode,
        "reference": reference,
        "n": len(results),
        "invalid": len(results) - len(valid),
        "mean_score": sum(r.score for r in valid) / len(valid) if valid else None,
    }
    if any(c.passed is not None for c in candidates):
        summary |= judge_metrics(results, candidates)
    return summary
