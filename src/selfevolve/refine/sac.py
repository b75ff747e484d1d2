"""Source-Aware Cleaning (SAC) of preference data: committee agreement, the six sources of unreliability, and a
policy per source.

"How Reliable Is Human Feedback For Aligning Large Language Models?" (https://arxiv.org/abs/2410.01957v1):

1. A committee of K scorers votes on every pair; v_i counts the members that agree with the human label. Pairs
   fall into high / low / no agreement by v_i / K (thresholds configurable; defaults below).
2. Low- and no-agreement pairs are assigned one of six sources: mis-labelled, subjective (or missing context),
   different criteria, different thresholds, both harmful, both wrong. What is measurable decides first:
   committee confidence against the label -> mis-labelled; both replies scored low in absolute terms -> both
   bad (a judge prompt, when given, tells harmful from wrong); a judge prompt sorts the rest (without one, a
   documented rule on the committee's margin and spread). Every category comes with its evidence.
3. Policy: flip confident mis-labels (or remove them, ``policy="remove"``, which later work often found
   better), drop both-bad pairs, keep everything else.

The baseline in the same API, :func:`cleanlab_flags`, is cleanlab's ``find_label_issues`` on the same
out-of-fold committee probabilities.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from selfevolve.errors import SelfEvolveError
from selfevolve.io import publish_folder, write_json, write_jsonl
from selfevolve.records import PreferencePair
from selfevolve.refine.committee import CommitteeScores, Member, score_committee
from selfevolve.refine.preferences import LoadedPairs, relabelled

BUCKETS = ("high", "low", "none")
CATEGORIES = (
    "mislabeled",
    "subjective",
    "different_criteria",
    "different_thresholds",
    "both_harmful",
    "both_wrong",
)
ACTIONS = ("keep", "flip", "remove")
REMOVED = ("both_harmful", "both_wrong")


@dataclass
class SACConfig:
    """SAC's thresholds and policy. The paper's committee has eight members; its buckets are taken here as
    shares of the committee (6 of 8 = 0.75 and 0 of 8 = 0.0) *(inferred)*; the other thresholds are ours."""

    high_agreement: float = 0.75  # v_i / K at or above: high agreement
    no_agreement: float = 0.0  # v_i / K at or below: no agreement; in between: low
    mislabel_confidence: float = 0.6  # committee mean P(rejected better) at least this, with no agreement
    bad_quantile: float = 0.25  # both replies below this quantile of all replies' committee scores: both bad
    subjective_margin: float = 0.05  # without a source judge: |mean P - 0.5| below this -> subjective
    criteria_spread: float = 0.2  # without a source judge: std of member P's at least this -> criteria
    policy: Literal["flip", "remove"] = "flip"  # what to do with a confident mis-label
    both_bad_default: Literal["both_harmful", "both_wrong"] = "both_harmful"  # no judge to tell them apart

    def __post_init__(self) -> None:
        if not 0 <= self.no_agreement < self.high_agreement <= 1:
            raise SelfEvolveError(
                f"need 0 <= no_agreement < high_agreement <= 1, got {self.no_agreement} and {self.high_agreement}"
            )
        if not 0.5 <= self.mislabel_confidence <= 1:
            raise SelfEvolveError(f"mislabel_confidence must be in [0.5, 1], got {self.mislabel_confidence}")
        if not 0 < self.bad_quantile < 1:
            raise SelfEvolveError(f"bad_quantile must be in (0, 1), got {self.bad_quantile}")
        if self.policy not in ("flip", "remove"):
            raise SelfEvolveError(f"policy must be flip or remove, got {self.policy!r}")


@dataclass
class PairAudit:
    """SAC's record of one pair: the committee's votes and scores, the bucket, the source, the action."""

    index: int  # the pair's 0-based line in its input
    votes: int  # v_i: members whose P(chosen better) > 0.5
    members: int  # members with a valid verdict on this pair
    bucket: str  # high, low or none
    margin: float  # mean over members of logit P(chosen better): the mean reward margin
    category: str | None  # one of CATEGORIES for low / none pairs, None for high
    action: str  # keep, flip or remove
    evidence: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)  # each member's P(chosen better)


# A source judge: (pair, question, options) -> one probability per option (the categories asked about).
SourceJudge = Callable[[PreferencePair, str, Sequence[str]], Sequence[float]]

RESIDUAL_QUESTION = (
    "Annotators and reward models disagree about which reply is better. Which explains it best?\n"
    "A) the preference is subjective, or the request lacks context needed to decide\n"
    "B) they apply different criteria (e.g. helpfulness against harmlessness)\n"
    "C) they agree on the criterion but differ on how good is good enough"
)
RESIDUAL_OPTIONS = ("subjective", "different_criteria", "different_thresholds")
BOTH_BAD_QUESTION = (
    "Both replies score low. Which is the main problem?\nA) both are harmful\nB) both are wrong"
)
BOTH_BAD_OPTIONS = ("both_harmful", "both_wrong")


def agreement(scores: CommitteeScores, config: SACConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(votes v_i, valid members K_i, bucket) per pair."""
    valid = np.isfinite(scores.probs)  # (N, K)
    votes = ((scores.probs > 0.5) & valid).sum(1)  # (N,)
    members = valid.sum(1)  # (N,)
    share = votes / np.maximum(members, 1)
    buckets = [
        "none" if k == 0 or s <= config.no_agreement else "high" if s >= config.high_agreement else "low"
        for s, k in zip(share, members)
    ]
    return votes, members, buckets


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _reply_quantiles(scores: CommitteeScores) -> np.ndarray | None:
    """(N, 2): each reply's rank among all 2N replies (0 worst, 1 best), by the mean of the members' absolute
    scores; None when no member gives absolute scores."""
    rewards = scores.rewards  # (N, K, 2)
    has = np.isfinite(rewards).any(axis=(0, 2))
    if not has.any():
        return None
    mean = np.nanmean(rewards[:, has], axis=1)  # (N, 2)
    flat = mean.ravel()
    ranks = np.empty(flat.size)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return (ranks / max(flat.size - 1, 1)).reshape(mean.shape)


def _judged(
    judge: SourceJudge, pair: PreferencePair, question: str, options: Sequence[str]
) -> tuple[str, dict]:
    probs = [float(p) for p in judge(pair, question, options)]
    if len(probs) != len(options) or not all(math.isfinite(p) for p in probs):
        return "", {"judge": "invalid"}
    best = options[int(np.argmax(probs))]
    return best, {"judge": dict(zip(options, [round(p, 4) for p in probs]))}


def audit(
    scores: CommitteeScores,
    pairs: Sequence[PreferencePair],
    config: SACConfig | None = None,
    *,
    source_judge: SourceJudge | None = None,
) -> list[PairAudit]:
    """Votes, bucket, source and action for every pair (``pairs`` in the order ``scores`` was computed)."""
    config = config or SACConfig()
    if scores.probs.shape[0] != len(pairs):
        raise SelfEvolveError(f"{scores.probs.shape[0]} committee scores for {len(pairs)} pairs")
    votes, members, buckets = agreement(scores, config)
    mean = scores.oof_mean()  # (N,)
    spread = np.nan_to_num(np.nanstd(np.where(np.isfinite(scores.probs), scores.probs, np.nan), axis=1))
    logits = _logit(scores.probs)  # (N, K)
    margins = np.nan_to_num(np.nanmean(np.where(np.isfinite(scores.probs), logits, np.nan), axis=1))
    quantiles = _reply_quantiles(scores)
    rows = []
    for i, pair in enumerate(pairs):
        evidence: dict[str, Any] = {"mean_p_chosen": round(float(mean[i]), 4)}
        category, action = None, "keep"
        if buckets[i] != "high":
            both_bad = False
            if quantiles is not None:
                evidence["reply_quantiles"] = [round(float(q), 4) for q in quantiles[i]]
                both_bad = bool((quantiles[i] < config.bad_quantile).all())
            if buckets[i] == "none" and 1 - mean[i] >= config.mislabel_confidence:
                category, action = "mislabeled", config.policy
                evidence["rule"] = f"no member agrees and P(rejected better) >= {config.mislabel_confidence}"
            elif both_bad:
                evidence["rule"] = (
                    f"both replies below the {config.bad_quantile} quantile of committee scores"
                )
                found, more = ("", {})
                if source_judge is not None:
                    found, more = _judged(source_judge, pair, BOTH_BAD_QUESTION, BOTH_BAD_OPTIONS)
                evidence.update(more)
                category, action = found or config.both_bad_default, "remove"
            else:
                found, more = ("", {})
                if source_judge is not None:
                    found, more = _judged(source_judge, pair, RESIDUAL_QUESTION, RESIDUAL_OPTIONS)
                    evidence.update(more)
                if not found:
                    evidence["spread"] = round(float(spread[i]), 4)
                    if abs(mean[i] - 0.5) < config.subjective_margin:
                        found, evidence["rule"] = "subjective", "committee undecided (mean P near 0.5)"
                    elif spread[i] >= config.criteria_spread:
                        found, evidence["rule"] = "different_criteria", "members split (large spread of P)"
                    else:
                        found, evidence["rule"] = "different_thresholds", "members lean the same way, weakly"
                category = found
        rows.append(
            PairAudit(
                index=pair.index if pair.index >= 0 else i,
                votes=int(votes[i]),
                members=int(members[i]),
                bucket=buckets[i],
                margin=round(float(margins[i]), 4),
                category=category,
                action=action,
                evidence=evidence,
                scores={
                    n: (None if not math.isfinite(p) else round(float(p), 4))
                    for n, p in zip(scores.names, scores.probs[i])
                },
            )
        )
    return rows


def cleanlab_flags(probs: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """cleanlab's ``find_label_issues`` on out-of-fold P(chosen better): (N,) True where the label is suspect.

    Each pair is shown to cleanlab as a two-class item in a seeded random order (class 1: the first reply
    is the chosen one), so both classes occur and no order effect can help."""
    from cleanlab.filter import find_label_issues

    probs = np.clip(np.asarray(probs, dtype=float), 1e-6, 1 - 1e-6)
    swap = np.random.default_rng(seed).random(probs.size) < 0.5
    labels = np.where(swap, 0, 1)  # swapped: the chosen reply comes second, the label says "second"
    p_first = np.where(swap, 1 - probs, probs)  # (N,) P(first reply is better)
    pred = np.stack([1 - p_first, p_first], axis=1)  # (N, 2)
    return find_label_issues(labels, pred)


@dataclass
class SACResult:
    """A cleaned preference set: every pair's audit row, the committee's scores, and the counts."""

    loaded: LoadedPairs
    rows: list[PairAudit]
    scores: CommitteeScores
    config: SACConfig

    def summary(self) -> dict[str, Any]:
        """Counts by bucket, category and action, and the skipped input lines."""
        n = len(self.rows)
        buckets = Counter(r.bucket for r in self.rows)
        return {
            "pairs": n,
            "skipped": len(self.loaded.skipped),
            "members": self.scores.names,
            "invalid_verdicts": self.scores.invalid,
            "buckets": {b: buckets.get(b, 0) for b in BUCKETS},
            "low_or_none_share": round((buckets.get("low", 0) + buckets.get("none", 0)) / max(n, 1), 4),
            "categories": dict(Counter(r.category for r in self.rows if r.category)),
            "actions": {a: sum(r.action == a for r in self.rows) for a in ACTIONS},
        }

    def cleaned_pairs(self) -> list[PreferencePair]:
        """The pairs SAC keeps, flipped where it flips them."""
        return [
            pair.flipped() if row.action == "flip" else pair
            for pair, row in zip(self.loaded.pairs, self.rows)
            if row.action != "remove"
        ]

    def cleaned_records(self) -> list[dict[str, Any]]:
        """The kept input records in the input's own shape (a flipped one with chosen and rejected exchanged)."""
        return [
            relabelled(record, row.action == "flip")
            for record, row in zip(self.loaded.records, self.rows)
            if row.action != "remove"
        ]

    def audit_records(self) -> list[dict[str, Any]]:
        """One JSON object per input line: the audited pairs, and the skipped lines (action remove)."""
        rows = [asdict(r) for r in self.rows]
        rows += [
            {
                "index": s.index,
                "votes": None,
                "members": 0,
                "bucket": "invalid",
                "margin": None,
                "category": None,
                "action": "remove",
                "evidence": {"skipped": s.reason},
                "scores": {},
            }
            for s in self.loaded.skipped
        ]
        return sorted(rows, key=lambda r: r["index"])


def clean(
    loaded: LoadedPairs,
    members: Sequence[Member],
    config: SACConfig | None = None,
    *,
    source_judge: SourceJudge | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> SACResult:
    """Score every pair with the committee, audit it and apply SAC's policy (nothing is written)."""
    config = config or SACConfig()
    scores = score_committee(members, loaded.pairs, cache_dir=cache_dir, progress=progress)
    rows = audit(scores, loaded.pairs, config, source_judge=source_judge)
    return SACResult(loaded, rows, scores, config)


def write_outputs(result: SACResult, out_dir: str | Path) -> dict[str, Path]:
    """``OUT/cleaned.jsonl`` (the input's shape), ``OUT/audit.jsonl`` and ``OUT/summary.json``, published
    together: the folder is filled aside and renamed in, so a crash leaves the old outputs or the new ones."""
    out_dir = Path(out_dir)
    with publish_folder(out_dir) as staging:
        write_jsonl(staging / "cleaned.jsonl", result.cleaned_records())
        write_jsonl(staging / "audit.jsonl", result.audit_records())
        write_json(staging / "summary.json", {**result.summary(), "config": asdict(result.config)})
    return {name: out_dir / f"{name}.jsonl" for name in ("cleaned", "audit")} | {
        "summary": out_dir / "summary.json"
    }


def backend_source_judge(backend: Any) -> SourceJudge:
    """A source judge on any scoring backend (a local model or an endpoint): the pair and the question as a
    chat prompt, then P of each option letter (" A", " B", ...) from the backend's log-probabilities."""

    def judge(pair: PreferencePair, question: str, options: Sequence[str]) -> list[float]:
        letters = [chr(ord("A") + i) for i in range(len(options))]
        content = (
            f"Conversation:\n{pair.prompt.strip()[-2000:]}\n\nReply 1 (preferred by the annotator):\n"
            f"{pair.chosen.strip()[:1500]}\n\nReply 2:\n{pair.rejected.strip()[:1500]}\n\n{question}\n"
            f"Answer with one letter ({', '.join(letters)})."
        )
        prompt = [{"role": "user", "content": content}]
        scored = backend.score([prompt] * len(letters), [f"Answer: {x}" for x in letters])
        totals = np.array([s.total for s in scored])
        weights = np.exp(totals - totals.max())
        return list(weights / weights.sum())

    return judge


def clean_preferences(
    data: str | Path,
    out_dir: str | Path,
    *,
    members: Sequence[str] = (),
    config: SACConfig | None = None,
    folds: int = 5,
    seed: int = 0,
    strict: bool = False,
    source_judge_model: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``selfevolve clean-prefs``: load DATA, score it with the committee, apply SAC, write ``OUT/cleaned.jsonl``,
    ``OUT/audit.jsonl`` and ``OUT/summary.json``; the summary (with the paths) is returned."""
    from selfevolve.refine.committee import DEFAULT_MEMBERS, build_member
    from selfevolve.refine.preferences import load_pairs

    data, out_dir = Path(data), Path(out_dir)
    if data.resolve().is_relative_to(out_dir.resolve()):
        raise SelfEvolveError(
            f"--out {out_dir} holds the input {data}; the output folder is replaced, pick another"
        )
    loaded = load_pairs(data, strict=strict)
    report(loaded.report())
    model = None
    specs = list(members) or list(DEFAULT_MEMBERS)
    if "crossfit:lm" in specs or source_judge_model:
        from selfevolve.runtime.loading import load_model
        from selfevolve.runtime.registry import DEFAULT_MODEL

        model = load_model(source_judge_model or DEFAULT_MODEL)
    committee = [
        build_member(s, folds=folds, seed=seed, model=model, progress=progress, cache_dir=cache_dir)
        for s in specs
    ]
    judge = backend_source_judge(model) if source_judge_model else None
    result = clean(loaded, committee, config, source_judge=judge, cache_dir=cache_dir, progress=progress)
    paths = write_outputs(result, out_dir)
    return {**result.summary(), **{name: str(path) for name, path in paths.items()}}
