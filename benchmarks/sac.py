"""Benchmark ``sac``: Source-Aware Cleaning of HH harmless-base preference pairs (arXiv 2410.01957 v1).

In one run:

1. Agreement: the committee's high / low / no-agreement shares on the pairs as labelled, beside the paper's
   "over 25% low or none" (its committee: eight RewardBench reward models; ours: cross-fitted heads).
2. Known noise: a seeded 10% and 20% of the labels flipped; precision, recall and F1 of the flags against the
   injected flips for SAC (pairs it calls mis-labelled), cleanlab's ``find_label_issues`` on the same
   out-of-fold committee probabilities, the best single member (same confidence rule as SAC) and random
   flagging (as many flags as SAC, seeded).
3. Downstream: 30% of the pairs held out untouched; a cheap reward model (Bradley-Terry head on MiniLM
   embeddings) trained on the other 70% as labelled, with 20% flipped, and with the flipped set cleaned by SAC
   (flip and remove policies); held-out preference accuracy, averaged over ``--repeats`` noise seeds, and the
   share of the noisy->original gap that cleaning closes. Then DPO with LoRA on SmolLM2 (TRL's DPOTrainer) on
   a ``--dpo-train`` subset of the same three training sets: implicit-reward accuracy on ``--dpo-test``
   held-out pairs.

    selfevolve bench sac [--data PATH] [--members crossfit:minilm,crossfit:tfidf,crossfit:surface]
        [--noise 0.1,0.2] [--repeats 3] [--dpo-train 32] [--dpo-test 48] [--no-dpo]

Sized for a shared 2-core CPU with one torch thread (about 20 min under contention): about 5 min for the
embeddings (cached in ``--out/sac_cache``), a few minutes for the cleaning experiments, about 10 min for three
small DPO runs. On a GPU raise ``--dpo-train`` / ``--dpo-test`` and the token budgets.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import print_table, write_results
from selfevolve.records import PreferencePair
from selfevolve.refine.committee import (
    DEFAULT_MEMBERS,
    CrossFitRewardModel,
    SentenceEmbedder,
    build_member,
    fit_linear_head,
    fit_mlp_head,
    score_committee,
)
from selfevolve.refine.preferences import load_pairs
from selfevolve.refine.sac import SACConfig, agreement, audit, cleanlab_flags

DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh_rlhf" / "harmless-base-test.jsonl.gz"
)
PAPER_LOW_OR_NONE = 0.25  # "over 25% of the dataset shows low or no agreement"


def flipped_copy(
    pairs: list[PreferencePair], share: float, seed: int
) -> tuple[list[PreferencePair], np.ndarray]:
    """``pairs`` with a seeded random ``share`` of labels flipped, and the mask of the flipped ones."""
    flips = np.zeros(len(pairs), dtype=bool)
    flips[np.random.default_rng(seed).choice(len(pairs), round(share * len(pairs)), replace=False)] = True
    return [p.flipped() if f else p for p, f in zip(pairs, flips)], flips


def prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    hits = int((flags & truth).sum())
    precision = hits / flags.sum() if flags.sum() else 0.0
    recall = hits / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flags": int(flags.sum()), "precision": precision, "recall": recall, "f1": f1}


def committee(specs: list[str], folds: int, seed: int, embedder: SentenceEmbedder) -> list:
    members = []
    for spec in specs:
        member = build_member(spec, folds=folds, seed=seed)
        if spec == "crossfit:minilm":
            member.featurizer = embedder  # one embedding cache for every run
        members.append(member)
    return members


def noise_rows(pairs, specs, args, config, embedder) -> list[dict]:
    """Flag quality against injected flips, per noise level."""
    rows = []
    for share in args.noise:
        noisy, flips = flipped_copy(pairs, share, args.seed)
        scores = score_committee(committee(specs, args.folds, args.seed, embedder), noisy)
        sac = np.array([r.category == "mislabeled" for r in audit(scores, noisy, config)])
        base = {"noise": share, "base_rate": float(flips.mean())}
        rows.append({**base, "method": "SAC", **prf(sac, flips)})
        rows.append(
            {**base, "method": "cleanlab", **prf(cleanlab_flags(scores.oof_mean(), seed=args.seed), flips)}
        )
        singles = [
            (name, prf(scores.probs[:, k] <= 1 - config.mislabel_confidence, flips))
            for k, name in enumerate(scores.names)
        ]
        name, best = max(singles, key=lambda item: item[1]["f1"])
        rows.append({**base, "method": f"best single ({name})", **best})
        for confidence in args.sweep:  # SAC's one free threshold, for the precision / recall trade-off
            swept = SACConfig(**{**config.__dict__, "mislabel_confidence": confidence})
            flags = np.array([r.category == "mislabeled" for r in audit(scores, noisy, swept)])
            rows.append({**base, "method": f"SAC (confidence {confidence:g})", **prf(flags, flips)})
        random_flags = np.zeros(len(noisy), dtype=bool)
        random_flags[
            np.random.default_rng(args.seed + 1).choice(len(noisy), int(sac.sum()), replace=False)
        ] = True
        rows.append({**base, "method": "random", **prf(random_flags, flips)})
    return rows


def reward_model_accuracy(
    train: list[PreferencePair], test: list[PreferencePair], embedder, head: str
) -> float:
    """Held-out accuracy of a Bradley-Terry head (linear or MLP) on MiniLM features trained on ``train``."""
    model = CrossFitRewardModel(embedder)
    chosen, rejected = model.features(train)
    fit = fit_mlp_head if head == "mlp" else fit_linear_head
    reward = fit(chosen, rejected, seed=0)
    test_chosen, test_rejected = model.features(test)
    return float((reward(test_chosen) > reward(test_rejected)).mean())


def cleaned(noisy: list[PreferencePair], specs, args, config, embedder) -> dict[str, list[PreferencePair]]:
    """The noisy set cleaned by SAC (flip and remove policies) and by removing cleanlab's flags, all from one
    committee scoring."""
    scores = score_committee(committee(specs, args.folds, args.seed, embedder), noisy)
    out = {}
    for policy in ("flip", "remove"):
        rows = audit(scores, noisy, SACConfig(**{**config.__dict__, "policy": policy}))
        out[f"SAC {policy}"] = [
            p.flipped() if r.action == "flip" else p for p, r in zip(noisy, rows) if r.action != "remove"
        ]
    flags = cleanlab_flags(scores.oof_mean(), seed=args.seed)
    out["cleanlab remove"] = [p for p, flagged in zip(noisy, flags) if not flagged]
    return out


def split(pairs: list[PreferencePair], seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    order = np.random.default_rng(seed + 100).permutation(len(pairs))
    cut = int(0.7 * len(pairs))
    return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]


def downstream_rows(pairs, specs, args, config, embedder) -> tuple[list[dict], dict]:
    """Reward-model accuracy on untouched held-out pairs after training on original / noisy / cleaned data."""
    train, test = split(pairs, args.seed)
    names = ("original", "noisy 20%", "SAC flip", "SAC remove", "cleanlab remove")
    results: dict[tuple[str, str], list[float]] = {(h, n): [] for h in ("linear", "mlp") for n in names}
    sets = {}
    for repeat in range(args.repeats):
        noisy, _ = flipped_copy(train, 0.2, args.seed + repeat)
        variants = {"original": train, "noisy 20%": noisy, **cleaned(noisy, specs, args, config, embedder)}
        if repeat == 0:
            sets = variants
        for (head, name), accs in results.items():
            accs.append(reward_model_accuracy(variants[name], test, embedder, head))
    rows = []
    for (head, name), accs in results.items():
        noisy_acc = np.mean(results[(head, "noisy 20%")])
        gap = np.mean(results[(head, "original")]) - noisy_acc
        closed = (np.mean(accs) - noisy_acc) / gap if gap > 0 else float("nan")
        rows.append(
            {
                "model": f"reward model (MiniLM, {head} BT head)",
                "train": name,
                "pairs": len(sets[name]),
                "accuracy": float(np.mean(accs)),
                "std": float(np.std(accs)),
                "gap_closed": closed if name not in ("original", "noisy 20%") else None,
            }
        )
    return rows, {"train": train, "test": test, "sets": sets}


def dpo_rows(split_sets: dict, args) -> list[dict]:
    """DPO + LoRA on SmolLM2 on a subset of each training set; implicit-reward accuracy on held-out pairs."""
    from selfevolve.runtime import load_model
    from selfevolve.update.dpo import DPOSettings, implicit_reward_accuracy, train_dpo

    base = load_model(args.dpo_model)
    settings = DPOSettings(
        learning_rate=args.dpo_lr,
        max_prompt_tokens=args.dpo_prompt_tokens,
        max_reply_tokens=args.dpo_reply_tokens,
        seed=args.seed,
    )
    train_indices = {p.index for p in split_sets["train"][: args.dpo_train]}
    test = split_sets["test"][: args.dpo_test]
    rows, accuracies = [], {}
    for name, data in split_sets["sets"].items():
        if name not in ("original", "noisy 20%", "SAC flip"):
            continue
        subset = [p for p in data if p.index in train_indices]
        began = time.perf_counter()
        policy, losses = train_dpo(base, subset, settings)
        accuracies[name] = implicit_reward_accuracy(policy, test, settings)
        rows.append(
            {
                "model": f"DPO LoRA ({args.dpo_model})",
                "train": name,
                "pairs": len(subset),
                "accuracy": accuracies[name],
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "seconds": time.perf_counter() - began,
            }
        )
        del policy
    gap = accuracies["original"] - accuracies["noisy 20%"]
    for row in rows:
        if row["train"].startswith("SAC"):
            row["gap_closed"] = (row["accuracy"] - accuracies["noisy 20%"]) / gap if gap > 0 else None
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench sac", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(DATA), help="preference JSONL (HH dialogues or prompt/chosen/rejected)"
    )
    parser.add_argument("--members", default=",".join(DEFAULT_MEMBERS), help="comma-separated member specs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--noise", default="0.1,0.2", help="shares of labels flipped")
    parser.add_argument("--sweep", default="0.5,0.55,0.65,0.7", help="other mislabel confidences to report")
    parser.add_argument("--repeats", type=int, default=3, help="noise seeds for the reward-model comparison")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N pairs (0: all)")
    parser.add_argument(
        "--dpo-train", type=int, default=32, help="DPO training pairs (37 s/step of 4 on a busy CPU)"
    )
    parser.add_argument(
        "--dpo-test", type=int, default=48, help="held-out pairs for implicit-reward accuracy"
    )
    parser.add_argument("--dpo-prompt-tokens", type=int, default=48)
    parser.add_argument("--dpo-reply-tokens", type=int, default=32)
    parser.add_argument("--dpo-lr", type=float, default=1e-3)
    parser.add_argument("--dpo-model", default="smollm2-135m-instruct")
    parser.add_argument("--no-dpo", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    args.noise = [float(x) for x in args.noise.split(",")]
    args.sweep = [float(x) for x in args.sweep.split(",") if x]
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    loaded = load_pairs(args.data)
    print(loaded.report())
    pairs = loaded.pairs[: args.limit or None]
    specs = args.members.split(",")
    config = SACConfig()
    embedder = SentenceEmbedder(progress=True, cache_file=Path(args.out) / "sac_cache" / "minilm.npz")

    scores = score_committee(committee(specs, args.folds, args.seed, embedder), pairs, progress=True)
    _, _, buckets = agreement(scores, config)
    shares = {b: buckets.count(b) / len(buckets) for b in ("high", "low", "none")}
    member_accuracy = {n: float((scores.probs[:, k] > 0.5).mean()) for k, n in enumerate(scores.names)}
    agreement_rows = [
        {
            "committee": f"{len(specs)} cross-fitted members (ours)",
            "high": shares["high"],
            "low": shares["low"],
            "none": shares["none"],
            "low_or_none": shares["low"] + shares["none"],
        },
        {"committee": "8 RewardBench RMs (paper)", "low_or_none": "> 0.25"},
    ]
    print_table("committee agreement with the human labels", agreement_rows)
    print(
        "member accuracy against the labels (out of fold):",
        {k: round(v, 3) for k, v in member_accuracy.items()},
    )

    flag_rows = noise_rows(pairs, specs, args, config, embedder)
    print_table("flags against injected flips", flag_rows)
    rm_rows, split_sets = downstream_rows(pairs, specs, args, config, embedder)
    print_table("held-out preference accuracy (untouched pairs, original labels)", rm_rows)
    dpo = [] if args.no_dpo else dpo_rows(split_sets, args)
    if dpo:
        print_table("DPO implicit-reward accuracy on held-out pairs", dpo)
    seconds = time.perf_counter() - began
    print(f"total {seconds:.0f} s")
    write_results(
        "sac",
        [*agreement_rows, *flag_rows, *rm_rows, *dpo],
        out_dir=args.out,
        args=vars(args),
        config=config.__dict__,
        member_accuracy=member_accuracy,
        skipped=len(loaded.skipped),
        seconds=seconds,
    )
