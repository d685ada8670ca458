"""At most ``server.max_concurrent_requests`` answering requests at once; the next is told 429.

Without a bound, a burst of questions queues inside the server (threads, LLM streams, memory)
and every client waits longer, or forever. With one, the client over it hears at once, in the
one error shape (ui/errors.py) with ``Retry-After``, and can back off: the ``openai`` client
does so by itself, an MCP client gets an error for that call.

An ASGI middleware, so the slot is held until the response is complete, server-sent events and
MCP's streams included, and freed however it ends (done, failed, or the client gone).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from ui.errors import error_response

RETRY_AFTER_S = 1  # answers take about a second on a GPU; a client that waits longer loses nothing


class ConcurrencyLimit:
    """``app`` with at most ``limit`` POST requests to ``paths`` in progress at once."""

    def __init__(self, app: ASGIApp, *, limit: int, paths: Collection[str]) -> None:
        self.app, self.limit, self.paths = app, limit, frozenset(paths)
        self.active = 0  # one event loop runs the app: no lock between the check and the count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            busy = error_response(
                429,
                f"this server answers {self.limit} questions and searches at once (server.max_concurrent_requests) "
                f"and is answering that many now: retry in {RETRY_AFTER_S} s, or raise the limit",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            await busy(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
