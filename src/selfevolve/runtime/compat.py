"""One place for the transformers API that moved between the releases we support (pyproject's lower bound on).

transformers 5.24 renamed the cache argument of every model, decoder layer and attention module from
``past_key_values`` to ``cache`` (and the output field likewise), keeping the old name as a deprecated alias
until 5.40. Code that reads the cache inside a hook, or passes one to a forward, goes through these helpers so
that it sees the cache under either name and passes it under the name the installed release expects.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import transformers

CACHE_NAMES = ("cache", "past_key_values")  # the new name first


@functools.cache
def _forward_takes_cache(forward_owner: type) -> bool:
    """Whether ``forward_owner.forward`` names its cache argument ``cache`` (transformers >= 5.24)."""
    return "cache" in inspect.signature(forward_owner.forward).parameters


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name ``model``'s forward expects, to splat into a forward call."""
    return {"cache" if _forward_takes_cache(type(model)) else "past_key_values": cache}


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The cache a hooked forward was called with, under either name (None when there is none)."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_of(output: Any) -> Any:
    """The cache a model returned (``output.cache`` from 5.24, ``output.past_key_values`` before)."""
    for name in CACHE_NAMES:
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    return None


def transformers_version() -> str:
    """The installed transformers release, for error messages."""
    return transformers.__version__
