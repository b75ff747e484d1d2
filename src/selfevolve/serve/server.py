"""Run the OpenAI-compatible server: in the foreground (``run_server``) or on a background thread (tests, notebooks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.loading import load_model
from selfevolve.runtime.model import LocalModel
from selfevolve.serve.app import create_app

STARTUP_TIMEOUT = 30.0
"""Seconds ``serve_in_thread`` waits for the server to accept connections."""


def run_server(model: str, host: str = "127.0.0.1", port: int = 8000, **load_kwargs) -> None:
    """Load ``model`` with :func:`load_model` (``load_kwargs``: device, dtype...) and serve it until interrupted."""
    import uvicorn

    backend = load_model(model, **load_kwargs)
    uvicorn.run(create_app(backend), host=host, port=port)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SelfEvolveError(
            f"cannot listen on {host}:{port} ({err.strerror}); pick another port or host"
        ) from err
    return sock


@contextlib.contextmanager
def serve_in_thread(backend: LocalModel, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``backend`` from a background thread inside the ``with`` block; yields the base URL (``.../v1``).

    ``port=0`` picks a free port. The server shuts down when the block exits.
    """
    import uvicorn

    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(backend), log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="selfevolve-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise SelfEvolveError(f"the server on {host}:{port} did not start; see the uvicorn log above")
        time.sleep(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        yield f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT)
        sock.close()
