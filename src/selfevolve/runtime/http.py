"""A :class:`~selfevolve.runtime.backend.Backend` over any OpenAI-compatible HTTP endpoint."""

from __future__ import annotations


class OpenAIBackend:
    """Placeholder replaced below."""
