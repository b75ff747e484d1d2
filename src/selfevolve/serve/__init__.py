"""An OpenAI-compatible HTTP server for a local model (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``).

Any OpenAI client, and :class:`~selfevolve.runtime.http.OpenAIBackend`, can then use the model over HTTP.
"""

from selfevolve.serve.app import create_app
from selfevolve.serve.server import run_server, serve_in_thread

__all__ = ["create_app", "run_server", "serve_in_thread"]
