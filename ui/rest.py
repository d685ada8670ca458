"""BabelRAG's REST API, version 1: a thin JSON layer over the public Python API (``rag.Pipeline``).

    GET    /healthz                              liveness: 200 while the process runs (no token)
    GET    /readyz                               200 when the store and the LLM server answer, else 503
    POST   /v1/search    {query, QueryOptions}   the hits
    POST   /v1/ask       {question, history?, QueryOptions, stream?}
    POST   /v1/chat      {messages: [{role, content}...], QueryOptions, stream?}
                         the answer as JSON, or with ``Accept: text/event-stream`` (or "stream": true)
                         server-sent events: sources, delta..., (reset, delta...), done | error
    GET    /v1/collections                       collections with chunk and file counts
    POST   /v1/collections {name}                an empty collection (201)
    DELETE /v1/collections/{name}                the collection (409 while a job writes it)
    GET    /v1/collections/{name}/documents      its source files
    POST   /v1/collections/{name}/documents      multipart upload of files: 202, an ingestion job
    DELETE /v1/collections/{name}/documents?source=...|file_name=...   one document
    POST   /v1/jobs      {paths, collection, prune, reindex, wait_s}: an ingestion job of files on
                         the server's disk (202); `babelrag ingest` hands its job here when this
                         server holds the embedded store (rag/remote.py)
    GET    /v1/jobs, GET /v1/jobs/{id}           jobs: status, progress and, once done, the report
    GET    /openapi.json, /docs                  the schema and its browser, behind the token

Every body that queries is ``rag.QueryOptions``'s fields plus its own: an option added there is
in the REST body and the schema at once. Errors have one shape (ui/errors.py).

The old ``/api/*`` routes are gone, not redirected: their bodies differ (``/api/retrieve``'s
``query`` results are ``/v1/search``'s, errors changed shape), so a redirect would hand old
clients answers they misread; a 404 in the error shape says where to go instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

import rag
from rag import (
    Answer,
    AnswerStream,
    BabelRAGError,
    Hit,
    IngestionError,
    IngestReport,
    JobProgress,
    ManifestEntry,
    Pipeline,
    QueryError,
    QueryOptions,
    access,
)
from rag.config import validate_collection_name
from ui.errors import error_body, error_response, install_error_handlers, status_of
from ui.uploads import UploadBatch, too_large

log = logging.getLogger(__name__)

# Uploaded files wait here, one folder per request, until their job places them in the
# collection's folder (a collection name cannot start with a dot).
STAGING = ".staging"
Authorize = Callable[[Request], None]  # a FastAPI dependency: raises a 401 HTTPException
Progress = Callable[[JobProgress], None]

# -- request bodies: QueryOptions' fields plus each route's own -------------------------------------


class SearchRequest(QueryOptions):
    query: str = Field(description="What to search for, in any language.")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class AskRequest(QueryOptions):
    question: str = Field(description="The question, in any language; the answer is in its language by default.")
    history: list[Message] = Field([], description="Earlier turns: the question is then a follow-up.")
    stream: bool = Field(False, description="Server-sent events (as with Accept: text/event-stream).")


class ChatRequest(QueryOptions):
    messages: list[Message] = Field(min_length=1, description="The conversation; the last message is the user's.")
    stream: bool = Field(False, description="Server-sent events (as with Accept: text/event-stream).")


CollectionName = Annotated[
    str,
    AfterValidator(validate_collection_name),
    Field(description="3-502 letters, digits, '.', '_' and '-', starting and ending with a letter or digit."),
]


class CollectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: CollectionName


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, description="Absolute paths on the server's machine.")
    collection: str | None = None
    prune: bool = False
    reindex: bool = False
    wait_s: float | None = Field(None, ge=0, description="How long to wait while another job writes the collection.")


def options_of(body: QueryOptions) -> QueryOptions:
    """The QueryOptions part of a request body."""
    return QueryOptions.model_validate(body.model_dump(include=set(QueryOptions.model_fields)))


# -- ingestion jobs ---------------------------------------------------------------------------------


class IngestJobs:
    """Ingestion jobs run by the server, one at a time (like the UI's), kept for polling.

    A job ingests files on the server's disk (``submit``) or files just uploaded (``submit_upload``).
    Paths on the server's disk must lie inside ``server.ingest_roots``; without roots, only
    clients on this machine (loopback) may ingest, any path the server process can read. This is
    how a second process on the machine writes an embedded store the server holds: it hands the
    job here instead of opening the store itself.
    """

    KEEP = 100  # finished jobs remembered

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.roots = [r.expanduser().resolve() for r in pipeline.settings.server.ingest_roots]
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-job")

    def check_paths(self, paths: list[str], client: str | None) -> list[Path]:
        resolved = []
        for raw in paths:
            path = Path(raw).expanduser()
            if not path.is_absolute():
                raise IngestionError(f"ingest path {raw!r} must be absolute (a path on the server's machine)")
            path = path.resolve()
            if self.roots:
                if not any(path == r or r in path.parents for r in self.roots):
                    roots = ", ".join(map(str, self.roots))
                    raise IngestionError(
                        f"{path} is outside the folders this server ingests from ({roots}); "
                        "move the files there or add the folder to server.ingest_roots"
                    )
            elif not _loopback(client):
                raise IngestionError(
                    "this server ingests files from its own disk only for clients on its machine; "
                    "set server.ingest_roots to the folders remote clients may ingest from, or upload the files"
                )
            resolved.append(path)
        return resolved

    def submit(self, body: IngestRequest, client: str | None) -> dict[str, Any]:
        paths = self.check_paths(body.paths, client)
        collection = body.collection or self.pipeline.settings.store.collection
        access.require(collection, write=True)  # refused now, not as a failed job later
        return self._submit(collection, paths, lambda progress: self.pipeline.ingest(
            paths, collection, prune=body.prune, reindex=body.reindex, progress=progress, lease_wait_s=body.wait_s,
            roots=self.roots,
        ))  # fmt: skip

    def submit_upload(self, collection: str, batch: UploadBatch, staging: Path) -> dict[str, Any]:
        """A job that ingests ``batch``, whose files wait in ``staging`` (removed when it ends)."""

        def ingest(progress: Progress) -> IngestReport:
            try:
                return batch.ingest(self.pipeline, collection, progress)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        files = [{"name": batch.names[str(p)], "source": str(p)} for p in batch.paths]
        return self._submit(collection, batch.paths, ingest, files=files)

    def _submit(
        self, collection: str, paths: list[Path], work: Callable[[Progress], IngestReport], **extra: Any
    ) -> dict[str, Any]:
        job = {
            "id": uuid.uuid4().hex[:12], "status": "queued", "collection": collection, "paths": list(map(str, paths)),
            "files_done": 0, "files_total": len(paths), "chunks_written": 0, "current": None, "report": None,
            "error": None, "error_type": None, "submitted_at": time.time(), **extra,
        }  # fmt: skip
        with self._lock:
            self._jobs[job["id"]] = job
            while len(self._jobs) > self.KEEP:
                self._jobs.popitem(last=False)
        # the job runs as the request that submitted it (rag.access): its token's collections hold, and
        # its log lines carry the request's id
        self._runner.submit(contextvars.copy_context().run, self._run, job, work)
        return dict(job)

    def _run(self, job: dict[str, Any], work: Callable[[Progress], IngestReport]) -> None:
        def progress(p: JobProgress) -> None:
            job.update(files_done=p.files_done, files_total=p.files_total, chunks_written=p.chunks_written,
                       current=p.current)  # fmt: skip

        job["status"] = "running"
        try:
            report = work(progress)
            job.update(status="done", report=report.to_dict(), chunks_written=report.chunks_written, current=None)
        except BabelRAGError as e:
            job.update(status="failed", error=str(e), error_type=type(e).__name__)
        except Exception as e:  # a job's bug must reach its poller, not kill the server
            log.exception("ingestion job %s failed", job["id"])
            job.update(status="failed", error=f"unexpected {type(e).__name__}: {e}", error_type=type(e).__name__)

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no ingestion job {job_id!r} on this server (it keeps the last {self.KEEP})")
        return dict(job)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(j) for j in reversed(self._jobs.values())]


async def stage_uploads(files: list[UploadFile], staging: Path, limit_mb: int) -> list[tuple[str, Path]]:
    """Write the request's ``files`` into ``staging`` (the request's temporary files go with
    it): (the client's name, where its bytes are) each. A file over ``limit_mb`` is a 413, before
    any is written."""
    for f in files:
        size = f.size if f.size is not None else len(await f.read())
        if reason := too_large(f.filename or "upload", size, limit_mb):
            raise HTTPException(413, reason)

    def write() -> list[tuple[str, Path]]:
        staging.mkdir(parents=True)
        staged = []
        for i, f in enumerate(files):
            f.file.seek(0)
            with (staging / str(i)).open("wb") as out:
                shutil.copyfileobj(f.file, out, 1 << 20)
            staged.append((f.filename or "", staging / str(i)))
        return staged

    return await asyncio.to_thread(write)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- records as JSON --------------------------------------------------------------------------------


def hit_json(hit: Hit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "text": c.text, "file_name": c.file_name, "source": c.source, "page": c.page, "span": [c.start, c.end],
        "start": c.start, "end": c.end, "language": c.language, "section": c.section, "title": c.title,
        "score": hit.score, "retrieval_score": hit.retrieval_score, "chunk_id": c.id,
    }  # fmt: skip


def document_json(e: ManifestEntry) -> dict[str, Any]:
    return {
        "source": e.source, "file_name": Path(e.source).name, "language": e.language, "title": e.title,
        "pages": e.pages, "chunks": len(e.chunk_ids), "updated_at": e.updated_at, "complete": e.done,
    }  # fmt: skip


def collection_json(c: rag.CollectionInfo) -> dict[str, Any]:
    return {"name": c.name, "chunks": c.count, "documents": c.documents, "embedding_model": c.embedding_model}


def answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "standalone_question": answer.standalone_question,
        "text": answer.text,
        "found": answer.found,
        "language": answer.language,
        "question_language": answer.question_language,
        "target_language": answer.target_language,
        "model": answer.model,
        "citations": [
            # span: where the cited passage lies in its source's text
            {**hit_json(c.hit), "number": c.number, "cited": c.cited, "truncated": c.truncated, "span": list(c.span)}
            for c in answer.citations
        ],
        "sentences": [
            {"text": s.text, "start": s.start, "end": s.end, "sources": list(s.sources)} for s in answer.sentences
        ],
        "usage": {
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "calls": answer.usage.calls,
        },
        "timings": answer.timings,
    }


# -- answers: JSON or server-sent events ------------------------------------------------------------


def wants_events(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def sse(event: str, data: Any) -> bytes:
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False))


async def answer_events(stream: AnswerStream) -> AsyncIterator[bytes]:
    """``sources`` (before the first token), ``delta``/``reset`` as the LLM writes, then ``done``
    with the whole answer, or ``error`` with the error shape. A client that goes away cancels
    the task reading this, and so the LLM's stream."""
    finished = False
    try:
        yield sse("sources", {"hits": [hit_json(h) for h in stream.hits]})
        async for event in stream.aevents():
            yield sse(event.kind, {"text": event.text} if event.kind == "delta" else {"reason": event.text})
        answer = await stream.aanswer()
        finished = True
        yield sse("done", answer_json(answer))
    except BabelRAGError as e:
        finished = True
        yield sse("error", error_body(status_of(e), str(e), type(e).__name__))
    except Exception as e:  # the client must hear that the stream failed, not see it cut
        finished = True
        log.exception("answer stream failed")
        yield sse("error", error_body(500, f"unexpected {type(e).__name__} on the server: {e}", "server_error"))
    finally:
        if not finished:  # the client went away (or the server stops): stop the LLM
            stream.cancel()


async def answer_response(stream: AnswerStream, events: bool) -> Response:
    if events:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the events
        return StreamingResponse(answer_events(stream), media_type="text/event-stream", headers=headers)
    try:
        return JSONResponse(answer_json(await stream.aanswer()))
    except asyncio.CancelledError:
        stream.cancel()
        raise


# -- the routes -------------------------------------------------------------------------------------


def install(app: FastAPI, pipeline: Pipeline, authorize: Authorize, authorize_write: Authorize | None = None) -> None:
    """Add /healthz, /readyz, the /v1 routes, /openapi.json and /docs over ``pipeline`` to
    ``app`` (built with ``docs_url=None, openapi_url=None``); ``authorize`` is the token check."""
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    writes = [Depends(authorize_write or authorize)]  # the routes that change a knowledge base
    settings = pipeline.settings
    upload_dir = Path(settings.server.upload_dir)
    jobs = IngestJobs(pipeline)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": rag.__version__}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        checks = await asyncio.to_thread(pipeline.readiness)
        ok = all(c.ok for c in checks.values())
        try:  # what failed and where it is: for those holding the token
            authorize(request)
            shown = {
                name: {"ok": c.ok, "detail": c.detail, "seconds": round(c.seconds, 3)} for name, c in checks.items()
            }
        except HTTPException:
            shown = {name: {"ok": c.ok} for name, c in checks.items()}
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": shown}, status_code=200 if ok else 503)

    @v1.post("/search", tags=["query"])
    async def search(body: SearchRequest) -> dict[str, Any]:
        hits = await pipeline.aretrieve(body.query, options_of(body))
        return {"hits": [hit_json(h) for h in hits]}

    @v1.post("/ask", tags=["query"], responses={200: {"content": {"text/event-stream": {}}}})
    async def ask(body: AskRequest, request: Request) -> Response:
        options = options_of(body)
        if body.history:
            stream = await pipeline.achat_stream([m.model_dump() for m in body.history], body.question, options)
        else:
            stream = await pipeline.astream(body.question, options)
        return await answer_response(stream, wants_events(request, body.stream))

    @v1.post("/chat", tags=["query"], responses={200: {"content": {"text/event-stream": {}}}})
    async def chat(body: ChatRequest, request: Request) -> Response:
        *history, last = body.messages
        if last.role != "user":
            raise QueryError(f"the last message must be the user's (role 'user'), got role {last.role!r}")
        stream = await pipeline.achat_stream([m.model_dump() for m in history], last.content, options_of(body))
        return await answer_response(stream, wants_events(request, body.stream))

    @v1.get("/collections", tags=["collections"])
    def collections() -> list[dict[str, Any]]:
        return [collection_json(c) for c in pipeline.collections()]

    @v1.post("/collections", tags=["collections"], status_code=201, dependencies=writes)
    def create_collection(body: CollectionRequest) -> dict[str, Any]:
        return collection_json(pipeline.create_collection(body.name))

    @v1.delete("/collections/{name}", tags=["collections"], status_code=204, dependencies=writes)
    def delete_collection(name: str) -> Response:
        pipeline.delete_collection(name)
        return Response(status_code=204)

    @v1.get("/collections/{name}/documents", tags=["documents"])
    def documents(name: str) -> list[dict[str, Any]]:
        return [document_json(e) for e in pipeline.documents(name)]

    @v1.post("/collections/{name}/documents", tags=["documents"], status_code=202, dependencies=writes)
    async def upload(
        name: CollectionName, files: Annotated[list[UploadFile], File(description="One or more files.")]
    ) -> Any:
        access.require(name, write=True)  # a token for other collections (403) saves nothing
        await asyncio.to_thread(pipeline.documents, name)  # an unknown collection is a 404 before any file is saved
        staging = upload_dir / STAGING / uuid.uuid4().hex
        try:
            staged = await stage_uploads(files, staging, settings.server.max_upload_mb)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return jobs.submit_upload(name, UploadBatch(upload_dir / name, staged), staging)

    @v1.delete("/collections/{name}/documents", tags=["documents"], dependencies=writes)
    def delete_document(
        name: str,
        source: Annotated[str | None, Query(description="The document's source, as listed.")] = None,
        file_name: Annotated[str | None, Query(description="Or its file name, when one document has it.")] = None,
    ) -> dict[str, Any]:
        if (source is None) == (file_name is None):
            raise QueryError("name the document to delete: ?source=<its source> or ?file_name=<its file name>")
        if source is None:
            matches = [e.source for e in pipeline.documents(name) if Path(e.source).name == file_name]
            if len(matches) > 1:
                raise HTTPException(409, f"{len(matches)} documents of {name!r} are named {file_name!r} "
                                         f"({', '.join(matches)}): delete one by ?source=")  # fmt: skip
            source = matches[0] if matches else file_name  # none: delete_document says which there are
        deleted = pipeline.delete_document(source, name)
        path = Path(source)
        if path.is_file() and upload_dir.resolve() in path.resolve().parents:
            path.unlink()  # an uploaded copy goes with its document
        return {"source": source, "collection": name, "chunks_deleted": deleted}

    @v1.post("/jobs", tags=["jobs"], status_code=202, dependencies=writes)
    def submit_job(body: IngestRequest, request: Request) -> dict[str, Any]:
        return jobs.submit(body, request.client.host if request.client else None)

    @v1.get("/jobs", tags=["jobs"])
    def list_jobs() -> list[dict[str, Any]]:
        return jobs.all()

    @v1.get("/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id)

    app.include_router(v1)
    install_docs(app, authorize)


def install_docs(app: FastAPI, authorize: Authorize) -> None:
    """/openapi.json and /docs, behind the token. A browser asked for Basic credentials (password:
    the token) sends them again when the docs page fetches the schema."""

    def guard(request: Request) -> None:
        try:
            authorize(request)
        except HTTPException as e:
            raise HTTPException(e.status_code, e.detail, {"WWW-Authenticate": 'Basic realm="BabelRAG API"'}) from None

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(guard)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(guard)])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="BabelRAG API")


def install_not_found(app: FastAPI) -> None:
    """An unknown /v1 path answers in the error shape (else the UI mounted at / would answer it).
    Installed after every /v1 router, since it matches all that they do not."""

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def not_found(path: str, request: Request) -> JSONResponse:
        return error_response(404, f"no route {request.method} /v1/{path}; the API is listed at /docs")

    @app.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def moved(path: str) -> JSONResponse:
        return error_response(404, f"/api/{path} is gone: the REST API is versioned now, under /v1 (see /docs)")
