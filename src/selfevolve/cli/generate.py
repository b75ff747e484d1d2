"""``selfevolve generate``: answer one prompt, streaming tokens as they come."""

from __future__ import annotations

import sys

import typer

from selfevolve.runtime.registry import DEFAULT_MODEL


def main(
    prompt: str = typer.Argument(..., help="The prompt; sent as a user chat message unless --raw."),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Registry name, model folder, .gguf or hub id."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", min=1, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(None, "--seed", help="Fix the sampling RNG."),
    system: str = typer.Option(None, "--system", help="A system message before the prompt."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop at this string (repeatable)."),
    raw: bool = typer.Option(
        False, "--raw", help="Send the prompt as plain text, without the chat template."
    ),
    kv: str = typer.Option(
        None,
        "--kv",
        help="KV-cache compression, e.g. snapkv:1024, snapkv:0.25, snapkv:512,kernel=15, streaming:4+1020.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Generate an answer from a model and stream it to stdout."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.runtime import load_model

    if raw and system:
        raise typer.BadParameter("--system needs the chat template; drop --raw or --system")
    compression = None
    if kv:
        from selfevolve.runtime.kv import parse_kv_spec

        compression = parse_kv_spec(kv)
    backend = load_model(model, device=device)
    messages = [{"role": "system", "content": system}] if system else []
    request = prompt if raw else [*messages, {"role": "user", "content": prompt}]
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed)
    if compression is None:
        for piece in backend.stream(request, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        sys.stdout.write(backend.generate([request], kv_compression=compression, **options)[0].text)
    sys.stdout.write("\n")
    if compression is not None:
        sys.stderr.write(compression.last_report.last.summary() + "\n")
