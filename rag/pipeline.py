"""The public Python API: ingest, retrieve, ask, stream, chat, sync and async. Front ends call only this.

Every query method takes one ``QueryOptions`` (or its fields as keyword arguments): where to look,
how many sources, which reranker, which answer language. It is resolved against the settings
once, in ``_resolve``; nothing below that sees an unresolved option.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Unpack, get_args

from ingestion.chunker import SentenceChunker, TokenSpans, tokenizer_spans
from ingestion.job import IngestReport, Progress, delete_sources, index_fingerprint, ingest_files
from ingestion.loader import DEFAULT_LOADERS, Loader
from rag import access
from rag.answering import AnswerPlan, AnswerStream
from rag.budget import below_thresholds, context_budget, fit_sources
from rag.chat import ChatMessage, accept_rewrite, bound_history, rewrite_messages
from rag.config import RerankerKind, Settings, load_settings
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.errors import BabelRAGError, CollectionNotFoundError, ConfigError, QueryError, StoreError, StoreLockedError
from rag.evidence import Evidence, locate_evidence
from rag.generator import Generator, OpenAIGenerator
from rag.language import LanguageIdentifier, dominant_language, language_identifier
from rag.llm import LLMClient, TokenCount
from rag.metrics import Metrics
from rag.options import QueryFields, QueryOptions, ResolvedQuery
from rag.remote import ingest_through_server
from rag.reranker import CrossEncoderReranker, LLMListwiseReranker, NoReranker, Reranker
from rag.retriever import DenseRetriever, HybridRetriever, Retriever
from rag.store import ChromaStore, CollectionInfo, ManifestEntry, VectorStore
from rag.trace import Trace
from rag.types import Answer, Chunk, Hit

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
CONTEXT_TOKENS = 64  # room kept for a chunk's title/section context (types.MAX_CONTEXT_CHARS)


class Pipeline:
    """Two-stage multilingual RAG over one store. Construction is cheap; models load on first use.

    >>> rag = Pipeline()                      # settings from defaults + BABELRAG_* env
    >>> rag.ingest(["docs/"], collection="handbook")
    >>> rag.ask("Wie viele Urlaubstage gibt es?", collection="handbook").text
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        language: LanguageIdentifier | None = None,
        llm: LLMClient | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        s = self.settings
        self.embedder = embedder or SentenceTransformerEmbedder(s.embedding)
        self.store = store or ChromaStore(s.store)
        self.language = language or language_identifier(s.language)
        self.llm = llm or LLMClient(s.llm)
        self.generator = generator or OpenAIGenerator(self.llm)
        dense = DenseRetriever(self.embedder, self.store, cache_size=s.retrieval.query_cache, config=s.retrieval)
        self.retriever: Retriever = (
            HybridRetriever(dense, self.store, s.retrieval, index_dir=s.store.index_dir)
            if s.retrieval.mode == "hybrid"
            else dense
        )
        self._rerankers: dict[str, Reranker] = {}
        self._count: TokenCount | None = None
        # what every answer, search and ingestion job of this pipeline adds up to (/metrics)
        self.metrics = Metrics(models={"embedding_model": s.embedding.model, "llm_model": s.llm.model})

    def close(self) -> None:
        """Let go of the store, so another process may open an embedded store (the next call
        on this pipeline opens it again). ``with Pipeline(...) as rag:`` closes on leaving."""
        self.retriever.close()  # its background reads of the store first
        self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingestion -----------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | Path],
        collection: str | None = None,
        *,
        prune: bool = False,
        reindex: bool = False,
        loaders: Sequence[Loader] | None = None,
        progress: Progress | None = None,
        lease_wait_s: float | None = None,
        engine: Literal["local", "ray"] | None = None,
        roots: Sequence[Path] = (),
    ) -> IngestReport:
        """Add new, replace changed and skip unchanged files under ``paths`` in ``collection``.

        ``prune`` deletes documents ingested from ``paths`` whose files are gone; ``reindex``
        rebuilds the collection (needed after changing the embedding model or chunking).
        ``loaders`` replaces the built-in file loaders (txt, md, html, pdf, docx). ``engine``
        (default ``ingestion.engine``): "local", or "ray" to load, chunk and embed on a Ray cluster.
        ``lease_wait_s`` (default ``ingestion.lease_wait_s``): how long to wait while another
        job writes the collection. When the embedded store is held by a running
        ``babelrag serve`` (and ``store.handoff``), a local-engine job is handed to that server.
        ``roots``: read only files whose real path lies inside these folders (what a server
        confines other machines' jobs to: ``server.ingest_roots``); a symlink out is skipped.
        """
        collection = self._collection(collection, write=True)
        paths = list(paths)
        try:
            self.store.warm_up()
        except StoreLockedError as e:
            url = e.holder.get("serve_url")
            local = (engine or self.settings.ingestion.engine) == "local"
            if not (self.settings.store.handoff and url and loaders is None and local):
                raise
            token = self.settings.server.token
            return ingest_through_server(
                url, paths, collection, token=token.get_secret_value() if token else None, prune=prune,
                reindex=reindex, lease_wait_s=lease_wait_s, progress=progress,
            )  # fmt: skip
        self._check_chunk_budget()
        chunker = self._chunker()
        config = self.settings.ingestion
        if lease_wait_s is not None:
            config = config.model_copy(update={"lease_wait_s": lease_wait_s})
        try:
            report = ingest_files(
                paths,
                collection,
                embedder=self.embedder,
                store=self.store,
                chunker=chunker,
                config=config,
                loaders=DEFAULT_LOADERS if loaders is None else loaders,
                prune=prune,
                reindex=reindex,
                progress=progress,
                engine=engine,
                settings=self.settings,
                roots=roots,
            )
        except Exception:
            self.metrics.observe_ingest("error")
            raise
        finally:  # even a failed job may have written: derived indexes must look again
            self._refresh(collection)
        self._observe(report)
        return report

    def _observe(self, report: IngestReport) -> None:
        files = {
            "added": len(report.added), "updated": len(report.updated), "unchanged": len(report.unchanged),
            "removed": len(report.removed), "failed": len(report.failed),
        }  # fmt: skip
        self.metrics.observe_ingest(
            "ok" if report.ok else "with_failures", files=files, chunks_written=report.chunks_written,
            seconds=report.seconds,
        )  # fmt: skip
        rate = report.chunks_written / report.seconds if report.seconds else 0.0
        log.info(
            "ingested %s into %r: %d chunks in %.1f s (%.1f chunks/s), %d files failed",
            ", ".join(f"{n} {kind}" for kind, n in files.items() if n) or "nothing", report.collection,
            report.chunks_written, report.seconds, rate, len(report.failed),
            extra={"collection": report.collection, "files": files, "chunks_written": report.chunks_written,
                   "seconds": round(report.seconds, 3), "chunks_per_s": round(rate, 2)},
        )  # fmt: skip

    def _refresh(self, collection: str) -> None:
        """Bring this process's derived indexes (keyword index, centroids) up to date at once."""
        try:
            self.retriever.refresh(collection)
        except CollectionNotFoundError as e:  # a job that failed before creating the collection
            log.info("derived indexes of %r not refreshed: %s", collection, e)
        except StoreError as e:  # the next query tries again (and says what is wrong, if it still is)
            log.warning("derived indexes of %r not refreshed: %s", collection, e)

    def _collection(self, name: str | None, *, write: bool = False) -> str:
        """``name``, or the configured collection; a name Chroma would refuse is a QueryError, one
        the current caller may not read (or ``write``) an AccessDeniedError (rag.access)."""
        collection = QueryOptions.of(collection=name).resolve(self.settings).collection
        access.require(collection, write=write)
        return collection

    def _chunker(self) -> SentenceChunker:
        return SentenceChunker(self._token_spans, self.settings.chunking, detect_language=self.language.detect)

    @functools.cached_property
    def _token_spans(self) -> TokenSpans:
        """One tokenizer for every job's chunker: it keeps its private copies between jobs."""
        return tokenizer_spans(self.embedder.tokenizer)

    def _check_chunk_budget(self) -> None:
        """Chunks plus their prompt and title/section context must fit the embedding model."""
        limit = self.embedder.max_tokens
        reserve = CONTEXT_TOKENS + self.embedder.count_tokens(self.settings.embedding.document_prompt or "") + 2
        if self.settings.chunking.max_tokens + reserve > limit:
            raise ConfigError(
                f"chunking.max_tokens={self.settings.chunking.max_tokens} does not fit embedding model "
                f"{self.embedder.model_id!r}: it reads {limit} tokens, and {reserve} go to the prompt, the "
                f"title/section context and special tokens; set chunking.max_tokens to at most {limit - reserve}"
            )

    def collections(self) -> list[CollectionInfo]:
        """The collections of the store, those the current caller may read (rag.access)."""
        found = self.store.collections()
        visible = set(access.visible([c.name for c in found]))
        return [c for c in found if c.name in visible]

    def create_collection(self, name: str) -> CollectionInfo:
        """An empty collection ``name`` for this pipeline's embedding model and chunking (an
        existing one built with them is kept; one built with others is an IndexMismatchError)."""
        name = self._collection(name, write=True)
        chunker = self._chunker()
        self.store.ensure_collection(name, fingerprint=index_fingerprint(self.embedder, chunker))
        return self.store.info(name)

    def delete_collection(self, name: str) -> None:
        """Delete collection ``name``, its chunks and its manifest (not while a job writes it)."""
        name = self._collection(name, write=True)
        self.store.require(name)
        config = self.settings.ingestion
        with self.store.lease(name, job="delete-collection", ttl_s=config.lease_ttl_s, wait_s=0):
            self.store.delete_collection(name)
        self._refresh(name)

    def get_chunk(self, chunk_id: str, collection: str | None = None) -> Chunk:
        """One chunk by its id (``Hit.chunk.id``, ``Citation.chunk.id``), with its text and span."""
        collection = self._collection(collection)
        self.store.require(collection)
        found = self.store.get(collection, [chunk_id])
        if not found:
            raise QueryError(f"collection {collection!r} has no chunk {chunk_id!r}; chunk ids come with each hit")
        return found[0]

    def readiness(self) -> dict[str, Readiness]:
        """Whether the store and the LLM server answer now, each with what went wrong."""
        checks: dict[str, Readiness] = {}
        t0 = time.perf_counter()
        try:
            self.store.collections()
            checks["store"] = Readiness(True, self.store.location, time.perf_counter() - t0)
        except BabelRAGError as e:
            checks["store"] = Readiness(False, str(e), time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            served = self.llm.served_models()
            ok = self.settings.llm.model in served
            detail = self.settings.llm.base_url if ok else (
                f"{self.settings.llm.base_url} does not serve {self.settings.llm.model!r} (served: {', '.join(served)})"
            )  # fmt: skip
            checks["llm"] = Readiness(ok, detail, time.perf_counter() - t0)
        except BabelRAGError as e:
            checks["llm"] = Readiness(False, str(e), time.perf_counter() - t0)
        self.metrics.observe_health(checks)
        return checks

    def documents(self, collection: str | None = None) -> list[ManifestEntry]:
        """The source files of ``collection``, as its ingestion manifest records them."""
        entries = self.store.manifest(self._collection(collection))
        return sorted(entries.values(), key=lambda e: e.source)

    def delete_document(self, source: str, collection: str | None = None) -> int:
        """Delete one source file's chunks from ``collection``; returns how many were deleted."""
        collection = self._collection(collection, write=True)
        entry = self.store.entries(collection, [source]).get(source)
        if entry is None or entry.status == "deleted":
            known = ", ".join(sorted(Path(e.source).name for e in self.documents(collection))[:10]) or "none"
            raise QueryError(f"{source!r} is not a document of collection {collection!r} (documents: {known})")
        deleted = delete_sources(self.store, collection, [source], config=self.settings.ingestion)
        self._refresh(collection)
        return deleted

    # -- query options ---------------------------------------------------------------------

    def _resolve(self, options: QueryOptions | None, fields: QueryFields) -> ResolvedQuery:
        resolved = QueryOptions.of(options, **fields).resolve(self.settings)
        access.require(resolved.collection)
        return resolved

    # -- retrieval -----------------------------------------------------------------------

    def reranker(self, kind: RerankerKind | None = None) -> Reranker:
        kind = kind or self.settings.reranker.kind
        if kind not in self._rerankers:
            if kind == "none":
                self._rerankers[kind] = NoReranker()
            elif kind == "cross-encoder":
                self._rerankers[kind] = CrossEncoderReranker(self.settings.reranker)
            elif kind == "llm-listwise":
                self._rerankers[kind] = LLMListwiseReranker(self.llm, self.settings.reranker)
            else:
                raise QueryError(f"unknown reranker {kind!r}; choose one of {', '.join(get_args(RerankerKind))}")
        return self._rerankers[kind]

    def retrieve(self, query: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]) -> list[Hit]:
        """Best ``top_k`` chunks for ``query``: first-stage candidates, then the reranker's order.

        ``where`` filters on chunk metadata, e.g. ``{"language": "de"}`` or ``{"source": path}``.
        """
        return self._retrieve_many([query], self._resolve(options, fields))[0]

    def retrieve_many(
        self, queries: Sequence[str], options: QueryOptions | None = None, **fields: Unpack[QueryFields]
    ) -> list[list[Hit]]:
        """``retrieve`` for a batch of queries: one embedding call and one store call."""
        return self._retrieve_many(queries, self._resolve(options, fields))

    async def aretrieve(
        self, query: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]
    ) -> list[Hit]:
        """``retrieve`` for asyncio: embedding and the store run in a worker thread (both block
        on CPU or the store's I/O), so the event loop keeps serving."""
        resolved = self._resolve(options, fields)
        return (await asyncio.to_thread(self._retrieve_many, [query], resolved))[0]

    def _retrieve_many(
        self, queries: Sequence[str], q: ResolvedQuery, *, languages: Sequence[str | None] | None = None,
        trace: Trace | None = None,
    ) -> list[list[Hit]]:  # fmt: skip
        queries = [_check_question(text) for text in queries]
        self.store.require(q.collection)  # an unknown collection fails before any model loads
        rerank = self.reranker(q.reranker)
        search = trace is None  # a search of its own, not an answer's: its stages are observed here
        trace = trace or Trace()
        with trace.stage("retrieve"):
            if languages is None:
                languages = [dominant_language(self.language, text) for text in queries]
            batches = self.retriever.retrieve(
                queries, q.collection, top_k=q.candidates, where=q.where, languages=list(languages)
            )
        with trace.stage("rerank"):
            ranked = [rerank.rerank(text, hits)[: q.top_k] for text, hits in zip(queries, batches, strict=True)]
        if search:
            self.metrics.observe_stages(trace.timings)
        return ranked

    # -- generation ----------------------------------------------------------------------

    def stream(self, question: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]) -> AnswerStream:
        """Retrieve now; the returned stream yields the answer text as the LLM writes it.

        ``language`` forces the answer language (ISO 639-1); by default it is
        ``generation.answer_language`` or else the question's.
        """
        trace = Trace()
        q = self._resolve(options, fields)
        question, question_language = self._question(question, trace)
        return self._answer_stream(question, None, question_language, q, trace)

    def ask(self, question: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]) -> Answer:
        """Like ``stream``, but waits for the whole answer."""
        return self.stream(question, options, **fields).answer()

    async def astream(
        self, question: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]
    ) -> AnswerStream:
        """``stream`` for asyncio: retrieval in a worker thread, then ``async for piece in stream``
        reads the LLM through the async client (no thread waits on it)."""
        trace = Trace()
        q = self._resolve(options, fields)
        question, question_language = await asyncio.to_thread(self._question, question, trace)
        return await asyncio.to_thread(self._answer_stream, question, None, question_language, q, trace)

    async def aask(self, question: str, options: QueryOptions | None = None, **fields: Unpack[QueryFields]) -> Answer:
        """Like ``astream``, but waits for the whole answer."""
        return await (await self.astream(question, options, **fields)).aanswer()

    def chat_stream(
        self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, options: QueryOptions | None = None,
        **fields: Unpack[QueryFields],
    ) -> AnswerStream:  # fmt: skip
        """Answer ``message``, a turn of a conversation: a follow-up ("and in 2019?") is first
        rewritten by the LLM into a standalone question in the user's language, which is what is
        retrieved for and answered (``Answer.standalone_question``). ``history`` holds earlier
        messages as ``{"role": "user"|"assistant", "content": str}`` (Gradio's format) or
        ChatMessage; only the last ``chat.max_messages`` (and ``chat.max_history_chars``) count.
        """
        trace = Trace()
        q = self._resolve(options, fields)
        turn = self._turn(history, message, q, trace)
        standalone = None
        if turn.rewrite is not None:
            with trace.stage("rewrite"):
                completion = self.llm.complete(turn.rewrite, max_tokens=96)
                trace.add(completion.usage)
                standalone = accept_rewrite(completion.text, turn.turns, turn.message, turn.language, self.language)
        return self._answer_stream(turn.message, standalone, turn.question_language, q, trace)

    def chat(
        self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, options: QueryOptions | None = None,
        **fields: Unpack[QueryFields],
    ) -> Answer:  # fmt: skip
        """Like ``chat_stream``, but waits for the whole answer."""
        return self.chat_stream(history, message, options, **fields).answer()

    async def achat_stream(
        self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, options: QueryOptions | None = None,
        **fields: Unpack[QueryFields],
    ) -> AnswerStream:  # fmt: skip
        """``chat_stream`` for asyncio: the follow-up rewrite on the async client."""
        trace = Trace()
        q = self._resolve(options, fields)
        turn = await asyncio.to_thread(self._turn, history, message, q, trace)
        standalone = None
        if turn.rewrite is not None:
            with trace.stage("rewrite"):
                completion = await self.llm.acomplete(turn.rewrite, max_tokens=96)
                trace.add(completion.usage)
                standalone = await asyncio.to_thread(
                    accept_rewrite, completion.text, turn.turns, turn.message, turn.language, self.language
                )
        return await asyncio.to_thread(self._answer_stream, turn.message, standalone, turn.question_language, q, trace)

    async def achat(
        self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, options: QueryOptions | None = None,
        **fields: Unpack[QueryFields],
    ) -> Answer:  # fmt: skip
        """Like ``achat_stream``, but waits for the whole answer."""
        return await (await self.achat_stream(history, message, options, **fields)).aanswer()

    def evidence(self, answer: Answer) -> dict[int, Evidence]:
        """For each cited source of ``answer``, the sentences of its passage that support the answer
        sentences citing it (spans of ``Citation.chunk.text``), found across languages by the embedder."""
        return locate_evidence(answer, self.embedder)

    # -- the steps of an answer, shared by the sync and async methods -------------------------------

    def _question(self, question: str, trace: Trace) -> tuple[str, str | None]:
        with trace.stage("language"):
            question = _check_question(question)
            return question, dominant_language(self.language, question)

    def _turn(
        self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, q: ResolvedQuery, trace: Trace
    ) -> _Turn:
        with trace.stage("language"):
            message = _check_question(message)
            turns = bound_history(history, self.settings.chat)
            previous = next(
                (dominant_language(self.language, m.content) for m in reversed(turns) if m.role == "user"), None
            )
            question_language = dominant_language(self.language, message, fallback=previous)
        language = question_language or q.language
        rewrite = rewrite_messages(turns, message, language) if turns and self.settings.chat.rewrite else None
        return _Turn(message, turns, question_language, language, rewrite)

    def _answer_stream(
        self, question: str, standalone: str | None, question_language: str | None, q: ResolvedQuery, trace: Trace
    ) -> AnswerStream:
        g = self.settings.generation
        target = q.language or question_language
        retrieved_for = standalone or question
        retrieved_language = (
            question_language
            if standalone is None
            else dominant_language(self.language, standalone, fallback=question_language)
        )
        hits = self._retrieve_many([retrieved_for], q, languages=[retrieved_language], trace=trace)[0]
        with trace.stage("fit"):
            why = below_thresholds(hits, g, reranked=q.reranker != "none")
            if why is not None:
                fitted = None
                log.info("not found without asking the LLM: %s", why)
            else:
                count = self._token_count()
                budget = context_budget(
                    retrieved_for, target, count, config=g, max_tokens=self.settings.llm.max_tokens,
                    context=self.llm.context_length(),
                )  # fmt: skip
                fitted = fit_sources(hits, budget, count)
        plan = AnswerPlan(
            question=question, standalone_question=standalone, question_language=question_language,
            target_language=target, hits=hits, fitted=fitted, model=self.settings.llm.model, trace=trace,
        )  # fmt: skip
        return AnswerStream(
            plan, generator=self.generator, llm=self.llm, language=self.language, config=g, metrics=self.metrics
        )

    def _token_count(self) -> TokenCount:
        if self._count is None:
            self._count, kind = self.llm.token_counter(self.settings.generation.tokenizer)
            log.info("counting prompt tokens with the %s tokenizer", kind)
        return self._count


@dataclass(frozen=True, slots=True)
class Readiness:
    ok: bool
    detail: str  # where it is, or what went wrong and the fix
    seconds: float


@dataclass(frozen=True, slots=True)
class _Turn:
    message: str
    turns: list[ChatMessage]
    question_language: str | None
    language: str | None  # the rewrite's language: the question's, else the forced one
    rewrite: list[dict[str, str]] | None  # the rewrite prompt; None: nothing to rewrite


def _check_question(question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise QueryError('the question is empty; type a question, e.g. babelrag ask "What is the leave policy?"')
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question
