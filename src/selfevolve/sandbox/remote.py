"""The trusted side of a served run: calls into a sandboxed program's functions, and tests judged from outside it.

A :class:`Remote` sends each call's arguments to the program (one line: the hex of marshal data, which only the
sandbox loads) and decodes the answer (one JSON line, :mod:`selfevolve.sandbox.wire`) into builtin values; :func:`judge` runs trusted test code in the harness's own interpreter
with the program's functions replaced by such calls. The program only ever answers calls: what it writes is
data (a value, or the name of the exception it raised), never code or objects, so the most it can do is give
the answers some program could honestly have given, fail, or run out of time.
"""

from __future__ import annotations

import functools
import marshal
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from selfevolve.sandbox import wire

MAX_REPLY = 4 * 1024 * 1024  # bytes of one answer; a longer one stops the run
NAME_CHARS, MESSAGE_CHARS = 80, 300  # of the exception type and message a program reports


class Stopped(BaseException):
    """The program can answer no more: it ran out of time, ended, or broke the channel.

    A BaseException, so that ``except Exception`` in test code does not swallow it; the :class:`Remote` also
    keeps it and raises it again on every later call.
    """

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


class ProgramError(Exception):
    """A call into the program raised there (``kind`` is the type name it reported), or its answer was not plain
    data. An Exception, so test code that expects the program to raise can catch it."""

    def __init__(self, kind: str, message: str = "") -> None:
        self.kind = " ".join(kind.split())[:NAME_CHARS] or "an exception"
        self.message = " ".join(message.split())[:MESSAGE_CHARS]
        super().__init__(f"{self.kind}: {self.message}" if self.message else self.kind)


class Remote:
    """Calls to the functions of one program running in the sandbox.

    ``exchange`` sends a request line and returns one reply line (or raises :class:`Stopped`); ``opaque`` lets
    answers hold values that are not plain data, decoded as display-only :class:`~selfevolve.sandbox.wire.Opaque`.
    """

    def __init__(self, exchange: Callable[[bytes], bytes], opaque: bool = False) -> None:
        self._exchange = exchange
        self.opaque = opaque
        self.stopped: Stopped | None = None

    def call(self, name: str, /, *args: object, **kwargs: object) -> object:
        """``name(*args, **kwargs)`` in the program; the arguments must be plain data (TypeError otherwise)."""
        if self.stopped is not None:
            raise self.stopped
        request = {"call": name, "args": [wire.encode(a) for a in args]}
        request["kwargs"] = {key: wire.encode(value) for key, value in kwargs.items()}
        try:
            line = self._exchange(marshal.dumps(request).hex().encode() + b"\n")
        except Stopped as stop:
            self.stopped = stop
            raise
        try:
            reply = wire.loads(line)
            if type(reply) is dict and reply.keys() == {"value"}:
                return wire.decode(reply["value"], self.opaque)
            raised, message = (reply.get("raised"), reply.get("message")) if type(reply) is dict else (0, 0)
        except ValueError as err:
            raise ProgramError("an answer that is not plain data", str(err)) from None
        if type(raised) is str and type(message) is str:
            raise ProgramError(raised, message)
        raise ProgramError("an answer that is neither a value nor an exception")

    def function(self, name: str) -> Callable[..., object]:
        """A stand-in for the program's function ``name``: calling it calls that function in the sandbox."""

        def call(*args: object, **kwargs: object) -> object:
            return self.call(name, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        return call


@dataclass(frozen=True)
class Tests:
    """Trusted test code that judges a sandboxed program from outside its process.

    ``setup`` runs first (helpers the tests use: HumanEval's prompt); then each name in ``functions`` is bound to
    a stand-in that calls the program's function of that name (replacing any stub ``setup`` defined); then
    ``code`` runs. The program passes iff ``code`` runs to its end.
    """

    code: str
    functions: tuple[str, ...]
    setup: str = ""


def judge(tests: Tests, remote: Remote) -> tuple[str, str]:
    """Run ``tests`` against the program behind ``remote``: ("ok", ""), or ("failed" or "memory", why).

    :class:`Stopped` propagates, even when the tests caught it.
    """
    namespace: dict = {"__name__": "__tests__"}
    try:
        exec(compiled(tests.setup, "<setup>"), namespace)
        namespace.update((name, remote.function(name)) for name in tests.functions)
        exec(compiled(tests.code, "<tests>"), namespace)
    except ProgramError as err:
        if remote.stopped is not None:
            raise remote.stopped from None
        return ("memory" if err.kind == "MemoryError" else "failed"), f"the program raised {err}"
    except Exception as err:
        if remote.stopped is not None:
            raise remote.stopped from None
        return "failed", where(err)
    if remote.stopped is not None:
        raise remote.stopped
    return "ok", ""


@functools.lru_cache(maxsize=256)
def compiled(source: str, name: str) -> object:
    """``source`` compiled under file name ``name`` (the same tests are judged many times)."""
    return compile(source, name, "exec")


def where(err: BaseException) -> str:
    """``Type: message (line N of the tests)``, on one line."""
    text = " ".join(f"{type(err).__name__}: {err}".split()).removesuffix(":")[:MESSAGE_CHARS]
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in ("<tests>", "<setup>")]
    if frames:
        text += f" (line {frames[-1].lineno} of the {frames[-1].filename.strip('<>')})"
    return text
