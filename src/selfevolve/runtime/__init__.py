"""Models, generation, scoring and KV compression: the core every method builds on.

Names load lazily (see :mod:`selfevolve._lazy`), so the registry can be read without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr

_EXPORTS = {
    "Backend": "selfevolve.runtime.backend",
    "Completion": "selfevolve.runtime.backend",
    "Message": "selfevolve.runtime.backend",
    "Prompt": "selfevolve.runtime.backend",
    "TokenScores": "selfevolve.runtime.backend",
    "OpenAIBackend": "selfevolve.runtime.http",
    "load_model": "selfevolve.runtime.loading",
    "ContinuationBatch": "selfevolve.runtime.model",
    "LocalModel": "selfevolve.runtime.model",
    "DEFAULT_MODEL": "selfevolve.runtime.registry",
    "REGISTRY": "selfevolve.runtime.registry",
    "cache_dir": "selfevolve.runtime.registry",
}

if TYPE_CHECKING:
    from selfevolve.runtime.backend import Backend, Completion, Message, Prompt, TokenScores
    from selfevolve.runtime.http import OpenAIBackend
    from selfevolve.runtime.loading import load_model
    from selfevolve.runtime.model import ContinuationBatch, LocalModel
    from selfevolve.runtime.registry import DEFAULT_MODEL, REGISTRY, cache_dir

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
