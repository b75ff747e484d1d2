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
    "full, snapkv:BUDGET[,kernel=K,window=W,pooling=max|avg,gqa=kv_head|query_head], random:BUDGET, "
    "streaming:SINKS+RECENT (BUDGET: tokens, 1024, or a ratio, 0.25)"
)
_COUNT = r"[0-9]{1,9}"
_BUDGET = rf"(?:{_COUNT}|0?\.[0-9]{{1,6}}|1\.0*)"
_SNAPKV_OPTION = r"(kernel|window)=([0-9]{1,6})|(pooling)=(max|avg)|(gqa)=(kv_head|query_head)"


def _snapkv_options(text: str) -> dict[str, int | str]:
    """``,kernel=15,pooling=avg`` as keyword arguments of :class:`SnapKV` (each option at most once)."""
    options: dict[str, int | str] = {}
    for part in filter(None, text.split(",")):
        match = re.fullmatch(_SNAPKV_OPTION, part)
        if match is None:
            raise SelfEvolveError(f"unknown SnapKV option {part!r}")
        name, value = [group for group in match.groups() if group is not None]
        if name in options:
            raise SelfEvolveError(f"SnapKV option {name!r} given twice")
        options[name] = int(value) if value.isdigit() else value
    return options


def _budget(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_kv_spec(spec: str) -> KVPolicy:
    """The policy named by: ``full``, ``snapkv:1024``, ``snapkv:0.25``, ``snapkv:512,kernel=15``, ``random:512``,
    ``streaming:4+1020``.

    Anything else raises a one-line :class:`SelfEvolveError` that lists the valid forms.
    """
    text = spec.strip().lower() if isinstance(spec, str) else ""
    try:
        if text == "full":
            return FullKV()
        if match := re.fullmatch(rf"snapkv:({_BUDGET})((?:,[a-z_]+=[a-z_0-9]+){{0,4}})", text):
            return SnapKV(budget=_budget(match[1]), **_snapkv_options(match[2]))
        if match := re.fullmatch(rf"random:({_BUDGET})", text):
            return RandomKV(budget=_budget(match[1]))
        if match := re.fullmatch(rf"streaming:({_COUNT})\+({_COUNT})", text):
            return StreamingLLM(sinks=int(match[1]), recent=int(match[2]))
    except SelfEvolveError as err:
        raise SelfEvolveError(f"bad KV compression {spec!r}: {err}; forms: {SPEC_FORMS}") from None
    raise SelfEvolveError(f"unknown KV compression {spec!r}; use one of: {SPEC_FORMS}")
