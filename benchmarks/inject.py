"""Benchmark ``inject``: SELF-PARAM knowledge injection against its baselines on a fictional knowledge set.

Rows (one per method and setting): held-out QA-F1, exact match and answer recall (gold answer inside the
reply), retention F1 (general questions the base model answered right), perplexity on held-out general text,
training seconds and tokens/s (for SELF-PARAM these include building the teacher cache). Settings:

* ``single``: one document; base, in-context (upper bound), retrieval-augmented, LM fine-tuning on the raw
  document, SFT on the synthesized QA, SELF-PARAM. All trained methods share the synthesized items and the
  optimisation settings.
* ``batch``: all documents injected at once.
* ``sequential``: the same documents in rounds; F1 on every earlier round's documents after each round.

Also measured: the cost of one SELF-PARAM step (with the run's KL-to-base regularizer) against one SFT step on
the same batches (interleaved).

    selfevolve bench inject [--model NAME] [--documents 10] [--rounds 5] [--epochs 8] [--batch-epochs 8]
        [--settings single,batch,sequential]   (a subset writes results/inject-SETTINGS.json)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks._common import print_table, write_results
from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
from selfevolve.evaluate.general import GENERAL_QUESTIONS
from selfevolve.evaluate.qa import Retriever, answer_questions, in_context, perplexity
from selfevolve.loop.state import clone_model
from selfevolve.records import QAItem
from selfevolve.runtime import DEFAULT_MODEL, LocalModel, load_model
from selfevolve.update.selfparam import (
    DistillationObjective,
    SelfParamConfig,
    build_teacher_cache,
    inject,
    inject_sequential,
    qa_examples,
    text_examples,
)
from selfevolve.update.sft import CrossEntropyObjective, SFTConfig, finetune, sft_examples
from selfevolve.update.training import TrainingConfig, TrainResult, _with_lora


def general_texts(folder: Path, count: int, offset: int, chars: int = 1500) -> list[str]:
    """Paragraph-sized pieces of the haystack essays (shared/data), unrelated to the fictional documents."""
    files = sorted(folder.glob("*.txt"))[offset : offset + count]
    if len(files) < count:
        raise SystemExit(
            f"need {count + offset} essays in {folder}; pass --general-text to a folder of .txt files"
        )
    return [" ".join(f.read_text().split())[:chars] for f in files]


class Scorer:
    """Held-out QA, retention on general questions the base model answered right, and general perplexity."""

    def __init__(self, base: LocalModel, ppl_texts: list[str], max_new_tokens: int) -> None:
        self.ppl_texts, self.max_new_tokens = ppl_texts, max_new_tokens
        probe = [QAItem("general", q, (a,)) for q, a in GENERAL_QUESTIONS]
        known = answer_questions(base, probe, max_new_tokens=max_new_tokens)
        self.retention = [item for item, row in zip(probe, known.rows) if row["recall"] == 1.0]
        self.base_ppl = perplexity(base, ppl_texts)

    def __call__(self, model: LocalModel, items, contexts=None, *, general: bool = True) -> dict:
        result = answer_questions(model, items, contexts, max_new_tokens=self.max_new_tokens).as_dict()
        if general and self.retention:
            kept = answer_questions(model, self.retention, max_new_tokens=self.max_new_tokens)
            result |= {"retention_f1": kept.f1, "retention_recall": kept.recall}
        if general:
            result["general_ppl"] = perplexity(model, self.ppl_texts)
        return result


def step_cost(
    model: LocalModel,
    items,
    documents,
    batch_size: int,
    repeats: int,
    *,
    regularizer_texts: list[str],
    regularizer_weight: float,
) -> dict:
    """Median seconds of a SELF-PARAM and an SFT forward+backward on the same batches, interleaved (LoRA).

    The SELF-PARAM step is the one :func:`inject` trains with: KL to the cached teacher plus, when
    ``regularizer_weight`` > 0, the KL-to-base regularizer on one unrelated text."""
    student = clone_model(model)
    student.model = _with_lora(student.model, TrainingConfig())
    student.model.train()
    examples = qa_examples(model, items, documents)
    regularizer = text_examples(model, regularizer_texts) if regularizer_weight > 0 else []
    kl = DistillationObjective(
        examples,
        build_teacher_cache(model, examples),
        regularizer=regularizer,
        regularizer_cache=build_teacher_cache(model, regularizer),
        regularizer_weight=regularizer_weight,
    )
    ce, ce_examples = CrossEntropyObjective(), sft_examples(model, items)
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    times = {"self-param": [], "sft": []}
    for _ in range(repeats):
        for batch in batches:
            for name in times:
                start = time.perf_counter()
                if name == "sft":
                    loss, _ = ce(student, [ce_examples[i] for i in batch])
                else:
                    loss, _ = kl(student, batch)
                loss.backward()
                student.model.zero_grad(set_to_none=True)
                times[name].append(time.perf_counter() - start)
    kl_s, sft_s = statistics.median(times["self-param"]), statistics.median(times["sft"])
    return {
        "self_param_step_s": kl_s,
        "sft_step_s": sft_s,
        "ratio": kl_s / sft_s,
        "regularizer_weight": regularizer_weight,
        "steps_timed": len(times["sft"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench inject", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--documents", type=int, default=10, help="documents for batch and sequential injection"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, default=8, help="epochs of SFT and SELF-PARAM (single document)"
    )
    parser.add_argument(
        "--batch-epochs", type=int, default=8, help="epochs of batch and sequential injection"
    )
    parser.add_argument(
        "--lm-epochs", type=int, default=16, help="epochs of LM fine-tuning on the raw document"
    )
    parser.add_argument("--questions-per-document", type=int, default=8)
    parser.add_argument("--statements-per-document", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--regularizer-weight",
        type=float,
        default=1.0,
        help="SELF-PARAM's KL-to-base weight on unrelated essays (0: off)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settings", default="single,batch,sequential", help="comma-separated: single, batch, sequential"
    )
    parser.add_argument(
        "--general-text",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "haystack",
        help="folder of .txt essays for perplexity (shared/data/haystack)",
    )
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(settings) - {"single", "batch", "sequential"})
    if unknown or not settings:
        raise SystemExit(f"unknown setting(s) {unknown}; use single, batch and/or sequential")
    torch.manual_seed(args.seed)

    base = load_model(args.model, batch_size=16)
    knowledge = fictional_knowledge(args.documents, seed=args.seed)
    ppl_texts = general_texts(args.general_text, 4, 0)
    regularizer_texts = general_texts(args.general_text, 8, 4) if args.regularizer_weight > 0 else []
    score = Scorer(base, ppl_texts, args.max_new_tokens)
    print(
        f"retention probe: base answers {len(score.retention)}/{len(GENERAL_QUESTIONS)} general questions right",
        flush=True,
    )

    began = time.perf_counter()
    synthesis = SynthesisConfig(
        questions_per_document=args.questions_per_document,
        statements_per_document=args.statements_per_document,
        seed=args.seed,
    )
    written = knowledge.documents if settings != ["single"] else knowledge.documents[:1]
    all_items = synthesize(
        base, written, synthesis, given_questions=knowledge.subset([d.id for d in written]).train
    )
    synthesis_seconds = time.perf_counter() - began
    print(
        f"synthesized {len(all_items)} items for {len(written)} documents in {synthesis_seconds:.0f}s",
        flush=True,
    )
    train_config = TrainingConfig(epochs=args.epochs, seed=args.seed)
    many_config = TrainingConfig(epochs=args.batch_epochs, seed=args.seed)
    self_param = {"regularizer_weight": args.regularizer_weight}
    rows: list[dict] = []
    summary: dict = {
        "synthesized_items": len(all_items),
        "synthesis_seconds": synthesis_seconds,
        "base_general_ppl": score.base_ppl,
    }

    def add(setting: str, method: str, scores: dict, trained=None, teacher_seconds: float = 0.0) -> None:
        """One row; a trained method's seconds are its whole cost: teacher cache (SELF-PARAM) plus training."""
        row = {"setting": setting, "method": method, **scores, "teacher_seconds": teacher_seconds}
        row["train_seconds"] = teacher_seconds + trained.seconds if trained is not None else 0.0
        row["tokens_per_second"] = trained.tokens / row["train_seconds"] if trained is not None else 0.0
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    if "single" in settings:
        single = knowledge.subset([knowledge.documents[0].id])
        items = [item for item in all_items if item.doc_id == single.documents[0].id]
        add("single", "base", score(base, single.test))
        contexts = in_context(single.test, single.documents)
        add("single", "in-context", score(base, single.test, contexts, general=False))
        retrieved = Retriever(knowledge.documents).retrieve([q.question for q in single.test])
        add("single", "retrieval", score(base, single.test, retrieved, general=False))
        model = clone_model(base)
        lm_train = TrainingConfig(epochs=args.lm_epochs, batch_size=1, seed=args.seed)
        lm = finetune(model, SFTConfig(train=lm_train, target="document"), documents=single.documents)
        add("single", "lm-finetune-raw-doc", score(model, single.test), lm)
        model = clone_model(base)
        sft = finetune(model, SFTConfig(train=train_config), items=items)
        add("single", "sft-synth-qa", score(model, single.test), sft)
        model = clone_model(base)
        result = inject(
            model,
            single.documents,
            items,
            SelfParamConfig(train=train_config, **self_param),
            regularizer_texts=regularizer_texts,
        )
        add("single", "self-param", score(model, single.test), result.train, result.teacher_seconds)
        cost = step_cost(
            base,
            items,
            single.documents,
            train_config.batch_size,
            repeats=3,
            regularizer_texts=regularizer_texts,
            regularizer_weight=args.regularizer_weight,
        )
        print(f"step cost: {cost}", flush=True)
        by_method = {r["method"]: r for r in rows if r["setting"] == "single"}
        summary |= {
            "self_param_over_in_context_f1": by_method["self-param"]["qa_f1"]
            / max(by_method["in-context"]["qa_f1"], 1e-9),
            "self_param_minus_base_f1": by_method["self-param"]["qa_f1"] - by_method["base"]["qa_f1"],
            "step_cost": cost,
        }

    if "batch" in settings:
        add("batch", "base", score(base, knowledge.test, general=False))
        contexts = in_context(knowledge.test, knowledge.documents)
        add("batch", "in-context", score(base, knowledge.test, contexts, general=False))
        model = clone_model(base)
        result = inject(
            model,
            knowledge.documents,
            all_items,
            SelfParamConfig(train=many_config, **self_param),
            regularizer_texts=regularizer_texts,
        )
        add("batch", "self-param", score(model, knowledge.test), result.train, result.teacher_seconds)

    curve: list[dict] = []
    if "sequential" in settings:
        model = clone_model(base)
        groups: list[list[str]] = []

        def after_round(index, seen, result) -> None:
            groups.append(result.documents)
            point = {"round": index}
            for k, group in enumerate(groups):
                point[f"round{k}_f1"] = score(model, knowledge.subset(group).test, general=False)["qa_f1"]
            curve.append(point)
            print(f"retention curve: {point}", flush=True)

        sequential = SelfParamConfig(train=many_config, mode="sequential", rounds=args.rounds, **self_param)
        results = inject_sequential(
            model,
            knowledge.documents,
            all_items,
            sequential,
            regularizer_texts=regularizer_texts,
            after_round=after_round,
        )
        total = TrainResult(
            tokens=sum(r.train.tokens for r in results), seconds=sum(r.train.seconds for r in results)
        )
        teacher = sum(r.teacher_seconds for r in results)
        add("sequential", "self-param", score(model, knowledge.test), total, teacher)

    columns = ["setting", "method", "qa_f1", "exact_match", "answer_recall", "retention_f1", "general_ppl"]
    title = f"inject: {base.revision}, {len(written)} fictional document(s)"
    print_table(title, rows, [*columns, "teacher_seconds", "train_seconds", "tokens_per_second"])
    print(f"summary: {summary}")
    if curve:
        print_table(
            "sequential retention (F1 on each round's documents after each round)", curve, list(curve[-1])
        )
    name = "inject" if len(settings) == 3 else "inject-" + "-".join(settings)
    path = write_results(
        name,
        rows,
        out_dir=args.out,
        model=base.revision,
        documents=len(written),
        rounds=args.rounds,
        config={
            "epochs": args.epochs,
            "batch_epochs": args.batch_epochs,
            "lm_epochs": args.lm_epochs,
            "regularizer_weight": args.regularizer_weight,
            "max_new_tokens": args.max_new_tokens,
            "synthesis": vars(synthesis),
        },
        summary=summary,
        sequential_curve=curve,
        base_known_general_questions=len(score.retention),
    )
    print(f"wrote {path}")
