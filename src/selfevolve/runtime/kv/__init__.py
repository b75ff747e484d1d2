"""KV-cache compression of long prompts: SnapKV and its baselines, one file each on a small hooked base.

Every policy works two ways: ``LocalModel.generate(..., kv_compression=SnapKV(budget=1024))``, or as a context
manager around a plain transformers model (``with SnapKV(budget=1024)(model): model.generate(...)``). For
query-agnostic use (compress a context once, ask several questions) see :mod:`selfevolve.runtime.kv.context`.
"""

from __future__ import annotations

import re

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.kv.base import KVPolicy
from selfevolve.runtime.kv.context import PromptCache, decode, extend, prefill
from selfevolve.runtime.kv.full import FullKV
from selfevolve.runtime.kv.random import RandomKV
from selfevolve.runtime.kv.snapkv import SnapKV
from selfevolve.runtime.kv.streaming import StreamingLLM

__all__ = [
    "FullKV",
    "KVPolicy",
    "PromptCache",
    "RandomKV",
    "SnapKV",
    "StreamingLLM",
    "decode",
    "extend",
    "parse_kv_spec",
    "prefill",
]

SPEC_FORMS = (
    "full, snapkv:BUDGET, random:BUDGET, streaming:SINKS+RECENT (BUDGET: tokens, 1024, or a ratio, 0.25)"
)
_COUNT = r"[0-9]{1,9}"
_BUDGET = rf"(?:{_COUNT}|0?\.[0-9]{{1,6}}|1\.0*)"


def _budget(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_kv_spec(spec: str) -> KVPolicy:
    """The policy named by: ``full``, ``snapkv:1024``, ``snapkv:0.25``, ``random:512``, ``streaming:4+1020``.

    Anything else raises a one-line :class:`SelfEvolveError` that lists the valid forms.
    """
    text = spec.strip().lower() if isinstance(spec, str) else ""
    try:
        if text == "full":
            return FullKV()
        if match := re.fullmatch(rf"(snapkv|random):({_BUDGET})", text):
            policy = SnapKV if match[1] == "snapkv" else RandomKV
            return policy(budget=_budget(match[2]))
        if match := re.fullmatch(rf"streaming:({_COUNT})\+({_COUNT})", text):
            return StreamingLLM(sinks=int(match[1]), recent=int(match[2]))
    except SelfEvolveError as err:
        raise SelfEvolveError(f"bad KV compression {spec!r}: {err}; forms: {SPEC_FORMS}") from None
    raise SelfEvolveError(f"unknown KV compression {spec!r}; use one of: {SPEC_FORMS}")
