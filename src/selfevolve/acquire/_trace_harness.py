"""The tracing harness: runs *inside* the sandboxed interpreter, so it uses the standard library only.

The parent appends ``main(REQUEST)``, REQUEST being a JSON object (``source``, ``setup``, ``call``, ``trace``
and the limits). The harness loads the program from ``source`` (untraced), runs ``setup`` (untraced: test
helpers), then runs ``call`` with ``sys.settrace`` watching every frame whose code comes from the program. For each run of a program statement it records the
global execution-order index, the call id and depth of its frame, and the local variables the statement changed
(reprs, cut to ``width``), plus returned and yielded values and exceptions. Only the first and last few runs of
each line are kept, so memory stays bounded on long loops. The answer is printed after :data:`SENTINEL` as one
JSON line of at most :data:`MAX_ANSWER` characters; the program's own output is captured, never mixed with it.
"""

import contextlib
import dis
import io
import itertools
import json
import re
import sys
import time
import types
from collections import deque

SENTINEL = "@@selfevolve-trace@@"
PROGRAM = "<program>"
MAX_ANSWER = 48_000  # characters; the sandbox keeps 64 KB of stdout
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses change from run to run
MODULE_PATH = re.compile(r"(<module '[^']*') from '[^']*'>")  # where a module was loaded from: noise
BIG, PREFIX = 200, 64  # containers of more than BIG items are compared by length and first PREFIX items only
IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range})  # unchanged while bound
CONTAINERS = (list, tuple, dict, set, frozenset, deque)
BUILTIN = IMMUTABLE | {*CONTAINERS, bytearray}  # operators and indexing on these never change them in place
CODE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")
QUIET_EXCEPTIONS = (StopIteration, StopAsyncIteration, GeneratorExit)  # how iteration ends, not errors
SUSPENDABLE = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
FINAL_RETURNS = {dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in dis.opmap}


class StepLimit(BaseException):
    """Raised inside the traced program to stop it: too many executed lines, or out of time."""


def clip(text, width):
    """``text`` if it fits in ``width`` characters, else its start and "…"."""
    return text if len(text) <= width else text[: width - 1] + "…"


def clean(text):
    """A repr without object addresses and module paths, which change from run to run and machine to machine."""
    return MODULE_PATH.sub(r"\1>", ADDRESS.sub("", text))


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


def fingerprint(value):
    """What a mutable value's changes are detected by: its repr, or for a container of more than BIG items its
    length and the repr of its first PREFIX items (so a loop that grows a long list stays linear)."""
    if isinstance(value, CONTAINERS) and len(value) > BIG:
        if isinstance(value, dict):
            head = dict(itertools.islice(value.items(), PREFIX))
        elif isinstance(value, (list, tuple)):
            head = value[:PREFIX]
        else:
            head = list(itertools.islice(value, PREFIX))
        return (len(value), show(head))
    return show(value)


def describe(err):
    """``Type: message``, or just ``Type`` when the message is empty."""
    try:
        message = str(err)
    except BaseException:
        message = ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class Frame:
    """What the tracer keeps about one running call of a program function."""

    __slots__ = ("call", "depth", "offset", "pending", "raising", "snapshot")

    def __init__(self, call, depth):
        self.call, self.depth = call, depth
        self.snapshot = {}  # name -> (value, fingerprint or None for immutables)
        self.pending = None  # the event of the statement running now; its changes are known at the next event
        self.raising = False  # an exception is propagating through the frame
        self.offset = -1  # bytecode offset of the last line event


class Tracer:
    """The ``sys.settrace`` callbacks; ``lines`` maps a line number to its count and first/last events."""

    def __init__(self, starts, watch, width, first, last, max_steps, deadline):
        self.starts = starts  # line -> first line of its statement, for statements over several lines
        self.watch = watch  # line -> the only locals its statement may change in place (no calls, no stores)
        self.width, self.first, self.last = width, first, last
        self.max_steps, self.deadline = max_steps, deadline
        self.steps = 0
        self.calls = 0
        self.depth = 0
        self.lines = {}  # line -> [count, first events, deque of last events]
        self.frames = {}  # id(frame) -> Frame

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

    def diff(self, frame, state, line=None):
        """The locals that changed since the frame's last snapshot, as ``[name, repr]`` pairs.

        After a statement that ``watch`` lists, a local still bound to the same object of a builtin type is
        unchanged unless the statement may change it in place (``xs += [1]``): no repr needed.
        """
        snapshot, changes = state.snapshot, []
        watched = self.watch.get(line)
        for name, value in frame.f_locals.items():
            old = snapshot.get(name)
            if old is not None and old[0] is value:
                kind = type(value)
                if kind in IMMUTABLE or (watched is not None and kind in BUILTIN and name not in watched):
                    continue  # the same immutable object, or one the statement could not have changed
            if name[0] in "._" and (name[0] == "." or (name[:2] == "__" and name[-2:] == "__")):
                continue  # a comprehension's hidden iterator, or a dunder
            if isinstance(value, CODE):
                continue  # an import or a nested def: no state worth a token
            if type(value) in IMMUTABLE:
                if old is not None and type(old[0]) is type(value) and old[0] == value:
                    continue
                key = None
            else:
                key = fingerprint(value)
                if old is not None and old[1] == key:
                    continue
            snapshot[name] = (value, key)
            changes.append([name, self.text(value, key)])
        return changes

    def text(self, value, key=None):
        """How a value is shown: its repr cut to ``width`` (long strings are never repr'd whole)."""
        if isinstance(value, (str, bytes)) and len(value) > self.width:
            return clip(show(value[: self.width]), self.width)
        if key is None:
            key = show(value) if type(value) in IMMUTABLE else fingerprint(value)
        return clip(key if isinstance(key, str) else key[1], self.width)

    def settle(self, frame, state):
        """Attribute the changes since the last event to the statement still pending in this frame."""
        pending = state.pending
        changes = self.diff(frame, state, None if pending is None else pending[1])
        if pending is not None:
            pending[4].extend(changes)
        return pending

    def on_call(self, frame, event, arg):
        if frame.f_code.co_filename != PROGRAM:
            return None
        if id(frame) not in self.frames:  # a new call, not a generator resuming
            self.calls += 1
            self.depth += 1
            state = self.frames[id(frame)] = Frame(self.calls, self.depth)
            changes = self.diff(frame, state)
            if frame.f_code.co_name not in COMPREHENSIONS:
                state.pending = self.record(frame.f_lineno, state, changes)
        return self.on_event

    def on_event(self, frame, event, arg):
        state = self.frames.get(id(frame))
        if state is None:
            return self.on_event
        code = frame.f_code
        if code.co_name in COMPREHENSIONS:  # no statements inside: one event per iteration's new values
            changes = self.diff(frame, state, frame.f_lineno)
            if changes:
                self.record(frame.f_lineno, state, changes)
            pending = None
        elif event == "line":
            pending = self.settle(frame, state)
            line, offset = self.starts.get(frame.f_lineno, frame.f_lineno), frame.f_lasti
            if pending is None or pending[1] != line or offset <= state.offset or pending[4]:
                state.pending = self.record(line, state, [])  # a new run, not the statement's next line
            state.offset = offset
        else:
            pending = self.settle(frame, state)
        if event == "line":
            state.raising = False
        elif event == "exception":
            if pending is not None and not isinstance(arg[1], (*QUIET_EXCEPTIONS, StepLimit)):
                pending[4].append(["__exception__", self.text(arg[1])])
            state.raising = True
        elif event == "return":
            final = (
                state.raising
                or not code.co_flags & SUSPENDABLE
                or code.co_code[frame.f_lasti] in FINAL_RETURNS
            )
            if pending is not None and not state.raising:
                pending[4].append(["__return__" if final else "__yield__", self.text(arg)])
            if final:
                del self.frames[id(frame)]
                self.depth -= 1
        return self.on_event


def run(request, answer):
    """Load the program, then run (and trace) the call ``repeat`` times; fills ``answer``, returns the tracer.

    ``seconds`` is the fastest of the repeats; the trace is the last repeat's.
    """
    width = request["width"]
    namespace = {"__name__": "__program__"}
    try:
        exec(compile(request["source"], PROGRAM, "exec"), namespace)
        exec(compile(request["setup"], "<setup>", "exec"), namespace)
    except BaseException as err:
        answer.update(status="error", exception=clip(describe(err), width))
        return None
    try:
        code, expression = compile(request["call"], "<call>", "eval"), True
    except SyntaxError:
        code, expression = compile(request["call"], "<call>", "exec"), False
    starts = {int(line): start for line, start in request["starts"].items()}
    watch = {int(line): set(names) for line, names in request["watch"].items()}
    tracer, fastest = None, float("inf")
    for _ in range(request["repeat"]):
        began = time.perf_counter()
        if request["trace"]:
            limits = request["first"], request["last"], request["max_steps"], began + request["time_limit_s"]
            tracer = Tracer(starts, watch, width, *limits)
            sys.settrace(tracer.on_call)
        try:
            value = eval(code, namespace)
            answer.update(status="returned" if expression else "completed")
            answer["value"] = clip(show(value), width) if expression else None
        except StepLimit:
            answer["status"] = "limit"
        except BaseException as err:
            answer.update(status="raised", exception=clip(describe(err), width))
        finally:
            sys.settrace(None)
            fastest = min(fastest, time.perf_counter() - began)
    answer["seconds"] = fastest
    return tracer


def fit(answer, width):
    """The answer as JSON of at most MAX_ANSWER characters: values are cut shorter, then dropped, if need be."""
    text = json.dumps(answer)
    while len(text) > MAX_ANSWER and "lines" in answer and width:
        width = width // 2 if width >= 16 else 0
        for _, first, last in answer["lines"].values():
            for event in first + last:
                event[4] = [[name, clip(value, width)] for name, value in event[4]] if width else []
        text = json.dumps(answer)
    return text


def main(request_json):
    request = json.loads(request_json)
    answer = {"status": "returned", "value": None, "exception": None, "steps": 0, "seconds": 0.0}
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        tracer = run(request, answer)
    answer["output"] = captured.getvalue()[: request["output_chars"]]
    if tracer is not None:
        answer["steps"] = tracer.steps
        answer["lines"] = {
            str(line): [count, first, list(last)] for line, (count, first, last) in tracer.lines.items()
        }
    sys.stdout.write("\n" + SENTINEL + fit(answer, request["width"]) + "\n")
    sys.stdout.flush()
