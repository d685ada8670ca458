"""Hybrid first stage: dense hits from a real embedded Chroma fused with BM25 (rag.keyword).

The embedder here is a lookup table of hand-made vectors, so that each test decides exactly
what the dense side ranks; the keyword side, the store and the fusion are the real code.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rag.config import RetrievalConfig, StoreConfig
from rag.centroids import Centroids
from rag.retriever import DenseRetriever, HybridRetriever
from rag.store import ChromaStore
from rag.types import Chunk
from tests.helpers import store_chunks

DIM = 8


class TableEmbedder:
    """Query text -> a fixed unit vector (axis ``n`` of the table); unknown text -> axis 7."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table
        self.calls = 0

    def embed_queries(self, texts):
        self.calls += 1
        return np.stack([axis(self.table.get(t, 7)) for t in texts])


def axis(n: int, noise: float = 0.0) -> np.ndarray:
    v = np.full(DIM, noise, dtype=np.float32)
    v[n] = 1.0
    return v / np.linalg.norm(v)


def chunk(cid: str, text: str, language: str, source: str | None = None) -> Chunk:
    return Chunk(id=cid, text=text, source=source or f"/kb/{cid}.txt", index=0, start=0, end=len(text),
                 language=language, doc_hash="h")  # fmt: skip


# (chunk, its vector): the dense side prefers the chunks on axis 0, by their noise level
CHUNKS = [
    (chunk("de-vague", "Der Fehler tritt bei Kälte auf und verschwindet wieder.", "de"), axis(0, 0.01)),
    (chunk("de-code", "Fehlercode E-7731 bedeutet: Sensor im Kühlschrank defekt.", "de"), axis(0, 0.20)),
    (chunk("en-code", "Error code E-7731 means the fridge sensor failed.", "en"), axis(0, 0.05)),
    (chunk("th-code", "รหัสข้อผิดพลาด E-7731 หมายถึงเซ็นเซอร์ตู้เย็นเสีย", "th"), axis(0, 0.10)),
    (chunk("zh-other", "冰箱的门没有关好。", "zh"), axis(1)),
    (chunk("de-far", "Der Kühlschrank zeigt Fehlercode E-7731 nach dem Umzug.", "de"), axis(2)),
]
QUERY = "Was bedeutet Fehlercode E-7731?"


@pytest.fixture
def store(tmp_path):
    store = ChromaStore(StoreConfig(path=tmp_path / "chroma"))
    store.ensure_collection("kb1", fingerprint={"embedding_model": "table", "dimension": DIM})
    store_chunks(store, "kb1", [c for c, _ in CHUNKS], np.stack([v for _, v in CHUNKS]))
    return store


RAW = RetrievalConfig(centring=False)  # these tests fix the dense order by hand


def hybrid(store, **config) -> HybridRetriever:
    settings = RetrievalConfig(mode="hybrid", centring=False, **config)
    dense = DenseRetriever(TableEmbedder({QUERY: 0}), store, config=settings)
    return HybridRetriever(dense, store, settings, index_dir=store.config.path.parent / "index")


def ids(hits) -> list[str]:
    return [h.chunk.id for h in hits]


def test_dense_alone_ranks_the_vague_chunk_first(store):
    (hits,) = DenseRetriever(TableEmbedder({QUERY: 0}), store, config=RAW).retrieve([QUERY], "kb1", top_k=4)
    assert ids(hits)[0] == "de-vague"


def test_own_language_keyword_match_lifts_the_exact_chunk(store):
    (hits,) = hybrid(store, keyword_weight=0.5).retrieve([QUERY], "kb1", top_k=6, languages=["de"])
    assert ids(hits)[0] == "de-code"
    # the English and Thai chunks share "E-7731" but not the query's language: no keyword lift
    assert ids(hits).index("en-code") < ids(hits).index("th-code")  # dense order kept for them


def test_keyword_only_chunk_is_fetched_with_its_metadata(store):
    (hits,) = hybrid(store, keyword_weight=0.2).retrieve([QUERY], "kb1", top_k=3, languages=["de"])
    # "de-far" is orthogonal to the query vector (not a dense candidate) but matches the code
    assert "de-far" in ids(hits)
    far = next(h for h in hits if h.chunk.id == "de-far")
    assert far.chunk.source == "/kb/de-far.txt" and far.chunk.language == "de"


def test_scope_all_lets_other_languages_match(store):
    (own,) = hybrid(store, keyword_weight=0.5).retrieve([QUERY], "kb1", top_k=6, languages=["de"])
    (every,) = hybrid(store, keyword_weight=0.5, keyword_scope="all").retrieve(
        [QUERY], "kb1", top_k=6, languages=["de"]
    )
    assert every[ids(every).index("th-code")].score > own[ids(own).index("th-code")].score


def test_unknown_query_language_means_dense_only(store):
    (hits,) = hybrid(store, keyword_weight=0.5).retrieve([QUERY], "kb1", top_k=4, languages=[None])
    (dense,) = DenseRetriever(TableEmbedder({QUERY: 0}), store, config=RAW).retrieve([QUERY], "kb1", top_k=4)
    assert ids(hits) == ids(dense)


def test_filters_hold_for_keyword_hits(store):
    retriever = hybrid(store, keyword_weight=0.5)
    (hits,) = retriever.retrieve([QUERY], "kb1", top_k=6, where={"source": "/kb/de-vague.txt"}, languages=["de"])
    assert ids(hits) == ["de-vague"]
    (hits,) = retriever.retrieve([QUERY], "kb1", top_k=6, where={"language": "th"}, languages=["de"])
    assert ids(hits) == ["th-code"]


def test_rrf_fusion(store):
    (hits,) = hybrid(store, fusion="rrf", keyword_weight=1.0).retrieve([QUERY], "kb1", top_k=6, languages=["de"])
    assert ids(hits)[0] == "de-code"  # rank 4 dense + rank 1 keyword beats rank 1 dense alone
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_keyword_index_follows_writes_of_others(store):
    """Another writer's new chunk (here: this store object, behind the retriever's back) is found
    by keyword within recheck + a background update; queries meanwhile keep working."""
    retriever = hybrid(store, keyword_weight=0.5, index_recheck_s=0.2)
    assert "de-new" not in ids(retriever.retrieve(["Zahnrad Q-55"], "kb1", top_k=2, languages=["de"])[0])
    store_chunks(store, "kb1", [chunk("de-new", "Das Zahnrad Q-55 ist gebrochen.", "de")], axis(5)[None])
    deadline = time.monotonic() + 3
    while "de-new" not in ids(retriever.retrieve(["Zahnrad Q-55"], "kb1", top_k=2, languages=["de"])[0]):
        assert time.monotonic() < deadline, "the keyword index did not catch up within 3 s"
        time.sleep(0.05)


def test_batch_of_queries_embeds_once_and_caches(store):
    embedder = TableEmbedder({QUERY: 0, "other": 1})
    dense = DenseRetriever(embedder, store, config=RAW)
    first = dense.retrieve([QUERY, "other"], "kb1", top_k=2)
    assert [ids(h)[0] for h in first] == ["de-vague", "zh-other"] and embedder.calls == 1
    dense.retrieve([QUERY], "kb1", top_k=2, where={"language": "de"})
    assert embedder.calls == 1  # the second filter reuses the cached query vector


def test_centring_removes_the_same_language_pull(tmp_path):
    """Each language sits in its own region (a shared offset); the content is another direction.
    Raw cosine prefers the wrong German chunk (same region as the German query), centred cosine
    the Thai chunk with the right content."""
    store = ChromaStore(StoreConfig(path=tmp_path / "chroma"))
    store.ensure_collection("kb2", fingerprint={"embedding_model": "table", "dimension": DIM})
    region = {"de": axis(6) * 0.8, "th": axis(7) * 0.8}
    rng = np.random.default_rng(0)
    chunks, vectors = [], []
    for lang in ("de", "th"):
        for n in range(30):  # filler that defines each language's centroid
            content = rng.normal(size=DIM).astype(np.float32) * 0.2
            content[6:] = 0
            chunks.append(chunk(f"{lang}-{n}", f"{lang} filler {n}", lang))
            vectors.append(region[lang] + content)
    chunks += [chunk("de-wrong", "Falscher Inhalt", "de"), chunk("th-right", "เนื้อหาที่ถูกต้อง", "th")]
    vectors += [region["de"] + axis(1) * 0.5, region["th"] + axis(0) * 0.5]
    vectors = [v / np.linalg.norm(v) for v in vectors]
    store_chunks(store, "kb2", chunks, np.stack(vectors))
    query = region["de"] + axis(0) * 0.5
    embedder = TableEmbedder({})
    embedder.embed_queries = lambda texts: np.stack([query / np.linalg.norm(query)] * len(texts))
    (raw,) = DenseRetriever(embedder, store, config=RAW).retrieve(["Frage"], "kb2", top_k=3)
    assert ids(raw)[0].startswith("de-")
    centred = DenseRetriever(embedder, store, config=RetrievalConfig(centroid_prior=1))
    (hits,) = centred.retrieve(["Frage"], "kb2", top_k=3, languages=["de"])
    assert ids(hits)[0] == "th-right"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_centroids_shrink_small_languages_toward_the_mean():
    vectors = np.stack([axis(0)] * 99 + [axis(1)])
    centroids = Centroids.of(["de"] * 99 + ["th"], vectors, prior=100)
    # one Thai chunk: its centroid is mostly the overall mean, so its own vector survives centring
    (centred,) = centroids.centre(axis(1)[None], ["th"])
    assert np.linalg.norm(centred) == pytest.approx(1.0) and centred[1] > 0.5
    no_prior = Centroids.of(["de"] * 99 + ["th"], vectors, prior=0)
    assert np.allclose(no_prior.means["th"], axis(1))  # without it, the chunk would be its own centroid
    assert Centroids.of([], np.empty((0, DIM)), prior=1).centre(axis(1)[None], ["de"]).shape == (1, DIM)


def test_own_language_bonus_lifts_chunks_in_the_question_language(store):
    embedder = TableEmbedder({QUERY: 0})
    (plain,) = DenseRetriever(embedder, store, config=RAW).retrieve([QUERY], "kb1", top_k=4, languages=["th"])
    assert ids(plain)[0] == "de-vague"
    config = RetrievalConfig(centring=False, own_language_bonus=0.3)
    (hits,) = DenseRetriever(embedder, store, config=config).retrieve([QUERY], "kb1", top_k=4, languages=["th"])
    assert ids(hits)[0] == "th-code"
    assert hits[0].score == pytest.approx(plain[ids(plain).index("th-code")].score + 0.3, abs=1e-5)
    # without a known question language nothing is lifted
    (unknown,) = DenseRetriever(embedder, store, config=config).retrieve([QUERY], "kb1", top_k=4)
    assert ids(unknown) == ids(plain)
