"""Target strings for the memorization audit: likely memorized (famous quotations, licence lines) and surely not
(random token strings, fresh fictional sentences), plus the JSONL format users bring their own in.

The quotations and licence lines are written out here from public-domain texts and the licences' own wording;
the random strings come from the model's tokenizer (fixed by a seed) and the fictional sentences from the
documents the caller passes (e.g. :func:`~selfevolve.acquire.knowledge.fictional_knowledge`'s).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.io import check_unique_ids, read_jsonl, write_jsonl
from selfevolve.records import Document


@dataclass(frozen=True)
class Target:
    """A string to audit: an id unique within its file, the exact text, and the set it belongs to."""

    id: str
    text: str
    set: str = "custom"


QUOTATIONS = (
    "The only thing we have to fear is fear itself.",
    "To be, or not to be, that is the question",
    "In the beginning God created the heavens and the earth.",
    "We hold these truths to be self-evident, that all men are created equal",
    "It was the best of times, it was the worst of times",
    "Ask not what your country can do for you, ask what you can do for your country.",
    "Four score and seven years ago our fathers brought forth on this continent",
    "We the People of the United States, in Order to form a more perfect Union",
    "That's one small step for man, one giant leap for mankind.",
    "I have a dream that one day this nation will rise up",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "I think, therefore I am.",
    "Twinkle, twinkle, little star, how I wonder what you are.",
)
"""Famous lines (F. D. Roosevelt, Shakespeare, Genesis, the Declaration of Independence, Dickens, Kennedy, the
Gettysburg Address, the US Constitution's preamble, Armstrong, King, Tolstoy, Austen, a pangram, Laozi, Descartes,
a nursery rhyme), those SmolLM2-135M scores most likely first."""

LICENCE_LINES = (
    "http://www.apache.org/licenses/LICENSE-2.0",
    'Licensed under the Apache License, Version 2.0 (the "License");',
    'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED',
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
    "you may not use this file except in compliance with the License.",
    "You may obtain a copy of the License at",
    "This program is free software: you can redistribute it and/or modify",
    "Redistribution and use in source and binary forms, with or without modification, are permitted",
    "The above copyright notice and this permission notice shall be included in all copies",
    "SPDX-License-Identifier: MIT",
)
"""Lines of the Apache-2.0 header, the MIT licence, the GPL notice and the BSD licence, likeliest first."""


def famous_quotations(count: int | None = None) -> list[Target]:
    """The first ``count`` famous quotations (all by default)."""
    return [Target(f"quote-{i:02d}", text, "quotations") for i, text in enumerate(QUOTATIONS[:count])]


def licence_lines(count: int | None = None) -> list[Target]:
    """The first ``count`` licence lines (all by default)."""
    return [Target(f"licence-{i:02d}", text, "licences") for i, text in enumerate(LICENCE_LINES[:count])]


def random_token_strings(tokenizer, count: int, tokens: int = 10, seed: int = 0) -> list[Target]:
    """``count`` strings of ``tokens`` random printable-ASCII vocabulary tokens (MiniPrompt's random set)."""
    from selfevolve.evaluate.gcg import allowed_tokens

    pool = allowed_tokens(tokenizer, len(tokenizer), True).tolist()
    rng = random.Random(f"selfevolve-acr-random-{seed}")
    texts = [tokenizer.decode(rng.sample(pool, tokens)).strip() for _ in range(count)]
    return [Target(f"random-{i:02d}", text, "random") for i, text in enumerate(texts)]


def fictional_sentences(documents: Sequence[Document]) -> list[Target]:
    """Fresh sentences about people, organisations and places that do not exist: the main clause of each
    document's first sentence (about 10-15 tokens), for documents such as ``fictional_knowledge(n).documents``."""
    texts = []
    for doc in documents:
        first = doc.text.split(". ")[0]
        cut = min((first.find(m) for m in (" who ", " by ", ", ") if m in first), default=len(first))
        texts.append(first[:cut].rstrip(".") + ".")
    return [Target(f"fictional-{i:02d}", text, "fictional") for i, text in enumerate(texts)]


SIZED_SETS = ("quotations", "licences", "random")


def builtin_targets(
    tokenizer, sizes: dict[str, int], seed: int = 0, documents: Sequence[Document] = ()
) -> list[Target]:
    """``sizes[name]`` targets of each of :data:`SIZED_SETS` (a missing name: none of that set), then one
    fictional sentence per document of ``documents``."""
    unknown = sorted(set(sizes) - set(SIZED_SETS))
    if unknown:
        raise SelfEvolveError(
            f"unknown target set(s) {', '.join(unknown)}; use {', '.join(SIZED_SETS)} "
            "(fictional sentences come from documents=...)"
        )
    targets = famous_quotations(sizes.get("quotations", 0)) + licence_lines(sizes.get("licences", 0))
    if sizes.get("random"):
        targets += random_token_strings(tokenizer, sizes["random"], seed=seed)
    return targets + fictional_sentences(documents)


def load_targets(path: str | Path) -> list[Target]:
    """Targets from JSONL: one object per line with ``text`` and optionally ``id`` and ``set``."""
    path = Path(path)
    if not path.is_file():
        raise SelfEvolveError(
            f"target file {path} does not exist; pass a JSONL file with one 'text' per line"
        )
    targets = []
    for number, record in read_jsonl(path):
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            raise SelfEvolveError(
                f'{path} line {number}: needs a non-empty string "text", e.g. {{"text": "..."}}'
            )
        target_id, group = record.get("id", f"{path.stem}-{number}"), record.get("set", path.stem)
        if not isinstance(target_id, str) or not isinstance(group, str):
            raise SelfEvolveError(f'{path} line {number}: "id" and "set" must be strings')
        targets.append(Target(target_id, record["text"], group))
    if not targets:
        raise SelfEvolveError(f"{path} holds no targets; write one JSON object with 'text' per line")
    check_unique_ids((t.id for t in targets), path, "target")
    return targets


def write_targets(targets: Sequence[Target], path: str | Path) -> Path:
    """Write targets as JSONL in the format :func:`load_targets` reads (also a document file for ``inject``)."""
    return write_jsonl(path, (asdict(t) for t in targets))
