"""Pairwise judges: F(question, a, b) -> P(a is better than b), from a local or served model, or any callable.

The form the consistency metrics (transitivity, commutativity, negation invariance) and REPAIR are defined on:
Liu et al., "Aligning with Logic: Measuring, Evaluating and Improving Logical Preference Consistency in Large
Language Models", 2024, https://arxiv.org/abs/2410.02205.

* :class:`LogprobJudge`: one forward pass per pair; P = softmax over the log-probabilities of the two answer
  labels ("A", "B") after the prompt (one ``backend.score`` call per batch of triples).
* :class:`VerdictJudge`: the model writes its verdict; "A" -> 1.0, "B" -> 0.0, a tie ("tie", "equal",
  "both") -> 0.5, anything else -> ``math.nan`` (invalid).
* :class:`CallableJudge`: a Python function ``fn(question, a, b, *, negated) -> float``.
* :class:`CachedJudge`: asks each ordered pair (and question polarity) once, counts the real calls, and keeps
  every verdict in a JSONL file so an interrupted measurement resumes without asking again.

Invalid verdicts are ``math.nan``: callers count them, they are never scored. A user callable that returns a
non-number or NaN gives an invalid verdict (counted); one that returns a finite number outside [0, 1] (or an
infinity) is a scale bug, not a verdict, and raises a one-line :class:`~selfevolve.errors.SelfEvolveError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from selfevolve.config import import_callable
from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import Backend, Message

Triple = tuple[str, str, str]
"""(question, a, b): the criterion and the two items, in the order shown to the judge."""

KINDS = ("logprob", "verdict")


@runtime_checkable
class PairwiseJudge(Protocol):
    """Anything with a ``name`` and a batched ``prefer``."""

    name: str

    def prefer(self, triples: Sequence[Triple], *, negated: bool = False) -> list[float]:
        """P(a is better than b) per triple (P(a is worse) when ``negated``); ``math.nan`` = invalid verdict."""
        ...


@dataclass
class PairwiseTemplate:
    """The prompt hook: (question, a, b, negated) -> chat messages (or plain text for text-only scoring)."""

    system: str = (
        "You compare two candidate answers to a question. Reply with one letter: A or B, nothing else."
    )
    better: str = "Which candidate is the better answer to the question? Reply with A or B."
    worse: str = "Which candidate is the worse answer to the question? Reply with A or B."
    label_a: str = "A"
    label_b: str = "B"

    def user(self, question: str, a: str, b: str, negated: bool = False) -> str:
        """The user turn: question, both candidates, then the (possibly negated) instruction."""
        ask = self.worse if negated else self.better
        return (
            f"Question: {question}\n\nCandidate {self.label_a}: {a}\nCandidate {self.label_b}: {b}\n\n{ask}"
        )

    def messages(self, question: str, a: str, b: str, negated: bool = False) -> list[Message]:
        """Chat messages for a chat model (local, or a served one's chat endpoint)."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user(question, a, b, negated)},
        ]

    def __call__(self, question: str, a: str, b: str, negated: bool = False) -> list[Message]:
        """The prompt hook: the same as :meth:`messages`."""
        return self.messages(question, a, b, negated)

    def text(self, question: str, a: str, b: str, negated: bool = False) -> str:
        """A plain-text prompt ending in ``Answer:`` (for backends that score text only, e.g. over HTTP)."""
        return f"{self.system}\n\n{self.user(question, a, b, negated)}\nAnswer:"


def _check_triples(triples: Sequence[Triple]) -> list[Triple]:
    out = []
    for triple in triples:
        if len(triple) != 3 or not all(isinstance(t, str) for t in triple):
            raise SelfEvolveError(f"a judge takes (question, a, b) string triples, got {str(triple)[:80]!r}")
        out.append((triple[0], triple[1], triple[2]))
    return out


def _judge_name(kind: str, backend: Backend, template: PairwiseTemplate) -> str:
    """``kind:model``, plus a short hash of the template when it is not the default one (cache files are keyed
    by judge name, so a changed prompt never reuses another prompt's verdicts)."""
    name = f"{kind}:{backend.name}"
    if template != PairwiseTemplate():
        digest = hashlib.sha256(json.dumps(asdict(template), sort_keys=True).encode()).hexdigest()[:8]
        name += f"+template-{digest}"
    return name


def _chat_scoring(backend: Backend) -> bool:
    """Whether ``backend.score`` takes chat messages (a local model renders them with its chat template)."""
    return callable(getattr(backend, "render", None)) and bool(
        getattr(getattr(backend, "tokenizer", None), "chat_template", None)
    )


class LogprobJudge:
    """P(a better) = softmax of the label log-probabilities ("A" vs "B") after the prompt; one score call."""

    def __init__(self, backend: Backend, template: PairwiseTemplate | None = None) -> None:
        self.backend = backend
        self.template = template or PairwiseTemplate()
        self.chat = _chat_scoring(backend)  # else a text prompt, labels with a leading space
        self.name = _judge_name("logprob", backend, self.template)

    def prefer(self, triples: Sequence[Triple], *, negated: bool = False) -> list[float]:
        """P(a better than b) per triple (P(a worse) when ``negated``); nan when both labels score -inf."""
        triples = _check_triples(triples)
        if not triples:
            return []
        t = self.template
        if self.chat:
            prompts: list[Any] = [t.messages(q, a, b, negated) for q, a, b in triples]
            labels = (t.label_a, t.label_b)
        else:
            prompts = [t.text(q, a, b, negated) for q, a, b in triples]
            labels = (" " + t.label_a, " " + t.label_b)
        scores = self.backend.score(
            [p for p in prompts for _ in labels], [label for _ in prompts for label in labels]
        )
        out = []
        for i in range(len(triples)):
            la, lb = scores[2 * i].total, scores[2 * i + 1].total
            top = max(la, lb)
            if not math.isfinite(top):
                out.append(math.nan)
                continue
            wa, wb = math.exp(la - top), math.exp(lb - top)
            out.append(wa / (wa + wb))
        return out


_TIE = re.compile(r"\b(tie|equal|equally|both|same|neither)\b", re.IGNORECASE)
_LETTER = r"(?<![A-Za-z0-9])({a}|{b})(?![A-Za-z0-9])"


def parse_verdict(text: str, label_a: str = "A", label_b: str = "B") -> float:
    """1.0 for a reply that picks ``label_a`` ("A", "A.", "**A**", "Candidate A", "Answer: A"), 0.0 for
    ``label_b``, 0.5 for a tie ("tie", "equal", "both"), nan for anything else (empty, both letters, prose)."""
    head = text.strip().strip("*_`\"'()[]#>:.- \n")
    head = re.sub(r"^(?:answer|verdict|candidate|final answer)\s*[:=-]?\s*", "", head, flags=re.IGNORECASE)
    head = re.sub(r"^(?:candidate|option)\s+", "", head, flags=re.IGNORECASE).strip("*_`\"'()[]:.- ")
    first = re.split(r"[\s.,;:!)\]*]", head, maxsplit=1)[0] if head else ""
    if first == label_a:
        return 1.0
    if first == label_b:
        return 0.0
    letters = {
        m.group(1) for m in re.finditer(_LETTER.format(a=re.escape(label_a), b=re.escape(label_b)), text)
    }
    if _TIE.search(text) and len(letters) != 1:  # "a tie", "both A and B are equal"; not "B is equally ..."
        return 0.5
    return math.nan


class VerdictJudge:
    """The model writes its verdict (greedy, ``max_new_tokens`` tokens); parsed by :func:`parse_verdict`."""

    def __init__(
        self, backend: Backend, template: PairwiseTemplate | None = None, max_new_tokens: int = 8
    ) -> None:
        if max_new_tokens < 1:
            raise SelfEvolveError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.backend = backend
        self.template = template or PairwiseTemplate()
        self.max_new_tokens = max_new_tokens
        self.name = _judge_name("verdict", backend, self.template)
        self.last_raw: list[str] = []  # the raw replies of the last call (to inspect invalid ones)

    def prefer(self, triples: Sequence[Triple], *, negated: bool = False) -> list[float]:
        """1.0 / 0.0 / 0.5 per triple from the written verdict; nan when it names no candidate."""
        triples = _check_triples(triples)
        if not triples:
            return []
        t = self.template
        prompts = [t.messages(q, a, b, negated) for q, a, b in triples]
        replies = self.backend.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=0.0)
        self.last_raw = [c.text for c in replies]
        return [parse_verdict(text, t.label_a, t.label_b) for text in self.last_raw]


def check_probability(value: Any, where: str) -> float:
    """A user judge's return value as a float: nan for a non-number or NaN (an invalid verdict, counted);
    a SelfEvolveError for a number outside [0, 1] (a scale bug, e.g. a 0-100 score)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    value = float(value)
    if math.isnan(value):
        return math.nan
    if not 0.0 <= value <= 1.0:
        raise SelfEvolveError(
            f"{where} returned {value!r}, outside [0, 1]; return the probability that a is the better item"
        )
    return value


class CallableJudge:
    """Wraps ``fn(question, a, b, *, negated) -> float`` (the probability that ``a`` is better / worse)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        if not callable(fn):
            raise SelfEvolveError(f"a CallableJudge needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)

    def prefer(self, triples: Sequence[Triple], *, negated: bool = False) -> list[float]:
        """One call of ``fn`` per triple; garbage -> nan, out-of-range -> SelfEvolveError (module docstring)."""
        out = []
        for q, a, b in _check_triples(triples):
            try:
                value = self.fn(q, a, b, negated=negated)
            except SelfEvolveError:
                raise
            except Exception as err:  # a user function's bug: one line, not a traceback
                raise SelfEvolveError(
                    f"judge {self.name} raised {type(err).__name__}: {str(err)[:200]}; fix the function"
                ) from None
            out.append(check_probability(value, f"judge {self.name}"))
        return out


def _key(question: str, a: str, b: str, negated: bool) -> str:
    return json.dumps([question, a, b, bool(negated)], ensure_ascii=False)


class CachedJudge:
    """Each (question, a, b, negated) is asked once; ``calls`` counts the verdicts really asked of ``judge``
    and ``invalid`` the nan ones among them. With ``path``, verdicts are appended to a JSONL file (one object
    per verdict: judge, question, a, b, negated, p with null for nan) and read back on the next start.

    The file is keyed by the judge's name (model name, plus a template hash): use one file per set of weights,
    e.g. a new path for a fine-tuned model saved under the same name."""

    def __init__(self, judge: PairwiseJudge, path: str | Path | None = None) -> None:
        self.judge = judge
        self.name = judge.name
        self.path = Path(path) if path is not None else None
        self.calls = 0
        self.invalid = 0
        self.cache: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = _key(record["question"], record["a"], record["b"], record["negated"])
                p = record["p"]
                judge = record["judge"]
            except (ValueError, KeyError, TypeError):
                if number == len(lines):
                    continue  # a line torn by a crash while appending: asked again
                raise SelfEvolveError(
                    f"{path} line {number}: not a judge-cache record; delete the file to start afresh"
                ) from None
            if judge != self.name:
                raise SelfEvolveError(
                    f"{path} holds verdicts of judge {judge!r}, not {self.name!r}; pass another cache path"
                )
            self.cache[key] = math.nan if p is None else float(p)

    def _store(self, records: list[dict]) -> None:
        if self.path is None or not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def prefer(self, triples: Sequence[Triple], *, negated: bool = False) -> list[float]:
        """Cached verdicts; the missing ones asked of the wrapped judge in one batch."""
        triples = _check_triples(triples)
        keys = [_key(q, a, b, negated) for q, a, b in triples]
        missing: dict[str, Triple] = {}
        for key, triple in zip(keys, triples):
            if key not in self.cache and key not in missing:
                missing[key] = triple
        if missing:
            asked = list(missing.values())
            values = list(self.judge.prefer(asked, negated=negated))
            if len(values) != len(asked):
                raise SelfEvolveError(
                    f"judge {self.name} returned {len(values)} verdicts for {len(asked)} pairs; return one each"
                )
            records = []
            for key, (q, a, b), value in zip(missing, asked, values):
                value = check_probability(value, f"judge {self.name}")
                self.cache[key] = value
                self.calls += 1
                self.invalid += math.isnan(value)
                p = None if math.isnan(value) else value
                records.append(
                    {"judge": self.name, "question": q, "a": a, "b": b, "negated": negated, "p": p}
                )
            self._store(records)
        return [self.cache[key] for key in keys]


def _load_callable(spec: str) -> CallableJudge:
    fn = import_callable(spec, "judge", "point at a function (question, a, b, *, negated)")
    return CallableJudge(fn, name=spec)


_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_judge(
    spec: str,
    *,
    kind: str = "logprob",
    model: str | None = None,
    api_key: str = "EMPTY",
    device: str = "auto",
    template: PairwiseTemplate | None = None,
    max_new_tokens: int = 8,
) -> PairwiseJudge:
    """A judge from ``spec``: a registry model name or HF folder (local LocalModel), an http(s):// URL of an
    OpenAI-compatible endpoint (``model`` names the served model; default: the first of GET /v1/models), or
    ``module:function`` (a CallableJudge; the module is imported from PYTHONPATH or the current directory). ``kind`` (logprob or verdict) picks the judge for model specs."""
    if kind not in KINDS:
        raise SelfEvolveError(f"unknown judge kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise SelfEvolveError("empty judge spec; pass a model name, an http(s):// URL or module:function")
    if _CALLABLE_SPEC.match(spec) and not Path(spec).exists():
        return _load_callable(spec)
    if spec.startswith(("http://", "https://")):
        from selfevolve.runtime.http import OpenAIBackend

        backend: Backend = OpenAIBackend(spec, model or _served_model(spec, api_key), api_key=api_key)
    else:
        from selfevolve.runtime.loading import load_model

        backend = load_model(spec, device=device)
    if kind == "verdict":
        return VerdictJudge(backend, template, max_new_tokens=max_new_tokens)
    return LogprobJudge(backend, template)


def _served_model(url: str, api_key: str) -> str:
    """The first model id an OpenAI-compatible server lists at GET /v1/models."""
    import openai

    from selfevolve.runtime.http import api_base

    try:
        listed = openai.OpenAI(
            base_url=api_base(url), api_key=api_key, timeout=30, max_retries=1
        ).models.list()
        ids = [m.id for m in listed.data]
    except openai.OpenAIError as err:
        raise SelfEvolveError(
            f"cannot list the models served at {url} ({type(err).__name__}); check the URL or name the model"
        ) from None
    if not ids:
        raise SelfEvolveError(f"{url} serves no model (GET /v1/models is empty); name the model")
    return ids[0]
