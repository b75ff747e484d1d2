"""Preference pairs in and out: a JSONL file (``.gz`` too) or a ``datasets.Dataset``, in either shape.

* ``pairs``: records with ``prompt``, ``chosen`` and ``rejected``;
* ``dialogues``: Anthropic HH's records, ``chosen`` and ``rejected`` whole dialogues that share a prefix. The
  prompt is the shared prefix up to and including its last ``"\\n\\nAssistant:"``; the replies are the rest.

Every line is accounted for: a line that cannot be a pair (not UTF-8, not JSON, a missing or non-text field, an
empty prompt or reply, identical replies, a reply over ``max_chars``) is a one-line error with ``strict=True``,
else a reported skip (:attr:`LoadedPairs.skipped`, printed by :meth:`LoadedPairs.report`). The input is only read.
Cleaned data goes back out in the input's own shape: each kept record as it was, a flipped one with its
``chosen`` and ``rejected`` fields exchanged.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfevolve.errors import SelfEvolveError
from selfevolve.records import PreferencePair

ASSISTANT = "\n\nAssistant:"
SHAPES = ("pairs", "dialogues")
MAX_CHARS = 100_000  # a reply longer than this is skipped (a 1 MB reply is a broken record, not a preference)


@dataclass(frozen=True)
class Skip:
    """A line (0-based ``index``) that is not a usable pair, and why."""

    index: int
    reason: str


@dataclass
class LoadedPairs:
    """The valid pairs of a source, their original records (for writing back in the same shape), the skips."""

    source: str
    shape: str  # one of SHAPES
    pairs: list[PreferencePair] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # parallel to pairs
    skipped: list[Skip] = field(default_factory=list)

    def report(self) -> str:
        """One line: how many pairs were read and, by reason, which lines were skipped."""
        line = f"{self.source}: {len(self.pairs)} pairs ({self.shape})"
        if not self.skipped:
            return line + ", nothing skipped"
        by_reason: dict[str, list[int]] = {}
        for skip in self.skipped:
            by_reason.setdefault(skip.reason, []).append(skip.index)
        parts = []
        for reason, lines in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            parts.append(f"{len(lines)} {reason} (line {shown})")
        return f"{line}; skipped {len(self.skipped)}: " + "; ".join(parts)


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of two HH dialogues: the prompt is their shared prefix up to and
    including the last ``"\\n\\nAssistant:"`` in it; a ``ValueError`` when they share no assistant turn."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind(ASSISTANT, 0, shared)
    if cut < 0:
        raise ValueError("chosen and rejected share no prompt ending in 'Assistant:'")
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _pair(record: Any, shape: str, index: int, max_chars: int) -> PreferencePair:
    """The pair a record holds; a ``ValueError`` naming what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    needed = ("prompt", "chosen", "rejected") if shape == "pairs" else ("chosen", "rejected")
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(f"missing field {', '.join(map(repr, missing))}")
    for key in needed:
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} is not text")
    if shape == "pairs":
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    else:
        prompt, chosen, rejected = split_dialogue(record["chosen"], record["rejected"])
    if not prompt.strip() or prompt.strip() == ASSISTANT.strip():
        raise ValueError("empty prompt")
    if not chosen.strip() or not rejected.strip():
        raise ValueError("empty reply")
    if chosen.strip() == rejected.strip():
        raise ValueError("identical chosen and rejected")
    if max(len(chosen), len(rejected)) > max_chars:
        raise ValueError(f"reply over {max_chars} characters")
    return PreferencePair(prompt, chosen, rejected, index)


def _detect_shape(record: dict) -> str:
    return "pairs" if "prompt" in record else "dialogues"


def _rows_of_file(path: Path):
    """(0-based line, parsed JSON or the exception that stopped it) for every non-blank line, read as bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for index, raw in enumerate(handle):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield index, ValueError("not UTF-8")
                    continue
                try:
                    yield index, json.loads(text)
                except ValueError:
                    yield index, ValueError("not valid JSON")
    except (OSError, EOFError) as err:
        raise SelfEvolveError(f"cannot read {path} ({err}); check the path") from None


def load_pairs(
    data: str | Path | Any, *, strict: bool = False, max_chars: int = MAX_CHARS, shape: str | None = None
) -> LoadedPairs:
    """Preference pairs from a JSONL file or a ``datasets.Dataset`` (shape detected from the first record
    unless given); bad lines are skipped and reported, or with ``strict`` a one-line error."""
    if shape is not None and shape not in SHAPES:
        raise SelfEvolveError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    if isinstance(data, str | Path):
        path = Path(data)
        if not path.is_file():
            raise SelfEvolveError(f"{path} not found; pass an existing .jsonl or .jsonl.gz file of pairs")
        rows, source = _rows_of_file(path), str(path)
    else:
        rows, source = enumerate(iter(data)), f"dataset ({len(data)} rows)"
    loaded, seen = LoadedPairs(source, shape or ""), 0
    for index, row in rows:
        seen += 1
        if not loaded.shape and isinstance(row, dict):
            loaded.shape = _detect_shape(row)
        try:
            if isinstance(row, Exception):
                raise row
            pair = _pair(row, loaded.shape, index, max_chars)
        except ValueError as err:
            if strict:
                raise SelfEvolveError(
                    f"{source} line {index}: {err}; fix or remove the line (or load without strict to skip it)"
                ) from None
            loaded.skipped.append(Skip(index, str(err)))
            continue
        loaded.pairs.append(pair)
        loaded.records.append(dict(row))
    if not seen:
        raise SelfEvolveError(f"{source} holds no records; pass a file with one JSON pair per line")
    if not loaded.pairs:
        reasons = Counter(s.reason for s in loaded.skipped).most_common(1)[0][0]
        need = "prompt/chosen/rejected records or chosen/rejected HH dialogues"
        raise SelfEvolveError(f"{source}: no usable pair (most common problem: {reasons}); expected {need}")
    return loaded


def relabelled(record: dict[str, Any], flip: bool) -> dict[str, Any]:
    """``record`` as it was, or with ``chosen`` and ``rejected`` exchanged (the same shape either way)."""
    if not flip:
        return dict(record)
    out = dict(record)
    out["chosen"], out["rejected"] = record["rejected"], record["chosen"]
    return out
