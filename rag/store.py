"""Vector store stage: one Chroma collection per knowledge base.

Embedded ``PersistentClient`` by default; ``HttpClient`` to a ``chroma run`` server when
``store.url`` is set. Each collection records the index settings it was built with (embedding
model, dimension, document prompt, chunking), so two embedding spaces or chunkings are never
mixed in one collection.

Beside each collection ``NAME`` lives ``NAME.manifest``: one record per source file (content
hash, chunk ids, status), the ingestion job's memory of what it wrote. It lives in Chroma
rather than a file beside it so that jobs feeding a shared ``chroma run`` server see it too.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from rag.config import MANIFEST_SUFFIX, StoreConfig, validate_collection_name
from rag.errors import CollectionNotFoundError, IndexMismatchError, StoreError
from rag.types import Chunk, Hit

Where = Mapping[str, Any]
Fingerprint = Mapping[str, str | int]  # index settings: {"embedding_model": ..., "dimension": 384, ...}


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    count: int
    embedding_model: str | None
    dimension: int | None
    fingerprint: dict[str, str | int] = field(default_factory=dict)
    documents: int | None = None  # source files in the manifest


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """What an ingestion job wrote for one source file."""

    source: str
    content_hash: str
    chunk_ids: tuple[str, ...]
    status: Literal["writing", "done"]  # "writing": a job started on it and has not finished
    language: str | None = None
    title: str | None = None
    pages: int | None = None
    updated_at: float = 0.0  # unix time

    @property
    def done(self) -> bool:
        return self.status == "done"


@runtime_checkable
class VectorStore(Protocol):
    def collections(self) -> list[CollectionInfo]: ...

    def ensure_collection(self, name: str, *, fingerprint: Fingerprint, reindex: bool = False) -> bool:
        """Create ``name``, or check it was built with ``fingerprint`` (IndexMismatchError if
        not). ``reindex`` drops and recreates it. True when it was (re)created."""
        ...

    def delete_collection(self, name: str) -> None: ...

    def manifest(self, name: str) -> dict[str, ManifestEntry]: ...

    def put_manifest(self, name: str, entries: Sequence[ManifestEntry]) -> None: ...

    def delete_manifest(self, name: str, sources: Iterable[str]) -> None: ...

    def info(self, name: str) -> CollectionInfo: ...

    def upsert(self, name: str, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None: ...

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]: ...

    def chunk_ids_of_source(self, name: str, source: str) -> set[str]: ...

    def delete(self, name: str, ids: Iterable[str]) -> None: ...

    def query(self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None) -> list[list[Hit]]:
        """Best ``top_k`` chunks for each row of ``embeddings`` (one query per row)."""
        ...

    def query_with_vectors(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None
    ) -> list[tuple[list[Hit], np.ndarray]]:
        """``query``, plus the stored vector of each hit (one row per hit)."""
        ...

    def vectors(self, name: str, *, limit: int) -> tuple[list[str | None], np.ndarray]:
        """Languages and vectors of up to ``limit`` chunks (e.g. for per-language centroids)."""
        ...

    def chunks(self, name: str) -> Iterator[tuple[list[str], list[str], list[str | None]]]:
        """Every chunk as pages of (ids, texts, languages), e.g. to build a keyword index."""
        ...

    def get(self, name: str, ids: Sequence[str]) -> list[Chunk]:
        """The chunks with these ids, in the order given; unknown ids are left out."""
        ...

    def ids_where(self, name: str, where: Where) -> set[str]: ...

    def version(self, name: str) -> str:
        """Changes whenever the collection's content does (a cache key for derived indexes)."""
        ...


class ChromaStore:
    """Chroma behind the VectorStore protocol. Connects on first use."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._client = None
        self._opening = threading.Lock()

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
        with self._opening:  # chromadb's client cache is not safe against two first opens at once
            if self._client is None:
                self._open()

    def _open(self) -> None:
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
        return [self._info(c) for c in self.client.list_collections() if not c.name.endswith(MANIFEST_SUFFIX)]

    def info(self, name: str) -> CollectionInfo:
        return self._info(self._collection(name))

    def _info(self, collection) -> CollectionInfo:
        meta = collection.metadata or {}
        try:
            documents = self._manifest_collection(collection.name).count()
        except StoreError:  # a collection written before manifests existed
            documents = None
        return CollectionInfo(
            name=collection.name,
            count=collection.count(),
            embedding_model=meta.get("embedding_model"),
            dimension=meta.get("dimension"),
            fingerprint={k: v for k, v in meta.items() if k != "hnsw:space"},
            documents=documents,
        )

    def ensure_collection(self, name: str, *, fingerprint: Fingerprint, reindex: bool = False) -> bool:
        import chromadb.errors

        try:
            validate_collection_name(name)
        except ValueError as e:
            raise StoreError(str(e)) from None
        wanted = dict(fingerprint)
        try:
            existing = self.client.get_collection(name, embedding_function=None)
        except chromadb.errors.NotFoundError:
            existing = None
        except ValueError as e:
            raise StoreError(str(e)) from e
        if existing is not None:
            built = {k: v for k, v in (existing.metadata or {}).items() if k != "hnsw:space"}
            if built == wanted and not reindex:
                self._manifest_collection(name, create=True)
                return False
            if built != wanted and not reindex:
                changed = sorted(k for k in set(built) | set(wanted) if built.get(k) != wanted.get(k))
                diff = "; ".join(f"{k}: built with {built.get(k)!r}, now {wanted.get(k)!r}" for k in changed)
                raise IndexMismatchError(
                    f"collection {name!r} was built with other index settings ({diff}); mixing them would "
                    "put two embedding spaces in one index. Re-run with --reindex to rebuild it from the "
                    "files you pass, or ingest into a new collection (-c NAME)"
                )
            self.delete_collection(name)
        self.client.create_collection(
            name, configuration={"hnsw": {"space": "cosine"}}, metadata=wanted, embedding_function=None
        )
        self._manifest_collection(name, create=True)
        return True

    def delete_collection(self, name: str) -> None:
        import chromadb.errors

        for n in (name, name + MANIFEST_SUFFIX):
            try:
                self.client.delete_collection(n)
            except (chromadb.errors.NotFoundError, ValueError):
                pass

    # -- manifest ----------------------------------------------------------------------

    def _manifest_collection(self, name: str, *, create: bool = False):
        if create:
            return self.client.get_or_create_collection(name + MANIFEST_SUFFIX, embedding_function=None)
        import chromadb.errors

        try:
            return self.client.get_collection(name + MANIFEST_SUFFIX, embedding_function=None)
        except chromadb.errors.NotFoundError:
            self._collection(name)  # names the missing collection if that is the problem
            raise StoreError(
                f"collection {name!r} has no manifest (written by an older BabelRAG); "
                f"rebuild it with `babelrag ingest PATH -c {name} --reindex`"
            ) from None

    def manifest(self, name: str) -> dict[str, ManifestEntry]:
        got = self._manifest_collection(name).get(include=["documents", "metadatas"])
        entries = {}
        for doc, meta in zip(got["documents"], got["metadatas"], strict=True):
            entry = ManifestEntry(
                source=str(meta["source"]),
                content_hash=str(meta["content_hash"]),
                chunk_ids=tuple(json.loads(doc)),
                status="done" if meta.get("status") == "done" else "writing",
                language=meta.get("language"),
                title=meta.get("title"),
                pages=meta.get("pages"),
                updated_at=float(meta.get("updated_at", 0.0)),
            )
            entries[entry.source] = entry
        return entries

    def put_manifest(self, name: str, entries: Sequence[ManifestEntry]) -> None:
        if not entries:
            return
        self._manifest_collection(name).upsert(
            ids=[_source_id(e.source) for e in entries],
            embeddings=np.ones((len(entries), 1), dtype=np.float32),  # Chroma wants one; never queried
            documents=[json.dumps(list(e.chunk_ids)) for e in entries],
            metadatas=[_manifest_metadata(e) for e in entries],
        )

    def delete_manifest(self, name: str, sources: Iterable[str]) -> None:
        ids = [_source_id(s) for s in sources]
        if ids:
            self._manifest_collection(name).delete(ids=ids)

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

    def query(self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None) -> list[list[Hit]]:
        return [hits for hits, _ in self._query(name, embeddings, top_k=top_k, where=where, vectors=False)]

    def query_with_vectors(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None
    ) -> list[tuple[list[Hit], np.ndarray]]:
        return self._query(name, embeddings, top_k=top_k, where=where, vectors=True)

    def _query(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None, vectors: bool
    ) -> list[tuple[list[Hit], np.ndarray]]:
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        if not len(queries):
            return []
        collection = self._collection(name)
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if vectors else [])
        try:
            result = collection.query(
                query_embeddings=queries, n_results=top_k, where=dict(where) if where else None, include=include
            )
        except ValueError as e:
            raise StoreError(f"query on collection {name!r} failed: {e}") from e
        out = []
        for n, (ids, texts, metas, distances) in enumerate(
            zip(result["ids"], result["documents"], result["metadatas"], result["distances"], strict=True)
        ):
            hits = []
            for id_, text, meta, distance in zip(ids, texts, metas, distances, strict=True):
                score = 1.0 - float(distance)  # cosine distance -> cosine similarity
                hits.append(Hit(chunk=_chunk(id_, text, meta), score=score, retrieval_score=score))
            found = np.empty((len(hits), queries.shape[1] if vectors else 0), dtype=np.float32)
            if vectors and hits:
                found = np.asarray(result["embeddings"][n], dtype=np.float32).reshape(len(hits), -1)
            out.append((hits, found))
        return out

    def vectors(self, name: str, *, limit: int) -> tuple[list[str | None], np.ndarray]:
        got = self._collection(name).get(include=["embeddings", "metadatas"], limit=limit)
        languages = [(m or {}).get("language") for m in got["metadatas"]]
        return languages, np.asarray(got["embeddings"], dtype=np.float32).reshape(len(languages), -1)

    def chunks(self, name: str, *, batch: int = 2000) -> Iterator[tuple[list[str], list[str], list[str | None]]]:
        """Every chunk of ``name`` as (ids, texts, languages) pages, for building a keyword index."""
        collection = self._collection(name)
        offset = 0
        while True:
            page = collection.get(include=["documents", "metadatas"], limit=batch, offset=offset)
            if not page["ids"]:
                return
            yield (
                list(page["ids"]),
                [d or "" for d in page["documents"]],
                [(m or {}).get("language") for m in page["metadatas"]],
            )
            offset += len(page["ids"])

    def get(self, name: str, ids: Sequence[str]) -> list[Chunk]:
        if not ids:
            return []
        got = self._collection(name).get(ids=list(ids), include=["documents", "metadatas"])
        by_id = {
            id_: _chunk(id_, text or "", meta or {})
            for id_, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        }
        return [by_id[i] for i in ids if i in by_id]

    def ids_where(self, name: str, where: Where) -> set[str]:
        try:
            return set(self._collection(name).get(where=dict(where), include=[])["ids"])
        except ValueError as e:
            raise StoreError(f"filter {dict(where)!r} on collection {name!r} failed: {e}") from e

    def version(self, name: str) -> str:
        count = self._collection(name).count()
        try:
            metas = self._manifest_collection(name).get(include=["metadatas"])["metadatas"]
        except StoreError:
            metas = []
        rows = sorted(
            f"{m.get('source')}|{m.get('content_hash')}|{m.get('status')}|{m.get('updated_at')}" for m in metas
        )
        return hashlib.sha256(f"{count}\n{chr(10).join(rows)}".encode()).hexdigest()[:16]


def _source_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def _manifest_metadata(entry: ManifestEntry) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": entry.source,
        "content_hash": entry.content_hash,
        "status": entry.status,
        "chunks": len(entry.chunk_ids),
        "updated_at": entry.updated_at,
    }
    for key in ("language", "title", "pages"):
        value = getattr(entry, key)
        if value is not None:
            meta[key] = value
    return meta


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
    for key in ("title", "page", "section"):
        value = getattr(chunk, key)
        if value is not None:
            meta[key] = value
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
        page=meta.get("page"),
        section=meta.get("section"),
    )
