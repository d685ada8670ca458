"""The REST API: a thin JSON layer over the public Python API (``rag.Pipeline``).

    GET  /api/health                               liveness, version
    GET  /api/collections                          collections with chunk and file counts
    GET  /api/collections/{name}/documents         a collection's source files
    POST /api/retrieve   {"query", "collection", "top_k", "reranker"}
    POST /api/ask        {"question", "collection", "top_k", "reranker", "language", "history"}
    POST /api/ingest     {"paths", "collection", "prune", "reindex", "wait_s"}: an ingestion job of
                         files on the server's disk (202, the job); `babelrag ingest` hands its job
                         here when this server holds the embedded store
    GET  /api/jobs/{id}  the job's status, progress and, once done, its report

Errors come back as ``{"error": message}`` with 400 (bad request), 404 (unknown collection or
document), 409 (another ingestion job writes the collection) or 503 (the LLM server or the store
is unreachable).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

import rag
from rag import (
    Answer,
    BabelRAGError,
    CollectionNotFoundError,
    GenerationError,
    Hit,
    ManifestEntry,
    Pipeline,
    QueryError,
    StoreError,
)
from rag.config import RerankerKind
from rag.errors import IngestionError, LeaseHeldError

log = logging.getLogger(__name__)


class Query(BaseModel):
    """What every search names: where to look, how many sources, which reranker."""

    model_config = ConfigDict(extra="forbid")
    collection: str | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    reranker: RerankerKind | None = None


class RetrieveRequest(Query):
    query: str


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class AskRequest(Query):
    question: str
    language: str | None = None  # ISO 639-1 answer language; default: the question's
    history: list[Message] = []  # earlier turns: the question is then a follow-up


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1)  # absolute paths on the server's machine
    collection: str | None = None
    prune: bool = False
    reindex: bool = False
    wait_s: float | None = Field(None, ge=0)  # for the collection's lease (another job writing it)


class IngestJobs:
    """Ingestion jobs run by the server, one at a time (like the UI's), kept for polling.

    Paths are on the server's disk: with ``server.ingest_roots`` they must lie inside one of
    them; without, only clients on this machine (loopback) may ingest, any path the server
    process can read. This is how a second process on the machine writes an embedded store
    the server holds: it hands the job here instead of opening the store itself.
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
        job = {
            "id": uuid.uuid4().hex[:12], "status": "queued", "collection": collection, "paths": list(map(str, paths)),
            "files_done": 0, "files_total": None, "chunks_written": 0, "current": None, "report": None,
            "error": None, "submitted_at": time.time(),
        }  # fmt: skip
        with self._lock:
            self._jobs[job["id"]] = job
            while len(self._jobs) > self.KEEP:
                self._jobs.popitem(last=False)
        self._runner.submit(self._run, job, paths, body)
        return dict(job)

    def _run(self, job: dict[str, Any], paths: list[Path], body: IngestRequest) -> None:
        def progress(p) -> None:
            job.update(files_done=p.files_done, files_total=p.files_total, chunks_written=p.chunks_written,
                       current=p.current)  # fmt: skip

        job["status"] = "running"
        try:
            report = self.pipeline.ingest(
                paths, job["collection"], prune=body.prune, reindex=body.reindex, progress=progress,
                lease_wait_s=body.wait_s,
            )  # fmt: skip
            job.update(status="done", report=report.to_dict())
        except BabelRAGError as e:
            job.update(status="failed", error=str(e), error_type=type(e).__name__)
        except Exception as e:  # noqa: BLE001 - a job's bug must reach its poller, not kill the server
            log.exception("ingestion job %s failed", job["id"])
            job.update(status="failed", error=f"unexpected {type(e).__name__}: {e}", error_type=type(e).__name__)

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no ingestion job {job_id!r} on this server")
        return dict(job)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def status_of(error: BabelRAGError) -> int:
    if isinstance(error, CollectionNotFoundError):
        return 404
    if isinstance(error, LeaseHeldError):
        return 409  # another job writes the collection: try again later
    if isinstance(error, QueryError):
        return 404 if "is not a document of" in str(error) else 400
    if isinstance(error, GenerationError | StoreError):
        return 503
    return 400


def error_response(error: BabelRAGError) -> JSONResponse:
    return JSONResponse({"error": str(error), "type": type(error).__name__}, status_code=status_of(error))


def hit_json(hit: Hit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "source": c.source, "file_name": c.file_name, "page": c.page, "language": c.language, "section": c.section,
        "title": c.title, "text": c.text, "start": c.start, "end": c.end, "score": hit.score,
        "retrieval_score": hit.retrieval_score, "chunk_id": c.id,
    }  # fmt: skip


def document_json(e: ManifestEntry) -> dict[str, Any]:
    return {
        "source": e.source, "file_name": Path(e.source).name, "language": e.language, "title": e.title,
        "pages": e.pages, "chunks": len(e.chunk_ids), "updated_at": e.updated_at, "complete": e.done,
    }  # fmt: skip


def answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "text": answer.text,
        "found": answer.found,
        "language": answer.language,
        "question_language": answer.question_language,
        "target_language": answer.target_language,
        "standalone_question": answer.standalone_question,
        "model": answer.model,
        "citations": [
            {"number": c.number, "cited": c.cited, "truncated": c.truncated, "span": list(c.span), **hit_json(c.hit)}
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


def install(app: FastAPI, pipeline: Pipeline, authorize: Any) -> None:
    """Add the /api routes over ``pipeline`` to ``app``; ``authorize`` is a FastAPI dependency
    (the token check). BabelRAG's errors become ``{"error"}`` responses in one place."""
    api = APIRouter(prefix="/api", dependencies=[Depends(authorize)])

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": rag.__version__}

    @api.get("/collections")
    def collections() -> Any:
        return [
            {"name": c.name, "chunks": c.count, "documents": c.documents, "embedding_model": c.embedding_model}
            for c in pipeline.collections()
        ]

    @api.get("/collections/{name}/documents")
    def documents(name: str) -> Any:
        return [document_json(e) for e in pipeline.documents(name)]

    @api.post("/retrieve")
    def retrieve(body: RetrieveRequest) -> Any:
        hits = pipeline.retrieve(body.query, collection=body.collection, top_k=body.top_k, reranker=body.reranker)
        return {"hits": [hit_json(h) for h in hits]}

    @api.post("/ask")
    def ask(body: AskRequest) -> Any:
        options = {
            "collection": body.collection,
            "top_k": body.top_k,
            "reranker": body.reranker,
            "language": body.language,
        }
        if body.history:
            answer = pipeline.chat([m.model_dump() for m in body.history], body.question, **options)
        else:
            answer = pipeline.ask(body.question, **options)
        return answer_json(answer)

    jobs = IngestJobs(pipeline)

    @api.post("/ingest", status_code=202)
    def ingest(body: IngestRequest, request: Request) -> Any:
        return jobs.submit(body, request.client.host if request.client else None)

    @api.get("/jobs/{job_id}")
    def job(job_id: str) -> Any:
        return jobs.get(job_id)

    app.include_router(api)
    app.add_exception_handler(BabelRAGError, lambda _request, error: error_response(error))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
