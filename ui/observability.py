"""What the app tells its operators: GET /metrics (Prometheus, read-scoped like the queries), and
per HTTP request a request id (X-Request-ID, the client's or a new one, sent back in the
response), an access log line and the request metrics.

The request id is set for the whole request (``rag.request_scope``), so the log lines of every
stage of an answer carry it, in the event loop and in the worker threads the async API uses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag import Pipeline, request_scope
from ui.rest import Authorize

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


def install(app: FastAPI, pipeline: Pipeline, authorize: Authorize) -> None:
    """GET /metrics behind ``authorize`` (the read check), and the request middleware."""

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(authorize)])
    def metrics() -> Response:  # sync: the health checks block, so it runs in a worker thread
        pipeline.readiness()  # babelrag_up as of this scrape
        body, content_type = pipeline.metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(RequestObservability, pipeline=pipeline, routes=app.router.routes)


class RequestObservability:
    """ASGI middleware (not Starlette's BaseHTTPMiddleware: a streamed answer's time is counted
    to its last event, and the request's context reaches the endpoint unchanged)."""

    def __init__(self, app: ASGIApp, pipeline: Pipeline, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = pipeline.metrics
        self.routes = routes  # the app's route table, for the routes FastAPI does not name in the scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        asked = dict(scope)  # routing adds to the scope; a route is matched against the request as it came
        status = 500  # what the server answers when the app raises before it started a response
        with request_scope(Headers(scope=scope).get(REQUEST_ID_HEADER)) as request_id:

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                method, route = scope["method"], self.route_of(scope, asked)
                self.metrics.observe_request(method, route, status, seconds)
                fields: dict[str, Any] = {
                    "method": method, "path": scope["path"], "route": route, "status": status,
                    "seconds": round(seconds, 6),
                }  # fmt: skip
                log.info("%s %s %d %.3f s", method, scope["path"], status, seconds, extra=fields)


    def route_of(self, scope: Scope, asked: Scope) -> str:
        """The route template the request matched (``/v1/collections/{name}``), never the raw path,
        so that a metric has one series per route; ``unmatched`` for none. FastAPI names its own
        routes in the scope; others (the MCP endpoint, the web UI's mount) are looked up."""
        route = scope.get("route") or next((r for r in self.routes if r.matches(asked)[0] is Match.FULL), None)
        if route is None:
            return "unmatched"
        if isinstance(route, Mount):
            return route.path or "web-ui"  # the web UI is mounted at "/" (path "")
        return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
