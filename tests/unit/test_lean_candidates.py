"""The first stage ranks its candidates by ids and vectors alone (issue 13): Chroma returns ids
and scores, the candidates' languages and vectors and the shown hits' texts and metadata come
from the keyword index where it reflects the version the query reads (from Chroma where it
does not, or lacks them). Its results must be
those of the full-metadata path it replaced, to the last bit of every score: ``reference`` below
is that path (Chroma's top ``centring_depth`` with texts, metadata and vectors, fused with the
keyword hits' chunks), run against the same store, index and centroids.

A real embedded Chroma and tantivy index; random vectors, text drawn from small vocabularies so
that keyword hits within and across languages are common; no model.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from ingestion.job import CollectionWriter, write_documents
from rag.centroids import Centroids
from rag.config import RetrievalConfig, StoreConfig
from rag.retriever import DenseRetriever, HybridRetriever
from rag.store import ChromaStore, ManifestEntry
from rag.types import Chunk, Hit

DIM = 16
WORDS = {
    "en": "train station ticket platform delay engine river bridge castle museum",
    "de": "Zug Bahnhof Fahrkarte Gleis Verspätung Motor Fluss Brücke Burg Museum",
    "ru": "поезд вокзал билет платформа задержка двигатель река мост замок музей",
    "zh": "火车 车站 车票 站台 延误 发动机 河流 桥梁 城堡 博物馆",
    "th": "รถไฟ สถานี ตั๋ว ชานชาลา ล่าช้า เครื่องยนต์ แม่น้ำ สะพาน ปราสาท พิพิธภัณฑ์",
    "ar": "قطار محطة تذكرة رصيف تأخير محرك نهر جسر قلعة متحف",
}
SHARED = ["E-7731", "Zaunkönig", "2024", "Leeds"]  # names and numbers match across languages
LANGUAGES = list(WORDS)


def text(rng: np.random.Generator, language: str) -> str:
    words = WORDS[language].split()
    picked = [words[i] for i in rng.integers(0, len(words), size=4)]
    if rng.random() < 0.3:
        picked.append(SHARED[int(rng.integers(0, len(SHARED)))])
    return " ".join(picked)


def documents(rng: np.random.Generator, n_documents: int, per_document: int, prefix: str = "/kb", status="done"):
    out = []
    for d in range(n_documents):
        language = LANGUAGES[d % len(LANGUAGES)]
        source = f"{prefix}/{language}/{d}.txt"
        chunks = []
        for i in range(per_document):
            body = text(rng, language)
            # every 17th document has chunks without a language (old ingestions, undetectable text)
            chunks.append(Chunk(id=f"{source}#{i}", text=body, source=source, index=i, start=0, end=len(body),
                                language=None if d % 17 == 5 else language, doc_hash=source))  # fmt: skip
        vectors = rng.standard_normal((per_document, DIM)).astype(np.float32)
        vectors += 0.8 * np.eye(DIM, dtype=np.float32)[LANGUAGES.index(language)]  # a region per language
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append(
            (ManifestEntry(source, source, tuple(c.id for c in chunks), status, language=language), chunks, vectors)
        )
    return out


class HashEmbedder:
    """A fixed random unit vector per query text."""

    def embed_queries(self, texts):
        rows = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(DIM).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)


QUERIES = [(text(np.random.default_rng(100 + i), LANGUAGES[i % 6]), LANGUAGES[i % 6]) for i in range(24)] + [
    ("Was bedeutet E-7731?", "de"),
    ("Zaunkönig", None),  # unknown language: dense only
]


@pytest.fixture
def store(tmp_path):
    store = ChromaStore(StoreConfig(path=tmp_path / "chroma"))
    store.ensure_collection("kb1", fingerprint={"embedding_model": "random", "dimension": DIM})
    write_documents(store, "kb1", documents(np.random.default_rng(0), 60, 20))  # 1,200 chunks
    yield store
    store.close()


def retrievers(store, tmp_path, **config) -> tuple[HybridRetriever, DenseRetriever]:
    settings = RetrievalConfig(index_recheck_s=0, **config)
    hybrid = HybridRetriever(DenseRetriever(HashEmbedder(), store, config=settings), store, settings,
                             index_dir=tmp_path / "index")  # fmt: skip
    dense = DenseRetriever(HashEmbedder(), store, config=settings.model_copy(update={"mode": "dense"}))
    return hybrid, dense


def reference_dense(dense: DenseRetriever, collection: str, queries, languages, *, top_k: int) -> list[list[Hit]]:
    """The dense first stage before issue 13: the top centring_depth with texts, metadata and
    vectors, re-scored (``retrieve`` kept the first top_k, the hybrid stage fused them)."""
    cfg = dense.config
    vectors = dense.embed(queries)
    if not cfg.centring and not cfg.own_language_bonus:
        return dense.store.query(collection, vectors, top_k=top_k)
    found = dense.store.query_with_vectors(collection, vectors, top_k=max(top_k, cfg.centring_depth))
    centroids = dense.centroids(collection) if cfg.centring else Centroids.none()
    out = []
    for q, lang, (hits, chunk_vectors) in zip(centroids.centre(vectors, languages), languages, found, strict=True):
        scores = centroids.centre(chunk_vectors, [h.chunk.language for h in hits]) @ q
        if cfg.own_language_bonus and lang is not None:
            scores = scores + cfg.own_language_bonus * np.array([h.chunk.language == lang for h in hits])
        order = np.argsort(-scores, kind="stable")
        out.append([Hit(chunk=hits[i].chunk, score=float(scores[i]), retrieval_score=float(scores[i])) for i in order])
    return out


def reference(hybrid: HybridRetriever, collection: str, queries, languages, *, top_k: int) -> list[list[Hit]]:
    """The hybrid first stage before issue 13: keyword hits' chunks read whole, fused with the above."""
    cfg = hybrid.config
    index = hybrid.keyword_index(collection)
    results = []
    pools = reference_dense(hybrid.dense, collection, queries, languages, top_k=top_k)
    for query, language, pool in zip(queries, languages, pools, strict=True):
        allowed = None if cfg.keyword_scope == "all" else [language] if language is not None else []
        keyword: list[tuple[str, float]] = []
        if allowed is None or allowed:
            found = index.search(query, language=language, top_k=top_k, languages=allowed)
            ideal = index.ideal_score(query, language)
            keyword = [(cid, min(s / ideal, 1.0)) for cid, s in found] if ideal > 0 else []
        fetched = {c.id: c for c in hybrid.store.get(collection, [cid for cid, _ in keyword])}
        dense = pool[:top_k]
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
            floor = min(cosine.values(), default=0.0)
            for cid in chunks:
                scores[cid] = cosine.get(cid, floor)
            for cid, matched in keyword:
                if cid in chunks:
                    scores[cid] += cfg.keyword_weight * matched
        ranked = sorted(scores, key=lambda cid: scores[cid], reverse=True)[:top_k]
        results.append([Hit(chunk=chunks[cid], score=scores[cid], retrieval_score=scores[cid]) for cid in ranked])
    return results


def assert_identical(got: list[list[Hit]], want: list[list[Hit]]) -> None:
    assert [[(h.chunk, h.score, h.retrieval_score) for h in hits] for hits in got] == [
        [(h.chunk, h.score, h.retrieval_score) for h in hits] for hits in want
    ]


def run(retriever, top_k: int = 20):
    return retriever.retrieve([q for q, _ in QUERIES], "kb1", top_k=top_k, languages=[lang for _, lang in QUERIES])


def wait_until(condition, seconds: float) -> None:
    """Poll ``condition`` until it holds or ``seconds`` pass (the caller asserts what it needs)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def expected(hybrid, top_k: int = 20):
    return reference(hybrid, "kb1", [q for q, _ in QUERIES], [lang for _, lang in QUERIES], top_k=top_k)


class Calls:
    """Counts the store calls a retrieval makes, and the ids each read asked for."""

    def __init__(self, store, monkeypatch) -> None:
        self.languages: list[list[str]] = []
        self.vectors: list[list[str]] = []
        self.gets: list[list[str]] = []
        self.nearest: list[bool] = []  # whether each asked for vectors
        real = {name: getattr(store, name) for name in ("languages", "vectors", "get", "nearest")}
        monkeypatch.setattr(
            store, "languages", lambda name, ids: self.languages.append(list(ids)) or real["languages"](name, ids)
        )
        monkeypatch.setattr(
            store, "vectors", lambda name, ids: self.vectors.append(list(ids)) or real["vectors"](name, ids)
        )
        monkeypatch.setattr(store, "get", lambda name, ids: self.gets.append(list(ids)) or real["get"](name, ids))
        monkeypatch.setattr(
            store, "nearest",
            lambda name, q, **kw: self.nearest.append(kw.get("vectors", False)) or real["nearest"](name, q, **kw),
        )  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [{}, {"fusion": "rrf"}, {"keyword_scope": "all"}, {"own_language_bonus": 0.2}, {"centring": False, "own_language_bonus": 0.1},
     {"centring": False}, {"centring_depth": 30, "keyword_weight": 0.5}],
    ids=["default", "rrf", "scope-all", "bonus", "bonus-only", "no-centring", "shallow"],
)  # fmt: skip
def test_results_are_identical_to_the_full_metadata_path(store, tmp_path, monkeypatch, config):
    hybrid, dense = retrievers(store, tmp_path, **config)
    hybrid.refresh("kb1")
    want = expected(hybrid)
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert all(len(hits) == 20 for hits in got)
    assert_identical(got, want)
    # the lean path: one Chroma call (ids and scores); languages, vectors and shown chunks from the index
    assert calls.nearest == [False] and calls.languages == calls.vectors == calls.gets == []
    assert_identical(
        dense.retrieve([q for q, _ in QUERIES], "kb1", top_k=20, languages=[lang for _, lang in QUERIES]),
        [
            hits[:20]
            for hits in reference_dense(dense, "kb1", [q for q, _ in QUERIES], [lang for _, lang in QUERIES], top_k=20)
        ],
    )


def test_chunks_the_keyword_index_lacks_take_their_language_from_the_store(store, tmp_path, monkeypatch):
    hybrid, _ = retrievers(store, tmp_path)
    hybrid.refresh("kb1")
    # a file being written: its chunks are in Chroma, its manifest entry is not done, so the
    # index (caught up with the store's version) does not have them; they sit next to the queries
    rng = np.random.default_rng(7)
    queries = hybrid.dense.embed([q for q, _ in QUERIES])
    (_, chunks, _), = documents(rng, 1, len(QUERIES), prefix="/writing", status="writing")  # fmt: skip
    chunks = [replace(c, language=lang or "de") for c, (_, lang) in zip(chunks, QUERIES, strict=True)]
    store.upsert("kb1", chunks, queries + 0.01)
    assert hybrid.keyword.reflects("kb1", store.version("kb1"))
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert_identical(got, expected(hybrid))
    new = {c.id for c in chunks}
    assert calls.vectors and set(calls.vectors[0]) <= new and calls.languages == []
    assert calls.gets and set(calls.gets[0]) <= new  # only those the index lacks read from Chroma
    assert new <= {h.chunk.id for hits in got for h in hits}


def test_an_index_behind_the_store_is_not_asked_for_languages(store, tmp_path, monkeypatch):
    hybrid, _ = retrievers(store, tmp_path)
    hybrid.refresh("kb1")
    # a file rewritten with the same chunk ids in another language (another process wrote it:
    # this process's index learns of it in the background)
    (entry, chunks, vectors), = documents(np.random.default_rng(0), 1, 20)  # fmt: skip
    write_documents(store, "kb1", [(entry, [replace(c, language="th") for c in chunks], vectors)])
    monkeypatch.setattr(hybrid.keyword, "_catch_up_in_background", lambda collection: None)
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert not hybrid.keyword.reflects("kb1", store.version("kb1"))
    assert_identical(got, expected(hybrid))
    # languages and vectors from the store, not from the index's older copy; shown chunks too
    assert calls.nearest == [False] and calls.vectors and calls.gets


def test_chunks_of_a_file_being_rewritten_or_deleted_are_read_from_the_store(store, tmp_path, monkeypatch):
    hybrid, _ = retrievers(store, tmp_path)
    hybrid.refresh("kb1")
    first = run(hybrid)
    # A job (another process) marks files "writing" before it deletes or replaces their chunks;
    # this process's index catches up with that mark, then the chunks go. The index still holds
    # them, but no longer serves them: the store says they are gone, and they are ranked away.
    shown = [h.chunk for hits in first for h in hits[:3]]
    sources = sorted({c.source for c in shown})
    writer = CollectionWriter(store, "kb1")
    writer.begin(list(store.entries("kb1", sources).values()))
    hybrid.keyword.refresh("kb1")
    assert hybrid.keyword.reflects("kb1", store.version("kb1"))
    gone = sorted({cid for e in store.entries("kb1", sources).values() for cid in e.chunk_ids})
    store.delete("kb1", gone)
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    read = {cid for ids in calls.gets for cid in ids}
    assert read and not read - set(gone)  # only those files' chunks read from the store
    assert all(len(hits) == 20 for hits in got)
    assert not {h.chunk.id for hits in got for h in hits} & set(gone)
    assert_identical(got, expected(hybrid))
    # the deletion finished: the index drops them, and serves everything again
    writer.delete_sources(sources)
    hybrid.keyword.refresh("kb1")
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert calls.gets == calls.vectors == []
    assert_identical(got, expected(hybrid))


def test_while_the_index_catches_up_it_serves_all_but_the_files_that_changed(store, tmp_path, monkeypatch):
    hybrid, _ = retrievers(store, tmp_path)
    hybrid.refresh("kb1")
    first = run(hybrid)
    monkeypatch.setattr(hybrid.keyword, "_catch_up_in_background", lambda collection: None)
    # another process deletes the files of hits this query would show, and adds one
    sources = sorted({h.chunk.source for hits in first for h in hits[:3]})
    gone = {cid for e in store.entries("kb1", sources).values() for cid in e.chunk_ids}
    CollectionWriter(store, "kb1").delete_sources(sources)
    added = documents(np.random.default_rng(5), 1, 30, prefix="/new")
    write_documents(store, "kb1", added)
    new = set(added[0][0].chunk_ids)
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert not hybrid.keyword.reflects("kb1", store.version("kb1"))
    assert hybrid.keyword.pending("kb1", store.version("kb1")) == {*sources, added[0][0].source}
    # only the changed files' chunks are read from the store; the rest comes from the index
    read = {cid for ids in calls.gets + calls.vectors for cid in ids}
    assert read and read <= new | gone
    assert all(len(hits) == 20 for hits in got)
    assert not {h.chunk.id for hits in got for h in hits} & gone
    assert_identical(got, expected(hybrid))


def test_the_index_serves_chunks_and_vectors_as_the_store_has_them(store, tmp_path):
    hybrid, _ = retrievers(store, tmp_path)
    index = hybrid.keyword.refresh("kb1")
    ids = sorted(cid for e in store.manifest("kb1").values() for cid in e.chunk_ids)
    chunks, vectors = store.chunks_with_vectors("kb1", ids)
    assert index.chunks(ids) == {c.id: c for c in chunks}
    served = index.candidates(ids)
    assert [served[c.id][0] for c in chunks] == [c.language for c in chunks]
    assert np.array_equal(np.stack([served[c.id][1] for c in chunks]), vectors)  # bit for bit
    assert index.chunks(["nope"]) == {} and index.candidates([]) == {}


def test_no_queries_and_an_empty_collection(tmp_path):
    store = ChromaStore(StoreConfig(path=tmp_path / "chroma"))
    store.ensure_collection("kb1", fingerprint={"embedding_model": "random", "dimension": DIM})
    hybrid, dense = retrievers(store, tmp_path)
    assert hybrid.retrieve([], "kb1", top_k=5) == [] and dense.retrieve([], "kb1", top_k=5) == []
    assert hybrid.retrieve(["Zug"], "kb1", top_k=5, languages=["de"]) == [[]]
    assert dense.retrieve(["Zug"], "kb1", top_k=5, languages=["de"]) == [[]]
    store.close()


def test_a_new_version_is_read_in_the_background_and_queries_never_wait(store, tmp_path, monkeypatch):
    import threading

    settings = RetrievalConfig(index_recheck_s=0.2)
    hybrid = HybridRetriever(DenseRetriever(HashEmbedder(), store, config=settings), store, settings,
                             index_dir=tmp_path / "index")  # fmt: skip
    run(hybrid)  # the first use reads the version and builds the index
    # another process writes (this one is not told): a file near every query
    added = documents(np.random.default_rng(9), 1, len(QUERIES), prefix="/new")
    entry, chunks, _ = added[0]
    queries = hybrid.dense.embed([q for q, _ in QUERIES])
    write_documents(store, "kb1", [(entry, chunks, queries + 0.01)])
    time.sleep(0.25)
    on_query_thread: list[str] = []
    real_version = store.version
    monkeypatch.setattr(
        store, "version",
        lambda name: (threading.current_thread() is threading.main_thread() and on_query_thread.append(name))
        or real_version(name),
    )  # fmt: skip
    run(hybrid)  # its version is old: read again in the background, not waited for
    assert on_query_thread == []
    wait_until(lambda: hybrid.keyword.reflects("kb1", real_version("kb1")), 10)
    # the version published, the keyword index caught up in the background: the next query
    # reads nothing but Chroma's ids and scores, and finds the new file
    assert hybrid.dense.watch("kb1") == real_version("kb1")
    calls = Calls(store, monkeypatch)
    got = run(hybrid)
    assert calls.nearest == [False] and calls.gets == calls.vectors == calls.languages == []
    assert on_query_thread == []
    assert set(entry.chunk_ids) <= {h.chunk.id for hits in got for h in hits}
    assert_identical(got, expected(hybrid))
    # a collection not queried for IDLE_S is no longer watched: its next query reads the version
    monkeypatch.setattr(hybrid.dense.watch, "IDLE_S", 0.3)
    time.sleep(1.0)
    run(hybrid)
    assert on_query_thread == ["kb1"]
    # closed (Pipeline.close does it before closing the store): the poller stops and reads nothing
    watch = hybrid.dense.watch
    assert watch._poller is not None and watch._poller.is_alive()
    poller = watch._poller
    hybrid.close()
    assert not poller.is_alive()
    polled: list[str] = []
    monkeypatch.setattr(store, "version", lambda name: polled.append(name) or real_version(name))
    time.sleep(0.6)
    assert polled == []
    run(hybrid)  # and the next query starts it again
    assert polled == ["kb1"] and watch._poller is not None and watch._poller.is_alive()
    hybrid.close()


def test_a_file_deleted_by_another_process_is_not_shown_while_the_index_catches_up(store, tmp_path, monkeypatch):
    """The watcher publishes a new version once it has read the list of files changed since the
    index's version (one record), not after the index caught up: from then on, a deleted file's
    chunks are never shown from the index, however long the catch-up takes."""
    import threading

    settings = RetrievalConfig(index_recheck_s=0.1)
    hybrid = HybridRetriever(DenseRetriever(HashEmbedder(), store, config=settings), store, settings,
                             index_dir=tmp_path / "index")  # fmt: skip
    first = run(hybrid)
    catching_up = threading.Event()
    release = threading.Event()
    real_refresh = hybrid.keyword.refresh

    def slow_refresh(collection):  # a big change: the catch-up takes a while
        catching_up.set()
        release.wait(20)
        return real_refresh(collection)

    monkeypatch.setattr(hybrid.keyword, "refresh", slow_refresh)
    # another process deletes the files of hits the queries show (found by keyword, too)
    sources = sorted({h.chunk.source for hits in first for h in hits[:5]})
    gone = {cid for e in store.entries("kb1", sources).values() for cid in e.chunk_ids}
    CollectionWriter(store, "kb1").delete_sources(sources)
    try:
        # within a few rechecks, well before a query would read the version itself (5.5 s)
        wait_until(lambda: hybrid.dense.watch("kb1") == store.version("kb1"), 2)
        assert hybrid.dense.watch("kb1") == store.version("kb1")  # seen, and the index still behind
        assert catching_up.wait(5) and not hybrid.keyword.reflects("kb1", store.version("kb1"))
        got = run(hybrid)
        assert all(len(hits) == 20 for hits in got)
        assert not {h.chunk.id for hits in got for h in hits} & gone
        assert_identical(got, expected(hybrid))
    finally:
        release.set()
    wait_until(lambda: hybrid.keyword.reflects("kb1", store.version("kb1")), 10)
    assert hybrid.keyword.reflects("kb1", store.version("kb1"))
    assert not {h.chunk.id for hits in run(hybrid) for h in hits} & gone
    hybrid.close()


def test_a_store_closed_by_one_user_is_not_reopened_by_anothers_watcher(store, tmp_path):

    settings = RetrievalConfig(index_recheck_s=0.1)
    # two pipelines' retrievers on one store (an app's variants of one pipeline share it)
    first, second = (
        HybridRetriever(
            DenseRetriever(HashEmbedder(), store, config=settings), store, settings, index_dir=tmp_path / f"index-{n}"
        )  # fmt: skip
        for n in range(2)
    )
    run(first), run(second)
    first.close()
    store.close()  # the embedded store let go of, e.g. for another process; `second` is not closed
    time.sleep(0.5)
    assert store._client is None and store._lock is None  # its watcher did not reopen it
    assert second.dense.watch._poller is None
    assert all(len(hits) == 20 for hits in run(second))  # a query does (documented), and watches again
    second.close()


def test_background_calls_never_open_a_closed_store(store):
    from rag.errors import StoreClosedError

    version = store.version("kb1")
    with store.background():  # open: background calls work
        assert store.version("kb1") == version
    store.close()
    with pytest.raises(StoreClosedError, match="closed"), store.background():
        store.version("kb1")
    assert store._client is None and store._lock is None
    assert store.version("kb1") == version  # a call of its owner opens it again
