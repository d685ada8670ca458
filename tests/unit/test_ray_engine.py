"""The Ray engine without a cluster: the missing-package error, settings, and the writer using the
vectors an engine computed instead of embedding again."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ingestion.job import CollectionWriter, IngestReport, _Parsed, _Writer
from ingestion.loader import DEFAULT_LOADERS
from ingestion.ray_engine import _tokenizer, prepared_on_ray
from rag.config import IngestionConfig, StoreConfig, load_settings
from rag.errors import ConfigError, ModelNotFoundError
from rag.store import ChromaStore
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


class FakeEmbedder:
    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed_documents(self, texts):
        self.embedded.extend(texts)
        return np.tile(np.array([[0.0, -1.0]], dtype=np.float32), (len(texts), 1))


def parsed(name: str, n: int, embeddings: np.ndarray | None) -> _Parsed:
    source = f"/kb/{name}"
    document = Document(source=source, text="x" * n, content_hash=name)
    chunks = [
        Chunk(id=f"{name}#{i}", text="x", source=source, index=i, start=i, end=i + 1, language=None, doc_hash=name)
        for i in range(n)
    ]
    return _Parsed(document, chunks, (), embeddings)


def test_the_writer_writes_the_engines_vectors_and_embeds_only_the_others(tmp_path):
    store, embedder = ChromaStore(StoreConfig(path=tmp_path / "db")), FakeEmbedder()
    store.ensure_collection("c12", fingerprint={"embedding_model": "fake", "dimension": 2})
    report = IngestReport(collection="c12")
    writer = _Writer(CollectionWriter(store, "c12", manifest={}), embedder, 3, {}, report, None, 2)
    vectors = np.arange(1, 9, dtype=np.float32).reshape(4, 2)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # unit vectors, as Chroma's cosine space keeps them
    writer.take(parsed("a.txt", 4, vectors))
    writer.take(parsed("b.txt", 2, None))  # an engine that leaves embedding to the writer
    writer.flush(everything=True)
    ids = ["a.txt#0", "a.txt#1", "a.txt#2", "a.txt#3", "b.txt#0", "b.txt#1"]
    found, _, written = store.vectors("c12", ids)
    assert found == ids
    np.testing.assert_allclose(written[:4], vectors, atol=1e-6)
    np.testing.assert_allclose(written[4:], [[0.0, -1.0]] * 2, atol=1e-6)
    assert embedder.embedded == ["x", "x"]  # b.txt's chunks only
    assert report.added == ["/kb/a.txt", "/kb/b.txt"] and report.chunks_written == 6 and not writer.vectors
    assert store.state("c12").sums.counts == {None: 6}
    store.close()
