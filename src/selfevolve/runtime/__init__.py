"""Models, generation, scoring and KV compression: the core every method builds on."""

from selfevolve.runtime.backend import Backend, Completion, Message, Prompt, TokenScores
from selfevolve.runtime.http import OpenAIBackend
from selfevolve.runtime.loading import load_model
from selfevolve.runtime.model import ContinuationBatch, LocalModel
from selfevolve.runtime.registry import DEFAULT_MODEL, REGISTRY, cache_dir

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "Backend",
    "Completion",
    "ContinuationBatch",
    "LocalModel",
    "Message",
    "OpenAIBackend",
    "Prompt",
    "TokenScores",
    "cache_dir",
    "load_model",
]
