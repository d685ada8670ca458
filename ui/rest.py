"""The REST API: a thin JSON layer over the public Python API (``rag.Pipeline``).

    GET  /api/health                               liveness, version
    GET  /api/collections                          collections with chunk and file counts
    GET  /api/collections/{name}/documents         a collection's source files
    POST /api/retrieve   {"query", "collection", "top_k", "reranker"}
    POST /api/ask        {"question", "collection", "top_k", "reranker", "language", "history"}

Errors come back as ``{"error": message}`` with 400 (bad request), 404 (unknown collection or
document) or 503 (the LLM server or the store is unreachable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
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


def status_of(error: BabelRAGError) -> int:
    if isinstance(error, CollectionNotFoundError):
        return 404
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

    app.include_router(api)
    app.add_exception_handler(BabelRAGError, lambda _request, error: error_response(error))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
