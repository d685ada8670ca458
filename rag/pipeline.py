"""The public Python API: ingest, retrieve, ask, stream. Front ends call only this."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ingestion.chunker import SentenceChunker, tokenizer_spans
from ingestion.job import IngestReport, Progress, ingest_files
from ingestion.loader import DEFAULT_LOADERS, Loader
from rag.config import RerankerConfig, Settings, load_settings
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.errors import ConfigError, QueryError
from rag.generator import Generator, LLMClient, OpenAIGenerator
from rag.language import LanguageIdentifier, language_identifier
from rag.reranker import CrossEncoderReranker, LLMListwiseReranker, NoReranker, Reranker
from rag.retriever import DenseRetriever, HybridRetriever, Retriever
from rag.store import ChromaStore, CollectionInfo, ManifestEntry, VectorStore, Where
from rag.types import Answer, Citation, Hit

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
CONTEXT_TOKENS = 64  # room kept for a chunk's title/section context (types.MAX_CONTEXT_CHARS)
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


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
            HybridRetriever(dense, self.store, s.retrieval) if s.retrieval.mode == "hybrid" else dense
        )
        self._rerankers: dict[str, Reranker] = {}

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
    ) -> IngestReport:
        """Add new, replace changed and skip unchanged files under ``paths`` in ``collection``.

        ``prune`` deletes documents ingested from ``paths`` whose files are gone; ``reindex``
        rebuilds the collection (needed after changing the embedding model or chunking).
        ``loaders`` replaces the built-in file loaders (txt, md, html, pdf, docx).
        """
        self._check_chunk_budget()
        chunker = SentenceChunker(
            tokenizer_spans(self.embedder.tokenizer), self.settings.chunking, detect_language=self.language.detect
        )
        collection = collection or self.settings.store.collection
        try:
            return ingest_files(
                list(paths),
                collection,
                embedder=self.embedder,
                store=self.store,
                chunker=chunker,
                config=self.settings.ingestion,
                loaders=DEFAULT_LOADERS if loaders is None else loaders,
                prune=prune,
                reindex=reindex,
                progress=progress,
            )
        finally:  # even a failed job may have written: derived indexes must look again
            self.retriever.invalidate(collection)

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
        entries = self.store.manifest(collection)
        if source not in entries:
            known = ", ".join(sorted(Path(s).name for s in entries)[:10]) or "none"
            raise QueryError(f"{source!r} is not a document of collection {collection!r} (documents: {known})")
        ids = self.store.chunk_ids_of_source(collection, source)
        self.store.delete(collection, ids)
        self.store.delete_manifest(collection, [source])
        self.retriever.invalidate(collection)
        return len(ids)

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
                allowed = RerankerConfig.model_fields["kind"].annotation.__args__  # type: ignore[union-attr]
                raise QueryError(f"unknown reranker {kind!r}; choose one of {', '.join(allowed)}")
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
        queries = [_check_question(q) for q in queries]
        top_k = top_k or self.settings.retrieval.top_k
        if top_k < 1:
            raise QueryError(f"top_k must be at least 1, got {top_k}")
        collection = collection or self.settings.store.collection
        self.store.info(collection)  # an unknown collection fails before any model loads
        rerank = self.reranker(reranker)
        depth = max(top_k, self.settings.retrieval.candidates)
        languages = [self.language.detect(q) for q in queries]
        batches = self.retriever.retrieve(queries, collection, top_k=depth, where=where, languages=languages)
        return [rerank.rerank(q, hits)[:top_k] for q, hits in zip(queries, batches, strict=True)]

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

        ``language`` forces the answer language (ISO 639-1); by default it is the question's.
        """
        question = _check_question(question)
        hits = self.retrieve(question, collection=collection, top_k=top_k, where=where, reranker=reranker)
        question_language = self.language.detect(question)
        target = language or question_language
        return AnswerStream(
            question=question,
            hits=hits,
            question_language=question_language,
            pieces=self.generator.stream(question, hits, language=target),
            detect=self.language.detect,
            model=self.settings.llm.model,
        )

    def ask(self, question: str, **options) -> Answer:
        """Like ``stream``, but waits for the whole answer."""
        return self.stream(question, **options).answer()


class AnswerStream:
    """Iterate for the answer's text pieces; ``hits`` are known before the first piece, and
    ``answer()`` gives the finished Answer (reading the rest of the stream if needed)."""

    def __init__(self, *, question, hits, question_language, pieces: Iterator[str], detect, model: str) -> None:
        self.question = question
        self.hits: list[Hit] = hits
        self.question_language: str | None = question_language
        self._pieces = pieces
        self._detect = detect
        self._model = model
        self._text: list[str] = []
        self._done = False

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self._text.append(piece)
            yield piece
        self._done = True

    def answer(self) -> Answer:
        if not self._done:
            for _ in self:
                pass
        text = "".join(self._text).strip()
        return Answer(
            question=self.question,
            text=text,
            language=self._detect(text),
            question_language=self.question_language,
            citations=citations(text, self.hits),
            model=self._model,
        )


def citations(text: str, hits: Sequence[Hit]) -> list[Citation]:
    """One Citation per source given to the LLM, flagged when the text cites it as [n]."""
    cited: set[int] = set()
    for match in _MARKER.finditer(text):
        for number in map(int, match.group(1).split(",")):
            if 1 <= number <= len(hits):
                cited.add(number)
            else:
                log.info("answer cites [%d], but only %d sources were given", number, len(hits))
    return [Citation(number=i, hit=hit, cited=i in cited) for i, hit in enumerate(hits, 1)]


def _check_question(question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise QueryError('the question is empty; type a question, e.g. babelrag ask "What is the leave policy?"')
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question
