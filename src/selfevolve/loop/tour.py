"""The tour ``selfevolve demo`` shows: batched generation, scoring, sampling, a compressed KV cache and one
trace-guided repair in the sandbox on one model, all recorded in an experience store. Each stage is a
:class:`Section`, yielded as soon as it is done, so the caller can show it while the next one runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.loop.repair import RepairConfig, attempt_repairs, build_problems
from selfevolve.runtime.kv import FullKV, SnapKV, StreamingLLM
from selfevolve.runtime.loading import load_model
from selfevolve.store import Experience, ExperienceStore

DEMO_TASK = "HumanEval/3"  # below_zero: a short loop, so the trace of its mutant fits a screen
QUESTIONS = (
    "What is the capital of France?",
    "Give me one tip for writing clean Python code.",
    "What is 12 + 30?",
    "Name a planet in the solar system.",
)


@dataclass
class Section:
    """One stage of the tour: a title, then a table (``columns`` and ``rows``), Python ``code``, or ``text``."""

    title: str
    columns: tuple[str, ...] = ()
    rows: list[tuple[str, ...]] = field(default_factory=list)
    code: str = ""
    text: str = ""


def tour(model: str, out: Path) -> Iterator[Section]:
    """Load ``model`` and show what it does, one :class:`Section` per stage; the experiences go to
    ``out/experiences.sqlite`` and are exported to ``out/experiences.jsonl``."""
    start = time.perf_counter()
    backend = load_model(model)
    yield Section(f"selfevolve demo: {backend.revision} loaded in {time.perf_counter() - start:.1f} s")

    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    start = time.perf_counter()
    answers = backend.generate(chats, max_new_tokens=48)
    seconds = time.perf_counter() - start
    tokens = sum(len(a.token_ids) for a in answers)
    yield Section(
        f"1. batched greedy generation: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f}/s)",
        ("question", "answer"),
        [(q, a.text) for q, a in zip(QUESTIONS, answers)],
    )

    prompt = "The capital of France is"
    candidates = [" Paris", " London", " Berlin", " a city"]
    scores = backend.score([prompt] * len(candidates), candidates)
    ranked = sorted(zip(candidates, scores), key=lambda pair: -pair[1].total)
    yield Section(
        f"2. scoring continuations of {prompt!r} (log-probabilities)",
        ("continuation", "tokens", "total", "mean"),
        [(repr(c), str(len(s.token_ids)), f"{s.total:.2f}", f"{s.mean:.2f}") for c, s in ranked],
    )

    samples = backend.generate(
        [[{"role": "user", "content": "Write a one-line slogan for a bakery."}]],
        max_new_tokens=24,
        temperature=0.9,
        top_p=0.95,
        n=3,
        seed=7,
    )
    yield Section(
        "3. three samples at temperature 0.9 (seed 7)",
        text="\n".join(f"  - {sample.text.strip()}" for sample in samples),
    )

    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go, there and back again. " * 18
    needle = "\n\nThe pass key is 71432. Remember it. 71432 is the pass key.\n\n"
    haystack = [{"role": "user", "content": filler + needle + filler + "\n\nWhat is the pass key?"}]
    # SmolLM2 spells numbers digit by digit: a pooling kernel wider than the paper's 7 keeps the whole key
    # together (see `selfevolve bench needle`).
    # The bytes are those of the cache each answer was generated from (the policy's report of that call).
    width = len(backend.encode(haystack))
    rows = []
    for label, policy in (
        (f"full ({width} tokens)", FullKV()),
        ("SnapKV, 128 tokens, kernel 15", SnapKV(budget=128, kernel=15)),
        ("StreamingLLM, 4 + 124 tokens", StreamingLLM(sinks=4, recent=124)),
    ):
        (reply,) = backend.generate([haystack], max_new_tokens=12, kv_compression=policy)
        rows.append((label, f"{policy.last_report.last.kept_bytes / 2**20:.1f} MiB", reply.text.strip()))
    yield Section(
        "4. SnapKV: a pass key hidden in a long prompt, answered from a compressed KV cache",
        ("cache", "KV bytes", "answer"),
        rows,
    )

    task = next(p for p in load_humaneval() if p.task_id == DEMO_TASK)
    config = RepairConfig(mutants_per_task=1, max_new_tokens=160)
    (bug,) = build_problems([task], config)
    yield Section(
        f"5. sandbox + NExT: a mutant of {bug.task_id} ({bug.operator}) fails {bug.test} in the sandbox; "
        "its inline execution trace:",
        code=bug.trace.rstrip(),
    )
    (attempt,) = attempt_repairs(
        backend, [bug], {task.task_id: task}, config, traced=True, n=1, temperature=0.8, seed=0
    )
    verdict = "passes every test" if attempt.passed else f"does not pass the tests ({attempt.status})"
    yield Section(
        f"6. trace-guided repair: the model's fix {verdict}. Its answer:", text=attempt.reply.strip()
    )

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
        yield Section(
            f"7. experience store: run {run_id} recorded {exported} experiences ({len(store)} in "
            f"{out / 'experiences.sqlite'}); exported to {out / 'experiences.jsonl'}"
        )
