"""Who the current request acts for, and which collections it may read or write.

A server (``babelrag serve``: REST, the OpenAI-compatible endpoint, MCP) knows its caller by the
token the request bears (``server.token``, ``server.read_token``, ``server.tokens``); it sets an
``Access`` for the duration of the request with ``acting_as``, and ``rag.Pipeline`` checks it
wherever a collection is named or listed — one place, so that every front end and every method
(search, ask, chat, documents, chunks, uploads, deletes) is held to the same scope. In-process use
(the CLI, the web UI's handlers, a Python program) has no Access set and may do everything, as
the user who runs the process can anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from rag.errors import AccessDeniedError


@dataclass(frozen=True, slots=True)
class Access:
    """What a caller may do: read (search, ask, list) and, with ``write``, change knowledge bases
    (ingest, upload, delete); in ``collections`` only, or every collection when None."""

    name: str  # which token: "server.token", "server.read_token", or a server.tokens entry's name
    write: bool
    collections: frozenset[str] | None = None

    def allows(self, collection: str, *, write: bool = False) -> bool:
        return (self.write or not write) and (self.collections is None or collection in self.collections)

    def require(self, collection: str, *, write: bool = False) -> None:
        if self.allows(collection, write=write):
            return
        if write and not self.write:
            raise AccessDeniedError(
                f"the token {self.name!r} only reads; changing collection {collection!r} needs a token that "
                "writes (server.token, or a server.tokens entry with scope: write)"
            )
        allowed = ", ".join(sorted(self.collections or ())) or "none"
        raise AccessDeniedError(
            f"the token {self.name!r} is for collections {allowed}, not {collection!r}: use a token for "
            f"{collection!r}, or add it to that token's collections in server.tokens"
        )


_current: ContextVar[Access | None] = ContextVar("babelrag_access", default=None)


def current() -> Access | None:
    """The Access of the request being served; None outside a server request (no limits)."""
    return _current.get()


@contextmanager
def acting_as(access: Access | None) -> Iterator[None]:
    """Run the block (and the tasks and threads it starts with a copied context) as ``access``."""
    token = _current.set(access)
    try:
        yield
    finally:
        _current.reset(token)


def require(collection: str, *, write: bool = False) -> None:
    """Raise AccessDeniedError unless the current caller may read (or ``write``) ``collection``."""
    access = _current.get()
    if access is not None:
        access.require(collection, write=write)


def visible(names: Sequence[str]) -> list[str]:
    """The names among ``names`` the current caller may read."""
    access = _current.get()
    return list(names) if access is None else [n for n in names if access.allows(n)]
