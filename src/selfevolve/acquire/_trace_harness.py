"""The tracing harness: runs *inside* the sandboxed interpreter, so it uses the standard library only.

The sandbox serves its functions (:func:`selfevolve.sandbox.run_remote`) to the tracer's trusted side, which
evaluates the call or test statement itself, outside the sandbox: :func:`load` loads the program (untraced),
:func:`begin` starts one evaluation, :func:`call` runs one call of a program function under ``sys.settrace``,
watching every frame whose code comes from the program, and :func:`finish` writes the trace out. For each run
of a program statement the tracer records the global execution-order index, the call id and depth of its frame,
and the local variables the statement changed (reprs, cut to ``width``), plus returned and yielded values and
exceptions. Only the first and last few runs of each line are kept, so memory stays bounded on long loops, and
values are only turned into text for those; the trace is at most :data:`MAX_ANSWER` characters of JSON. The
program's own output is captured, never mixed in. All of this is the program's own process reporting on itself:
the trusted side takes the call's outcome from the values it receives, not from anything written here.
"""

import contextlib
import dis
import io
import itertools
import json
import marshal
import re
import sys
import time
import types
from collections import deque

PROGRAM = "<program>"
MAX_ANSWER = 48_000  # characters of the trace as JSON
SHOWN = 400  # characters of the text that stands for a returned value that is not plain data
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses change from run to run
MODULE_PATH = re.compile(r"(<module '[^']*') from '[^']*'>")  # where a module was loaded from: noise
BIG, PREFIX = 200, 64  # containers of more than BIG items are compared by length and first PREFIX items only
IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range})  # unchanged while bound
CONTAINERS = (list, tuple, dict, set, frozenset, deque)
CODE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")
QUIET_EXCEPTIONS = (StopIteration, StopAsyncIteration, GeneratorExit)  # how iteration ends, not errors
UNBOUND = object()  # what a name not (yet) bound in the frame reads as
OPTIMIZED = 0x1  # CO_OPTIMIZED: a function's frame, whose locals are its code's variables
SUSPENDABLE = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
FINAL_RETURNS = {dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in dis.opmap}


class StepLimit(BaseException):
    """Raised inside the traced program to stop it: too many executed lines, or out of time."""


def clip(text, width):
    """``text`` if it fits in ``width`` characters, else its start and "…"."""
    return text if len(text) <= width else text[: width - 1] + "…"


def clean(text):
    """A repr without object addresses and module paths, which change from run to run and machine to machine."""
    if " at 0x" in text:
        text = ADDRESS.sub("", text)
    return MODULE_PATH.sub(r"\1>", text) if "<module '" in text else text


def show(value):
    """``repr(value)``, cleaned; an object without a repr of its own shows its attributes,
    ``Node(val=1, next=None)``, so that changing them shows in the trace. Never raises."""
    try:
        if type(value).__repr__ is object.__repr__ and isinstance(getattr(value, "__dict__", None), dict):
            fields = ", ".join(f"{k}={clean(repr(v))}" for k, v in vars(value).items())
            return f"{type(value).__name__}({fields})"
        return clean(repr(value))
    except BaseException:
        return f"<unrepresentable {type(value).__name__}>"


def snapshot(value):
    """A deep copy of builtin data frozen as ``marshal`` bytes (several times faster than its repr), else the
    repr: what a mutable value's changes are detected by, and what it is shown from later. (marshal writes a
    bytearray as bytes: one on its own is repr'd, one inside a container shows as bytes.)"""
    if type(value) is bytearray:
        return show(value)
    try:
        return marshal.dumps(value, 2)  # version 2: no back-references, so equal data gives equal bytes
    except ValueError:  # not builtin data (a user object inside), or nested too deep
        return show(value)


def fingerprint(value):
    """:func:`snapshot` of a mutable value; for a container of more than BIG items its length and the snapshot
    of its first PREFIX items (so a loop that grows a long list stays linear)."""
    if isinstance(value, CONTAINERS) and len(value) > BIG:
        if isinstance(value, dict):
            head = dict(itertools.islice(value.items(), PREFIX))
        elif isinstance(value, (list, tuple)):
            head = value[:PREFIX]
        else:  # a set, frozenset or deque: its first PREFIX items, shown as the same kind of container
            kind = frozenset if isinstance(value, frozenset) else set if isinstance(value, set) else deque
            head = kind(itertools.islice(value, PREFIX))
        return (len(value), snapshot(head))
    return snapshot(value)


def hidden(name):
    """A comprehension's hidden iterator (``.0``) or a dunder: never shown."""
    return name[0] == "." or (name[:2] == "__" and name[-2:] == "__")


def message(err):
    """``str(err)``, or "" when that raises."""
    try:
        return str(err)
    except BaseException:
        return ""


def describe(err):
    """``Type: message``, or just ``Type`` when the message is empty."""
    text = message(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Frame:
    """What the tracer keeps about one running call of a program function."""

    __slots__ = (
        "call",
        "comprehension",
        "depth",
        "events",
        "names",
        "offset",
        "pending",
        "raising",
        "snapshot",
    )

    def __init__(self, call, depth, comprehension, names):
        self.call, self.depth = call, depth
        self.comprehension = comprehension  # a comprehension's frame: no statements, one event per iteration
        self.names = names  # the locals worth showing (None: a class body's, found at each event)
        self.snapshot = {}  # name -> (value, fingerprint or None for immutables)
        self.pending = None  # the event of the statement running now; its changes are known at the next event
        self.raising = False  # an exception is propagating through the frame
        self.offset = -1  # bytecode offset of the last line event


class Tracer:
    """The ``sys.settrace`` callbacks; ``lines`` maps a line number to its count and first/last events."""

    def __init__(self, starts, pure, width, first, last, max_steps, deadline):
        self.starts = starts  # line -> first line of its statement, for statements over several lines
        self.spread = {*starts, *starts.values()}  # every line of those statements
        self.pure = pure  # line -> the only locals its statement can change (it calls nothing that could)
        self.width, self.first, self.last = width, first, last
        self.max_steps, self.deadline = max_steps, deadline
        self.steps = 0
        self.calls = 0
        self.depth = 0
        self.lines = {}  # line -> [count, first events, deque of last events]
        self.frames = {}  # id(frame) -> Frame, for the generators and coroutines that may resume
        self.names = {}  # code object -> the locals worth showing of its frames

    def record(self, line, state, changes):
        """A new event ``[index, line, call id, depth, changes]`` stored under its line; returns it."""
        if self.steps >= self.max_steps or time.perf_counter() > self.deadline:
            raise StepLimit
        event = [self.steps, line, state.call, state.depth, changes]
        self.steps += 1
        slot = self.lines.get(line)
        if slot is None:
            slot = self.lines[line] = [0, [], deque(maxlen=self.last)]
        slot[0] += 1
        (slot[1] if len(slot[1]) < self.first else slot[2]).append(event)
        return event

    def diff(self, frame, state, names=None):
        """The locals that changed since the frame's last snapshot, as ``[name, value, fingerprint]`` entries
        (the fingerprint is None for an immutable value).

        ``names``: the only locals to look at (after a statement that ``pure`` lists, only the locals it assigns
        can have changed); else all the frame's.
        """
        known, changes, local = state.snapshot, [], frame.f_locals
        if names is None:
            names = state.names if state.names is not None else [n for n in local if not hidden(n)]
        for name in names:
            value = local.get(name, UNBOUND)
            if value is UNBOUND:
                continue
            old = known.get(name)
            kind = type(value)
            if kind in IMMUTABLE:
                if old is not None and (old[0] is value or (type(old[0]) is kind and old[0] == value)):
                    continue
                key = None
            elif isinstance(value, CODE):
                continue  # an import or a nested def: no state worth a token
            else:
                key = fingerprint(value)
                if old is not None and old[1] == key:
                    continue
            known[name] = (value, key)
            changes.append([name, value, key])
        return changes

    def entry(self, name, value):
        """A change entry for a value as it is now (a returned list may be changed later)."""
        return [name, value, None if type(value) in IMMUTABLE else fingerprint(value)]

    def text(self, value, key=None):
        """How a value is shown: its repr cut to ``width`` (long strings are never repr'd whole). A mutable
        value is shown as it was when ``key``, its fingerprint, was taken."""
        if key is not None:
            head = key[1] if isinstance(key, tuple) else key
            if isinstance(head, str):  # already a repr
                return clip(head, self.width)
            value = marshal.loads(head)
        if isinstance(value, (str, bytes)) and len(value) > self.width:
            return clip(show(value[: self.width]), self.width)
        return clip(show(value), self.width)

    def rendered(self):
        """The kept events by line, ``{line: [count, first, last]}``, each change written as ``[name, repr]``.
        Values are only repr'd here, for the few runs kept, not for every run."""
        lines = {}
        for line, (count, first, last) in self.lines.items():
            events = [*first, *last]
            for event in events:
                event[4] = [[name, self.text(value, key)] for name, value, key in event[4]]
            lines[line] = [count, events[: len(first)], events[len(first) :]]
        return lines

    def on_call(self, frame, event, arg):
        code = frame.f_code
        if code.co_filename != PROGRAM:
            return None
        suspendable = code.co_flags & SUSPENDABLE
        if suspendable and id(frame) in self.frames:  # a generator resuming, not a new call
            return self.frames[id(frame)].events
        self.calls += 1
        self.depth += 1
        names = self.names.get(code, UNBOUND)
        if names is UNBOUND:
            every = code.co_varnames + code.co_cellvars + code.co_freevars
            optimized = code.co_flags & OPTIMIZED
            names = self.names[code] = [n for n in every if not hidden(n)] if optimized else None
        comprehension = code.co_name in COMPREHENSIONS
        state = Frame(self.calls, self.depth, comprehension, names)
        if suspendable:
            self.frames[id(frame)] = state
        changes = self.diff(frame, state)
        if comprehension:
            state.events = self.follow_comprehension(state)
        else:
            state.pending = self.record(frame.f_lineno, state, changes)
            state.events = self.follow(state)
        return state.events

    def follow(self, state):
        """The local trace function of one call. It runs at every line, so it is a closure over what it needs
        rather than a method that looks the frame's state up."""
        pure, spread, starts, diff, record, other = (
            self.pure,
            self.spread,
            self.starts,
            self.diff,
            self.record,
            self.on_other,
        )

        def events(frame, event, arg):
            pending = (
                state.pending
            )  # the statement that ran since the last event; the call's first is recorded
            names = pure.get(pending[1])
            if names is None or names:
                changes = diff(frame, state, names)
                if changes:
                    pending[4] += changes
            if event != "line":
                other(frame, event, arg, state, pending)
                return events
            state.raising = False
            line = frame.f_lineno
            if line not in spread:  # a one-line statement: each line event is a new run of it
                state.pending = record(line, state, [])
            else:  # a new run, unless it is the next line of the statement running now
                line, offset = starts.get(line, line), frame.f_lasti
                if pending[1] != line or offset <= state.offset or pending[4]:
                    state.pending = record(line, state, [])
                state.offset = offset
            return events

        return events

    def follow_comprehension(self, state):
        """The local trace function of a comprehension's call: no statements, one event per iteration's new
        values."""
        diff, record, other = self.diff, self.record, self.on_other

        def events(frame, event, arg):
            changes = diff(frame, state)
            if changes:
                record(frame.f_lineno, state, changes)
            if event != "line":
                other(frame, event, arg, state, None)
            return events

        return events

    def on_other(self, frame, event, arg, state, pending):
        """An exception passing through a program frame, or the frame returning or yielding."""
        if event == "exception":
            if pending is not None and not isinstance(arg[1], (*QUIET_EXCEPTIONS, StepLimit)):
                pending[4].append(self.entry("__exception__", arg[1]))
            state.raising = True
        elif event == "return":
            code = frame.f_code
            final = (
                state.raising
                or not code.co_flags & SUSPENDABLE
                or code.co_code[frame.f_lasti] in FINAL_RETURNS
            )
            if pending is not None and not state.raising:
                pending[4].append(self.entry("__return__" if final else "__yield__", arg))
            if final:
                self.frames.pop(id(frame), None)
                self.depth -= 1


STATE = {}  # the loaded program, the request's settings and the evaluation under way


def load(request):
    """Load the program from ``request["source"]`` (untraced) and keep the request's settings (``starts``,
    ``pure``, ``width``, ``first``, ``last``, ``max_steps``, ``time_limit_s``, ``trace``, ``output_chars``).
    None, or "Type: message" when the program failed to load."""
    STATE.update(
        request, namespace={"__name__": "__program__"}, output=io.StringIO(), tracer=None, seconds=0.0
    )
    try:
        with contextlib.redirect_stdout(STATE["output"]), contextlib.redirect_stderr(STATE["output"]):
            exec(compile(request["source"], PROGRAM, "exec"), STATE["namespace"])
    except BaseException as err:
        return clip(describe(err), request["width"])
    return None


def begin():
    """Start one evaluation of the call: a fresh tracer (when tracing), whose deadline starts now."""
    if STATE["trace"]:
        deadline = time.perf_counter() + STATE["time_limit_s"]
        limits = STATE["first"], STATE["last"], STATE["max_steps"], deadline
        STATE["tracer"] = Tracer(STATE["starts"], STATE["pure"], STATE["width"], *limits)
    STATE["seconds"] = 0.0


def call(name, args, kwargs):
    """The program's function ``name`` called with ``args`` and ``kwargs``, traced when tracing:
    ``["returned", value]``, ``["raised", type name, message]`` or ``["limit"]`` (too many steps, or late)."""
    tracer, function, output = STATE["tracer"], STATE["namespace"].get(name), STATE["output"]
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        if tracer is not None:
            sys.settrace(tracer.on_call)
        began = time.perf_counter()  # the call alone, tracer included
        try:
            return ["returned", function(*args, **kwargs)]
        except StepLimit:
            return ["limit"]
        except BaseException as err:
            return ["raised", type(err).__name__, clip(message(err), STATE["width"])]
        finally:
            STATE["seconds"] += time.perf_counter() - began
            sys.settrace(None)


def finish():
    """The evaluation's trace, ``{"steps", "lines", "seconds", "output"}``; ``seconds`` is the time spent in
    the program's calls plus writing the trace out."""
    began = time.perf_counter()
    tracer = STATE["tracer"]
    answer = {"steps": tracer.steps if tracer else 0, "lines": tracer.rendered() if tracer else {}}
    fit(answer, STATE["width"])
    answer["seconds"] = STATE["seconds"] + time.perf_counter() - began
    answer["output"] = STATE["output"].getvalue()[: STATE["output_chars"]]
    return answer


def shown(value):
    """The text that stands for a returned value that is not plain data (the sandbox's ``describe``)."""
    return clip(show(value), SHOWN)


def fit(answer, width):
    """Cut the trace's values shorter, then drop them, until the answer is at most MAX_ANSWER characters."""
    while len(json.dumps(answer)) > MAX_ANSWER and width:
        width = width // 2 if width >= 16 else 0
        for _, first, last in answer["lines"].values():
            for event in first + last:
                event[4] = [[name, clip(value, width)] for name, value in event[4]] if width else []
