"""The Ray engine without a cluster: the missing-package error, settings, and the writer using the
vectors an engine computed instead of embedding again."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ingestion.job import IngestReport, _Parsed, _Writer
from ingestion.loader import DEFAULT_LOADERS
from ingestion.ray_engine import _tokenizer, prepared_on_ray
from rag.config import IngestionConfig, load_settings
from rag.errors import ConfigError, ModelNotFoundError
from rag.types import Chunk, Document


def test_a_missing_ray_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    items = prepared_on_ray([], {}, None, None, IngestionConfig(engine="ray"), DEFAULT_LOADERS, None)
    with pytest.raises(ConfigError, match=r"pip install 'babelrag\[ray\]'"):
        next(items)


def test_engine_and_cluster_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BABELRAG_INGESTION_ENGINE", "ray")
    monkeypatch.setenv("BABELRAG_INGESTION_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("BABELRAG_INGESTION_RAY_EMBED_ACTORS", "4")
    ingestion = load_settings().ingestion
    assert (ingestion.engine, ingestion.ray_address, ingestion.ray_embed_actors) == ("ray", "ray://head:10001", 4)
    assert load_settings(ingestion={"engine": "local"}).ingestion.engine == "local"  # a CLI flag wins


def test_a_model_folder_missing_on_a_worker_node_is_named():
    with pytest.raises(ModelNotFoundError, match=r"/no/such/model is not on Ray node .*same path"):
        _tokenizer("/no/such/model")


class FakeStore:
    def __init__(self) -> None:
        self.upserts: list[tuple[list[str], np.ndarray]] = []

    def chunk_ids_of_source(self, name, source):
        return set()

    def upsert(self, name, chunks, embeddings):
        self.upserts.append(([c.id for c in chunks], np.asarray(embeddings)))

    def put_manifest(self, name, entries):
        pass

    def delete(self, name, ids):
        pass


class FakeEmbedder:
    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed_documents(self, texts):
        self.embedded.extend(texts)
        return np.full((len(texts), 2), -1.0, dtype=np.float32)


def parsed(name: str, n: int, embeddings: np.ndarray | None) -> _Parsed:
    source = f"/kb/{name}"
    document = Document(source=source, text="x" * n, content_hash=name)
    chunks = [
        Chunk(id=f"{name}#{i}", text="x", source=source, index=i, start=i, end=i + 1, language=None, doc_hash=name)
        for i in range(n)
    ]
    return _Parsed(document, chunks, (), embeddings)


def test_the_writer_writes_the_engines_vectors_and_embeds_only_the_others():
    store, embedder = FakeStore(), FakeEmbedder()
    report = IngestReport(collection="c")
    writer = _Writer("c", embedder, store, 3, {}, report, None, 2)
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    writer.take(parsed("a.txt", 4, vectors))
    writer.take(parsed("b.txt", 2, None))  # an engine that leaves embedding to the writer
    writer.flush(everything=True)
    ids = [i for batch, _ in store.upserts for i in batch]
    written = np.concatenate([v for _, v in store.upserts])
    assert ids == ["a.txt#0", "a.txt#1", "a.txt#2", "a.txt#3", "b.txt#0", "b.txt#1"]
    np.testing.assert_array_equal(written[:4], vectors)
    np.testing.assert_array_equal(written[4:], -1.0)
    assert embedder.embedded == ["x", "x"]  # b.txt's chunks only
    assert report.added == ["/kb/a.txt", "/kb/b.txt"] and report.chunks_written == 6 and not writer.vectors
