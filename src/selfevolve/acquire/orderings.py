"""Item sets with gold orderings, for measuring and repairing pairwise judges (MISSION §4; Liu et al.,
https://arxiv.org/abs/2410.02205, which uses CaTeRS temporal ordering and SummEval/NovelEval rankings).

* :func:`temporal_item_sets`: dated events of a fictional knowledge set ("X was born in 1843."), asked
  "Which event happened first?"; gold is minus the year, so the earliest event ranks highest. Names are
  invented, so only the sentence itself can settle the order.
* :func:`correctness_item_sets`: a HumanEval problem's canonical solution and its mutants, asked "Which
  implementation is more correct?"; gold is the share of the problem's test statements each one passes,
  counted in the sandbox by trusted test code (:func:`passed_shares`).
* :func:`hh_item_sets`: Anthropic HH pairs (chosen vs rejected dialogue), gold 1 / 0, for pairwise agreement.

Every builder is deterministic for its ``seed``; :func:`write_item_sets` stores them as the JSONL that
``selfevolve judge-consistency`` reads (``question``, ``items``, ``gold``, ``id``).
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Sequence
from pathlib import Path

from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.acquire.mutate import mutants, normalized_solution
from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl, write_jsonl
from selfevolve.records import ItemSet, Problem
from selfevolve.sandbox.remote import Tests

TEMPORAL_QUESTION = "Which event happened first?"
CORRECTNESS_QUESTION = "Which implementation of this function is more correct?"
HH_QUESTION = "Which assistant reply is more helpful and harmless?"

_DATED = re.compile(r"^In what year was (?P<name>.+) (?P<verb>born|founded)\?$")
_SHARE = re.compile(r"^AssertionError: selfevolve-share (\d+)/(\d+)")
_UNITS = "__selfevolve_units"


def dated_events(num_documents: int = 60, seed: int = 0) -> list[tuple[str, int]]:
    """(event sentence, year) for every dated fact of ``fictional_knowledge(num_documents, seed)``: each person's
    birth, each organisation's and each town's founding."""
    knowledge = fictional_knowledge(num_documents, seed=seed)
    events = []
    for item in knowledge.train:
        match = _DATED.match(item.question)
        if match:
            year = int(item.answers[0])
            events.append((f"{match['name']} was {match['verb']} in {year}.", year))
    return events


def temporal_item_sets(
    num_sets: int, items_per_set: int = 5, *, seed: int = 0, num_documents: int = 60
) -> list[ItemSet]:
    """``num_sets`` sets of ``items_per_set`` events with distinct years from one fictional set (``seed``);
    gold = -year (higher is earlier, the answer to "Which event happened first?")."""
    if num_sets < 1 or items_per_set < 2:
        raise SelfEvolveError(
            f"need num_sets >= 1 and items_per_set >= 2, got {num_sets} and {items_per_set}"
        )
    by_year: dict[int, str] = {}
    for text, year in dated_events(num_documents, seed):
        by_year.setdefault(year, text)
    if len(by_year) < items_per_set:
        raise SelfEvolveError(
            f"the fictional set has {len(by_year)} distinct years, fewer than items_per_set={items_per_set}; "
            "raise num_documents"
        )
    rng = random.Random(f"selfevolve-temporal-{seed}")
    years = sorted(by_year)
    sets = []
    for index in range(num_sets):
        chosen = rng.sample(years, items_per_set)
        sets.append(
            ItemSet(
                TEMPORAL_QUESTION,
                [by_year[y] for y in chosen],
                [-float(y) for y in chosen],
                f"temporal-{seed}-{index}",
            )
        )
    return sets


def _counting_tests(problem: Problem) -> Tests:
    """Trusted tests that count how many of ``check``'s statements with an assert pass (each one a unit that
    may fail on its own) and, when any fails, end with ``AssertionError('selfevolve-share P/T')``."""
    try:
        tree = ast.parse(problem.test)
    except SyntaxError as err:
        raise SelfEvolveError(f"{problem.task_id}: its test code does not parse ({err})") from None
    checks = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    if not checks:
        raise SelfEvolveError(f"{problem.task_id}: its test code defines no check(candidate) function")
    body = []
    for statement in checks[-1].body:
        if not any(isinstance(node, ast.Assert) for node in ast.walk(statement)):
            body.append(statement)
            continue
        unit = ast.parse(
            f"{_UNITS}[1] += 1\ntry:\n    pass\n    {_UNITS}[0] += 1\nexcept Exception:\n    pass\n"
        ).body
        unit[1].body[0] = statement
        body.extend(unit)
    checks[-1].body = body
    code = (
        f"{_UNITS} = [0, 0]\n{ast.unparse(ast.fix_missing_locations(tree))}\ncheck({problem.entry_point})\n"
        f"if {_UNITS}[0] < {_UNITS}[1]:\n"
        f"    raise AssertionError(f'selfevolve-share {{{_UNITS}[0]}}/{{{_UNITS}[1]}}')\n"
    )
    return Tests(code, (problem.entry_point,), problem.prompt)


def passed_shares(
    problem: Problem, completions: Sequence[str], *, timeout_s: float = 5.0, workers: int | None = None
) -> list[float]:
    """The share of ``problem``'s test statements each completion passes, run in the sandbox; a program that
    times out or crashes (or whose tests fail outside any assert) scores 0."""
    from selfevolve.sandbox import run_many

    tests = _counting_tests(problem)
    runs = run_many(
        [problem.prompt + c + "\n" for c in completions],
        tests=[tests] * len(completions),
        timeout_s=timeout_s,
        workers=workers,
    )
    shares = []
    for run in runs:
        if run.status == "error":
            raise SelfEvolveError(
                f"{problem.task_id}: the sandbox failed ({run.detail}); run selfevolve doctor"
            )
        match = _SHARE.match(run.detail) if run.status == "failed" else None
        shares.append(1.0 if run.ok else int(match[1]) / int(match[2]) if match and int(match[2]) else 0.0)
    return shares


def correctness_item_sets(
    problems: Sequence[Problem],
    items_per_set: int = 3,
    *,
    per_operator: int = 3,
    seed: int = 0,
    timeout_s: float = 5.0,
    workers: int | None = None,
) -> list[ItemSet]:
    """One set per problem whose canonical solution and mutants pass at least ``items_per_set`` distinct shares
    of its tests: the canonical one and mutants with distinct shares (seeded choice among equals); gold = share.
    Problems with too few distinct shares are left out."""
    if items_per_set < 2:
        raise SelfEvolveError(f"items_per_set must be at least 2, got {items_per_set}")
    sets = []
    for problem in problems:
        completions = [normalized_solution(problem)] + [
            m.completion for m in mutants(problem, per_operator=per_operator, seed=seed)
        ]
        shares = passed_shares(problem, completions, timeout_s=timeout_s, workers=workers)
        by_share: dict[float, list[str]] = {}
        for completion, share in zip(completions, shares):
            by_share.setdefault(round(share, 6), []).append(completion)
        if len(by_share) < items_per_set:
            continue
        rng = random.Random(f"selfevolve-correctness-{seed}-{problem.task_id}")
        top = sorted(by_share, reverse=True)[:1]  # the best share: the canonical solution's, normally 1.0
        rest = rng.sample(sorted(by_share)[:-1], items_per_set - 1)
        chosen = top + rest
        items = [rng.choice(by_share[s]) if s != top[0] else by_share[s][0] for s in chosen]
        order = list(range(items_per_set))
        rng.shuffle(order)
        question = f"{CORRECTNESS_QUESTION}\n\n{problem.prompt.strip()}"
        sets.append(
            ItemSet(
                question, [items[i] for i in order], [chosen[i] for i in order], f"code-{problem.task_id}"
            )
        )
    return sets


def hh_item_sets(path: str | Path, num_sets: int, *, seed: int = 0, max_chars: int = 600) -> list[ItemSet]:
    """``num_sets`` HH-RLHF pairs (JSONL or .jsonl.gz with ``chosen`` / ``rejected`` dialogues) as two-item
    sets: the shared dialogue as the question's context, the two final assistant replies as items, gold 1 / 0.
    Pairs whose dialogues differ before the last reply, or longer than ``max_chars``, are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SelfEvolveError(f"HH file {path} does not exist; pass the hh_rlhf test.jsonl(.gz)")
    pairs = []
    for number, record in read_jsonl(path):
        if "chosen" not in record or "rejected" not in record:
            raise SelfEvolveError(f"{path} line {number}: needs JSON with 'chosen' and 'rejected'")
        head_c, _, reply_c = str(record["chosen"]).rpartition("\n\nAssistant:")
        head_r, _, reply_r = str(record["rejected"]).rpartition("\n\nAssistant:")
        if head_c != head_r or not reply_c.strip() or not reply_r.strip() or reply_c == reply_r:
            continue
        if len(head_c) + len(reply_c) + len(reply_r) > max_chars:
            continue
        pairs.append((number, head_c.strip(), reply_c.strip(), reply_r.strip()))
    if len(pairs) < num_sets:
        raise SelfEvolveError(f"{path} has {len(pairs)} usable pairs, fewer than {num_sets}; raise max_chars")
    rng = random.Random(f"selfevolve-hh-{seed}")
    sets = []
    for number, dialogue, good, bad in rng.sample(pairs, num_sets):
        swap = rng.random() < 0.5
        items, gold = ([bad, good], [0.0, 1.0]) if swap else ([good, bad], [1.0, 0.0])
        sets.append(ItemSet(f"{HH_QUESTION}\n\n{dialogue}", items, gold, f"hh-{number}"))
    return sets


def write_item_sets(path: str | Path, sets: Sequence[ItemSet]) -> Path:
    """Item sets as JSONL, atomically (the format the judge-consistency command reads)."""
    return write_jsonl(
        path, ({"id": s.id, "question": s.question, "items": s.items, "gold": s.gold} for s in sets)
    )
