"""The public Python API: ingest, retrieve, ask, stream. Front ends call only this."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from ingestion.chunker import SentenceChunker, tokenizer_spans
from ingestion.job import IngestReport, Progress, delete_sources, ingest_files
from ingestion.loader import DEFAULT_LOADERS, Loader
from rag.answering import (
    DEFAULT_CONTEXT_TOKENS,
    PROMPT_MARGIN_TOKENS,
    AnswerPlan,
    AnswerStream,
    TokenCount,
    below_thresholds,
    fit_sources,
    token_counter,
)
from rag.chat import ChatMessage, bound_history, rewrite_follow_up
from rag.config import RerankerKind, Settings, load_settings
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.errors import ConfigError, QueryError, StoreError, StoreLockedError
from rag.evidence import Evidence, locate_evidence
from rag.generator import Generator, LLMClient, OpenAIGenerator, build_messages
from rag.language import LanguageIdentifier, dominant_language, language_identifier
from rag.remote import ingest_through_server
from rag.reranker import CrossEncoderReranker, LLMListwiseReranker, NoReranker, Reranker
from rag.retriever import DenseRetriever, HybridRetriever, Retriever
from rag.store import ChromaStore, CollectionInfo, ManifestEntry, VectorStore, Where
from rag.types import Answer, Hit, Usage

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
        self._max_model_len: int | None = None

    def close(self) -> None:
        """Let go of the store, so another process may open an embedded store (the next call
        on this pipeline opens it again). ``with Pipeline(...) as rag:`` closes on leaving."""
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
    ) -> IngestReport:
        """Add new, replace changed and skip unchanged files under ``paths`` in ``collection``.

        ``prune`` deletes documents ingested from ``paths`` whose files are gone; ``reindex``
        rebuilds the collection (needed after changing the embedding model or chunking).
        ``loaders`` replaces the built-in file loaders (txt, md, html, pdf, docx). ``engine``
        (default ``ingestion.engine``): "local", or "ray" to load, chunk and embed on a Ray cluster.
        ``lease_wait_s`` (default ``ingestion.lease_wait_s``): how long to wait while another
        job writes the collection. When the embedded store is held by a running
        ``babelrag serve`` (and ``store.handoff``), a local-engine job is handed to that server.
        """
        collection = collection or self.settings.store.collection
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
        chunker = SentenceChunker(
            tokenizer_spans(self.embedder.tokenizer), self.settings.chunking, detect_language=self.language.detect
        )
        config = self.settings.ingestion
        if lease_wait_s is not None:
            config = config.model_copy(update={"lease_wait_s": lease_wait_s})
        try:
            return ingest_files(
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
            )
        finally:  # even a failed job may have written: derived indexes must look again
            self._refresh(collection)

    def _refresh(self, collection: str) -> None:
        """Bring this process's derived indexes (keyword index, centroids) up to date at once."""
        try:
            self.retriever.refresh(collection)
        except StoreError as e:  # e.g. a job that failed before creating the collection
            log.info("derived indexes of %r not refreshed: %s", collection, e)

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
        return self.store.collections()

    def documents(self, collection: str | None = None) -> list[ManifestEntry]:
        """The source files of ``collection``, as its ingestion manifest records them."""
        entries = self.store.manifest(collection or self.settings.store.collection)
        return sorted(entries.values(), key=lambda e: e.source)

    def delete_document(self, source: str, collection: str | None = None) -> int:
        """Delete one source file's chunks from ``collection``; returns how many were deleted."""
        collection = collection or self.settings.store.collection
        entry = self.store.entries(collection, [source]).get(source)
        if entry is None or entry.status == "deleted":
            known = ", ".join(sorted(Path(e.source).name for e in self.documents(collection))[:10]) or "none"
            raise QueryError(f"{source!r} is not a document of collection {collection!r} (documents: {known})")
        deleted = delete_sources(self.store, collection, [source], config=self.settings.ingestion)
        self._refresh(collection)
        return deleted

    # -- retrieval -----------------------------------------------------------------------

    def reranker(self, kind: str | None = None) -> Reranker:
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

    def retrieve(
        self,
        query: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        where: Where | None = None,
        reranker: str | None = None,
    ) -> list[Hit]:
        """Best ``top_k`` chunks for ``query``: first-stage candidates, then the reranker's order.

        ``where`` filters on chunk metadata, e.g. ``{"language": "de"}`` or ``{"source": path}``.
        """
        return self.retrieve_many([query], collection=collection, top_k=top_k, where=where, reranker=reranker)[0]

    def retrieve_many(
        self,
        queries: Sequence[str],
        *,
        collection: str | None = None,
        top_k: int | None = None,
        where: Where | None = None,
        reranker: str | None = None,
    ) -> list[list[Hit]]:
        """``retrieve`` for a batch of queries: one embedding call and one store call."""
        return self._retrieve_many(queries, collection=collection, top_k=top_k, where=where, reranker=reranker)

    def _retrieve_many(
        self,
        queries: Sequence[str],
        *,
        collection: str | None,
        top_k: int | None,
        where: Where | None,
        reranker: str | None,
        languages: Sequence[str | None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[Hit]]:
        queries = [_check_question(q) for q in queries]
        top_k = top_k or self.settings.retrieval.top_k
        if top_k < 1:
            raise QueryError(f"top_k must be at least 1, got {top_k}")
        collection = collection or self.settings.store.collection
        self.store.require(collection)  # an unknown collection fails before any model loads
        rerank = self.reranker(reranker)
        depth = max(top_k, self.settings.retrieval.candidates)
        t0 = time.perf_counter()
        if languages is None:
            languages = [dominant_language(self.language, q) for q in queries]
        batches = self.retriever.retrieve(queries, collection, top_k=depth, where=where, languages=list(languages))
        t1 = time.perf_counter()
        ranked = [rerank.rerank(q, hits)[:top_k] for q, hits in zip(queries, batches, strict=True)]
        if timings is not None:
            timings["retrieve"] = t1 - t0
            timings["rerank"] = time.perf_counter() - t1
        return ranked

    # -- generation ----------------------------------------------------------------------

    def stream(
        self,
        question: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        where: Where | None = None,
        reranker: str | None = None,
        language: str | None = None,
    ) -> AnswerStream:
        """Retrieve now; the returned stream yields the answer text as the LLM writes it.

        ``language`` forces the answer language (ISO 639-1); by default it is
        ``generation.answer_language`` or else the question's.
        """
        started = time.perf_counter()
        question = _check_question(question)
        question_language = dominant_language(self.language, question)
        timings = {"language": time.perf_counter() - started}
        return self._answer_stream(
            question, None, question_language, started=started, timings=timings, usage=Usage(),
            collection=collection, top_k=top_k, where=where, reranker=reranker, language=language,
        )  # fmt: skip

    def ask(self, question: str, **options: Any) -> Answer:
        """Like ``stream``, but waits for the whole answer."""
        return self.stream(question, **options).answer()

    def chat_stream(
        self,
        history: Sequence[ChatMessage | Mapping[str, Any]],
        message: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        where: Where | None = None,
        reranker: str | None = None,
        language: str | None = None,
    ) -> AnswerStream:
        """Answer ``message``, a turn of a conversation: a follow-up ("and in 2019?") is first
        rewritten by the LLM into a standalone question in the user's language, which is what is
        retrieved for and answered (``Answer.standalone_question``). ``history`` holds earlier
        messages as ``{"role": "user"|"assistant", "content": str}`` (Gradio's format) or
        ChatMessage; only the last ``chat.max_messages`` (and ``chat.max_history_chars``) count.
        """
        started = time.perf_counter()
        message = _check_question(message)
        turns = bound_history(history, self.settings.chat)
        previous = next(
            (dominant_language(self.language, m.content) for m in reversed(turns) if m.role == "user"), None
        )
        question_language = dominant_language(self.language, message, fallback=previous)
        timings = {"language": time.perf_counter() - started}
        usage = Usage()
        standalone = None
        if turns and self.settings.chat.rewrite:
            t0 = time.perf_counter()
            target = language or self.settings.generation.answer_language or question_language
            standalone, usage = rewrite_follow_up(self.llm, self.language, turns, message, question_language or target)
            timings["rewrite"] = time.perf_counter() - t0
        return self._answer_stream(
            message, standalone, question_language, started=started, timings=timings, usage=usage,
            collection=collection, top_k=top_k, where=where, reranker=reranker, language=language,
        )  # fmt: skip

    def chat(self, history: Sequence[ChatMessage | Mapping[str, Any]], message: str, **options: Any) -> Answer:
        """Like ``chat_stream``, but waits for the whole answer."""
        return self.chat_stream(history, message, **options).answer()

    def evidence(self, answer: Answer) -> dict[int, Evidence]:
        """For each cited source of ``answer``, the sentences of its passage that support the answer
        sentences citing it (spans of ``Citation.chunk.text``), found across languages by the embedder."""
        return locate_evidence(answer, self.embedder)

    def _answer_stream(
        self, question: str, standalone: str | None, question_language: str | None, *, started: float,
        timings: dict[str, float], usage: Usage, collection: str | None, top_k: int | None, where: Where | None,
        reranker: str | None, language: str | None,
    ) -> AnswerStream:  # fmt: skip
        g = self.settings.generation
        target = language or g.answer_language or question_language
        if target is not None and not re.fullmatch(r"[a-z]{2,3}", target):
            raise QueryError(f"answer language must be an ISO 639-1 code such as 'de' or 'zh', got {target!r}")
        retrieved_for = standalone or question
        retrieved_language = (
            question_language
            if standalone is None
            else dominant_language(self.language, standalone, fallback=question_language)
        )
        hits = self._retrieve_many(
            [retrieved_for], collection=collection, top_k=top_k, where=where, reranker=reranker,
            languages=[retrieved_language], timings=timings,
        )[0]  # fmt: skip
        t0 = time.perf_counter()
        reranked = (reranker or self.settings.reranker.kind) != "none"
        why = below_thresholds(hits, g, reranked=reranked)
        if why is not None:
            fitted = None
            log.info("not found without asking the LLM: %s", why)
        else:
            count = self._token_count()
            fitted = fit_sources(hits, self._context_budget(retrieved_for, target, count), count)
        timings["fit"] = time.perf_counter() - t0
        plan = AnswerPlan(
            question=question, standalone_question=standalone, question_language=question_language,
            target_language=target, hits=hits, fitted=fitted, model=self.settings.llm.model, timings=timings,
            usage=usage, started=started,
        )  # fmt: skip
        return AnswerStream(plan, generator=self.generator, llm=self.llm, language=self.language, config=g)

    def _token_count(self) -> TokenCount:
        if self._count is None:
            self._count, kind = token_counter(self.settings)
            log.info("counting prompt tokens with the %s tokenizer", kind)
        return self._count

    def _context_budget(self, question: str, language: str | None, count: TokenCount) -> int:
        """Tokens left for sources: generation.context_tokens, and what the server's context
        (max_model_len) leaves after the instructions, the question and the answer."""
        budgets = []
        if self.settings.generation.context_tokens is not None:
            budgets.append(self.settings.generation.context_tokens)
        context = self._server_context()
        if context is not None:
            frame = sum(count(m["content"]) for m in build_messages(question, [], language=language, strict=True))
            budgets.append(context - self.settings.llm.max_tokens - frame - PROMPT_MARGIN_TOKENS)
        budget = min(budgets) if budgets else DEFAULT_CONTEXT_TOKENS
        if budget < 32:
            raise QueryError(
                f"the question leaves {budget} tokens for sources in the model's context ({context} tokens, "
                f"{self.settings.llm.max_tokens} of them for the answer); shorten the question or lower llm.max_tokens"
            )
        return budget

    def _server_context(self) -> int | None:
        """The served model's max_model_len, asked once; None when the server does not say."""
        if self._max_model_len is None:
            try:
                from rag.llm_server import server_info

                info = server_info(self.settings.llm.base_url, timeout_s=5)
                self._max_model_len = info.max_model_len.get(self.settings.llm.model, 0)
            except Exception as e:  # noqa: BLE001 - a server that is down fails the answer itself, with its message
                log.info("cannot ask the LLM server for its context length: %s", e)
                return None
        return self._max_model_len or None


def _check_question(question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise QueryError('the question is empty; type a question, e.g. babelrag ask "What is the leave policy?"')
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question
