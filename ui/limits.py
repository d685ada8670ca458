"""At most ``server.max_concurrent_requests`` answering requests at once; the next is told 429.

Without a bound, a burst of questions queues inside the server (threads, LLM streams, memory)
and every client waits longer, or forever. With one, the client over it hears at once, in the
one error shape (ui/errors.py) with ``Retry-After``, and can back off: the ``openai`` client
does so by itself, an MCP client gets an error for that call.

An ASGI middleware, so the slot is held until the response is complete, server-sent events and
MCP's streams included, and freed however it ends (done, failed, or the client gone).

On a JSON-RPC endpoint (MCP) only the messages that answer count: a ``tools/call``. The rest of a
session (``initialize``, its ``notifications/initialized``, ``tools/list``, pings, cancellations)
costs nothing and must not be refused: an MCP client that is told 429 on its handshake has no
session at all, and the SDK sends ``notifications/initialized`` in the background, so a client
that connects while the server is busy would otherwise take a slot, or lose its session, by chance.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.errors import error_response

RETRY_AFTER_S = 1  # answers take about a second on a GPU; a client that waits longer loses nothing
# A JSON-RPC body larger than this is counted unread: a handshake or a notification is a few hundred bytes.
RPC_PEEK_BYTES = 1 << 20


class ConcurrencyLimit:
    """``app`` with at most ``limit`` answering POST requests in progress at once.

    Every POST to ``paths`` answers; a POST to ``rpc_paths`` answers when its JSON-RPC body (one
    message or a batch) holds a request whose method is in ``rpc_methods``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        paths: Collection[str],
        rpc_paths: Collection[str] = (),
        rpc_methods: Collection[str] = ("tools/call",),
    ) -> None:
        self.app, self.limit = app, limit
        self.paths, self.rpc_paths, self.rpc_methods = frozenset(paths), frozenset(rpc_paths), frozenset(rpc_methods)
        self.active = 0  # one event loop runs the app: no lock between the check and the count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") if scope["type"] == "http" and scope["method"] == "POST" else None
        if path in self.rpc_paths:
            body, receive = await _peek(receive)
            if body is not None and not self._answers(body):
                await self.app(scope, receive, send)
                return
        elif path not in self.paths:
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

    def _answers(self, body: bytes) -> bool:
        """Whether a JSON-RPC body asks for an answer; a body that is not JSON-RPC is left to the app."""
        try:
            parsed = json.loads(body)
        except ValueError:
            return False  # the app answers it with a parse error, at no cost
        messages = parsed if isinstance(parsed, list) else [parsed]
        return any(isinstance(m, dict) and m.get("method") in self.rpc_methods for m in messages)


async def _peek(receive: Receive) -> tuple[bytes | None, Receive]:
    """The request's body (None past RPC_PEEK_BYTES) and a ``receive`` that hands the app all of it again."""
    buffered: list[Message] = []
    size, more = 0, True
    while more and size <= RPC_PEEK_BYTES:
        message = await receive()
        buffered.append(message)
        if message["type"] != "http.request":  # the client went away: the app hears it too
            break
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(m.get("body", b"") for m in buffered if m["type"] == "http.request")
    complete = not more and (not buffered or buffered[-1]["type"] == "http.request")

    async def replay() -> Message:
        return buffered.pop(0) if buffered else await receive()

    return (body if complete else None), replay
