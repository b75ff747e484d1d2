"""``selfevolve serve``: the local model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes it to the network."
    ),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535, help="TCP port."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Serve /v1/chat/completions and /v1/completions for MODEL."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.serve import run_server

    run_server(model, host=host, port=port, device=device)
