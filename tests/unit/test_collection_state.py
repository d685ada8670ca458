"""What every write keeps in step, on a real embedded Chroma (no models): the collection's
version, document count and centroid sums, the manifest's change feed, the keyword index of
each process and machine, paging at any size, leases and the embedded store's process lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

import rag.store
from ingestion.job import CollectionWriter, delete_sources, write_documents
from rag.centroids import Centroids, VectorSums
from rag.config import RetrievalConfig, StoreConfig
from rag.errors import LeaseHeldError, LeaseLostError, StoreLockedError
from rag.keyword import KeywordIndexes
from rag.retriever import DenseRetriever
from rag.store import ChromaStore, ManifestEntry
from rag.types import Chunk
from tests.conftest import ROOT

DIM = 8
LANGUAGES = ["en", "de", "ru", "ar", "hi", "th", "zh", "ja"]
WORDS = {
    "en": "train",
    "de": "Zug",
    "ru": "поезд",
    "ar": "قطار",
    "hi": "रेलगाड़ी",
    "th": "รถไฟ",
    "zh": "火车",
    "ja": "電車",
}


def document(source: str, language: str, n: int, seed: int, word: str | None = None):
    rng = np.random.default_rng(seed)
    chunks = [
        Chunk(
            id=f"{source}#{seed}-{i}",
            text=f"{word or WORDS[language]} {source} {i}",
            source=source,
            index=i,
            start=i,
            end=i + 1,
            language=language,
            doc_hash=str(seed),
        )  # fmt: skip
        for i in range(n)
    ]
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entry = ManifestEntry(source=source, content_hash=str(seed), chunk_ids=tuple(c.id for c in chunks), status="done",
                          language=language)  # fmt: skip
    return entry, chunks, vectors


@pytest.fixture
def store(tmp_path):
    store = ChromaStore(StoreConfig(path=tmp_path / "chroma"))
    store.ensure_collection("kb1", fingerprint={"embedding_model": "random", "dimension": DIM})
    yield store
    store.close()


def scanned(store: ChromaStore, name: str) -> VectorSums:
    """The sums computed from scratch from every stored vector (what the state must equal)."""
    sums = VectorSums()
    for _, languages, vectors in store.scan_vectors(name):
        sums.add(languages, vectors)
    return sums


def test_state_follows_writes_replacements_and_deletes(store):
    docs = [document(f"/kb/{lang}.txt", lang, 3 + i, seed=i) for i, lang in enumerate(LANGUAGES)]
    write_documents(store, "kb1", docs)
    state = store.state("kb1")
    assert state.documents == 8 and state.version >= 2
    assert state.sums == scanned(store, "kb1") and state.sums.counts == {
        lang: 3 + i for i, lang in enumerate(LANGUAGES)
    }

    # a changed file: its old chunks' sums leave, the new ones' come
    write_documents(store, "kb1", [document("/kb/de.txt", "de", 5, seed=99)])
    after = store.state("kb1")
    assert after.version > state.version and after.documents == 8
    assert after.sums == scanned(store, "kb1") and after.sums.counts["de"] == 5

    delete_sources(store, "kb1", ["/kb/ja.txt", "/kb/th.txt"], config=_ingestion())
    gone = store.state("kb1")
    assert gone.documents == 6 and "ja" not in gone.sums.counts and gone.sums == scanned(store, "kb1")
    assert set(store.manifest("kb1")) == {f"/kb/{lang}.txt" for lang in LANGUAGES} - {"/kb/ja.txt", "/kb/th.txt"}
    # the change feed: what changed after a version, deletions included
    changed = {e.source: e.status for e in store.changes("kb1", since=after.version)}
    assert changed == {"/kb/ja.txt": "deleted", "/kb/th.txt": "deleted"}
    assert {e.source for e in store.changes("kb1", since=state.version)} == {"/kb/de.txt", "/kb/ja.txt", "/kb/th.txt"}
    assert store.info("kb1").documents == 6


class Crash(Exception):
    pass


def test_files_are_marked_writing_before_their_chunks_go(store, tmp_path, monkeypatch):
    # Keyword indexes serve chunks from their copy while it reflects the store's version: every
    # write that removes chunks from the store must first bump the version and mark the file.
    write_documents(store, "kb1", [document("/kb/de.txt", "de", 4, seed=1), document("/kb/th.txt", "th", 3, seed=2)])
    before = store.state("kb1").version
    ids = sorted(cid for e in store.manifest("kb1").values() for cid in e.chunk_ids)

    def crash(name, ids):
        raise Crash

    monkeypatch.setattr(store, "delete", crash)  # killed as its chunks were about to go
    with pytest.raises(Crash):
        CollectionWriter(store, "kb1").delete_sources(["/kb/th.txt"])
    # a changed file with no new chunks to write: only its stale chunks go
    entry, _, vectors = document("/kb/de.txt", "de", 4, seed=1)
    smaller = replace(entry, content_hash="1b", chunk_ids=entry.chunk_ids[:2])
    with pytest.raises(Crash):
        CollectionWriter(store, "kb1").finish(
            [(smaller, VectorSums.of(["de", "de"], vectors[:2]))], entry.chunk_ids[2:]
        )
    assert {e.source: e.status for e in store.changes("kb1", since=before)} == {
        "/kb/th.txt": "writing", "/kb/de.txt": "writing"
    }  # fmt: skip
    assert store.state("kb1").documents == 2  # marking counts nothing
    monkeypatch.undo()
    index = KeywordIndexes(store, tmp_path / "index").refresh("kb1")
    assert index.rewriting == {"/kb/de.txt", "/kb/th.txt"}
    assert index.chunks(ids) == {} and index.candidates(ids) == {}  # the store is asked instead
    # the next writer finishes them; the index serves them again
    write_documents(store, "kb1", [document("/kb/de.txt", "de", 2, seed=3)])
    delete_sources(store, "kb1", ["/kb/th.txt"], config=_ingestion())
    index = KeywordIndexes(store, tmp_path / "index").refresh("kb1")
    assert index.rewriting == frozenset()
    assert set(index.chunks([f"/kb/de.txt#3-{i}" for i in range(2)])) == {"/kb/de.txt#3-0", "/kb/de.txt#3-1"}


def test_a_query_leaves_out_chunks_a_writer_deleted_while_it_ran(store, monkeypatch):
    # Embedded Chroma searches its index, then reads the records: a delete in between leaves a
    # hit without a record (seen under load: a 500 on /v1/ask while an upload replaced files).
    write_documents(store, "kb1", [document("/kb/a.md", "de", 3, 1), document("/kb/b.md", "ja", 3, 2)])
    real = store._call

    def racing(name, op, *args, **kwargs):
        result = real(name, op, *args, **kwargs)
        if op == "query":
            result["metadatas"][0][1] = result["documents"][0][1] = None
        return result

    monkeypatch.setattr(store, "_call", racing)
    ((hits, vectors),) = store.query_with_vectors("kb1", np.ones((1, DIM), np.float32), top_k=6)
    assert len(hits) == 5 and vectors.shape == (5, DIM)
    assert len(store.query("kb1", np.ones((1, DIM), np.float32), top_k=6)[0]) == 5


def test_centroids_come_from_all_chunks_not_a_sample(store):
    docs = [
        document(f"/kb/{lang}-{n}.txt", lang, 40, seed=10 * i + n) for i, lang in enumerate(LANGUAGES) for n in range(3)
    ]
    write_documents(store, "kb1", docs)
    languages = [c.language for _, chunks, _ in docs for c in chunks]
    vectors = np.concatenate([v for _, _, v in docs])
    expected = Centroids.of(languages, vectors, prior=100)
    got = DenseRetriever(None, store, config=RetrievalConfig()).centroids("kb1")
    for lang in LANGUAGES:
        assert np.allclose(got.means[lang], expected.means[lang], atol=1e-6)


def test_reads_and_writes_are_paged(store, monkeypatch):
    monkeypatch.setattr(rag.store, "PAGE_SIZE", 7)  # every call below spans several pages
    docs = [document(f"/kb/{i}.txt", LANGUAGES[i % 8], 9, seed=i) for i in range(20)]
    write_documents(store, "kb1", docs)
    ids = [c.id for _, chunks, _ in docs for c in chunks]
    assert store.info("kb1").count == 180 and len(store.manifest("kb1")) == 20
    assert [c.id for c in store.get("kb1", ids)] == ids
    assert store.existing_ids("kb1", ids + ["nope"]) == set(ids)
    assert store.chunk_ids_of_source("kb1", "/kb/3.txt") == {c.id for c in docs[3][1]}
    found, languages, vectors = store.vectors("kb1", ids)
    assert found == ids and vectors.shape == (180, DIM)
    assert store.state("kb1").sums == scanned(store, "kb1")
    assert len(store.changes("kb1", since=0)) == 20
    store.delete("kb1", ids[:50])
    assert store.info("kb1").count == 130


def test_keyword_index_catches_up_per_machine_and_is_shared_per_machine(store, tmp_path, monkeypatch):
    write_documents(store, "kb1", [document(f"/kb/{lang}.txt", lang, 2, seed=i) for i, lang in enumerate(LANGUAGES)])
    here = KeywordIndexes(store, tmp_path / "machine-a")
    index = here.refresh("kb1")
    assert len(index) == 16 and index.search("Zug", language="de", top_k=5)[0][0].startswith("/kb/de.txt")

    applied: list[int] = []
    real_apply = KeywordIndexes._apply

    def counting(self, index, collection, entries, *, clear):
        applied.append(len(entries))
        return real_apply(self, index, collection, entries, clear=clear)

    monkeypatch.setattr(KeywordIndexes, "_apply", counting)
    # another process of the same machine: the folder is up to date, nothing is re-indexed
    neighbour = KeywordIndexes(store, tmp_path / "machine-a")
    assert len(neighbour.refresh("kb1")) == 16 and applied == []

    # one file changes, one is deleted: each machine applies only those two entries
    write_documents(store, "kb1", [document("/kb/de.txt", "de", 3, seed=50, word="Straßenbahn")])
    delete_sources(store, "kb1", ["/kb/ja.txt"], config=_ingestion())
    assert len(here.refresh("kb1")) == 15 and applied == [2]
    index = here.refresh("kb1")
    assert {h.split("#")[0] for h, _ in index.search("Straßenbahn", language="de", top_k=5)} == {"/kb/de.txt"}
    assert index.search("Zug", language="de", top_k=5) == [] and index.search("電車", language="ja", top_k=5) == []
    neighbour_index = neighbour.refresh("kb1")  # the folder was brought up to date by `here`
    assert applied == [2] and len(neighbour_index) == 15

    # a machine that never saw the collection builds it from the manifest
    elsewhere = KeywordIndexes(store, tmp_path / "machine-b")
    assert len(elsewhere.refresh("kb1")) == 15 and applied == [2, 7]


def test_keyword_index_of_a_recreated_collection_is_rebuilt(store, tmp_path):
    write_documents(store, "kb1", [document("/kb/de.txt", "de", 2, seed=1)])
    indexes = KeywordIndexes(store, tmp_path / "index")
    assert len(indexes.refresh("kb1")) == 2
    store.ensure_collection("kb1", fingerprint={"embedding_model": "random", "dimension": DIM}, reindex=True)
    write_documents(store, "kb1", [document("/kb/ru.txt", "ru", 3, seed=2)])
    index = indexes.refresh("kb1")
    assert len(index) == 3 and index.search("Zug", language="de", top_k=5) == []


def test_a_collection_written_before_states_existed_is_migrated_by_its_next_writer(store):
    # what an older BabelRAG left: chunks, and manifest records without kinds, sums or a state
    entry, chunks, vectors = document("/kb/de.txt", "de", 4, seed=3)
    store.upsert("kb1", chunks, vectors)
    manifest = store.client.get_collection("kb1.manifest")
    manifest.delete(ids=["__state__"])
    manifest.upsert(ids=[rag.store._source_id(entry.source)], embeddings=[[1.0]], documents=[json.dumps(list(entry.chunk_ids))],
                    metadatas=[{"source": entry.source, "content_hash": "3", "status": "done", "chunks": 4,
                                "updated_at": 0.0}])  # fmt: skip
    store.close()
    store = ChromaStore(store.config)
    assert store.state("kb1") is None and store.version("kb1").startswith("legacy:")
    assert list(store.manifest("kb1")) == ["/kb/de.txt"] and store.info("kb1").documents == 1
    legacy = DenseRetriever(None, store, config=RetrievalConfig()).centroids("kb1")  # read by a scan
    assert np.allclose(legacy.means["de"], Centroids.of(["de"] * 4, vectors, prior=100).means["de"], atol=1e-6)

    writer = CollectionWriter(store, "kb1")
    assert writer.state.documents == 1 and store.state("kb1").sums == scanned(store, "kb1")
    write_documents(store, "kb1", [document("/kb/ru.txt", "ru", 2, seed=4)])
    assert store.state("kb1").documents == 2 and store.state("kb1").sums == scanned(store, "kb1")
    store.close()


# -- leases -----------------------------------------------------------------------------


def test_a_second_job_on_a_collection_is_told_who_writes_it(store):
    with store.lease("kb1", job="babelrag ingest docs/", ttl_s=30):
        with pytest.raises(
            LeaseHeldError, match=r"being written by another ingestion job: babelrag ingest docs/ \(pid \d+"
        ):
            store.lease("kb1", job="second", ttl_s=30)
        started = time.monotonic()
        with pytest.raises(LeaseHeldError, match="--wait SECONDS"):
            store.lease("kb1", job="second", ttl_s=30, wait_s=0.5)
        assert time.monotonic() - started >= 0.5
        with store.lease("other", job="another collection", ttl_s=30):  # leases are per collection
            pass
    with store.lease("kb1", job="after the first", ttl_s=30):  # released: free again
        pass


def test_a_dead_jobs_lease_expires_and_the_stalled_job_learns_it_lost_it(store):
    first = store.lease("kb1", job="stalls", ttl_s=1.5)
    first._stop.set()  # a job that stops renewing, as a dead or frozen one would
    with pytest.raises(LeaseHeldError):
        store.lease("kb1", job="too early", ttl_s=30)
    time.sleep(1.7)
    second = store.lease("kb1", job="takes over", ttl_s=30)
    first._stop.clear()
    first._renew_once()
    with pytest.raises(LeaseLostError, match="lost the ingestion lease of collection 'kb1'"):
        first.check()
    first.release()  # releasing a lost lease leaves the new holder's alone
    with pytest.raises(LeaseHeldError, match="takes over"):
        store.lease("kb1", job="third", ttl_s=30)
    second.release()


def test_a_writer_whose_lease_was_lost_stops_writing(store):
    lease = store.lease("kb1", job="slow", ttl_s=30)
    writer = CollectionWriter(store, "kb1", lease=lease)
    lease._lost = "simulated takeover"
    with pytest.raises(LeaseLostError):
        writer.begin([document("/kb/de.txt", "de", 1, seed=1)[0]])
    assert store.manifest("kb1") == {}
    lease.release()


# -- the embedded store's process lock ----------------------------------------------------


@pytest.mark.integration  # a second process
def test_a_second_process_is_refused_the_embedded_store_with_the_holder_named(store):
    store.lock.announce(serve_url="http://127.0.0.1:7860")
    code = (
        "import sys; from rag.config import StoreConfig; from rag.store import ChromaStore\n"
        "from rag.errors import StoreLockedError\n"
        f"s = ChromaStore(StoreConfig(path={str(store.config.path)!r}))\n"
        "try:\n    s.collections()\nexcept StoreLockedError as e:\n    print(e); print(e.holder['serve_url'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    message, url = out.stdout.strip().splitlines()
    assert f"the embedded store {store.config.path} is in use by pid" in message
    assert "serving http://127.0.0.1:7860" in message and "babelrag serve --chroma" in message
    assert url == "http://127.0.0.1:7860"
    # two stores of one process share the lock; closing the last lets other processes in
    twin = ChromaStore(store.config)
    assert twin.collections() == store.collections()
    twin.close()
    store.close()
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 0 and again.stdout == "", again.stderr


@pytest.mark.integration  # a second process
def test_a_closed_store_reopened_reads_what_another_process_wrote_meanwhile(store):
    write_documents(store, "kb1", [document("/kb/a.md", "de", 3, 1)])
    store.query("kb1", np.ones((1, DIM), np.float32), top_k=3)  # this process's HNSW is loaded
    store.close()
    code = (
        "from ingestion.job import delete_sources, write_documents\n"
        "from rag.config import IngestionConfig, StoreConfig; from rag.store import ChromaStore\n"
        "from tests.unit.test_collection_state import document\n"
        f"s = ChromaStore(StoreConfig(path={str(store.config.path)!r}))\n"
        "delete_sources(s, 'kb1', ['/kb/a.md'], config=IngestionConfig())\n"
        "write_documents(s, 'kb1', [document('/kb/b.md', 'th', 4, 2)])\n"
        "s.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    hits = store.query("kb1", np.ones((1, DIM), np.float32), top_k=10)[0]
    assert sorted(h.chunk.source for h in hits) == ["/kb/b.md"] * 4
    assert store.state("kb1").documents == 1 and set(store.manifest("kb1")) == {"/kb/b.md"}


@pytest.mark.integration  # a second process
def test_the_lock_of_a_killed_process_is_free(tmp_path):
    path = tmp_path / "chroma"
    code = (
        "import time; from rag.config import StoreConfig; from rag.store import ChromaStore\n"
        f"ChromaStore(StoreConfig(path={str(path)!r})).collections(); print('open', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "open"
    with pytest.raises(StoreLockedError):
        ChromaStore(StoreConfig(path=path)).collections()
    proc.kill()
    proc.wait()
    store = ChromaStore(StoreConfig(path=path))
    assert store.collections() == []
    store.close()


def _ingestion():
    from rag.config import IngestionConfig

    return IngestionConfig()


def test_a_big_collection_new_to_this_machine_is_indexed_without_making_queries_wait(store, tmp_path, monkeypatch):
    import rag.keyword

    write_documents(store, "kb1", [document(f"/kb1/{lang}.txt", lang, 4, seed=i) for i, lang in enumerate(LANGUAGES)])
    monkeypatch.setattr(rag.keyword, "INLINE_BUILD_CHUNKS", 10)  # 32 chunks count as big here
    indexes = KeywordIndexes(store, tmp_path / "fresh-machine")
    version = store.version("kb1")
    first = indexes.get("kb1", version)
    assert len(first) == 0  # answered at once, without keyword evidence
    deadline = time.monotonic() + 10
    while len(index := indexes.get("kb1", version)) < 32:
        assert time.monotonic() < deadline, "the background build did not finish"
        time.sleep(0.05)
    assert index.search("Zug", language="de", top_k=5)
    # the next process of this machine opens that copy at once
    assert len(KeywordIndexes(store, tmp_path / "fresh-machine").get("kb1", version)) == 32


@pytest.mark.integration  # a second process
def test_a_dead_chroma_server_the_holder_announced_is_named_in_the_error(store):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    store.lock.announce(chroma_url=url)
    code = (
        "from rag.config import StoreConfig; from rag.store import ChromaStore\n"
        "from rag.errors import StoreError\n"
        f"s = ChromaStore(StoreConfig(path={str(store.config.path)!r}))\n"
        "try:\n    s.collections()\nexcept StoreError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.startswith(f"cannot open Chroma server {url}:"), out.stdout + out.stderr


def test_keyword_index_of_an_older_format_is_rebuilt_with_chunk_languages(store, tmp_path):
    import tantivy

    import rag.keyword

    write_documents(store, "kb1", [document("/kb/de.txt", "de", 2, seed=1), document("/kb/th.txt", "th", 2, seed=2)])
    indexes = KeywordIndexes(store, tmp_path / "index")
    folder = indexes.folder("kb1")
    folder.mkdir(parents=True)
    # what format 2 left: the same fields, "lang" not stored, and the current store version
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("source", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("lang", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
    old = tantivy.Index(builder.build(), path=str(folder))
    writer = old.writer(15_000_000, 1)
    writer.add_document(tantivy.Document(id="/kb/de.txt#1-0", source="/kb/de.txt", lang="de", body="zug"))
    writer.commit()
    writer.wait_merging_threads()
    collection_id, seq = rag.keyword._parse_version(store.version("kb1"))
    (folder / "babelrag.json").write_text(json.dumps({"format": 2, "collection_id": collection_id, "version": seq}))

    index = indexes.refresh("kb1")
    ids = [f"/kb/de.txt#1-{i}" for i in range(2)] + [f"/kb/th.txt#2-{i}" for i in range(2)]
    assert len(index) == 4 and index.languages(ids) == dict.fromkeys(ids[:2], "de") | dict.fromkeys(ids[2:], "th")
    assert json.loads((folder / "babelrag.json").read_text())["format"] == rag.keyword._FORMAT


def test_the_vector_file_of_a_keyword_index_is_compacted_when_mostly_unused(store, tmp_path, monkeypatch):
    import rag.keyword

    monkeypatch.setattr(rag.keyword, "COMPACT_VECTOR_ROWS", 20)
    indexes = KeywordIndexes(store, tmp_path / "index")
    folder = indexes.folder("kb1")
    sizes = []
    for seed in range(1, 9):  # each round replaces both files' chunks: their old rows go unused
        write_documents(
            store, "kb1", [document("/kb/de.txt", "de", 6, seed=seed), document("/kb/ar.txt", "ar", 6, seed=100 + seed)]
        )
        index = indexes.refresh("kb1")
        (vector_file,) = folder.glob("vectors-*.f32")
        sizes.append(vector_file.stat().st_size // (4 * DIM))
    assert max(sizes) <= 12 + max(12, 20) + 12  # never more unused rows than allowed, plus one round's
    assert sizes != sorted(sizes)  # it was compacted (a new, smaller file) at least once
    ids = [f"/kb/de.txt#8-{i}" for i in range(6)] + [f"/kb/ar.txt#108-{i}" for i in range(6)]
    chunks, vectors = store.chunks_with_vectors("kb1", ids)
    served = index.candidates(ids)
    assert index.chunks(ids) == {c.id: c for c in chunks}
    assert np.array_equal(np.stack([served[c.id][1] for c in chunks]), vectors)
