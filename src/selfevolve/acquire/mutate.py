"""Labelled code candidates: a problem's canonical solution, its mutants, and model samples, each run.

CodeJudge (and any judge of code) is measured against execution: a candidate is correct when it passes the
problem's tests. Mutants of the canonical solution give wrong programs that look right, the hard case for a
judge. Five AST operators edit only the function body the solution supplies (never the prompt):

* ``flip_comparison``: ``<`` ↔ ``>=``, ``>`` ↔ ``<=``, ``==`` ↔ ``!=``, ``in`` ↔ ``not in``, ``is`` ↔ ``is not``
* ``off_by_one``: an integer constant ±1, or a ``range`` bound ±1
* ``swap_operands``: the operands of ``-``, ``/``, ``//``, ``%``, ``**``, ``<<``, ``>>`` or ``<``, ``<=``, ``>``, ``>=``
* ``drop_branch``: an ``if`` body replaced by ``pass``, or its ``else`` removed
* ``wrong_return``: ``return None``, the value negated, or the function's first argument returned

Mutants are written with ``ast.unparse`` (so always valid Python), de-duplicated, never equal to the original,
and the same for the same seed. A mutant is kept as a negative candidate only when it *fails* the tests in the
sandbox: an equivalent mutant (``x < 0`` → ``0 > x``) is not a wrong program.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl, write_jsonl
from selfevolve.records import Candidate, Problem, Sample
from selfevolve.runtime.backend import Backend
from selfevolve.sandbox.humaneval import evaluate_samples
from selfevolve.store import Experience, ExperienceStore

OPERATORS = ("flip_comparison", "off_by_one", "swap_operands", "drop_branch", "wrong_return")
METHOD = "codejudge-candidates"
"""The ``method`` of the experiences :func:`labelled_candidates` records."""

_FLIPPED = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift, ast.MatMult)
_ORDERINGS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_BOOLEAN_CALLS = {"all", "any", "isinstance", "bool", "callable", "hasattr"}


@dataclass(frozen=True)
class Mutant:
    """A wrong-looking variant of a canonical solution: ``prompt + completion`` is the whole program."""

    task_id: str
    operator: str  # one of OPERATORS
    completion: str
    description: str  # what changed, e.g. "`<` -> `>=` in `i < n`"


# Edits. Each operator looks at one node and yields (description, edit); an edit changes a node in place and
# is applied to the same node of a fresh copy of the function, so mutants never share state.

Edit = Callable[[ast.AST], None]


def _show(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."


def flip_comparison(node: ast.AST, func: ast.FunctionDef) -> Iterator[tuple[str, Edit]]:
    """Each comparison operator replaced by its negation."""
    if not isinstance(node, ast.Compare):
        return
    for i, op in enumerate(node.ops):
        flipped = _FLIPPED[type(op)]

        def edit(n: ast.AST, i: int = i, flipped: type = flipped) -> None:
            n.ops[i] = flipped()

        yield f"`{_op_text(op)}` -> `{_op_text(flipped())}` in `{_show(node)}`", edit


def _op_text(op: ast.cmpop) -> str:
    return ast.unparse(ast.Compare(ast.Name("a"), [op], [ast.Name("b")]))[2:-2]


def off_by_one(node: ast.AST, func: ast.FunctionDef) -> Iterator[tuple[str, Edit]]:
    """An integer constant ±1, or a non-constant ``range`` bound ±1."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        for delta in (1, -1):

            def edit(n: ast.AST, delta: int = delta) -> None:
                n.value += delta

            yield f"`{node.value}` -> `{node.value + delta}`", edit
    is_range = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
    if not is_range or len(node.args) > 2:
        return
    for k, bound in enumerate(node.args):
        if isinstance(bound, ast.Constant):
            continue  # the constant itself is mutated above
        for op, sign in ((ast.Add, "+"), (ast.Sub, "-")):

            def edit(n: ast.AST, k: int = k, op: type = op) -> None:
                n.args[k] = ast.BinOp(n.args[k], op(), ast.Constant(1))

            yield f"range bound `{_show(bound)}` -> `{_show(bound)} {sign} 1`", edit


def swap_operands(node: ast.AST, func: ast.FunctionDef) -> Iterator[tuple[str, Edit]]:
    """The two operands of a non-commutative operator or an ordering comparison exchanged."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _NON_COMMUTATIVE):

        def edit(n: ast.AST) -> None:
            n.left, n.right = n.right, n.left

        yield f"operands of `{_show(node)}` swapped", edit
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], _ORDERINGS):

        def edit(n: ast.AST) -> None:
            n.left, n.comparators[0] = n.comparators[0], n.left

        yield f"sides of `{_show(node)}` swapped", edit


def drop_branch(node: ast.AST, func: ast.FunctionDef) -> Iterator[tuple[str, Edit]]:
    """An ``if`` body replaced by ``pass``, or its ``else`` / ``elif`` part removed."""
    if not isinstance(node, ast.If):
        return

    def drop_body(n: ast.AST) -> None:
        n.body = [ast.Pass()]

    yield f"body of `if {_show(node.test)}` dropped", drop_body
    if node.orelse:

        def drop_else(n: ast.AST) -> None:
            n.orelse = []

        yield f"else branch of `if {_show(node.test)}` dropped", drop_else


def _looks_boolean(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _BOOLEAN_CALLS
    return isinstance(node, ast.Compare | ast.BoolOp) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    )


def wrong_return(node: ast.AST, func: ast.FunctionDef) -> Iterator[tuple[str, Edit]]:
    """A returned value replaced by None, its negation, or the function's first argument."""
    if not isinstance(node, ast.Return) or node.value is None:
        return
    value = node.value
    if not (isinstance(value, ast.Constant) and value.value is None):

        def to_none(n: ast.AST) -> None:
            n.value = ast.Constant(None)

        yield f"`return {_show(value)}` -> `return None`", to_none
    if isinstance(value, ast.Constant) and isinstance(value.value, bool):

        def opposite(n: ast.AST) -> None:
            n.value = ast.Constant(not n.value.value)

        yield f"`return {value.value}` -> `return {not value.value}`", opposite
    elif _looks_boolean(value):

        def negate(n: ast.AST) -> None:
            n.value = ast.UnaryOp(ast.Not(), n.value)

        yield f"`return {_show(value)}` negated", negate
    elif isinstance(value, ast.Constant) and type(value.value) in (int, float) and value.value != 0:

        def minus(n: ast.AST) -> None:
            n.value = ast.UnaryOp(ast.USub(), n.value)

        yield f"`return {_show(value)}` negated", minus
    arguments = [a.arg for a in func.args.posonlyargs + func.args.args]
    if arguments and not (isinstance(value, ast.Name) and value.id == arguments[0]):

        def first_argument(n: ast.AST, name: str = arguments[0]) -> None:
            n.value = ast.Name(name, ast.Load())

        yield f"`return {_show(value)}` -> `return {arguments[0]}`", first_argument


_OPERATOR_FUNCTIONS: dict[str, Callable[[ast.AST, ast.FunctionDef], Iterator[tuple[str, Edit]]]] = {
    "flip_comparison": flip_comparison,
    "off_by_one": off_by_one,
    "swap_operands": swap_operands,
    "drop_branch": drop_branch,
    "wrong_return": wrong_return,
}


# The solution's part of the program.


def _solution(problem: Problem) -> tuple[ast.FunctionDef, int, int]:
    """The entry-point function of ``prompt + canonical_solution``, where its solution statements begin, and
    their indentation; the prompt's own statements (the docstring) are never mutated."""
    source = problem.prompt + problem.canonical_solution
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise SelfEvolveError(
            f"{problem.task_id}: prompt + canonical solution do not parse ({err})"
        ) from None
    prompt_lines = len(problem.prompt.splitlines())
    functions = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == problem.entry_point]
    if not functions:
        raise SelfEvolveError(f"{problem.task_id}: no function {problem.entry_point!r} in the prompt")
    func = functions[-1]
    first = next((i for i, s in enumerate(func.body) if s.lineno > prompt_lines), None)
    if first is None:
        raise SelfEvolveError(f"{problem.task_id}: the canonical solution adds nothing to {func.name}")
    return func, first, func.body[first].col_offset


def _render(func: ast.FunctionDef, first: int, indent: int) -> str:
    """The solution statements of ``func`` as completion text (unparsed, indented to the function body)."""
    pad = " " * indent
    lines = [pad + line if line else line for s in func.body[first:] for line in ast.unparse(s).splitlines()]
    return "\n".join(lines) + "\n"


def normalized_solution(problem: Problem) -> str:
    """The canonical solution as :func:`mutants` writes code (``ast.unparse``, no comments), so a judge cannot
    tell canonical from mutant by formatting alone."""
    func, first, indent = _solution(problem)
    return _render(func, first, indent)


def mutants(problem: Problem, *, per_operator: int = 3, seed: int = 0) -> list[Mutant]:
    """Up to ``per_operator`` distinct mutants per operator, sampled with ``seed``; the operators take turns
    (in a seeded order), so the first few mutants of a problem come from different operators."""
    if per_operator < 0:
        raise SelfEvolveError(f"per_operator must not be negative, got {per_operator}")
    func, first, indent = _solution(problem)
    seen = {_render(func, first, indent)}
    pools: list[list[Mutant]] = []
    # ast.walk is deterministic, so the k-th node of a deep copy is the copy of the k-th node.
    nodes = [n for s in func.body[first:] for n in ast.walk(s)]
    for name, operator in _OPERATOR_FUNCTIONS.items():
        pool = []
        for index, node in enumerate(nodes):
            for description, edit in operator(node, func):
                mutated = copy.deepcopy(func)
                edit([n for s in mutated.body[first:] for n in ast.walk(s)][index])
                ast.fix_missing_locations(mutated)
                completion = _render(mutated, first, indent)
                if completion in seen or not _compiles(problem.prompt + completion):
                    continue
                seen.add(completion)
                pool.append(Mutant(problem.task_id, name, completion, description))
        rng = random.Random(f"{seed}:{problem.task_id}:{name}")
        pools.append(rng.sample(pool, min(per_operator, len(pool))))
    random.Random(f"{seed}:{problem.task_id}").shuffle(pools)  # which operator leads varies by problem
    return [m for round_ in _round_robin(pools) for m in round_]


def _round_robin(pools: Sequence[Sequence[Mutant]]) -> Iterator[list[Mutant]]:
    """Round-robin rows over the pools: first of each, then second of each, ... (shorter pools drop out)."""
    for k in range(max((len(p) for p in pools), default=0)):
        yield [p[k] for p in pools if k < len(p)]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<mutant>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


# Labels by execution.


def label_by_execution(
    problems: Sequence[Problem], candidates: Sequence[Candidate], *, workers: int | None = None
) -> list[Candidate]:
    """Run every candidate's HumanEval check program in the sandbox; fill ``passed`` and ``status`` in place
    (``passed`` stays None when the sandbox itself failed: no label). Returns ``candidates``."""
    samples = [Sample(c.task_id, c.completion) for c in candidates]
    for candidate, run in zip(candidates, evaluate_samples(problems, samples, workers=workers)):
        candidate.status = run.status
        candidate.passed = None if run.status == "error" else run.passed
    return candidates


def labelled_candidates(
    problems: Sequence[Problem],
    *,
    mutants_per_problem: int = 2,
    per_operator: int = 3,
    samples: Sequence[Candidate] = (),
    seed: int = 0,
    store: ExperienceStore | None = None,
    run_id: str | None = None,
    workers: int | None = None,
) -> list[Candidate]:
    """Per problem: its canonical solution, up to ``mutants_per_problem`` mutants that *fail* the tests, and
    its model ``samples``; every one labelled by execution. Recorded in ``store`` when given."""
    if (store is None) != (run_id is None):
        raise SelfEvolveError("pass both store and run_id to record the candidates, or neither")
    by_id = {p.task_id: p for p in problems}
    stray = sorted({c.task_id for c in samples} - set(by_id))
    if stray:
        raise SelfEvolveError(f"samples refer to unknown task id(s) {stray[:5]}")
    fixed = [Candidate(p.task_id, "canonical", normalized_solution(p), None) for p in problems]
    fixed += [replace(c, passed=None, status="") for c in samples]
    label_by_execution(problems, fixed, workers=workers)
    pools = {p.task_id: mutants(p, per_operator=per_operator, seed=seed) for p in problems}
    kept: dict[str, list[Candidate]] = {p.task_id: [] for p in problems}
    while batch := _next_mutants(pools, kept, mutants_per_problem):
        for candidate in label_by_execution(problems, batch, workers=workers):
            if candidate.passed is False:  # an equivalent mutant passes: it is not a wrong program
                kept[candidate.task_id].append(candidate)
    canonical, sampled = fixed[: len(problems)], fixed[len(problems) :]
    candidates = [
        candidate
        for problem, solution in zip(problems, canonical)
        for candidate in (
            solution,
            *kept[problem.task_id],
            *(s for s in sampled if s.task_id == problem.task_id),
        )
    ]
    if store is not None:
        store.add_many(_experience(run_id, by_id[c.task_id], c) for c in candidates)
    return candidates


def _next_mutants(
    pools: dict[str, list[Mutant]], kept: dict[str, list[Candidate]], wanted: int
) -> list[Candidate]:
    """The next untried mutants of each problem that still has fewer than ``wanted`` failing ones."""
    batch = []
    for task_id, pool in pools.items():
        need = wanted - len(kept[task_id])
        taken, pools[task_id] = pool[:need], pool[max(need, 0) :]
        batch += [
            Candidate(m.task_id, "mutant", m.completion, None, "", m.operator, m.description) for m in taken
        ]
    return batch


def _experience(run_id: str, problem: Problem, candidate: Candidate) -> Experience:
    return Experience(
        run_id,
        task=candidate.task_id,
        prompt=problem.prompt,
        response=candidate.completion,
        phase="acquire",
        feedback={"passed": candidate.passed, "status": candidate.status},
        score=None if candidate.passed is None else float(candidate.passed),
        method=METHOD,
        metadata={
            "source": candidate.source,
            "operator": candidate.operator,
            "status": candidate.status,
            "description": candidate.description,
        },
    )


# Model samples.

SAMPLE_INSTRUCTION = "Complete the following {language} function. Reply with the whole function in one ```{language} code block."
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
DEFINITIONS = (  # the top-level statements of a reply worth keeping: no tests, no prints
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


def sample_prompt(problem: Problem, language: str = "python") -> list[dict[str, str]]:
    """The chat that asks a model to complete ``problem.prompt``."""
    request = SAMPLE_INSTRUCTION.format(language=language)
    return [{"role": "user", "content": f"{request}\n\n```{language}\n{problem.prompt.rstrip()}\n```"}]


def extract_completion(problem: Problem, reply: str) -> str:
    """The completion (text after ``problem.prompt``) in a model's reply: the body of its ``entry_point``
    function plus any helpers and imports it wrote; a reply that does not parse is kept as it is."""
    fenced = _FENCE.search(reply)
    code = fenced.group(1) if fenced else reply
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code if code.startswith((" ", "\t")) else "    " + code
    entry = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == problem.entry_point]
    if not entry:
        return "".join("    " + line if line.strip() else line for line in code.splitlines(keepends=True))
    body = entry[-1].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or [ast.Pass()]  # the prompt already holds the docstring
    helpers = [s for s in tree.body if isinstance(s, DEFINITIONS) and s is not entry[-1]]
    lines = ["    " + line if line else line for s in body for line in ast.unparse(s).splitlines()]
    text = "\n".join(lines) + "\n"
    return text + "".join("\n\n" + ast.unparse(s) + "\n" for s in helpers)


def model_samples(
    backend: Backend,
    problems: Sequence[Problem],
    *,
    n: int = 1,
    temperature: float = 0.8,
    max_new_tokens: int = 384,
    seed: int = 0,
) -> list[Candidate]:
    """``n`` completions per problem sampled from any backend (unlabelled: ``passed`` is None until run)."""
    prompts = [sample_prompt(p) for p in problems]
    replies = backend.generate(
        prompts, max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed
    )
    revision = getattr(backend, "revision", backend.name)
    return [
        Candidate(
            problems[r.prompt_index].task_id,
            "model",
            extract_completion(problems[r.prompt_index], r.text),
            passed=None,
            description=f"sampled from {revision} at temperature {temperature}",
        )
        for r in replies
    ]


# Candidate files.


def save_candidates(path: str | Path, candidates: Sequence[Candidate]) -> Path:
    """Write candidates as JSON lines (atomically)."""
    return write_jsonl(path, (asdict(candidate) for candidate in candidates))


def load_candidates(path: str | Path) -> list[Candidate]:
    """Candidates from JSON lines: ``task_id`` and ``completion`` required; ``passed`` (true / false / null),
    ``source``, ``status``, ``operator`` and ``description`` optional."""
    allowed = {f.name for f in fields(Candidate)}
    candidates = []
    for number, record in read_jsonl(path):
        where = f"{path} line {number}"
        if not {"task_id", "completion"} <= record.keys():
            raise SelfEvolveError(f"{where}: needs an object with task_id and completion")
        if not isinstance(record["task_id"], str) or not isinstance(record["completion"], str):
            raise SelfEvolveError(f"{where}: task_id and completion must be strings")
        if record.get("passed") not in (True, False, None):
            raise SelfEvolveError(f"{where}: passed must be true, false or null, got {record['passed']!r}")
        record = {k: v for k, v in record.items() if k in allowed}
        for key in ("source", "status", "operator", "description"):
            if not isinstance(record.get(key, ""), str) and not (key == "operator" and record[key] is None):
                raise SelfEvolveError(f"{where}: {key} must be a string, got {record[key]!r}")
        candidates.append(
            Candidate(
                record.pop("task_id"),
                record.pop("source", "file"),
                record.pop("completion"),
                record.pop("passed", None),
                **record,
            )
        )
    return candidates
