"""Logical consistency of a pairwise judge: transitivity, commutativity, negation invariance, gold agreement.

Paper: Liu et al., "Aligning with Logic: Measuring, Evaluating and Improving Logical Preference Consistency in
Large Language Models", 2024, https://arxiv.org/abs/2410.02205 (the three proxies, s_tran(K) on K-item subsets).

For each item set the judge is asked every ordered pair (i, j), i != j, once: ``P[i, j]`` = P(item i better
than item j) with i shown first, and (for negation) ``N[i, j]`` = P(item i worse than item j). The diagonal is
nan. A probability becomes a **verdict** by the tie rule: ``|p - 0.5| <= tie_margin`` is a tie (0), above it
"first better" (+1), below it "second better" (-1); a nan probability (a garbage output) is an invalid verdict.

* **s_comm** (commutativity), per unordered pair: the verdict on (i, j) is the opposite of the verdict on
  (j, i) (+1 and -1, or a tie both ways). A tie one way and a preference the other way is inconsistent.
* **s_neg** (negation invariance), per ordered pair: the verdict on "which is worse" is the opposite of the
  verdict on "which is better" (a tie stays a tie).
* **s_tran(K)** (transitivity), per K-item subset: the subset's preference relation has no cycle. The pair's
  preference is the order-averaged ``(P[i, j] + 1 - P[j, i]) / 2`` (``both_orders``; so position bias is left to
  s_comm), or ``P[i, j]`` for i < j alone. A tie links both ways (the items are equally good); a subset is
  intransitive when some strict preference i > j has a path back from j to i (e.g. a > b, b = c, c = a).
* **gold_agreement**, per pair with different gold scores: the (order-averaged) verdict agrees with the gold
  order (1), disagrees (0), or is a tie (0.5: neither). Pairs tied in gold are skipped.

A unit (pair or subset) that involves an invalid verdict is not scored: it is counted in ``n_invalid``. Every
metric has a percentile bootstrap interval over its units (pairs or subsets; the resampling does not model the
correlation between units of the same item set) and the number of distinct judge verdicts it needs (``calls``).
Item sets with fewer than K items are skipped for s_tran only (the report's notes say how many); when no set
has K items, :func:`measure_consistency` raises a SelfEvolveError that names the largest set.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl
from selfevolve.judges.pairwise import CachedJudge, PairwiseJudge
from selfevolve.records import ItemSet

METRICS = ("s_tran", "s_comm", "s_neg", "gold_agreement")


@dataclass
class ConsistencyConfig:
    """Subset size K, the tie rule, and the sampling and bootstrap settings."""

    k: int = 5  # items per subset for s_tran(K) (the paper reports K = 5)
    subsets: int = 200  # K-subsets sampled per item set; all of them when there are fewer
    tie_margin: float = 0.0  # |p - 0.5| <= tie_margin is a tie (0.0: only exactly 0.5, e.g. a "tie" verdict)
    both_orders: bool = True  # s_tran and gold use the order-averaged preference (else P[i, j], i < j)
    negation: bool = True  # ask the negated question too (needed for s_neg; doubles the calls)
    n_boot: int = 1000  # bootstrap resamples
    confidence: float = 0.95  # bootstrap interval level
    seed: int = 0  # subset sampling and bootstrap

    def __post_init__(self) -> None:
        if self.k < 3:
            raise SelfEvolveError(f"k must be at least 3 (a cycle needs 3 items), got {self.k}")
        if self.subsets < 1 or self.n_boot < 1:
            raise SelfEvolveError(f"subsets and n_boot must be at least 1, got {self.subsets}, {self.n_boot}")
        if not 0.0 <= self.tie_margin < 0.5:
            raise SelfEvolveError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")
        if not 0.0 < self.confidence < 1.0:
            raise SelfEvolveError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class Metric:
    """One consistency metric: the mean over its scored units, its bootstrap interval, and its costs."""

    name: str
    value: float | None  # None when no unit could be scored
    low: float | None
    high: float | None
    n: int  # units scored (pairs or subsets)
    n_invalid: int  # units not scored because they involve an invalid verdict
    calls: int  # distinct judge verdicts the metric needs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ConsistencyReport:
    """The metrics by name (``gold_agreement`` is absent when no item set has gold), calls and notes."""

    judge: str
    metrics: dict[str, Metric]
    calls: int  # judge verdicts really asked (cache hits not counted)
    invalid: int  # invalid (nan) verdicts among them
    tie_rate: float | None  # share of valid pairs whose (order-averaged) preference is a tie
    n_sets: int
    n_items: int
    config: ConsistencyConfig
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "metrics": {  # every name; None for one not measured (no gold, or negation off)
                name: self.metrics[name].as_dict() if name in self.metrics else None for name in METRICS
            },
            "calls": self.calls,
            "invalid": self.invalid,
            "tie_rate": self.tie_rate,
            "n_sets": self.n_sets,
            "n_items": self.n_items,
            "config": asdict(self.config),
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


# Pure metric functions over preference matrices (P[i, j] = P(i better than j), nan = invalid).


def verdicts(p: np.ndarray, tie_margin: float = 0.0) -> np.ndarray:
    """+1 / 0 / -1 per probability by the tie rule (module docstring); nan stays nan (invalid)."""
    p = np.asarray(p, dtype=float)
    margin = tie_margin + 1e-12  # 0.55 - 0.5 is 0.05000000000000004 in floats: still a tie at margin 0.05
    out = np.where(p - 0.5 > margin, 1.0, np.where(0.5 - p > margin, -1.0, 0.0))
    return np.where(np.isnan(p), np.nan, out)


def commutativity_units(prefs: np.ndarray, tie_margin: float = 0.0) -> tuple[list[float], int]:
    """Per unordered pair {i, j}: 1.0 when v(i, j) == -v(j, i), else 0.0; and the number of invalid pairs."""
    v = verdicts(prefs, tie_margin)
    units, invalid = [], 0
    for i, j in itertools.combinations(range(len(v)), 2):
        if np.isnan(v[i, j]) or np.isnan(v[j, i]):
            invalid += 1
        else:
            units.append(float(v[i, j] == -v[j, i]))
    return units, invalid


def negation_units(
    prefs: np.ndarray, negated: np.ndarray, tie_margin: float = 0.0
) -> tuple[list[float], int]:
    """Per ordered pair (i, j): 1.0 when the verdict on "worse" is the opposite of the one on "better"."""
    v, w = verdicts(prefs, tie_margin), verdicts(negated, tie_margin)
    units, invalid = [], 0
    for i, j in itertools.permutations(range(len(v)), 2):
        if np.isnan(v[i, j]) or np.isnan(w[i, j]):
            invalid += 1
        else:
            units.append(float(w[i, j] == -v[i, j]))
    return units, invalid


def pair_preference(prefs: np.ndarray, both_orders: bool = True) -> np.ndarray:
    """The preference of i over j used by s_tran and gold: order-averaged (P[i,j] + 1 - P[j,i]) / 2, or the
    judgment with the lower index first (P[i, j] for i < j, 1 - P[j, i] for i > j)."""
    prefs = np.asarray(prefs, dtype=float)
    if both_orders:
        return (prefs + 1.0 - prefs.T) / 2.0
    upper = np.triu(np.ones_like(prefs, dtype=bool), 1)
    return np.where(upper, prefs, 1.0 - prefs.T)


def is_transitive(v: np.ndarray) -> bool:
    """Whether a complete verdict matrix (v[i, j] = +1: i better, 0: tie, -1: j better) has no cycle with a
    strict preference in it: no i > j such that j reaches i through "better or equal" links."""
    n = len(v)
    reach = (v >= 0) & ~np.eye(n, dtype=bool)  # i -> j: i at least as good as j
    for m in range(n):  # transitive closure (Floyd-Warshall)
        reach |= reach[:, [m]] & reach[[m], :]
    strict = v > 0
    return not bool((strict & reach.T).any())


def _subsets(n: int, k: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """All K-subsets of range(n) when there are at most ``count``, else ``count`` distinct random ones."""
    total = math.comb(n, k)
    if total <= count:
        return list(itertools.combinations(range(n), k))
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < count:
        chosen.add(tuple(sorted(rng.choice(n, size=k, replace=False).tolist())))
    return sorted(chosen)


def transitivity_units(
    prefs: np.ndarray,
    k: int,
    *,
    subsets: int = 200,
    tie_margin: float = 0.0,
    both_orders: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[list[float], int, set[tuple[int, int]]]:
    """Per sampled K-subset: 1.0 when its preference relation has no cycle; the number of subsets with an
    invalid verdict; and the ordered pairs the subsets needed (for the call count)."""
    rng = rng or np.random.default_rng(0)
    v = verdicts(pair_preference(prefs, both_orders), tie_margin)
    units, invalid, needed = [], 0, set()
    for subset in _subsets(len(v), k, subsets, rng):
        for i, j in itertools.combinations(subset, 2):
            needed.add((i, j))
            if both_orders:
                needed.add((j, i))
        sub = v[np.ix_(subset, subset)]
        if np.isnan(sub[~np.eye(k, dtype=bool)]).any():
            invalid += 1
        else:
            units.append(float(is_transitive(sub)))
    return units, invalid, needed


def gold_units(
    prefs: np.ndarray, gold: Sequence[float], *, tie_margin: float = 0.0, both_orders: bool = True
) -> tuple[list[float], int]:
    """Per pair with different gold: 1.0 when the verdict follows gold, 0.0 against it, 0.5 for a tie."""
    v = verdicts(pair_preference(prefs, both_orders), tie_margin)
    units, invalid = [], 0
    for i, j in itertools.combinations(range(len(v)), 2):
        if gold[i] == gold[j]:
            continue
        if np.isnan(v[i, j]):
            invalid += 1
            continue
        truth = 1.0 if gold[i] > gold[j] else -1.0
        units.append(0.5 if v[i, j] == 0 else float(v[i, j] == truth))
    return units, invalid


def bootstrap_ci(
    units: Sequence[float], *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean of ``units`` and its percentile bootstrap interval; Nones for no units."""
    if not len(units):
        return None, None, None
    values = np.asarray(units, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)  # (n_boot,)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), float(low), float(high)


# Item sets and the measurement.


def load_item_sets(path: str | Path) -> list[ItemSet]:
    """Item sets from JSONL (``question``, ``items``, optional ``gold`` and ``id``); a malformed line is a
    one-line error naming the file and line."""
    sets, seen = [], set()
    for number, record in read_jsonl(path):
        where = f"{path} line {number}"
        question, items, gold = record.get("question"), record.get("items"), record.get("gold")
        if not isinstance(question, str) or not question.strip():
            raise SelfEvolveError(f"{where}: needs a non-empty string 'question' (the criterion)")
        if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
            raise SelfEvolveError(f"{where}: 'items' must be a list of non-empty strings")
        if len(items) < 2:
            raise SelfEvolveError(f"{where}: {len(items)} item(s); a set needs at least 2 items to compare")
        if len(set(items)) < len(items):
            raise SelfEvolveError(f"{where}: 'items' repeats an item; remove the duplicates")
        if gold is not None:
            if (
                not isinstance(gold, list)
                or len(gold) != len(items)
                or not all(isinstance(g, int | float) and not isinstance(g, bool) for g in gold)
                or not all(math.isfinite(g) for g in gold)
            ):
                raise SelfEvolveError(
                    f"{where}: 'gold' must be one finite number per item ({len(items)}), higher is better"
                )
            gold = [float(g) for g in gold]
        set_id = str(record.get("id", f"line{number}"))
        if set_id in seen:
            raise SelfEvolveError(
                f"{where}: id {set_id!r} repeats an earlier line's; give each set its own id"
            )
        seen.add(set_id)
        sets.append(ItemSet(question=question, items=list(items), gold=gold, id=set_id))
    if not sets:
        raise SelfEvolveError(f"{path} holds no item sets; add JSON lines with question and items")
    return sets


NUMBERS_SPEC = re.compile(r"^numbers:(\d+):(\d+)$")


def number_item_sets(count: int, seed: int = 0, size: int = 5) -> list[ItemSet]:
    """``count`` generated item sets of ``size`` distinct integers (1-999), "Which number is larger?", gold = the
    numbers: a task with an exact gold order that needs no data file."""
    if count < 1 or size < 2:
        raise SelfEvolveError(f"need at least 1 set of at least 2 numbers, got {count} sets of {size}")
    rng = np.random.default_rng(seed)
    sets = []
    for k in range(count):
        numbers = rng.choice(np.arange(1, 1000), size=size, replace=False).tolist()
        sets.append(
            ItemSet(
                "Which number is larger?",
                [str(n) for n in numbers],
                [float(n) for n in numbers],
                f"numbers-{k}",
            )
        )
    return sets


def item_sets_from(spec: str | Path) -> list[ItemSet]:
    """Item sets from a JSONL file, or generated from ``numbers:COUNT:SEED`` (see :func:`number_item_sets`)."""
    found = NUMBERS_SPEC.match(str(spec))
    if found and not Path(spec).exists():
        return number_item_sets(int(found.group(1)), int(found.group(2)))
    return load_item_sets(spec)


def _matrix(judge: PairwiseJudge, item_set: ItemSet, negated: bool) -> np.ndarray:
    n = len(item_set.items)
    pairs = list(itertools.permutations(range(n), 2))
    values = judge.prefer(
        [(item_set.question, item_set.items[i], item_set.items[j]) for i, j in pairs], negated=negated
    )
    if len(values) != len(pairs):
        raise SelfEvolveError(f"judge {judge.name} returned {len(values)} verdicts for {len(pairs)} pairs")
    matrix = np.full((n, n), np.nan)  # (n, n); diagonal nan
    for (i, j), value in zip(pairs, values):
        matrix[i, j] = value
    return matrix


def measure_consistency(
    judge: PairwiseJudge,
    item_sets: Sequence[ItemSet],
    config: ConsistencyConfig | None = None,
    *,
    progress: bool = True,
) -> ConsistencyReport:
    """s_tran(K), s_comm, s_neg and gold agreement of ``judge`` on ``item_sets`` (all ordered pairs asked once
    per set and polarity, through a :class:`CachedJudge` unless ``judge`` is one)."""
    from tqdm.auto import tqdm

    config = config or ConsistencyConfig()
    if not item_sets:
        raise SelfEvolveError("no item sets to measure; pass at least one")
    largest = max(len(s.items) for s in item_sets)
    if largest < config.k:
        raise SelfEvolveError(
            f"no item set has k={config.k} items (the largest has {largest}); lower k (--k) to {max(3, largest)} "
            "or add items"
        )
    cached = judge if isinstance(judge, CachedJudge) else CachedJudge(judge)
    calls0, invalid0 = cached.calls, cached.invalid
    rng = np.random.default_rng(config.seed)
    units: dict[str, list[float]] = {name: [] for name in METRICS}
    invalid = dict.fromkeys(METRICS, 0)
    calls = dict.fromkeys(METRICS, 0)
    short, no_gold, tied, decided = 0, 0, 0, 0
    began = time.perf_counter()
    for item_set in tqdm(item_sets, desc="judge consistency", unit="set", disable=not progress):
        n = len(item_set.items)
        prefs = _matrix(cached, item_set, negated=False)
        upper = verdicts(pair_preference(prefs, config.both_orders), config.tie_margin)[np.triu_indices(n, 1)]
        tied += int((upper == 0).sum())
        decided += int((~np.isnan(upper)).sum())
        found, bad = commutativity_units(prefs, config.tie_margin)
        units["s_comm"] += found
        invalid["s_comm"] += bad
        calls["s_comm"] += n * (n - 1)
        if config.negation:
            negated = _matrix(cached, item_set, negated=True)
            found, bad = negation_units(prefs, negated, config.tie_margin)
            units["s_neg"] += found
            invalid["s_neg"] += bad
            calls["s_neg"] += 2 * n * (n - 1)
        if n >= config.k:
            found, bad, needed = transitivity_units(
                prefs,
                config.k,
                subsets=config.subsets,
                tie_margin=config.tie_margin,
                both_orders=config.both_orders,
                rng=rng,
            )
            units["s_tran"] += found
            invalid["s_tran"] += bad
            calls["s_tran"] += len(needed)
        else:
            short += 1
        if item_set.gold is None:
            no_gold += 1
        else:
            found, bad = gold_units(
                prefs, item_set.gold, tie_margin=config.tie_margin, both_orders=config.both_orders
            )
            units["gold_agreement"] += found
            invalid["gold_agreement"] += bad
            calls["gold_agreement"] += n * (n - 1) if config.both_orders else n * (n - 1) // 2
    notes = []
    if short:
        notes.append(f"{short} item set(s) with fewer than k={config.k} items are not in s_tran")
    if no_gold:
        notes.append(f"{no_gold} item set(s) without gold are not in gold_agreement")
    metrics = {}
    for name in METRICS:
        if name == "s_neg" and not config.negation:
            continue
        if name == "gold_agreement" and no_gold == len(item_sets):
            continue
        value, low, high = bootstrap_ci(
            units[name], n_boot=config.n_boot, confidence=config.confidence, seed=config.seed
        )
        metrics[name] = Metric(name, value, low, high, len(units[name]), invalid[name], calls[name])
    return ConsistencyReport(
        judge=cached.name,
        metrics=metrics,
        calls=cached.calls - calls0,
        invalid=cached.invalid - invalid0,
        tie_rate=tied / decided if decided else None,
        n_sets=len(item_sets),
        n_items=sum(len(s.items) for s in item_sets),
        config=config,
        notes=notes,
        seconds=time.perf_counter() - began,
    )


def judge_consistency(
    items: str | Path,
    judge: str | PairwiseJudge,
    config: ConsistencyConfig | None = None,
    *,
    kind: str = "logprob",
    model: str | None = None,
    api_key: str = "EMPTY",
    device: str = "auto",
    cache: str | Path | None = None,
    json_out: str | Path | None = None,
    progress: bool = True,
) -> ConsistencyReport:
    """Measure a judge (a spec for :func:`~selfevolve.judges.pairwise.load_judge`, or a judge) on the item sets
    of a JSONL file (or ``numbers:COUNT:SEED``); verdicts are cached in ``cache`` (resumable) and the report written to ``json_out``."""
    from selfevolve.io import write_json
    from selfevolve.judges.pairwise import load_judge

    config = config or ConsistencyConfig()
    item_sets = item_sets_from(items)
    if isinstance(judge, str):
        judge = load_judge(judge, kind=kind, model=model, api_key=api_key, device=device)
    report = measure_consistency(CachedJudge(judge, cache), item_sets, config, progress=progress)
    if json_out is not None:
        write_json(json_out, {"items": str(items), **report.as_dict()})
    return report
