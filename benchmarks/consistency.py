"""Benchmark ``consistency``: a SmolLM2 log-probability judge before and after REPAIR, on held-out item sets.

REPAIR (Liu et al., https://arxiv.org/abs/2410.02205, §4): aggregate pairwise labels on training item sets into
one ranking per set (win-loss rate), derive every implied pair in both orders and with the negated question,
fine-tune the judge on them (LoRA). Task: temporal ordering of dated events of fictional knowledge sets
("Which event happened first?"); training sets come from fictional seeds ``--seed``, ``--seed + 2``, ... (10 sets
each), held-out sets from seed ``--seed + 1`` (other invented names, other years). ``--task numbers``: generated
sets of integers, "Which number is larger?" (``number_item_sets``; held-out sets from the next seed).

Judges (rows):
* ``base``: the untuned model.
* ``repair-self``: REPAIR from the base judge's own labels on the training sets (the loop's setting: no gold).
* ``noisy-plain``: the paper's noise setting: gold labels of every ordered pair of the training sets with
  ``--noise`` of them flipped at random, fine-tuned on as they are (each with its negated twin).
* ``noisy-repair``: the same noisy labels through REPAIR (win-loss ranking, implied pairs) first.

Columns: s_tran(K) (K = ``--k``), s_comm, s_neg, gold agreement (evaluate/consistency.py, ties = |p-0.5| <=
0), merge-sort Spearman against gold with one order and with both orders averaged, and the judge calls each
sort made; plus training examples and seconds. Judge verdicts are the LogprobJudge's P(A) computed in one
forward pass per pair (``update.judge_tuning.label_margins``, equal to LogprobJudge to 1e-5; tested).

    selfevolve bench consistency [--task temporal|numbers] [--train-sets 4] [--heldout-sets 3] [--items 5] [--heldout-items 6]
        [--epochs 1] [--lr 2e-3] [--noise 0.1] [--skip-self] [--skip-noise] [--skip-plain]

Default sizing: 19 min with one torch thread on a 2-core machine shared with ~6 other jobs (load 7-8).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from benchmarks._common import print_table, write_results
from selfevolve.acquire.orderings import temporal_item_sets
from selfevolve.evaluate.consistency import ConsistencyConfig, measure_consistency, number_item_sets
from selfevolve.evaluate.ranking import rank_item_sets
from selfevolve.judges.pairwise import CachedJudge, PairwiseTemplate
from selfevolve.loop.state import clone_model
from selfevolve.records import ItemSet, JudgeLabel
from selfevolve.refine.rank import Label, repair, repair_item_sets
from selfevolve.runtime import load_model
from selfevolve.update.judge_tuning import JudgeTuningConfig, judge_examples, label_margins, tune_judge
from selfevolve.update.training import TrainingConfig

COLUMNS = (
    "judge",
    "s_tran",
    "s_comm",
    "s_neg",
    "gold_agreement",
    "spearman_one_order",
    "spearman_both_orders",
    "sort_calls_one",
    "sort_calls_both",
    "invalid",
    "train_examples",
    "train_s",
)


class MarginJudge:
    """LogprobJudge's P(a better) in one forward pass per pair (both labels are single tokens)."""

    def __init__(self, model, name: str, template: PairwiseTemplate | None = None) -> None:
        self.model, self.name, self.template = model, name, template or PairwiseTemplate()

    def prefer(self, triples, *, negated: bool = False) -> list[float]:
        labels = [JudgeLabel(q, a, b, 0.5, negated) for q, a, b in triples]
        examples = judge_examples(self.model, labels, self.template)
        out: list[float] = []
        size = self.model.batch_size
        with torch.inference_mode():
            for start in range(0, len(examples), size):
                margins = label_margins(self.model, examples[start : start + size], grad=False)  # (B,)
                out += torch.sigmoid(margins).tolist()
        return out


def training_sets(num_sets: int, items: int, seed: int, per_seed: int = 10) -> list[ItemSet]:
    """``num_sets`` temporal training sets, ``per_seed`` from each fictional set ``seed``, ``seed + 2``, ``seed + 3``,
    ... (``seed + 1`` is the held-out one: its events never appear in training)."""
    sets: list[ItemSet] = []
    fictional = seed
    while len(sets) < num_sets:
        sets += temporal_item_sets(min(per_seed, num_sets - len(sets)), items, seed=fictional)
        fictional += 2 if fictional == seed else 1
    return sets


def task_sets(args: argparse.Namespace) -> tuple[list[ItemSet], list[ItemSet]]:
    """(training sets, held-out sets) of ``args.task``: temporal events, or generated numbers (other seed)."""
    if args.task == "numbers":
        train = number_item_sets(args.train_sets, seed=args.seed, size=args.items)
        return train, number_item_sets(args.heldout_sets, seed=args.seed + 1, size=args.heldout_items)
    return training_sets(args.train_sets, args.items, args.seed), temporal_item_sets(
        args.heldout_sets, args.heldout_items, seed=args.seed + 1
    )


def noisy_gold_labels(item_set: ItemSet, noise: float, rng: random.Random) -> list[Label]:
    """Every ordered pair's gold label (1: first better), each flipped with probability ``noise``."""
    gold = item_set.gold or []
    labels = []
    for i in range(len(gold)):
        for j in range(len(gold)):
            if i != j and gold[i] != gold[j]:
                p = 1.0 if gold[i] > gold[j] else 0.0
                labels.append((i, j, 1.0 - p if rng.random() < noise else p))
    return labels


def plain_pairs(item_set: ItemSet, labels: list[Label]) -> list[JudgeLabel]:
    """Labels as training pairs as they are, each with its negated twin (same count as REPAIR's)."""
    out = []
    for i, j, p in labels:
        out.append(JudgeLabel(item_set.question, item_set.items[i], item_set.items[j], p, False))
        out.append(JudgeLabel(item_set.question, item_set.items[i], item_set.items[j], 1.0 - p, True))
    return out


def _mean_first(judge: CachedJudge, *, negated: bool) -> float:
    """The mean verdict P(A) over the cached verdicts of one polarity (keys end with the negated flag)."""
    values = [v for key, v in judge.cache.items() if key.endswith(f"{str(negated).lower()}]")]
    return sum(values) / len(values) if values else math.nan


def evaluate(name: str, model, heldout: list[ItemSet], k: int) -> dict:
    """The consistency metrics and merge-sort ranking of ``model``'s judge on the held-out sets."""
    began = time.perf_counter()
    judge = CachedJudge(MarginJudge(model, name))
    report = measure_consistency(judge, heldout, ConsistencyConfig(k=k, n_boot=500), progress=False)
    one = rank_item_sets(judge, heldout, both_orders=False)  # cache hits: every ordered pair was asked
    both = rank_item_sets(judge, heldout, both_orders=True)
    row = {"judge": name}
    for metric in ("s_tran", "s_comm", "s_neg", "gold_agreement"):
        m = report.metrics[metric]
        row[metric] = m.value
        row[f"{metric}_ci"] = [m.low, m.high]
        row[f"{metric}_n"] = m.n
    row |= {
        "spearman_one_order": one.spearman,
        "spearman_both_orders": both.spearman,
        "sort_calls_one": one.calls,
        "sort_calls_both": both.calls,
        "invalid": report.invalid,
        "tie_rate": report.tie_rate,
        "p_first_mean": _mean_first(
            judge, negated=False
        ),  # mean P(A): 0.5 and below = no first-position bias
        "p_first_mean_negated": _mean_first(judge, negated=True),
        "judge_calls": report.calls,
        "eval_s": round(time.perf_counter() - began, 1),
    }
    print(f"{name}: " + ", ".join(f"{c}={row[c]:.3f}" for c in COLUMNS[1:7]), flush=True)
    return row


def tuned(base, name: str, pairs: list[JudgeLabel], config: JudgeTuningConfig) -> tuple[object, dict]:
    model = clone_model(base)
    began = time.perf_counter()
    result = tune_judge(model, pairs, config)
    seconds = time.perf_counter() - began
    print(f"{name}: trained on {len(pairs)} pairs, {result.steps} steps, {seconds:.0f}s", flush=True)
    return model, {
        "train_examples": len(pairs),
        "train_s": round(seconds, 1),
        "train_loss_first": result.losses[0],
        "train_loss_last": result.losses[-1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench consistency", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", choices=("temporal", "numbers"), default="temporal")
    parser.add_argument("--train-sets", type=int, default=4)
    parser.add_argument("--heldout-sets", type=int, default=3)
    parser.add_argument("--items", type=int, default=5, help="items per training set")
    parser.add_argument("--heldout-items", type=int, default=6, help="items per held-out set")
    parser.add_argument("--k", type=int, default=5, help="subset size of s_tran(K)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-self", action="store_true", help="leave out REPAIR from the judge's own labels"
    )
    parser.add_argument("--skip-noise", action="store_true", help="leave out the noisy-label setting")
    parser.add_argument("--skip-plain", action="store_true", help="noisy setting: only the REPAIR judge")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    train_sets, heldout = task_sets(args)
    config = JudgeTuningConfig(
        train=TrainingConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed
        )
    )
    base = load_model(args.model)
    rows = [evaluate("base", base, heldout, args.k) | {"train_examples": 0, "train_s": 0.0}]
    if not args.skip_self:
        repaired = repair_item_sets(MarginJudge(base, "base"), train_sets, negated=True)
        pairs = [p for r in repaired for p in r.pairs]
        model, info = tuned(base, "repair-self", pairs, config)
        rows.append(evaluate("repair-self", model, heldout, args.k) | info)
        del model
    if not args.skip_noise:
        rng = random.Random(f"selfevolve-noise-{args.seed}")
        noisy = [noisy_gold_labels(s, args.noise, rng) for s in train_sets]
        flipped = sum(
            (p == 1.0) != (s.gold[i] > s.gold[j]) for s, ls in zip(train_sets, noisy) for i, j, p in ls
        )
        print(f"noise: {flipped} of {sum(map(len, noisy))} gold labels flipped", flush=True)
        if not args.skip_plain:
            plain = [p for s, ls in zip(train_sets, noisy) for p in plain_pairs(s, ls)]
            model, info = tuned(base, "noisy-plain", plain, config)
            rows.append(evaluate("noisy-plain", model, heldout, args.k) | info | {"flipped": flipped})
            del model
        fixed = [
            p
            for s, ls in zip(train_sets, noisy)
            for p in repair(s.question, s.items, ls, both_orders=True, negated=True).pairs
        ]
        model, info = tuned(base, "noisy-repair", fixed, config)
        rows.append(evaluate("noisy-repair", model, heldout, args.k) | info | {"flipped": flipped})
    print_table("Judge consistency before and after REPAIR (held-out temporal item sets)", rows, COLUMNS)
    base_row = rows[0]
    for row in rows[1:]:
        row["delta_s_comm"] = row["s_comm"] - base_row["s_comm"]
        row["delta_s_tran"] = row["s_tran"] - base_row["s_tran"]
        row["delta_gold_points"] = 100 * (row["gold_agreement"] - base_row["gold_agreement"])
    path = write_results(
        "consistency",
        rows,
        out_dir=args.out,
        settings=vars(args),
        heldout_pairs=sum(math.comb(len(s.items), 2) for s in heldout),
        seconds=round(time.perf_counter() - began, 1),
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f}s")
