"""Judges: a model (or any callable) that rates one output (pointwise) or compares two (pairwise).

One abstraction for the whole project, below the phases: CodeJudge's modes are pointwise judges, the
judge-consistency metrics and REPAIR use the pairwise form. Imports only runtime/, records, io and errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    name: "selfevolve.judges.pairwise"
    for name in (
        "CachedJudge",
        "CallableJudge",
        "LogprobJudge",
        "PairwiseJudge",
        "PairwiseTemplate",
        "Triple",
        "VerdictJudge",
        "load_judge",
        "parse_verdict",
    )
}
_EXPORTS |= {
    name: "selfevolve.judges.pointwise" for name in ("PointwiseJudge", "UnparseableOutput", "Verdict")
}

if TYPE_CHECKING:
    from selfevolve.judges.pairwise import (
        CachedJudge,
        CallableJudge,
        LogprobJudge,
        PairwiseJudge,
        PairwiseTemplate,
        Triple,
        VerdictJudge,
        load_judge,
        parse_verdict,
    )
    from selfevolve.judges.pointwise import PointwiseJudge, UnparseableOutput, Verdict

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
