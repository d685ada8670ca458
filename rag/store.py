"""Vector store stage: one Chroma collection per knowledge base.

Embedded ``PersistentClient`` by default; ``HttpClient`` to a ``chroma run`` server when
``store.url`` is set. Each collection records the embedding model and dimension it was built
with, so vectors of two embedding spaces are never mixed in one collection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from rag.config import StoreConfig, validate_collection_name
from rag.errors import CollectionNotFoundError, StoreError
from rag.types import Chunk, Hit

Where = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    count: int
    embedding_model: str | None
    dimension: int | None


@runtime_checkable
class VectorStore(Protocol):
    def collections(self) -> list[CollectionInfo]: ...

    def ensure_collection(self, name: str, *, embedding_model: str, dimension: int) -> None: ...

    def info(self, name: str) -> CollectionInfo: ...

    def upsert(self, name: str, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None: ...

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]: ...

    def chunk_ids_of_source(self, name: str, source: str) -> set[str]: ...

    def delete(self, name: str, ids: Iterable[str]) -> None: ...

    def query(self, name: str, embedding: np.ndarray, *, top_k: int, where: Where | None = None) -> list[Hit]: ...


class ChromaStore:
    """Chroma behind the VectorStore protocol. Connects on first use."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._client = None

    @property
    def location(self) -> str:
        return self.config.url or f"embedded Chroma at {self.config.path}"

    @property
    def client(self):
        if self._client is None:
            self.warm_up()
        return self._client

    def warm_up(self) -> None:
        if self._client is not None:
            return
        import chromadb

        settings = chromadb.Settings(anonymized_telemetry=False)
        try:
            if self.config.url:
                url = urlparse(self.config.url)
                if url.scheme not in ("http", "https") or not url.hostname:
                    raise StoreError(f"store.url must look like http://host:port, got {self.config.url!r}")
                client = chromadb.HttpClient(
                    host=url.hostname,
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    settings=settings,
                )
                client.heartbeat()
            else:
                self.config.path.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(self.config.path), settings=settings)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(
                f"cannot open {self.location}: {e}. Start the server (`chroma run --path DIR --port PORT`) "
                "or unset store.url / BABELRAG_STORE_URL to use the embedded store"
            ) from e
        self._client = client

    # -- collections -------------------------------------------------------------------

    def _collection(self, name: str):
        import chromadb.errors

        try:
            return self.client.get_collection(validate_collection_name(name), embedding_function=None)
        except ValueError as e:
            raise StoreError(str(e)) from e
        except chromadb.errors.NotFoundError:
            existing = ", ".join(c.name for c in self.collections()) or "none"
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in {self.location} (existing: {existing}); "
                f"create it with `babelrag ingest PATH -c {name}`"
            ) from None

    def collections(self) -> list[CollectionInfo]:
        return [self._info(c) for c in self.client.list_collections()]

    def info(self, name: str) -> CollectionInfo:
        return self._info(self._collection(name))

    @staticmethod
    def _info(collection) -> CollectionInfo:
        meta = collection.metadata or {}
        return CollectionInfo(
            name=collection.name,
            count=collection.count(),
            embedding_model=meta.get("embedding_model"),
            dimension=meta.get("dimension"),
        )

    def ensure_collection(self, name: str, *, embedding_model: str, dimension: int) -> None:
        try:
            collection = self.client.get_or_create_collection(
                validate_collection_name(name),
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedding_model": embedding_model, "dimension": dimension},
                embedding_function=None,
            )
        except ValueError as e:
            raise StoreError(str(e)) from e
        info = self._info(collection)
        if (info.embedding_model, info.dimension) != (embedding_model, dimension):
            raise StoreError(
                f"collection {name!r} was built with embedding model {info.embedding_model!r} "
                f"({info.dimension} dims), not {embedding_model!r} ({dimension} dims); "
                "use the same embedding model, or ingest into a new collection"
            )

    # -- chunks ------------------------------------------------------------------------

    def upsert(self, name: str, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        if len(chunks) != len(embeddings):
            raise StoreError(f"upsert needs one embedding per chunk, got {len(embeddings)} for {len(chunks)}")
        if not chunks:
            return
        self._collection(name).upsert(
            ids=[c.id for c in chunks],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            documents=[c.text for c in chunks],
            metadatas=[_metadata(c) for c in chunks],
        )

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return set(self._collection(name).get(ids=list(ids), include=[])["ids"])

    def chunk_ids_of_source(self, name: str, source: str) -> set[str]:
        return set(self._collection(name).get(where={"source": source}, include=[])["ids"])

    def delete(self, name: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self._collection(name).delete(ids=ids)

    def query(self, name: str, embedding: np.ndarray, *, top_k: int, where: Where | None = None) -> list[Hit]:
        collection = self._collection(name)
        try:
            result = collection.query(
                query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1),
                n_results=top_k,
                where=dict(where) if where else None,
                include=["documents", "metadatas", "distances"],
            )
        except ValueError as e:
            raise StoreError(f"query on collection {name!r} failed: {e}") from e
        hits = []
        for id_, text, meta, distance in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True
        ):
            score = 1.0 - float(distance)  # cosine distance -> cosine similarity
            hits.append(Hit(chunk=_chunk(id_, text, meta), score=score, retrieval_score=score))
        return hits


def _metadata(chunk: Chunk) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": chunk.source,
        "file_name": chunk.file_name,
        "chunk_index": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "doc_hash": chunk.doc_hash,
    }
    if chunk.language:
        meta["language"] = chunk.language
    if chunk.title:
        meta["title"] = chunk.title
    return meta


def _chunk(id_: str, text: str, meta: Mapping[str, Any]) -> Chunk:
    return Chunk(
        id=id_,
        text=text,
        source=str(meta["source"]),
        index=int(meta["chunk_index"]),
        start=int(meta["start"]),
        end=int(meta["end"]),
        language=meta.get("language"),
        doc_hash=str(meta["doc_hash"]),
        title=meta.get("title"),
    )
