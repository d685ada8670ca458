"""Tokens of `babelrag serve`: who a request acts for (rag.access.Access), checked once per request.

``server.token`` may do everything (and is the web UI's password), ``server.read_token`` reads
every collection, each ``server.tokens`` entry reads or writes its own collections. Every route
but /healthz and /readyz wants one of them once a token is configured; the routes that change a
knowledge base want one that writes (403 for a reading token). ``AccessMiddleware`` makes the
request's Access current for everything it runs, so ``rag.Pipeline`` holds each collection name
and listing to it — the routes never check collections themselves. Secrets are compared in
constant time against every configured one, whichever matches.
"""

from __future__ import annotations

import hmac
from base64 import b64decode

from fastapi import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.access import Access, acting_as
from rag.config import ServerConfig

WANTED = "send 'Authorization: Bearer <token>' with server.token or another token of this server"


def token_of(request: HTTPConnection) -> str | None:
    """The token a request carries: ``Authorization: Bearer <token>``, or Basic with the token as
    the password (any user name), which browsers send for /docs."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return b64decode(value.strip()).decode("utf-8").partition(":")[2] or None
        except ValueError:
            return None
    return None


class Tokens:
    """The server's tokens and the Access each grants; empty when no token is configured (open)."""

    def __init__(self, server: ServerConfig) -> None:
        entries: list[tuple[bytes, Access]] = []
        if server.token is not None:
            entries.append((server.token.get_secret_value().encode(), Access("server.token", write=True)))
        if server.read_token is not None:
            entries.append((server.read_token.get_secret_value().encode(), Access("server.read_token", write=False)))
        for t in server.tokens:
            collections = None if t.collections is None else frozenset(t.collections)
            entries.append((t.secret.get_secret_value().encode(), Access(t.name, t.scope == "write", collections)))
        self._entries = entries

    @property
    def required(self) -> bool:
        return bool(self._entries)

    def access_of(self, given: str | None) -> Access | None:
        """The Access ``given`` grants, None for no or an unknown token. Every secret is compared,
        so the time taken does not tell which one (or how much of one) matched."""
        if given is None:
            return None
        found = None
        for secret, access in self._entries:
            if hmac.compare_digest(given.encode(), secret):
                found = access
        return found

    def is_admin(self, given: str | None) -> bool:
        """``given`` is server.token (the web UI's password)."""
        access = self.access_of(given)
        return access is not None and access.name == "server.token"

    def check(self, request: HTTPConnection, *, write: bool = False) -> Access | None:
        """The route guard: 401 without a known token, 403 when ``write`` and the token only reads."""
        if not self.required:
            return None
        given = token_of(request)
        access = self.access_of(given)
        if access is None:
            raise HTTPException(
                status_code=401,
                detail=f"this BabelRAG server wants its token: {WANTED}"
                if given is None
                else f"the token sent is not one of this server's tokens: {WANTED}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if write and not access.write:
            raise HTTPException(
                status_code=403,
                detail=f"{request.scope.get('method', '')} {request.url.path} writes, and the token sent "
                f"({access.name}) only reads: send server.token or a server.tokens entry with scope: write",
            )
        return access


class AccessMiddleware:
    """ASGI: runs each request as the Access its token grants (rag.access), so that rag.Pipeline
    holds every collection it touches to that token's scope. Whether a token is needed at all is
    the routes' guard (Tokens.check); a request without one runs with no Access set and reaches
    only the open routes or the web UI's login gate."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.tokens.required:
            await self.app(scope, receive, send)
            return
        access = self.tokens.access_of(token_of(HTTPConnection(scope)))
        with acting_as(access):
            await self.app(scope, receive, send)
