"""selfevolve: a language model that improves itself (acquire, refine, update, evaluate).

The heavy parts (torch, transformers) load on first use, so ``selfevolve --version`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from selfevolve.errors import SelfEvolveError

__version__ = "0.1.0"

_LAZY = {
    "Backend": "selfevolve.runtime",
    "Completion": "selfevolve.runtime",
    "LocalModel": "selfevolve.runtime",
    "OpenAIBackend": "selfevolve.runtime",
    "TokenScores": "selfevolve.runtime",
    "load_model": "selfevolve.runtime",
    "ExperienceStore": "selfevolve.store",
}

if TYPE_CHECKING:
    from selfevolve.runtime import Backend, Completion, LocalModel, OpenAIBackend, TokenScores, load_model
    from selfevolve.store import ExperienceStore

__all__ = ["SelfEvolveError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selfevolve' has no attribute {name!r}")
