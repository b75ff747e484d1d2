"""Run untrusted Python: resource limits, a fresh work directory, no network, nothing left running afterwards.

``run_python`` runs one program, ``run_tests`` one test program whose ``ok`` needs a completion proof,
``run_many`` either over a thread pool. The strongest protection this machine supports is chosen once per
process (bubblewrap, a network namespace, or in-process guards): see :mod:`selfevolve.sandbox.isolation`.
"""

from __future__ import annotations

from selfevolve.sandbox.run import (
    OUTPUT_LIMIT,
    STATUSES,
    RunResult,
    available_isolations,
    run_many,
    run_python,
    run_tests,
)

__all__ = [
    "OUTPUT_LIMIT",
    "STATUSES",
    "RunResult",
    "available_isolations",
    "run_many",
    "run_python",
    "run_tests",
]
