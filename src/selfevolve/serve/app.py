"""The FastAPI app: OpenAI-compatible routes over a :class:`LocalModel`, and OpenAI-shaped errors for every failure.

User mistakes (bad JSON, wrong types, unknown roles, prompts past the context) answer 400 or 404 with
``{"error": {"message", "type", "param", "code"}}``; only a bug in selfevolve answers 500, still without a
traceback in the body.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from selfevolve import __version__
from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.model import LocalModel
from selfevolve.serve.protocol import APIError, ChatRequest, CompletionRequest, error_body
from selfevolve.serve.serving import Serving

ROUTES = "GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health"


def describe_validation(errors: Sequence[dict]) -> tuple[str, str | None]:
    """One line out of pydantic's errors (at most three of them), and the dotted name of the first bad field."""
    lines, params = [], []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error["loc"] if part != "body")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", message)
            where, message = "", f"the request body is not valid JSON ({reason})"
        elif not where:
            message = f"the request body must be a JSON object ({message[:1].lower()}{message[1:]})"
        lines.append(f"{where}: {message}" if where else message)
        params.append(where or None)
    return "; ".join(lines), params[0] if params else None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure with the OpenAI error body instead of FastAPI's ``{"detail": ...}`` or a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(err.errors())
        return JSONResponse(error_body(message, kind="invalid_request_error", param=param), status_code=400)

    @app.exception_handler(APIError)
    async def refused(request: Request, err: APIError) -> JSONResponse:
        kind = "not_found_error" if err.status == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(err.message, kind=kind, param=err.param, code=err.code), status_code=err.status
        )

    @app.exception_handler(SelfEvolveError)
    async def user_error(request: Request, err: SelfEvolveError) -> JSONResponse:
        return JSONResponse(error_body(str(err), kind="invalid_request_error"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = f"{err.detail}: {request.method} {request.url.path}; this server answers {ROUTES}"
        return JSONResponse(error_body(message, kind="invalid_request_error"), status_code=err.status_code)

    @app.exception_handler(
        Exception
    )  # Starlette re-raises afterwards, so the server still logs the traceback
    async def bug(request: Request, err: Exception) -> JSONResponse:
        message = (
            f"internal error: {type(err).__name__}: {err}; this is a bug in selfevolve, please report it"
        )
        return JSONResponse(error_body(message, kind="internal_error"), status_code=500)


def create_app(backend: LocalModel) -> FastAPI:
    """An OpenAI-compatible API serving ``backend`` (routes: see ``ROUTES``).

    Model routes are plain functions, so FastAPI runs them in its threadpool; LocalModel's lock serialises them.
    """
    serving = Serving(backend)
    app = FastAPI(title="selfevolve", version=__version__)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": backend.name}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [serving.model_card()]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(request: ChatRequest) -> dict | StreamingResponse:
        if request.stream:
            return StreamingResponse(serving.chat_stream(request), media_type="text/event-stream")
        return serving.chat(request)

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict:
        return serving.complete(request)

    return app
