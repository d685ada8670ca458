"""BabelRAG as an MCP server: the same tools over stdio (`babelrag mcp`) and HTTP (`/mcp` in `babelrag serve`).

Tools: ``search``, ``ask``, ``list_collections``, ``list_documents``, ``get_chunk`` and, only where
writes are allowed, ``delete_document``. Each maps one ``rag.Pipeline`` call to typed records
(structured output with an output schema) plus a text block the model reads. ``search`` and
``ask`` take ``rag.QueryOptions``'s fields as their arguments, with its types, bounds and
descriptions: an option added there shows up here without touching this module (``search``
leaves out the answer-only ones). BabelRAG's errors come back as tool errors (``isError``)
carrying their message; the server never crashes on one.

Writes are off unless the caller may write. Over stdio the one caller is whoever started the
process: ``babelrag mcp --allow-write`` opts in. Over HTTP the decision is per request, because
one server answers every client: ``access_of`` maps each message's HTTP request to what its
token grants (``rag.access.Access``: the server's tokens, see ui/auth.py); a request may write
only with a token that writes, and with no token configured ``/mcp`` is read-only. One server
middleware, which sees each message's HTTP request, runs the message as that Access (so
``rag.Pipeline`` holds every collection a tool names or lists to the token's collections), drops
the write tools from ``tools/list`` and refuses a call to one. One server with one tool set and a
per-request guard, rather than a server per permission, keeps one session manager and one
lifespan, and a client's session cannot change what it may do by replaying another's session id.

Why not Gradio's own MCP server (``gradio[mcp]``, ``launch(mcp_server=True)``): the installed
gradio 6.31 pins ``mcp<2.0.0,>=1.21.0`` (and ``pydantic<=2.12.5``) for that extra, while
BabelRAG runs the official SDK 2.x; Gradio derives each tool's schema from an event handler's
UI inputs (strings from text boxes, no ``top_k`` bounds, no ``where`` object), where ours come
from ``QueryOptions``; its server is anonymous and all-or-nothing, where ours has the bearer
token and read-only unless writes are allowed; it returns text, where ours returns structured
results (hits with chunk ids and spans, citations); and it exists only inside the web app,
where this one is the same server on stdio, for desktop agents, and on HTTP.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import HTTPException
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import rag
from rag import Answer, BabelRAGError, Chunk, Citation, Hit, Pipeline, QueryOptions
from rag.access import Access, acting_as

if TYPE_CHECKING:
    from fastapi import FastAPI

# What the HTTP request that carried a message may do (None: no token, or none configured).
AccessOf = Callable[[Request | None], Access | None]

WRITE_TOOLS = frozenset({"delete_document"})
ANSWER_ONLY_OPTIONS = frozenset({"language"})  # QueryOptions fields that only change an answer
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


# -- what the tools return -----------------------------------------------------------------------


class SearchHit(BaseModel):
    rank: int = Field(description="1 = best")
    chunk_id: str = Field(description="For get_chunk")
    text: str
    file_name: str
    source: str = Field(description="The document's path, as list_documents names it")
    page: int | None = Field(description="1-based page where the chunk starts (PDF)")
    span: tuple[int, int] = Field(description="Character span (start, end) in the source document's text")
    language: str | None = Field(description="The chunk's language (ISO 639-1)")
    section: str | None
    score: float = Field(description="The last ranking stage's score")


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


class AnswerCitation(BaseModel):
    number: int = Field(description="The [number] marker in the answer")
    cited: bool = Field(description="The answer text carries the marker")
    chunk_id: str
    file_name: str
    source: str
    page: int | None
    span: tuple[int, int] = Field(description="Span, in the source document's text, of the passage the LLM saw")
    language: str | None
    text: str = Field(description="The passage the LLM saw")


class AskResult(BaseModel):
    answer: str = Field(description="The answer, citing its sources as [n] markers")
    found: bool = Field(description="False: the knowledge base does not hold the answer, and the answer says so")
    language: str | None = Field(description="The answer's language")
    question_language: str | None
    target_language: str | None = Field(description="The language the answer had to be in")
    citations: list[AnswerCitation] = Field(description="Every source the LLM was given, numbered")


class CollectionSummary(BaseModel):
    name: str
    chunks: int
    documents: int | None
    embedding_model: str | None


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class DocumentSummary(BaseModel):
    source: str = Field(description="The document's identity: pass it to delete_document")
    file_name: str
    language: str | None
    title: str | None
    chunks: int
    pages: int | None
    status: str


class DocumentList(BaseModel):
    collection: str
    documents: list[DocumentSummary]


class ChunkRecord(BaseModel):
    chunk_id: str
    text: str
    file_name: str
    source: str
    index: int = Field(description="The chunk's place in its document (0 = first)")
    page: int | None
    span: tuple[int, int]
    language: str | None
    title: str | None
    section: str | None


class Deleted(BaseModel):
    source: str
    collection: str
    chunks: int = Field(description="Chunks deleted")


# -- the server --------------------------------------------------------------------------------------


def build_mcp_server(pipeline: Pipeline, *, allow_write: bool = False, access_of: AccessOf | None = None) -> MCPServer:
    """An MCP server over ``pipeline``. ``allow_write``: every caller may write (stdio).
    ``access_of``: each HTTP request's Access decides, per message (see the module docstring)."""
    settings = pipeline.settings
    server = MCPServer(
        "babelrag",
        title="BabelRAG",
        version=rag.__version__,
        instructions=(
            "Multilingual knowledge bases: ask or search in any language; sources may be in others. "
            f"The default collection is {settings.store.collection!r}; list_collections names the others. "
            "ask answers with [n] markers citing its numbered sources; search returns the passages."
        ),
        log_level="WARNING",  # its INFO lines (each failed tool) would crowd `babelrag serve`'s console
        middleware=[] if access_of is None else [_access_guard(access_of)],
    )

    async def search(query: str, options: QueryOptions) -> Annotated[CallToolResult, SearchResult]:
        """Find the passages that best match a query, in any language (retrieval and reranking,
        no LLM answer). Each hit has its text, file, page, character span and a chunk_id."""
        hits = await pipeline.aretrieve(query, options)
        result = SearchResult(query=query, hits=[_hit(i, h) for i, h in enumerate(hits, 1)])
        return _result(result, _hits_text(result))

    async def ask(question: str, options: QueryOptions) -> Annotated[CallToolResult, AskResult]:
        """Answer a question from the knowledge base, in the question's language (or `language`),
        citing its sources as [n] markers; citations give each source's file, page, span and text."""
        answer = await pipeline.aask(question, options)
        return _result(_answer(answer), _answer_text(answer))

    def list_collections() -> Annotated[CallToolResult, CollectionList]:
        """The knowledge bases (collections) on this server, with their chunk and document counts."""
        result = CollectionList(
            collections=[
                CollectionSummary(name=c.name, chunks=c.count, documents=c.documents, embedding_model=c.embedding_model)
                for c in pipeline.collections()
            ]
        )
        lines = [f"{c.name}: {c.documents or 0} documents, {c.chunks} chunks" for c in result.collections]
        return _result(result, "\n".join(lines) or "no collections")

    def list_documents(
        collection: Annotated[str | None, Field(description="Default: the server's default collection.")] = None,
    ) -> Annotated[CallToolResult, DocumentList]:
        """The documents (source files) of a collection."""
        name = collection or settings.store.collection
        docs = [
            DocumentSummary(
                source=e.source,
                file_name=Path(e.source).name,
                language=e.language,
                title=e.title,
                chunks=len(e.chunk_ids),
                pages=e.pages,
                status=e.status,
            )
            for e in pipeline.documents(name)
        ]
        lines = [f"{d.file_name} ({d.language or '?'}, {d.chunks} chunks): {d.source}" for d in docs]
        return _result(DocumentList(collection=name, documents=docs), "\n".join(lines) or f"{name!r} has no documents")

    def get_chunk(
        chunk_id: Annotated[str, Field(description="A chunk_id from search or ask.")],
        collection: Annotated[str | None, Field(description="Default: the server's default collection.")] = None,
    ) -> Annotated[CallToolResult, ChunkRecord]:
        """One chunk by its id, with its full text and its place in the source document."""
        c = pipeline.get_chunk(chunk_id, collection)
        record = _chunk(c)
        return _result(record, f"{_where(c)}\n{c.text}")

    def delete_document(
        source: Annotated[str, Field(description="The document's source, as list_documents gives it.")],
        collection: Annotated[str | None, Field(description="Default: the server's default collection.")] = None,
    ) -> Annotated[CallToolResult, Deleted]:
        """Delete one document and its chunks from a collection. Cannot be undone."""
        name = collection or settings.store.collection
        n = pipeline.delete_document(source, name)
        return _result(Deleted(source=source, collection=name, chunks=n), f"deleted {source} ({n} chunks) from {name}")

    server.add_tool(_tool(_with_query_options(search, exclude=ANSWER_ONLY_OPTIONS)), annotations=READ_ONLY)
    server.add_tool(_tool(_with_query_options(ask)), annotations=READ_ONLY)
    for fn in (list_collections, list_documents, get_chunk):
        server.add_tool(_tool(fn), annotations=READ_ONLY)
    if allow_write or access_of is not None:
        server.add_tool(_tool(delete_document), annotations=ToolAnnotations(destructive_hint=True))
    return server


def _with_query_options(fn: Callable[..., Awaitable[Any]], exclude: frozenset[str] = frozenset()):
    """``fn(..., options: QueryOptions)`` as a tool taking QueryOptions' fields as arguments: the
    SDK reads the signature for the input schema, so each field brings its type, bounds and
    description, and the call builds the one ``QueryOptions`` every front end builds."""
    sig = inspect.signature(fn, eval_str=True)
    names = [n for n in QueryOptions.model_fields if n not in exclude]
    fields = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[f.annotation, f])
        for n, f in QueryOptions.model_fields.items()
        if n in names
    ]
    params = [p for p in sig.parameters.values() if p.name != "options"] + fields

    @wraps(fn)
    async def tool(**arguments: Any) -> Any:
        options = QueryOptions.of(**{n: arguments.pop(n, None) for n in names})
        return await fn(options=options, **arguments)

    tool.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
    del tool.__wrapped__  # the SDK must read the signature above, not fn's
    return tool


def _tool(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with BabelRAG's errors as tool errors that keep their message (the SDK shows an
    unexpected exception only as "Error executing tool NAME")."""
    if inspect.iscoroutinefunction(fn):

        @wraps(fn)
        async def run_async(**arguments: Any) -> Any:
            try:
                return await fn(**arguments)
            except BabelRAGError as e:
                raise ToolError(str(e)) from e

        return run_async

    @wraps(fn)
    def run(**arguments: Any) -> Any:
        try:
            return fn(**arguments)
        except BabelRAGError as e:
            raise ToolError(str(e)) from e

    return run


def _access_guard(access_of: AccessOf):
    """Server middleware: each message runs as its request's Access; the write tools are neither
    listed nor callable for a request that may not write."""

    async def guard(ctx, call_next):
        access = access_of(ctx.request)
        may_write = access is not None and access.write
        if ctx.method == "tools/call" and (ctx.params or {}).get("name") in WRITE_TOOLS and not may_write:
            name = ctx.params["name"]
            return CallToolResult(
                content=[
                    TextContent(
                        type="text",
                        text=(
                            f"{name} changes the knowledge base, and this connection is read-only: send a token "
                            "that writes (Authorization: Bearer <server.token>), or run `babelrag mcp --allow-write` "
                            "on stdio"
                        ),
                    )
                ],
                is_error=True,
            )
        with acting_as(access):
            result = await call_next(ctx)
        if ctx.method == "tools/list" and isinstance(result, dict) and not may_write:
            result["tools"] = [t for t in result.get("tools", []) if t.get("name") not in WRITE_TOOLS]
        return result

    return guard


# -- records to the SDK's shapes -------------------------------------------------------------------


def _result(data: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=data.model_dump(mode="json")
    )


def _hit(rank: int, hit: Hit) -> SearchHit:
    c = hit.chunk
    return SearchHit(
        rank=rank,
        chunk_id=c.id,
        text=c.text,
        file_name=c.file_name,
        source=c.source,
        page=c.page,
        span=(c.start, c.end),
        language=c.language,
        section=c.section,
        score=hit.score,
    )


def _chunk(c: Chunk) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=c.id,
        text=c.text,
        file_name=c.file_name,
        source=c.source,
        index=c.index,
        page=c.page,
        span=(c.start, c.end),
        language=c.language,
        title=c.title,
        section=c.section,
    )


def _citation(c: Citation) -> AnswerCitation:
    shown = c.chunk.text if c.shown_chars is None else c.chunk.text[: c.shown_chars]
    return AnswerCitation(
        number=c.number,
        cited=c.cited,
        chunk_id=c.chunk.id,
        file_name=c.chunk.file_name,
        source=c.source,
        page=c.page,
        span=c.span,
        language=c.chunk.language,
        text=shown,
    )


def _answer(a: Answer) -> AskResult:
    return AskResult(
        answer=a.text,
        found=a.found,
        language=a.language,
        question_language=a.question_language,
        target_language=a.target_language,
        citations=[_citation(c) for c in a.citations],
    )


def _where(c: Chunk) -> str:
    page = f", p. {c.page}" if c.page else ""
    return f"{c.file_name}{page} [{c.language or '?'}] chars {c.start}-{c.end} (chunk_id {c.id})"


def _hits_text(result: SearchResult) -> str:
    if not result.hits:
        return "no matching passages"
    blocks = []
    for h in result.hits:
        page = f", p. {h.page}" if h.page else ""
        blocks.append(
            f"[{h.rank}] {h.file_name}{page} [{h.language or '?'}] score {h.score:.3f} "
            f"chars {h.span[0]}-{h.span[1]} (chunk_id {h.chunk_id})\n{h.text}"
        )
    return "\n\n".join(blocks)


def _answer_text(a: Answer) -> str:
    sources = [f"[{c.number}]{'' if c.cited else ' (not cited)'} {_where(c.chunk)}" for c in a.citations]
    return a.text + ("\n\nSources:\n" + "\n".join(sources) if sources else "")


# -- HTTP: /mcp in `babelrag serve` ----------------------------------------------------------------


def mount_mcp(
    app: FastAPI, pipeline: Pipeline, *, access_of: AccessOf, required: bool, path: str = "/mcp"
) -> MCPServer:
    """Serve the MCP server at ``path`` of ``app`` (streamable HTTP) and run its session manager
    in ``app``'s lifespan. ``access_of`` tells what a request's token grants; with ``required``
    (a token is configured) a request without a known token gets 401; without, ``path`` is open
    and read-only. Call it before a catch-all mount (Gradio's at "/"): the route is put first."""
    server = build_mcp_server(pipeline, access_of=access_of)
    host = pipeline.settings.server.host
    # DNS-rebinding protection (the SDK's default on a loopback host): a web page a local user
    # opens must not reach an open local /mcp through a hostile DNS name. On another host the
    # operator chose the names it is reached by, and the token guards it.
    security = (
        None
        if host in ("127.0.0.1", "localhost", "::1")
        else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    server.streamable_http_app(streamable_http_path=path, transport_security=security, host=host)
    gate = _TokenGate(StreamableHTTPASGIApp(server.session_manager), access_of=access_of, required=required)
    app.router.routes.insert(0, Route(path, endpoint=gate))  # an ASGI app: every method
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with server.session_manager.run(), previous(a) as state:
            yield state

    app.router.lifespan_context = lifespan
    return server


class _TokenGate:
    """ASGI: the MCP endpoint behind the server's tokens, answering 401 as the REST API does (the
    HTTPException reaches the app's error handlers, so both speak the same shape)."""

    def __init__(self, app: StreamableHTTPASGIApp, *, access_of: AccessOf, required: bool) -> None:
        self.app, self.access_of, self.required = app, access_of, required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.required and self.access_of(Request(scope)) is None:
            raise HTTPException(
                status_code=401,
                detail="this BabelRAG server wants its token: send 'Authorization: Bearer <token>' with "
                "server.token or another token of this server",
                headers={"WWW-Authenticate": "Bearer"},
            )
        await self.app(scope, receive, send)
