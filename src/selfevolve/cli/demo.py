"""``selfevolve demo``: a short tour of what has landed, on the embedded default model.

It grows with the library: each method adds its step here once it exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from selfevolve.runtime.registry import DEFAULT_MODEL

DEMO_TASK = "HumanEval/3"  # below_zero: a short loop, so the trace of its mutant fits a screen
QUESTIONS = (
    "What is the capital of France?",
    "Give me one tip for writing clean Python code.",
    "What is 12 + 30?",
    "Name a planet in the solar system.",
)


def main(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model to show off."),
    out: Path = typer.Option(Path("results/demo"), "--out", help="Where the experience store and export go."),
) -> None:
    """Load the model, generate in a batch, score answers, sample, compress the KV cache, repair a traced bug in
    the sandbox, and record it all in the experience store."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.evaluate.humaneval import load_humaneval
    from selfevolve.runtime import load_model
    from selfevolve.runtime.kv import FullKV, SnapKV, StreamingLLM
    from selfevolve.store import Experience, ExperienceStore
    from selfevolve.update.repair import RepairConfig, attempt_repairs, build_problems

    console = Console()
    start = time.perf_counter()
    backend = load_model(model)
    console.rule(
        f"[bold]selfevolve demo[/bold]: {backend.revision} loaded in {time.perf_counter() - start:.1f} s"
    )

    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    start = time.perf_counter()
    answers = backend.generate(chats, max_new_tokens=48)
    seconds = time.perf_counter() - start
    tokens = sum(len(a.token_ids) for a in answers)
    table = Table(
        title=f"1. batched greedy generation: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f}/s)"
    )
    table.add_column("question")
    table.add_column("answer")
    for question, answer in zip(QUESTIONS, answers):
        table.add_row(question, answer.text)
    console.print(table)

    prompt = "The capital of France is"
    candidates = [" Paris", " London", " Berlin", " a city"]
    scores = backend.score([prompt] * len(candidates), candidates)
    table = Table(title=f"2. scoring continuations of {prompt!r} (log-probabilities)")
    for column in ("continuation", "tokens", "total", "mean"):
        table.add_column(column)
    for candidate, score in sorted(zip(candidates, scores), key=lambda pair: -pair[1].total):
        table.add_row(repr(candidate), str(len(score.token_ids)), f"{score.total:.2f}", f"{score.mean:.2f}")
    console.print(table)

    samples = backend.generate(
        [[{"role": "user", "content": "Write a one-line slogan for a bakery."}]],
        max_new_tokens=24,
        temperature=0.9,
        top_p=0.95,
        n=3,
        seed=7,
    )
    console.print("[bold]3. three samples at temperature 0.9 (seed 7)[/bold]")
    for sample in samples:
        console.print(f"  - {sample.text.strip()}")

    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go, there and back again. " * 18
    needle = "\n\nThe pass key is 71432. Remember it. 71432 is the pass key.\n\n"
    haystack = [{"role": "user", "content": filler + needle + filler + "\n\nWhat is the pass key?"}]
    table = Table(title="4. SnapKV: a pass key hidden in a long prompt, answered from a compressed KV cache")
    for column in ("cache", "KV bytes", "answer"):
        table.add_column(column)
    # SmolLM2 spells numbers digit by digit: a pooling kernel wider than the paper's 7 keeps the whole key
    # together (see `selfevolve bench needle`).
    # The bytes are those of the cache each answer was generated from (the policy's report of that call).
    width = len(backend.encode(haystack))
    for label, policy in (
        (f"full ({width} tokens)", FullKV()),
        ("SnapKV, 128 tokens, kernel 15", SnapKV(budget=128, kernel=15)),
        ("StreamingLLM, 4 + 124 tokens", StreamingLLM(sinks=4, recent=124)),
    ):
        (reply,) = backend.generate([haystack], max_new_tokens=12, kv_compression=policy)
        table.add_row(label, f"{policy.last_report.last.kept_bytes / 2**20:.1f} MiB", reply.text.strip())
    console.print(table)

    task = next(p for p in load_humaneval() if p.task_id == DEMO_TASK)
    config = RepairConfig(mutants_per_task=1, max_new_tokens=160)
    (bug,) = build_problems([task], config)
    console.print(
        f"[bold]5. sandbox + NExT[/bold]: a mutant of {bug.task_id} ({bug.operator}) fails "
        f"[cyan]{bug.test}[/cyan] in the sandbox; its inline execution trace:"
    )
    console.print(Syntax(bug.trace.rstrip(), "python", word_wrap=True))
    (attempt,) = attempt_repairs(
        backend, [bug], {task.task_id: task}, config, traced=True, n=1, temperature=0.8, seed=0
    )
    verdict = "passes every test" if attempt.passed else f"does not pass the tests ({attempt.status})"
    console.print(f"[bold]6. trace-guided repair[/bold]: the model's fix {verdict}. Its answer:")
    console.print(f"  {attempt.reply.strip()}", markup=False, highlight=False)

    out.mkdir(parents=True, exist_ok=True)
    with ExperienceStore(out / "experiences.sqlite") as store:
        run_id = store.start_run("demo", config={"model": model})
        records = [
            Experience(
                run_id=run_id,
                task="chat",
                prompt=q,
                response=a.text,
                method="demo",
                phase="acquire",
                model_revision=backend.revision,
                metadata={"finish_reason": a.finish_reason},
            )
            for q, a in zip(QUESTIONS, answers)
        ]
        records.append(
            Experience(
                run_id=run_id,
                task=f"repair:{bug.key}",
                prompt=bug.trace,
                response=attempt.reply,
                score=float(attempt.passed),
                feedback={"status": attempt.status, "test": bug.test},
                method="next",
                phase="acquire",
                model_revision=backend.revision,
            )
        )
        records += [
            Experience(
                run_id=run_id,
                task="continuation-scoring",
                prompt=prompt,
                response=candidate,
                score=score.total,
                method="demo",
                phase="evaluate",
                model_revision=backend.revision,
            )
            for candidate, score in zip(candidates, scores)
        ]
        store.add_many(records)
        store.finish_run(run_id)
        exported = store.export_jsonl(out / "experiences.jsonl", run_id=run_id)
        console.print(
            f"[bold]7. experience store[/bold]: run {run_id} recorded {exported} experiences "
            f"({len(store)} in {out / 'experiences.sqlite'}); exported to {out / 'experiences.jsonl'}"
        )
