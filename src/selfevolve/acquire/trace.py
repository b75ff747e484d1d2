"""Execution traces written inline as comments, the way NExT shows a model what its code did.

NExT (https://arxiv.org/abs/2404.14662) teaches a model to reason about execution by putting a program's runtime
state next to its lines. :func:`trace_call` runs the program in the sandbox and evaluates a call (``f(3, [1,
2])``, or a test statement) outside it, like :func:`selfevolve.sandbox.run_tests` judges tests: each call of a
program function goes to the sandbox, runs there under ``sys.settrace`` (``_trace_harness.py``), and its value
comes back as plain data. So the outcome (returned, completed, raised) is decided outside the program's process
and it cannot forge it; the per-line trace is what its process reports about itself. :meth:`Trace.render`
writes the program back with, on each executed line, the execution-order index of each run of that line and
the local variables it changed::

    def total(xs):  # (0) xs=[1, 2]
        s = 0  # (1) s=0
        for x in xs:  # (2) x=1; (4) x=2; (6)
            s += x  # (3) s=1; (5) s=3
        return s  # (7) __return__=3
    # call: total([1, 2])
    # returned: 3

The call can use the program's top-level functions (not names of builtins it redefines), with plain-data
arguments (numbers, strings, bytes, lists, tuples, dicts, sets, None), and whatever ``setup`` defines; a value
the program returns that is not plain data is shown by its repr, and compares equal to nothing.

``__return__``, ``__yield__`` and ``__exception__`` mark returned and yielded values and raised exceptions. A
line run many times shows its first and last runs with "… (k more)" between. The inline trace (comments and
outcome) always fits :attr:`TraceConfig.token_budget`: the renderer shortens values, then shows fewer runs, then
drops values, then keeps only run counts, never cutting a comment mid-way.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import math
import os
import tokenize
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.sandbox import ProgramError, Remote, RunResult, Stopped

HARNESS = Path(__file__).with_name("_trace_harness.py").read_text()  # served inside the sandbox
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
            raise SelfEvolveError(
                f"value_width must be at least {MIN_WIDTH}, got {self.value_width}; "
                f"raise it to {MIN_WIDTH} or more"
            )
        if self.first < 1 or self.last < 1:
            raise SelfEvolveError(
                f"first and last must be at least 1, got {self.first} and {self.last}; set both to 1 or more"
            )
        if self.token_budget < 64:
            raise SelfEvolveError(
                f"token_budget must be at least 64 tokens, got {self.token_budget}; raise it to 64 or more"
            )
        if self.max_steps < 1 or self.timeout_s <= 0 or self.memory_mb < 16:
            raise SelfEvolveError(
                f"max_steps must be >= 1, timeout_s > 0 and memory_mb >= 16, got {self.max_steps}, "
                f"{self.timeout_s} and {self.memory_mb}; raise the one below its minimum"
            )


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
    returns: tuple[str, ...] = ()  # what each call of a program function returned to the call, in order

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


def program_functions(program: str) -> list[str]:
    """The names the call may use from the program: its top-level ``def`` s and ``name = lambda`` s, except
    names of builtins (a program that redefines ``abs`` does not change what the call's ``abs`` is)."""
    names = []
    for node in ast.parse(program).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return [name for name in dict.fromkeys(names) if not hasattr(builtins, name)]


def show(value: object) -> str:
    """``repr`` of a value received from the sandbox, with sets in sorted order (their order would otherwise
    change from one harness process to the next)."""
    if isinstance(value, set | frozenset) and value:
        try:
            items = sorted(value)
        except TypeError:
            items = sorted(value, key=repr)
        inner = "{" + ", ".join(map(show, items)) + "}"
        return inner if type(value) is set else f"frozenset({inner})"
    if type(value) is list:
        return "[" + ", ".join(map(show, value)) + "]"
    if type(value) is tuple:
        return "(" + ", ".join(map(show, value)) + ("," if len(value) == 1 else "") + ")"
    if type(value) is dict:
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def describe(err: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty); the program's own text for its exceptions."""
    if isinstance(err, ProgramError):
        return str(err)
    message = str(err)
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class _Limit(BaseException):
    """The tracer stopped the program (max_steps, or its own deadline): ends the evaluation of the call."""


def _load_request(program: str, config: TraceConfig, traced: bool) -> dict:
    starts = {line: start for line, start in logical_lines(program)[0].items() if line != start}
    return {
        "source": program,
        "starts": starts,
        "pure": pure_lines(program),
        "trace": traced,
        "width": config.value_width,
        "first": config.first,
        "last": config.last,
        "max_steps": config.max_steps,
        "time_limit_s": 0.8 * config.timeout_s,  # leaves time to write the trace out before the time limit
        "output_chars": 4_000,
    }


def _drive(job: tuple[str, str, str], config: TraceConfig, traced: bool, repeat: int, remote: Remote) -> dict:
    """The trusted side of one trace: load the program, run ``setup`` and evaluate the call here, each call
    of a program function answered by the sandbox; the fields of the :class:`Trace` it makes."""
    program, call, setup = job
    width = config.value_width
    try:
        failure = remote.call("load", _load_request(program, config, traced))
        if failure is not None:
            return {"status": "error", "exception": shorten(str(failure), width)}
        returns: list[str] = []
        namespace: dict = {"__name__": "__call__"}
        for name in program_functions(program):
            namespace[name] = functools.partial(_forward, remote, name, returns)
        try:
            exec(compile(setup, "<setup>", "exec"), namespace)
        except Exception as err:
            return {"status": "error", "exception": shorten(describe(err), width)}
        try:
            code, expression = compile(call, "<call>", "eval"), True
        except SyntaxError:
            code, expression = compile(call, "<call>", "exec"), False
        answer: dict = {}
        fastest = math.inf
        for _ in range(repeat):
            remote.call("begin")
            returns.clear()
            answer = {"status": "completed", "value": None, "exception": None}
            try:
                value = eval(code, namespace)
                if expression:
                    answer.update(status="returned", value=shorten(show(value), width))
            except _Limit:
                answer["status"] = "limit"
            except Exception as err:
                answer.update(status="raised", exception=shorten(describe(err), width))
            answer.update(_finished(remote.call("finish")), returns=tuple(returns))
            fastest = min(fastest, answer["seconds"])
        answer["seconds"] = fastest
        return answer
    except Stopped as stop:
        return {"status": "timeout" if stop.timeout else "killed"}
    except ProgramError as err:  # an answer of the harness that is not what it should be
        return {"status": "killed", "exception": shorten(str(err), width)}


def _forward(remote: Remote, name: str, returns: list[str], /, *args: object, **kwargs: object) -> object:
    """A call of the program's function ``name`` from the call being traced: run (and traced) in the sandbox."""
    reply = remote.call("call", name, list(args), kwargs)
    if type(reply) is list and len(reply) == 2 and reply[0] == "returned":
        returns.append(show(reply[1]))
        return reply[1]
    if reply == ["limit"]:
        raise _Limit
    if type(reply) is list and len(reply) == 3 and reply[0] == "raised":
        raise ProgramError(str(reply[1]), str(reply[2]))
    raise ProgramError("an answer that is neither a value nor an exception")


def _finished(info: object) -> dict:
    """The trace fields of the harness's ``finish`` answer; a trace that does not have their shape is dropped."""
    empty = {"steps": 0, "seconds": 0.0, "output": "", "lines": {}}
    if type(info) is not dict or type(info.get("lines")) is not dict:
        return empty
    steps, seconds, output = info.get("steps"), info.get("seconds"), info.get("output")
    if not (type(steps) is int and type(seconds) is float and type(output) is str):
        return empty
    lines = {}
    for number, entry in info["lines"].items():
        if not (type(number) is int and type(entry) is list and len(entry) == 3 and type(entry[0]) is int):
            return empty
        events = (
            [_event_of(e) for e in entry[1] + entry[2]] if type(entry[1]) is type(entry[2]) is list else []
        )
        if None in events or not events:
            return empty
        lines[number] = LineTrace(entry[0], tuple(events))
    return {"steps": steps, "seconds": seconds, "output": output, "lines": lines}


def _event_of(data: object) -> TraceEvent | None:
    """A :class:`TraceEvent` from ``[index, line, call, depth, [[name, repr], ...]]``, or None."""
    if type(data) is not list or len(data) != 5 or not all(type(x) is int for x in data[:4]):
        return None
    changes = data[4]
    if type(changes) is not list or not all(
        type(c) is list and len(c) == 2 and type(c[0]) is type(c[1]) is str for c in changes
    ):
        return None
    return TraceEvent(*data[:4], tuple((name, text) for name, text in changes))


def _trace(job: tuple[str, str, str], config: TraceConfig, result: RunResult, answer: dict | None) -> Trace:
    program, call, _ = job
    answer = answer or {"status": "timeout" if result.status == "timeout" else "killed"}
    exception = answer.get("exception")
    if answer["status"] in ("timeout", "killed") and exception is None:
        exception = (
            result.stderr.strip().splitlines() or [result.detail or f"the sandbox said {result.status}"]
        )[-1]
    return Trace(
        program,
        call,
        answer["status"],
        answer.get("value"),
        exception,
        answer.get("steps", 0),
        answer.get("seconds", 0.0),
        answer.get("output", ""),
        answer.get("lines", {}),
        config.timeout_s,
        result.wall_s,
        answer.get("returns", ()),
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
    from selfevolve.sandbox import run_remote

    config = config or TraceConfig()
    for program, call, _ in jobs:
        check_program(program)
        check_call(call)

    def one(job: tuple[str, str, str]) -> Trace:
        driver = functools.partial(_drive, job, config, traced, repeat)
        timeout_s, memory_mb = config.timeout_s * repeat, config.memory_mb
        result, answer = run_remote(
            HARNESS, driver, describe="shown", timeout_s=timeout_s, memory_mb=memory_mb
        )
        return _trace(job, config, result, answer)

    with ThreadPoolExecutor(max_workers=workers or len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(one, jobs))


def trace_call(
    program: str,
    call: str,
    config: TraceConfig | None = None,
    *,
    setup: str = "",
    traced: bool = True,
    repeat: int = 1,
) -> Trace:
    """Run ``program`` in the sandbox and evaluate ``call`` (an expression, or statements such as a test's
    ``assert``) outside it, on the program's functions.

    ``setup`` (test helpers) runs before the call, outside the sandbox too; only the program's own frames are
    traced, and only during the call. ``traced=False`` runs the same harness without the tracer (overhead,
    results); ``repeat`` evaluates the call that many times and keeps the fastest time (the trace is the last
    run's).
    """
    return trace_many([(program, call, setup)], config, traced=traced, repeat=repeat, workers=1)[0]
