"""One error shape for every HTTP route BabelRAG serves (REST v1, the OpenAI-compatible API):

    {"error": {"message": str, "type": str, "code": int}}

OpenAI's shape, so the ``openai`` client (and anything built for it) reads our errors too.
``type`` is the BabelRAGError's class name (``CollectionNotFoundError``, ``GenerationError``...)
when BabelRAG raised it, else a word for the HTTP status (``invalid_request``, ``not_found``...);
``code`` is the HTTP status. ``install_error_handlers(app)`` makes FastAPI's own errors
(HTTPException, request validation — FastAPI's 422 becomes a 400) and BabelRAG's take this shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import (
    AccessDeniedError,
    BabelRAGError,
    CollectionNotFoundError,
    ConfigError,
    GenerationError,
    IndexMismatchError,
    IngestionError,
    LeaseHeldError,
    LeaseLostError,
    ModelNotFoundError,
    QueryError,
    StoreError,
)

log = logging.getLogger(__name__)

# The ``type`` of an error that BabelRAG did not raise, by HTTP status.
STATUS_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "server_error",
    503: "unavailable",
}


def error_body(status: int, message: str, type: str | None = None) -> dict[str, Any]:
    """The JSON body of an error: ``{"error": {"message", "type", "code"}}``."""
    return {"error": {"message": message, "type": type or STATUS_TYPES.get(status, "error"), "code": status}}


def error_response(
    status: int, message: str, type: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, type), status_code=status, headers=dict(headers or {}))


def status_of(error: BabelRAGError) -> int:
    """The HTTP status a BabelRAG error answers with."""
    if isinstance(error, AccessDeniedError):
        return 403
    if isinstance(error, CollectionNotFoundError):
        return 404
    if isinstance(error, LeaseHeldError | LeaseLostError | IndexMismatchError):
        return 409  # another job writes the collection, or it was built otherwise: a conflict, not a fault
    if isinstance(error, QueryError):
        return 404 if "is not a document of" in str(error) else 400
    if isinstance(error, GenerationError | StoreError | ModelNotFoundError):
        return 503  # the LLM server, the store or a model is not there: try again once it is
    if isinstance(error, IngestionError | ConfigError):
        return 400
    return 400


def babelrag_error_response(error: BabelRAGError) -> JSONResponse:
    return error_response(status_of(error), str(error), type(error).__name__)


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one sentence: where, what was wrong, what came."""
    problems = []
    for e in error.errors():
        where = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
        problem = f"{where}: {e.get('msg', 'invalid')}"
        if e.get("type") not in ("missing", "json_invalid") and "input" in e:
            given = repr(e["input"])
            problem += f" (got {given[:80] + '...' if len(given) > 80 else given})"
        problems.append(problem)
    return "invalid request: " + "; ".join(problems or ["the body does not fit the route's schema"])


def install_error_handlers(app: FastAPI) -> None:
    """Give every error ``app`` answers with the one shape (idempotent: installing twice is harmless)."""

    async def on_babelrag(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, BabelRAGError)
        return babelrag_error_response(error)

    async def on_http(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        detail = error.detail
        if isinstance(detail, dict) and "error" in detail:  # already this shape (error_body)
            return JSONResponse(detail, status_code=error.status_code, headers=error.headers)
        return error_response(error.status_code, str(detail), headers=error.headers)

    async def on_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(400, validation_message(error), "invalid_request")

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(error).__name__, request.method, request.url.path, exc_info=error)
        return error_response(
            500, f"unexpected {type(error).__name__} on the server: {error} (the server's log has the traceback)"
        )

    app.add_exception_handler(BabelRAGError, on_babelrag)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
