"""First stage: candidate chunks for a batch of queries, with optional metadata filters."""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.centroids import Centroids, VectorSums
from rag.config import RetrievalConfig
from rag.embedder import Embedder
from rag.errors import StoreClosedError
from rag.keyword import KeywordIndex, KeywordIndexes
from rag.store import VectorStore, Where
from rag.trace import substage
from rag.types import Chunk, Hit

log = logging.getLogger(__name__)


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

    def refresh(self, collection: str) -> None:
        """``collection`` was just written by this process: bring what is derived from it up to date."""
        ...

    def close(self) -> None:
        """Stop background work that uses the store (before the store is closed); the next
        ``retrieve`` starts it again."""
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
            with substage("embed"):
                vectors = self.embedder.embed_queries(missing)
            found.update(zip(missing, vectors, strict=True))
            with self._lock:
                for q, v in zip(missing, vectors, strict=True):
                    self._cache[q] = v
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.stack([found[q] for q in queries])


class VersionWatch:
    """The store's version of each collection as queries see it (one record read: the version
    counter); caches of derived state compare against it.

    With ``recheck_s`` > 0, a query never waits on it but for the first query of a collection
    (or one after ``IDLE_S`` without queries): a background thread reads the versions of the
    collections queried lately every ``recheck_s`` and, when one changed, runs the cheap
    ``on_change`` preparers (the new centroids, the keyword index's list of changed files: one
    record each) before queries see it and the slow ones (the keyword index's catch-up) after. So
    the query after another process's write costs about what any query costs, and a write or a
    delete is seen within ``recheck_s`` and those reads. With ``recheck_s`` 0 every query reads
    the version. The thread never opens a store its owner closed (``VectorStore.background``).
    """

    IDLE_S = 60.0  # a collection not queried for this long is no longer watched

    def __init__(self, store: VectorStore, *, recheck_s: float) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self._seen: dict[str, tuple[str, float]] = {}  # collection -> (version, read at)
        self._asked: dict[str, float] = {}  # collection -> last query
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()  # of the running poller
        self._preparers: list[tuple[bool, Callable[[str, str], None]]] = []  # (after publishing, prepare)
        self._lock = threading.Lock()
        _WATCHES.add(self)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the poller and wait for it (it must not call a store being closed, nor run while
        the interpreter exits); the next query reads the version itself and starts it again."""
        with self._lock:
            poller, self._poller = self._poller, None
            self._stop.set()
            self._seen.clear()
            self._asked.clear()
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=timeout_s)

    def on_change(self, prepare: Callable[[str, str], None], *, after: bool = False) -> None:
        """``prepare(collection, version)`` runs before queries see a new version of a collection
        (it must be quick: every query waits that long for the version), or ``after`` they do."""
        self._preparers.append((after, prepare))

    def __call__(self, collection: str) -> str:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(collection)
            self._asked[collection] = now
        # read here: the first time, or when the watcher fell behind (a store that is slow to answer)
        if self.recheck_s <= 0 or seen is None or now - seen[1] > 5 * self.recheck_s + 5:
            version = self.store.version(collection)
            with self._lock:
                self._seen[collection] = (version, now)
                if self.recheck_s > 0 and self._poller is None:
                    self._stop = threading.Event()
                    self._poller = threading.Thread(
                        target=self._poll, args=(self._stop,), name="version-watch", daemon=True
                    )
                    self._poller.start()
            return version
        return seen[0]

    def _poll(self, stop: threading.Event) -> None:
        while not stop.wait(self.recheck_s):
            now = time.monotonic()
            with self._lock:
                for collection in [c for c, t in self._asked.items() if now - t >= self.IDLE_S]:
                    del self._asked[collection]
                    self._seen.pop(collection, None)
                watched = [c for c in self._asked if c in self._seen]
                if not watched:
                    if not stop.is_set():
                        self._poller = None
                    return
            for collection in watched:
                if stop.is_set():
                    return
                self._check(collection)

    def _check(self, collection: str) -> None:
        read_at = time.monotonic()
        try:
            with self.store.background():
                self._update(collection, read_at)
        except StoreClosedError:  # closed by another user of the store: not reopened from here
            with self._lock:
                self._seen.pop(collection, None)
                self._asked.pop(collection, None)
        except Exception as e:  # noqa: BLE001 - a store that does not answer: queries keep the version they have
            log.warning("cannot read the version of collection %r: %s", collection, e)

    def _update(self, collection: str, read_at: float) -> None:
        version = self.store.version(collection)
        with self._lock:
            seen = self._seen.get(collection)
        if seen is None or seen[0] == version:
            self._publish(collection, version, read_at)
            return
        self._prepare(collection, version, after=False)
        self._publish(collection, version, read_at)
        self._prepare(collection, version, after=True)

    def _publish(self, collection: str, version: str, read_at: float) -> None:
        with self._lock:
            seen = self._seen.get(collection)
            # not forgotten meanwhile, and not older than what a query read itself meanwhile
            if seen is not None and seen[1] <= read_at:
                self._seen[collection] = (version, read_at)

    def _prepare(self, collection: str, version: str, *, after: bool) -> None:
        for when, prepare in self._preparers:
            if when != after:
                continue
            try:
                prepare(collection, version)
            except StoreClosedError:
                raise
            except Exception as e:  # noqa: BLE001 - queries then do it themselves, as on a first use
                log.warning("preparing version %s of collection %r failed: %s", version, collection, e)

    def forget(self, collection: str) -> None:
        with self._lock:
            self._seen.pop(collection, None)


_WATCHES: weakref.WeakSet[VersionWatch] = weakref.WeakSet()
# pollers are daemon threads: stopped and waited for before the interpreter tears down the
# store's native client under them
atexit.register(lambda: [watch.close(timeout_s=5.0) for watch in list(_WATCHES)])


class DenseRetriever:
    """Nearest chunks by cosine similarity of the multilingual embeddings.

    With ``centring`` (the default, see README "Retrieval"), the store's ``centring_depth``
    nearest chunks are re-scored after subtracting each language's centroid from the query and
    chunk vectors (Libovický et al. 2020): multilingual encoders place each language in its own
    region, and removing that offset makes scores comparable across languages. The centroids
    come from the per-language vector sums the store keeps with the collection (every write and
    delete updates them), read again when the collection's version changes; stored vectors stay raw.
    """

    def __init__(
        self, embedder: Embedder, store: VectorStore, *, cache_size: int = 4096, config: RetrievalConfig | None = None
    ) -> None:
        self.store = store
        self.config = config or RetrievalConfig()
        self.embed = QueryEmbeddings(embedder, cache_size=cache_size)
        self.watch = VersionWatch(store, recheck_s=self.config.index_recheck_s)
        self._centroids: dict[str, tuple[str, Centroids]] = {}  # collection -> (version, centroids)
        if self.config.centring:
            self.watch.on_change(lambda collection, version: self.centroids(collection, version=version))

    def refresh(self, collection: str) -> None:
        self.watch.forget(collection)
        self._centroids.pop(collection, None)

    def close(self) -> None:
        self.watch.close()

    def centroids(self, collection: str, *, version: str | None = None) -> Centroids:
        """Of ``version`` (default: the one queries see now), from the store's vector sums."""
        version = version or self.watch(collection)
        cached = self._centroids.get(collection)
        if cached is not None and cached[0] == version:
            return cached[1]
        state = self.store.state(collection)
        if state is not None:
            sums = state.sums
        else:  # written before the store kept sums (the next ingestion job adds them): add them up here
            started = time.perf_counter()
            sums = VectorSums()
            for _, languages, vectors in self.store.scan_vectors(collection):
                sums.add(languages, vectors)
            log.info("centroids of %r from %d chunks in %.2f s", collection, sums.total, time.perf_counter() - started)
        centroids = sums.centroids(prior=self.config.centroid_prior)
        self._centroids[collection] = (version, centroids)
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
        if not self.config.centring and not self.config.own_language_bonus:
            return self.store.query(collection, self.embed(queries), top_k=top_k, where=where)
        ranked = self.ranked(queries, collection, top_k=top_k, where=where, languages=languages)
        return shown(store_chunks(self.store, collection), lambda gone: [_first(r, top_k, gone) for r in ranked])

    def ranked(
        self,
        queries: Sequence[str],
        collection: str,
        *,
        top_k: int,
        where: Where | None = None,
        languages: Sequence[str | None] | None = None,
        candidates: Candidates | None = None,
    ) -> list[list[tuple[str, float]]]:
        """(chunk id, final dense score) of every chunk the store returned for each query
        (``centring_depth`` with centring, else ``top_k``), best first. Ranked by ids and
        vectors alone: texts and metadata are read for the few shown (``shown``). The chunks'
        languages and vectors come from ``candidates`` (e.g. the keyword index; the store
        returns only ids then), by default from the store's query and metadata. A chunk gone
        from the store meanwhile is left out."""
        if not queries:
            return []
        vectors = self.embed(queries)
        langs = list(languages) if languages is not None else [None] * len(queries)
        bonus = self.config.own_language_bonus
        if not self.config.centring and not bonus:
            return [
                list(zip(n.ids, n.scores)) for n in self.store.nearest(collection, vectors, top_k=top_k, where=where)
            ]
        depth = max(top_k, self.config.centring_depth)
        found = self.store.nearest(collection, vectors, top_k=depth, where=where, vectors=candidates is None)
        ids = sorted({cid for n in found for cid in n.ids})
        if candidates is None:
            language_of = self.store.languages(collection, ids) if ids else {}
            vector_of = None
        else:
            looked_up = candidates(ids) if ids else {}
            language_of = {cid: lang for cid, (lang, _) in looked_up.items()}
            vector_of = {cid: vector for cid, (_, vector) in looked_up.items()}
        centroids = self.centroids(collection) if self.config.centring else Centroids.none()
        queries_c = centroids.centre(vectors, langs)
        out: list[list[tuple[str, float]]] = []
        for q, lang, n in zip(queries_c, langs, found, strict=True):
            rows = [i for i, cid in enumerate(n.ids) if cid in language_of]
            if not rows:
                out.append([])
                continue
            kept = [n.ids[i] for i in rows]
            if vector_of is not None:
                chunk_vectors = np.stack([vector_of[cid] for cid in kept])
            else:
                chunk_vectors = n.vectors if len(rows) == len(n.ids) else n.vectors[rows]
            chunk_langs = [language_of[cid] for cid in kept]
            scores = centroids.centre(chunk_vectors, chunk_langs) @ q
            if bonus and lang is not None:
                scores = scores + bonus * np.array([chunk_lang == lang for chunk_lang in chunk_langs])
            order = np.argsort(-scores, kind="stable")
            out.append([(kept[i], float(scores[i])) for i in order])
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

    The keyword index is a persistent, incremental tantivy index per collection
    (KeywordIndexes under ``index_dir``), caught up with the store when its version changes.
    """

    def __init__(self, dense: DenseRetriever, store: VectorStore, config: RetrievalConfig, *, index_dir: Path) -> None:
        self.dense = dense
        self.store = store
        self.config = config
        self.keyword = KeywordIndexes(store, index_dir)
        dense.watch.on_change(self.keyword.prepare)
        dense.watch.on_change(self.keyword.catch_up, after=True)
        self._keyword_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="keyword-search")

    def refresh(self, collection: str) -> None:
        self.dense.refresh(collection)
        self.keyword.refresh(collection)

    def close(self) -> None:
        self.dense.close()

    def keyword_index(self, collection: str) -> KeywordIndex:
        return self.keyword.get(collection, self.dense.watch(collection))

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
        version = self.dense.watch(collection)
        index = self.keyword.get(collection, version)
        filter_languages, other_filter = _language_filter(where)
        # a filter the index cannot apply: take more keyword hits, keep those the store says match
        depth = top_k if other_filter is None else max(5 * top_k, 100)
        langs = list(languages) if languages is not None else [None] * len(queries)

        def keyword_hits() -> tuple[list[list[tuple[str, float]]], set[str] | None]:
            keyword: list[list[tuple[str, float]]] = []
            for query, language in zip(queries, langs, strict=True):
                allowed: Collection[str | None] | None = filter_languages
                if cfg.keyword_scope == "own-language":
                    # unknown query language: no keyword evidence to trust
                    allowed = (
                        [] if language is None else [lang for lang in [language] if allowed is None or lang in allowed]
                    )
                if allowed is not None and not allowed:
                    keyword.append([])
                    continue
                found = index.search(query, language=language, top_k=depth, languages=allowed)
                ideal = index.ideal_score(query, language)
                # share of the query matched, in [0, 1]: one common word shared is a small lift
                keyword.append([(cid, min(score / ideal, 1.0)) for cid, score in found] if ideal > 0 else [])
            passing = None
            if other_filter is not None:  # which keyword hits pass the filter the index cannot apply
                ids = sorted({cid for kw in keyword for cid, _ in kw})
                passing = self.store.filter_ids(collection, ids, other_filter) if ids else set()
            return keyword, passing

        # The keyword search runs beside the dense one (embedding the query, Chroma's search:
        # neither holds the GIL while it works), not after it.
        searching = self._keyword_pool.submit(keyword_hits)

        # The candidates' languages and vectors (for centring), and the shown hits' texts and
        # fields, from the keyword index: Chroma's metadata and vectors cost more than the rest of
        # the query. Left to the store: chunks of files that changed since the version the index
        # reflects (while it catches up: one read of the change feed per version) or are being
        # rewritten, and ids the index lacks (a file still being written).
        pending = self.keyword.pending_keys(collection, version)

        def candidates(ids: Sequence[str]) -> dict[str, tuple[str | None, np.ndarray]]:
            found = index.candidates(ids, skip=pending) if pending is not None else {}
            missing = [cid for cid in ids if cid not in found]
            if missing:
                got, langs, vectors = self.store.vectors(collection, missing)
                found |= {cid: (lang, vector) for cid, lang, vector in zip(got, langs, vectors, strict=True)}
            return found

        from_store = store_chunks(self.store, collection)

        def chunks(ids: Sequence[str]) -> dict[str, Chunk]:
            found = index.chunks(ids, skip=pending[0]) if pending is not None else {}
            missing = [cid for cid in ids if cid not in found]
            return found | from_store(missing) if missing else found

        pool = self.dense.ranked(
            queries, collection, top_k=top_k, where=where, languages=languages, candidates=candidates
        )
        keyword, passing = searching.result()
        if passing is not None:
            keyword = [[(cid, s) for cid, s in kw if cid in passing][:top_k] for kw in keyword]
        return shown(
            chunks,
            lambda gone: [self._fuse(_first(d, top_k, gone), k, gone, top_k) for d, k in zip(pool, keyword, strict=True)],
        )  # fmt: skip

    def _fuse(
        self, dense: list[tuple[str, float]], keyword: list[tuple[str, float]], gone: Collection[str], top_k: int
    ) -> list[tuple[str, float]]:
        """The best ``top_k`` (chunk id, fused score) of the dense top ``top_k`` and the keyword
        hits; keyword hits in ``gone`` (deleted from the store) count for rank only."""
        cfg = self.config
        candidates = dict.fromkeys(cid for cid, _ in dense)
        candidates.update(dict.fromkeys(cid for cid, _ in keyword if cid not in gone))
        scores: dict[str, float] = {}
        if cfg.fusion == "rrf":
            for rank, (cid, _) in enumerate(dense, 1):
                scores[cid] = 1 / (cfg.rrf_k + rank)
            for rank, (cid, _) in enumerate(keyword, 1):
                if cid in candidates:
                    scores[cid] = scores.get(cid, 0.0) + cfg.keyword_weight / (cfg.rrf_k + rank)
        else:
            cosine = dict(dense)
            floor = min(cosine.values(), default=0.0)  # a keyword-only chunk is no better than the last dense one
            for cid in candidates:
                scores[cid] = cosine.get(cid, floor)
            for cid, matched in keyword:
                if cid in candidates:
                    scores[cid] += cfg.keyword_weight * matched
        ranked = sorted(scores, key=lambda cid: scores[cid], reverse=True)[:top_k]
        return [(cid, scores[cid]) for cid in ranked]


Candidates = Callable[[Sequence[str]], dict[str, tuple[str | None, np.ndarray]]]
"""(language, stored vector) of each of the ids found; ids gone from the collection are left out."""
ChunkReader = Callable[[Sequence[str]], dict[str, Chunk]]
"""The chunk of each of the ids found; ids gone from the collection are left out."""


def store_chunks(store: VectorStore, collection: str) -> ChunkReader:
    return lambda ids: {c.id: c for c in store.get(collection, ids)}


def _first(ranked: list[tuple[str, float]], top_k: int, gone: Collection[str]) -> list[tuple[str, float]]:
    return [(cid, score) for cid, score in ranked if cid not in gone][:top_k] if gone else ranked[:top_k]


def shown(read: ChunkReader, rank: Callable[[set[str]], list[list[tuple[str, float]]]]) -> list[list[Hit]]:
    """Hits of the ids that ``rank`` puts first for each query, their chunks read in one call of
    ``read``. ``rank(gone)`` ranks without the ids in ``gone``: an id the collection no longer has
    (deleted since it was searched) is ranked away and the new ones read, as often as that happens."""
    gone: set[str] = set()
    chunks: dict[str, Chunk] = {}
    while True:
        ranked = rank(gone)
        wanted = sorted({cid for r in ranked for cid, _ in r} - chunks.keys())
        if wanted:
            chunks.update(read(wanted))
            missing = {cid for cid in wanted if cid not in chunks}
            if missing:
                gone |= missing
                continue
        return [[Hit(chunk=chunks[cid], score=score, retrieval_score=score) for cid, score in r] for r in ranked]


def _language_filter(where: Where | None) -> tuple[set[str] | None, Where | None]:
    """(the languages ``where`` allows, if that is all it says; ``where`` itself otherwise)."""
    if not where:
        return None, None
    if set(where) == {"language"}:
        value = where["language"]
        if isinstance(value, str):
            return {value}, None
        if isinstance(value, dict) and set(value) == {"$eq"} and isinstance(value["$eq"], str):
            return {value["$eq"]}, None
        if isinstance(value, dict) and set(value) == {"$in"} and all(isinstance(v, str) for v in value["$in"]):
            return set(value["$in"]), None
    return None, where
