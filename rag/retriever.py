"""First stage: candidate chunks for a batch of queries, with optional metadata filters."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from rag.config import RetrievalConfig
from rag.embedder import Embedder
from rag.store import VectorStore, Where
from rag.types import Chunk, Hit

if TYPE_CHECKING:
    from rag.keyword import KeywordIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


@runtime_checkable
class Retriever(Protocol):
    def retrieve(
        self,
        queries: Sequence[str],
        collection: str,
        *,
        top_k: int,
        where: Where | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        """Best ``top_k`` chunks for each query, best first. ``languages`` holds each query's
        language where known (a retriever may use it, e.g. for keyword search)."""
        ...

    def invalidate(self, collection: str) -> None:
        """Forget what is cached about ``collection`` (its content just changed)."""
        ...


class QueryEmbeddings:
    """Query vectors with a small LRU cache: a UI re-asks, an evaluation asks the same
    question against several filters, and each costs a model call otherwise."""

    def __init__(self, embedder: Embedder, *, cache_size: int = 4096) -> None:
        self.embedder = embedder
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, queries: Sequence[str]) -> np.ndarray:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for q in queries:
                if q in self._cache:
                    self._cache.move_to_end(q)
                    found[q] = self._cache[q]
        missing = list(dict.fromkeys(q for q in queries if q not in found))
        if missing:
            vectors = self.embedder.embed_queries(missing)
            found.update(zip(missing, vectors, strict=True))
            with self._lock:
                for q, v in zip(missing, vectors, strict=True):
                    self._cache[q] = v
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.stack([found[q] for q in queries])


class PerCollection(Generic[T]):
    """A value derived from a collection's content (keyword index, centroids), rebuilt when the
    store's version of the collection changes; the version is checked at most every ``recheck_s``."""

    def __init__(self, store: VectorStore, build: Callable[[str], T], *, recheck_s: float) -> None:
        self.store = store
        self.build = build
        self.recheck_s = recheck_s
        self._cache: dict[str, tuple[str, float, T]] = {}  # collection -> (version, checked at, value)
        self._lock = threading.Lock()

    def invalidate(self, collection: str) -> None:
        with self._lock:
            self._cache.pop(collection, None)

    def __call__(self, collection: str) -> T:
        with self._lock:
            cached = self._cache.get(collection)
            now = time.monotonic()
            if cached and now - cached[1] < self.recheck_s:
                return cached[2]
            version = self.store.version(collection)
            if cached and cached[0] == version:
                self._cache[collection] = (version, now, cached[2])
                return cached[2]
            value = self.build(collection)
            self._cache[collection] = (version, now, value)
            return value


class Centroids:
    """Per-language mean chunk vectors of a collection, shrunk toward the collection's mean:
    ``(n·mean_lang + prior·mean_all) / (n + prior)``, so a language with a handful of chunks is
    not centred on itself (which would zero its vectors)."""

    def __init__(self, means: dict[str | None, np.ndarray], overall: np.ndarray) -> None:
        self.means = means
        self.overall = overall

    @classmethod
    def of(cls, languages: Sequence[str | None], vectors: np.ndarray, *, prior: float) -> Centroids:
        if not len(vectors):
            return cls({}, np.zeros(0, dtype=np.float32))
        overall = vectors.mean(axis=0)
        means = {}
        labels = np.array([lang or "" for lang in languages])
        for lang in set(labels):
            rows = vectors[labels == lang]
            means[lang or None] = (rows.sum(axis=0) + prior * overall) / (len(rows) + prior)
        return cls(means, overall)

    def centre(self, vectors: np.ndarray, languages: Sequence[str | None]) -> np.ndarray:
        """Unit vectors with each row's language centroid subtracted."""
        if not len(self.overall) or not len(vectors):
            return vectors
        shift = np.stack([self.means.get(lang, self.overall) for lang in languages])
        out = vectors - shift
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class DenseRetriever:
    """Nearest chunks by cosine similarity of the multilingual embeddings.

    With ``centring`` (the default, see README "Retrieval"), the store's ``centring_depth``
    nearest chunks are re-scored after subtracting each language's centroid from the query and
    chunk vectors (Libovický et al. 2020): multilingual encoders place each language in its own
    region, and removing that offset makes scores comparable across languages. Centroids come from
    the collection itself (cached, rebuilt when it changes); stored vectors stay raw.
    """

    def __init__(
        self, embedder: Embedder, store: VectorStore, *, cache_size: int = 4096, config: RetrievalConfig | None = None
    ) -> None:
        self.store = store
        self.config = config or RetrievalConfig()
        self.embed = QueryEmbeddings(embedder, cache_size=cache_size)
        self.centroids = PerCollection(store, self._centroids, recheck_s=self.config.index_recheck_s)

    def invalidate(self, collection: str) -> None:
        self.centroids.invalidate(collection)

    def _centroids(self, collection: str) -> Centroids:
        started = time.perf_counter()
        languages, vectors = self.store.vectors(collection, limit=self.config.centroid_sample)
        centroids = Centroids.of(languages, vectors, prior=self.config.centroid_prior)
        log.info("centroids of %r from %d chunks in %.2f s", collection, len(vectors), time.perf_counter() - started)
        return centroids

    def retrieve(
        self,
        queries: Sequence[str],
        collection: str,
        *,
        top_k: int,
        where: Where | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        if not queries:
            return []
        vectors = self.embed(queries)
        langs = list(languages) if languages is not None else [None] * len(queries)
        bonus = self.config.own_language_bonus
        if not self.config.centring and not bonus:
            return self.store.query(collection, vectors, top_k=top_k, where=where)
        depth = max(top_k, self.config.centring_depth)
        found = self.store.query_with_vectors(collection, vectors, top_k=depth, where=where)
        centroids = self.centroids(collection) if self.config.centring else Centroids({}, np.zeros(0, np.float32))
        queries_c = centroids.centre(vectors, langs)
        out = []
        for q, lang, (hits, chunk_vectors) in zip(queries_c, langs, found, strict=True):
            if not hits:
                out.append([])
                continue
            scores = centroids.centre(chunk_vectors, [h.chunk.language for h in hits]) @ q
            if bonus and lang is not None:
                scores = scores + bonus * np.array([h.chunk.language == lang for h in hits])
            order = np.argsort(-scores, kind="stable")[:top_k]
            out.append(
                [Hit(chunk=hits[i].chunk, score=float(scores[i]), retrieval_score=float(scores[i])) for i in order]
            )
        return out


class HybridRetriever:
    """Dense candidates fused with script-aware BM25 (rag.keyword).

    ``keyword_scope="own-language"`` (the measured default) lets keyword scores count only for
    chunks in the query's language: exact word overlap is strong evidence within a language and
    noise across languages (names and numbers aside, BM25 matches nothing useful in a translation,
    and fusing its noise pulls wrong-language chunks up). ``fusion`` is ``weighted``: the dense
    cosine plus ``keyword_weight`` × the BM25 score over the query's ideal score (the share of
    the query a chunk matches, see KeywordIndex.ideal_score), or ``rrf``
    (reciprocal rank fusion with constant ``rrf_k``).

    The keyword index is built from the store's chunk texts on first use and rebuilt when the
    collection's version changes (checked at most every ``recheck_s`` seconds).
    """

    def __init__(self, dense: DenseRetriever, store: VectorStore, config: RetrievalConfig) -> None:
        self.dense = dense
        self.store = store
        self.config = config
        self.keyword_index = PerCollection(store, self._build_index, recheck_s=config.index_recheck_s)

    def invalidate(self, collection: str) -> None:
        self.dense.invalidate(collection)
        self.keyword_index.invalidate(collection)

    def _build_index(self, collection: str) -> KeywordIndex:
        from rag.keyword import KeywordIndex

        ids: list[str] = []
        texts: list[str] = []
        languages: list[str | None] = []
        for page_ids, page_texts, page_languages in self.store.chunks(collection):
            ids += page_ids
            texts += page_texts
            languages += page_languages
        started = time.perf_counter()
        index = KeywordIndex.build(ids, texts, languages)
        log.info("keyword index of %r: %d chunks in %.2f s", collection, len(ids), time.perf_counter() - started)
        return index

    def retrieve(
        self,
        queries: Sequence[str],
        collection: str,
        *,
        top_k: int,
        where: Where | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        if not queries:
            return []
        cfg = self.config
        dense = self.dense.retrieve(queries, collection, top_k=top_k, where=where, languages=languages)
        index = self.keyword_index(collection)
        allowed = index.mask_for(ids=self.store.ids_where(collection, where)) if where else None
        langs = list(languages) if languages is not None else [None] * len(queries)
        keyword: list[list[tuple[str, float]]] = []
        for query, language in zip(queries, langs, strict=True):
            if cfg.keyword_scope == "own-language":
                if language is None:  # unknown query language: no keyword evidence to trust
                    keyword.append([])
                    continue
                mask = index.mask_for(languages=[language])
                mask = mask if allowed is None else mask & allowed
            else:
                mask = allowed
            found = index.search(query, language=language, top_k=top_k, mask=mask)
            ideal = index.ideal_score(query, language)
            # share of the query matched, in [0, 1]: one common word shared is a small lift
            keyword.append([(cid, min(score / ideal, 1.0)) for cid, score in found] if ideal > 0 else [])
        missing = {cid for kw in keyword for cid, _ in kw} - {h.chunk.id for hits in dense for h in hits}
        fetched = {c.id: c for c in self.store.get(collection, sorted(missing))}
        return [self._fuse(d, k, fetched, top_k) for d, k in zip(dense, keyword, strict=True)]

    def _fuse(
        self, dense: list[Hit], keyword: list[tuple[str, float]], fetched: dict[str, Chunk], top_k: int
    ) -> list[Hit]:
        cfg = self.config
        chunks = {h.chunk.id: h.chunk for h in dense}
        chunks.update({cid: fetched[cid] for cid, _ in keyword if cid in fetched and cid not in chunks})
        scores: dict[str, float] = {}
        if cfg.fusion == "rrf":
            for rank, h in enumerate(dense, 1):
                scores[h.chunk.id] = 1 / (cfg.rrf_k + rank)
            for rank, (cid, _) in enumerate(keyword, 1):
                if cid in chunks:
                    scores[cid] = scores.get(cid, 0.0) + cfg.keyword_weight / (cfg.rrf_k + rank)
        else:
            cosine = {h.chunk.id: h.retrieval_score for h in dense}
            floor = min(cosine.values(), default=0.0)  # a keyword-only chunk is no better than the last dense one
            for cid in chunks:
                scores[cid] = cosine.get(cid, floor)
            for cid, matched in keyword:
                if cid in chunks:
                    scores[cid] += cfg.keyword_weight * matched
        ranked = sorted(scores, key=lambda cid: scores[cid], reverse=True)[:top_k]
        return [Hit(chunk=chunks[cid], score=scores[cid], retrieval_score=scores[cid]) for cid in ranked]
