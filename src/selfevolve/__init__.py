"""selfevolve: a language model that improves itself (acquire, refine, update, evaluate).

The heavy parts (torch, transformers) load on first use, so ``selfevolve --version`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfevolve._lazy import lazy_getattr
from selfevolve.errors import SelfEvolveError

__version__ = "0.1.0"

_EXPORTS = {
    "Backend": "selfevolve.runtime.backend",
    "Completion": "selfevolve.runtime.backend",
    "TokenScores": "selfevolve.runtime.backend",
    "LocalModel": "selfevolve.runtime.model",
    "OpenAIBackend": "selfevolve.runtime.http",
    "load_model": "selfevolve.runtime.loading",
    "Experience": "selfevolve.store",
    "ExperienceStore": "selfevolve.store",
}

if TYPE_CHECKING:
    from selfevolve.runtime.backend import Backend, Completion, TokenScores
    from selfevolve.runtime.http import OpenAIBackend
    from selfevolve.runtime.loading import load_model
    from selfevolve.runtime.model import LocalModel
    from selfevolve.store import Experience, ExperienceStore

__all__ = ["SelfEvolveError", "__version__", *_EXPORTS]
__getattr__ = lazy_getattr(__name__, _EXPORTS)
