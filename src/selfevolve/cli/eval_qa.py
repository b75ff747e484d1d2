"""``selfevolve eval-qa``: score a model on held-out questions (SQuAD F1, exact match, answer recall)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.registry import DEFAULT_MODEL

CONTEXTS = ("none", "document", "retrieval")


def main(
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    questions: Path = typer.Option(
        ..., "--questions", "-q", help="JSONL: question, answer or answers, doc_id."
    ),
    documents: Path = typer.Option(
        None,
        "--documents",
        "-d",
        help="Documents (.txt, folder, .jsonl) for --context document or retrieval.",
    ),
    context: str = typer.Option(
        "none", "--context", help="none (closed book), document (each question's own document) or retrieval."
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1, help="Most tokens per answer."),
    out: Path = typer.Option(None, "--out", "-o", help="Write scores and every answer to this JSON file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Answer held-out questions with a model and print QA-F1, exact match and answer recall."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.acquire.knowledge import load_documents, load_questions
    from selfevolve.evaluate.qa import Retriever, answer_questions, in_context
    from selfevolve.io import write_json
    from selfevolve.runtime import load_model

    if context not in CONTEXTS:
        raise typer.BadParameter(f"--context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    if context != "none" and documents is None:
        raise SelfEvolveError(f"--context {context} needs --documents")
    items = load_questions(questions)
    contexts = None
    if context == "document":
        contexts = in_context(items, load_documents(documents))
    elif context == "retrieval":
        contexts = Retriever(load_documents(documents)).retrieve([q.question for q in items])
    backend = load_model(model, device=device)
    result = answer_questions(backend, items, contexts, max_new_tokens=max_new_tokens)
    scores = {"model": backend.revision, "questions": len(items), "context": context, **result.as_dict()}
    typer.echo(json.dumps(scores))
    if out is not None:
        write_json(out, {**scores, "rows": result.rows})
