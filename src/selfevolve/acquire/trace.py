"""Execution traces written inline as comments, the way NExT shows a model what its code did.

NExT (https://arxiv.org/abs/2404.14662) teaches a model to reason about execution by putting a program's runtime
state next to its lines. :func:`trace_call` runs a call (``f(3, [1, 2])``, or a test statement) in the sandbox
under ``sys.settrace`` (``_trace_harness.py`` runs inside it) and returns a :class:`Trace`; :meth:`Trace.render`
writes the program back with, on each executed line, the execution-order index of each run of that line and
the local variables it changed::

    def total(xs):  # (0) xs=[1, 2]
        s = 0  # (1) s=0
        for x in xs:  # (2) x=1; (4) x=2; (6)
            s += x  # (3) s=1; (5) s=3
        return s  # (7) __return__=3
    # call: total([1, 2])
    # returned: 3

``__return__``, ``__yield__`` and ``__exception__`` mark returned and yielded values and raised exceptions. A
line run many times shows its first and last runs with "… (k more)" between. The inline trace (comments and
outcome) always fits :attr:`TraceConfig.token_budget`: the renderer shortens values, then shows fewer runs, then
drops values, then keeps only run counts, never cutting a comment mid-way.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import tokenize
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfevolve.errors import SelfEvolveError

HARNESS = Path(__file__).with_name("_trace_harness.py").read_text()  # runs inside the sandbox
SENTINEL = "@@selfevolve-trace@@"  # the harness prints its JSON answer after this marker
MIN_WIDTH = 8  # the narrowest a value is ever shortened to

TokenCounter = Callable[[str], int]


@dataclass
class TraceConfig:
    """How a trace is taken (limits of the sandboxed run) and rendered (how much of it is shown)."""

    value_width: int = 40  # characters of a value's repr shown; longer ones end in "…"
    first: int = 3  # runs of a line shown before the "…" (a loop's first iterations)
    last: int = 1  # runs shown after it (the final state)
    token_budget: int = 1024  # most tokens the inline comments and the outcome may take together
    max_steps: int = 100_000  # executed lines after which the run is stopped (an infinite loop?)
    timeout_s: float = 10.0  # wall-clock limit of the sandboxed run
    memory_mb: int = 512  # memory limit of the sandboxed run

    def __post_init__(self) -> None:
        if self.value_width < MIN_WIDTH:
            raise ValueError(f"value_width must be at least {MIN_WIDTH}, got {self.value_width}")
        if self.first < 1 or self.last < 1:
            raise ValueError(f"first and last must be at least 1, got {self.first} and {self.last}")
        if self.token_budget < 64:
            raise ValueError(f"token_budget must be at least 64 tokens, got {self.token_budget}")
        if self.max_steps < 1 or self.timeout_s <= 0 or self.memory_mb < 16:
            raise ValueError("max_steps must be >= 1, timeout_s > 0 and memory_mb >= 16")


@dataclass(frozen=True)
class TraceEvent:
    """One run of one line: what it changed, and where it sits in the execution."""

    index: int  # global execution order, from 0
    line: int  # 1-based line of the program (a call's arguments sit on the ``def`` line)
    call: int  # which call of a program function it ran in (1 = the first call)
    depth: int  # how deep that call was (1 = called from the test itself)
    # (name, repr) of the locals it changed, then __return__, __yield__ or __exception__ if any
    changes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LineTrace:
    """The runs of one line: how many there were and the first and last of them (``events``, in order)."""

    count: int
    events: tuple[TraceEvent, ...]


@dataclass
class Trace:
    """The result of running a call in the sandbox, with (if traced) what each program line did."""

    program: str
    call: str
    # returned, completed (a statement ran), raised, limit (max_steps), timeout, killed, error (did not load)
    status: str
    value: str | None  # repr of the returned value (when the call is an expression)
    exception: str | None  # "Type: message" when the call raised or the program failed to load
    steps: int  # executed program lines (0 when not traced)
    seconds: float  # the call's own run time inside the sandbox
    output: str  # what the program printed
    lines: dict[int, LineTrace]
    timeout_s: float = 0.0  # the run's time limit (for the outcome line)
    wall_s: float = 0.0  # the whole sandboxed run, interpreter start to exit

    @property
    def events(self) -> list[TraceEvent]:
        """Every kept event in execution order."""
        return sorted((e for t in self.lines.values() for e in t.events), key=lambda e: e.index)

    def outcome(self, width: int = 1_000) -> str:
        """The call's outcome as one line, values cut to ``width``."""
        if self.status == "returned":
            return f"returned: {shorten(self.value or '', width)}"
        if self.status == "completed":
            return "completed"
        if self.status == "raised":
            return f"raised: {shorten(self.exception or '', width)}"
        if self.status == "limit":
            return f"stopped after {self.steps} steps (an infinite loop?)"
        if self.status == "timeout":
            return f"timed out after {self.timeout_s:g} s"
        if self.status == "error":
            return f"failed to load: {shorten(self.exception or '', width)}"
        return f"killed: {shorten(self.exception or '', width)}"

    def render(self, config: TraceConfig | None = None, count_tokens: TokenCounter | None = None) -> str:
        """The program with the trace inline, compressed until its comments fit ``config.token_budget``."""
        config = config or TraceConfig()
        count = count_tokens or estimate_tokens
        anchors = logical_lines(self.program)[1]
        for level in _levels(config):
            comments, outcome = self._annotations(anchors, **level)
            added = [*(f"  {comment}" for comment in comments.values()), *outcome]  # all the trace adds
            if count("\n".join(added)) <= config.token_budget:
                break
        lines = self.program.splitlines()
        for number, comment in comments.items():
            lines[number - 1] = f"{lines[number - 1].rstrip()}  {comment}"
        return "\n".join([*lines, *outcome]) + "\n"

    def _annotations(
        self, anchors: dict[int, int], width: int, first: int, last: int, detail: str
    ) -> tuple[dict[int, str], list[str]]:
        """Comments by line number, and the outcome lines, at one compression level.

        ``detail``: "values" (runs with their changes), "indices" (runs only), "counts" (how many runs), "none".
        """
        outcome = [f"# call: {shorten(' '.join(self.call.split()), 2 * width)}", f"# {self.outcome(width)}"]
        comments: dict[int, list[tuple[float, str]]] = {}  # anchor line -> (execution order, text)
        for line in sorted(self.lines) if detail != "none" else ():
            trace = self.lines[line]
            parts = [(e.index, _event(e, width, detail == "values")) for e in trace.events]
            if detail == "counts":
                parts = [(parts[0][0], f"×{trace.count}")]
            elif trace.count > first + last:
                gap = (parts[first - 1][0] + 0.5, f"… ({trace.count - first - last} more)")
                parts = [*parts[:first], gap, *parts[-last:]]
            comments.setdefault(anchors.get(line, line), []).extend(parts)
        return {
            n: "# " + "; ".join(text for _, text in sorted(parts)) for n, parts in sorted(comments.items())
        }, outcome


def _event(event: TraceEvent, width: int, values: bool) -> str:
    if not values or not event.changes:
        return f"({event.index})"
    return f"({event.index}) " + ", ".join(f"{name}={shorten(text, width)}" for name, text in event.changes)


def _levels(config: TraceConfig) -> Iterator[dict]:
    """Ever smaller renderings: narrower values and fewer runs in turn, then no values, then run counts, then
    the outcome alone."""
    width, first, last = config.value_width, config.first, config.last
    yield {"width": width, "first": first, "last": last, "detail": "values"}
    step = 0
    while width > MIN_WIDTH or first > 1 or last > 1:
        if (step % 2 == 0 and width > MIN_WIDTH) or (first == 1 and last == 1):
            width = max(MIN_WIDTH, width * 2 // 3)
        elif first >= last:
            first -= 1
        else:
            last -= 1
        step += 1
        yield {"width": width, "first": first, "last": last, "detail": "values"}
    for detail in ("indices", "counts", "none"):
        yield {"width": width, "first": 1, "last": 1, "detail": detail}


def shorten(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its start and "…" (``width`` characters in all)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count: one token per three characters, rounded up (code with numbers is dense)."""
    return math.ceil(len(text) / 3)


def token_counter(tokenizer) -> TokenCounter:
    """Count tokens with a Hugging Face tokenizer (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def logical_lines(program: str) -> tuple[dict[int, int], dict[int, int]]:
    """For each line of a statement written over several lines, its first line (``starts``, where its runs are
    counted) and the line its comment goes on (``anchors``: the statement's last line, so a comment never lands
    inside a string or after a backslash; a decorated function's ``def`` line for its decorator)."""
    starts: dict[int, int] = {}
    anchors: dict[int, int] = {}
    first = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(program).readline):
            if token.type in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            if first is None:
                first = token.start[0]
            if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                last = token.start[0]
                for row in range(first, last + 1):
                    starts[row], anchors[row] = first, last
                first = None
        tree = ast.parse(program)
    except (tokenize.TokenError, SyntaxError):
        return starts, anchors
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.decorator_list:
            anchors[node.decorator_list[0].lineno] = anchors.get(node.lineno, node.lineno)
    return starts, anchors


# Calls and methods that never change their arguments or receiver in place (when not redefined).
# fmt: off
PURE_CALLS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "float", "frozenset", "int",
    "isinstance", "len", "list", "max", "min", "ord", "pow", "range", "repr", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "zip",
})
PURE_METHODS = frozenset({
    "count", "endswith", "find", "get", "index", "isalnum", "isalpha", "isdigit", "islower", "isspace",
    "isupper", "items", "join", "keys", "lower", "lstrip", "replace", "rfind", "rsplit", "rstrip", "split",
    "startswith", "strip", "swapcase", "title", "upper", "values",
})
# fmt: on


def _header(node: ast.stmt) -> list[ast.AST] | None:
    """What a statement evaluates on its own line(s), or None for one that may run arbitrary code."""
    if isinstance(node, ast.If | ast.While):
        return [node.test]
    if isinstance(node, ast.For):
        return [node.target, node.iter]
    if isinstance(node, ast.Try):
        return []
    simple = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return, ast.Assert, ast.Pass, ast.Break)
    if isinstance(node, (*simple, ast.Continue, ast.Delete, ast.Global, ast.Nonlocal)):
        return [node]
    return None


def pure_lines(program: str) -> dict[int, list[str]]:
    """Lines whose statement can change only the locals it assigns, listed (in order): it calls nothing but
    pure builtins and string/dict queries and stores no item or attribute. After such a line the tracer looks
    at those locals only, not at every local, which keeps it fast."""
    tree = ast.parse(program)
    defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    pure: dict[int, list[str]] = {}
    for node in ast.walk(tree):
        header = _header(node) if isinstance(node, ast.stmt) else None
        if header is None or not all(_pure(sub, defined) for part in header for sub in ast.walk(part)):
            continue
        names = (
            [node.target.id] if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) else []
        )
        for part in header:
            for sub in ast.walk(part):
                if isinstance(sub, ast.Name) and not isinstance(sub.ctx, ast.Load) and sub.id not in names:
                    names.append(sub.id)
        pure[node.lineno] = names
    return pure


def _pure(node: ast.AST, defined: set[str]) -> bool:
    if isinstance(node, ast.Await | ast.Yield | ast.YieldFrom):
        return False
    if isinstance(node, ast.Subscript | ast.Attribute) and not isinstance(node.ctx, ast.Load):
        return False
    if isinstance(node, ast.Call):
        func = node.func
        if node.keywords:
            return False
        if isinstance(func, ast.Name):
            return func.id in PURE_CALLS and func.id not in defined
        return isinstance(func, ast.Attribute) and func.attr in PURE_METHODS
    return True


def check_program(program: str, what: str = "the program") -> None:
    """Raise a one-line :class:`SelfEvolveError` if ``program`` is not valid Python."""
    try:
        compile(program, "<program>", "exec")
    except (SyntaxError, ValueError) as err:
        line = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        message = err.msg if isinstance(err, SyntaxError) else str(err)
        raise SelfEvolveError(f"{what} is not valid Python{line}: {message}") from None


def check_call(call: str) -> None:
    """Raise a one-line :class:`SelfEvolveError` if ``call`` is neither an expression nor statements."""
    try:
        compile(call, "<call>", "eval")
    except SyntaxError:
        try:
            compile(call, "<call>", "exec")
        except (SyntaxError, ValueError) as err:
            raise SelfEvolveError(
                f"the call {call!r} is not valid Python ({err.msg if isinstance(err, SyntaxError) else err}); "
                "write it like f(3, [1, 2]) or assert f(3) == 4"
            ) from None


def _request(program: str, call: str, setup: str, config: TraceConfig, traced: bool, repeat: int) -> str:
    starts = {line: start for line, start in logical_lines(program)[0].items() if line != start}
    return json.dumps(
        {
            "source": program,
            "starts": starts,
            "pure": pure_lines(program),
            "setup": setup,
            "call": call,
            "trace": traced,
            "width": config.value_width,
            "first": config.first,
            "last": config.last,
            "max_steps": config.max_steps,
            "time_limit_s": 0.8 * config.timeout_s,  # leaves time to print the trace before the sandbox kills
            "output_chars": 4_000,
            "repeat": repeat,
        }
    )


def _parse(program: str, call: str, config: TraceConfig, result) -> Trace:
    """A :class:`Trace` from the sandbox's run of the harness."""
    answer = None
    for line in reversed(result.stdout.splitlines()):  # the answer is the last line that starts with it
        if line.startswith(SENTINEL):
            with contextlib.suppress(ValueError):
                answer = json.loads(line[len(SENTINEL) :])
            break
    if answer is None:
        status = "timeout" if result.status == "timeout" else "killed"
        reason = (result.stderr.strip().splitlines() or [f"the sandbox reported {result.status}"])[-1]
        return Trace(program, call, status, None, reason, 0, 0.0, "", {}, config.timeout_s, result.wall_s)
    lines = {
        int(number): LineTrace(
            count,
            tuple(
                TraceEvent(index, line, call_id, depth, tuple((n, v) for n, v in changes))
                for index, line, call_id, depth, changes in [*first, *last]
            ),
        )
        for number, (count, first, last) in answer.get("lines", {}).items()
    }
    return Trace(
        program,
        call,
        answer["status"],
        answer["value"],
        answer["exception"],
        answer["steps"],
        answer["seconds"],
        answer["output"],
        lines,
        config.timeout_s,
        result.wall_s,
    )


def trace_many(
    jobs: Sequence[tuple[str, str, str]],
    config: TraceConfig | None = None,
    *,
    traced: bool = True,
    repeat: int = 1,
    workers: int | None = None,
) -> list[Trace]:
    """:func:`trace_call` for many ``(program, call, setup)`` jobs, ``workers`` sandboxes at a time."""
    from selfevolve.sandbox import run_many

    config = config or TraceConfig()
    for program, call, _ in jobs:
        check_program(program)
        check_call(call)
    codes = [
        f"{HARNESS}\nmain({_request(program, call, setup, config, traced, repeat)!r})\n"
        for program, call, setup in jobs
    ]
    results = run_many(
        codes, workers=workers, timeout_s=config.timeout_s * repeat, memory_mb=config.memory_mb
    )
    return [_parse(program, call, config, result) for (program, call, _), result in zip(jobs, results)]


def trace_call(
    program: str,
    call: str,
    config: TraceConfig | None = None,
    *,
    setup: str = "",
    traced: bool = True,
    repeat: int = 1,
) -> Trace:
    """Run ``call`` (an expression, or statements such as a test's ``assert``) on ``program`` in the sandbox.

    ``setup`` (test helpers) runs after the program; only the program's own frames are traced, not ``setup``
    nor the call itself. ``traced=False`` runs the same harness without the tracer (overhead, results);
    ``repeat`` runs the call that many times and keeps the fastest time (the trace is the last run's).
    """
    return trace_many([(program, call, setup)], config, traced=traced, repeat=repeat, workers=1)[0]
