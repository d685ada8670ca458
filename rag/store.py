"""Vector store stage: one Chroma collection per knowledge base.

Embedded ``PersistentClient`` by default; ``HttpClient`` to a ``chroma run`` server when
``store.url`` is set. Each collection records the index settings it was built with (embedding
model, dimension, document prompt, chunking), so two embedding spaces or chunkings are never
mixed in one collection.

Beside each collection ``NAME`` live:
- ``NAME.manifest``: one entry per source file (content hash, chunk ids, status, and ``seq``,
  the collection version at which it last changed), the ingestion job's memory of what it
  wrote; deleted files stay as "deleted" entries, so that a reader can follow every change since
  the version it last saw. Beside each entry, a record of the vector sums its chunks add to the
  centroids; and one state record: the collection's version counter, its document count and the
  per-language vector sums (rag/centroids.py). Entries, sums and state are upserted in one call,
  which Chroma applies atomically, so they never disagree. It lives in Chroma rather than in a
  file so that every process and machine on a shared ``chroma run`` server sees the same.
- ``NAME.lease`` while an ingestion job writes ``NAME`` (``lease``): creating a collection is the
  one atomic test-and-set Chroma has (a second create of the same name fails).

Every read and write is paged (``page_size``, within Chroma's batch size and SQLite's variable
limit), so any collection size works. Embedded Chroma is not safe for two processes (one's writes
break the other's reads), so the embedded folder is locked by the process that opens it
(``StoreLock``); a second process gets a ``StoreLockedError`` naming the holder, or is sent to
the Chroma server the holder runs (``babelrag serve --chroma``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from rag.centroids import VectorSums
from rag.config import MANIFEST_SUFFIX, RESERVED_SUFFIXES, StoreConfig, validate_collection_name
from rag.disk import disk_problem
from rag.errors import (
    BabelRAGError,
    CollectionNotFoundError,
    IndexMismatchError,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from rag.locks import Lease, StoreLock
from rag.types import Chunk, Hit

log = logging.getLogger(__name__)

Where = Mapping[str, Any]
Fingerprint = Mapping[str, str | int]  # index settings: {"embedding_model": ..., "dimension": 384, ...}

STATE_ID = "__state__"  # the state record's id in NAME.manifest (entry ids are sha256 hex)
PAGE_SIZE = 4000  # ids per get/delete: SQLite allows 32,766 variables, Chroma ~5,461 records per write


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
    # "writing": a job started on it and has not finished; "deleted": gone, kept as a change
    status: Literal["writing", "done", "deleted"]
    language: str | None = None
    title: str | None = None
    pages: int | None = None
    updated_at: float = 0.0  # unix time
    seq: int = 0  # the collection version at which this entry last became done or deleted

    @property
    def done(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True, slots=True)
class CollectionState:
    """What changes with every write: a version counter, the document count, the centroid sums."""

    version: int
    documents: int
    sums: VectorSums
    collection_id: str = ""  # Chroma's id of the chunks collection: a recreated one has another

    def advanced(self, *, documents: int = 0, add: VectorSums | None = None, remove: VectorSums | None = None):
        sums = VectorSums()
        sums += self.sums
        if add is not None:
            sums += add
        if remove is not None:
            sums -= remove
        return replace(self, version=self.version + 1, documents=self.documents + documents, sums=sums)


@dataclass(frozen=True, slots=True)
class Neighbours:
    """One query's nearest chunks by id, best first, without their texts or metadata."""

    ids: list[str]
    scores: list[float]  # cosine similarity
    vectors: np.ndarray  # the stored vector of each id, one row each; no columns when not asked for


@runtime_checkable
class VectorStore(Protocol):
    @property
    def location(self) -> str: ...

    @property
    def key(self) -> str:
        """Which store this is, the same from every process that uses it (for local caches)."""
        ...

    def collections(self) -> list[CollectionInfo]: ...

    def ensure_collection(self, name: str, *, fingerprint: Fingerprint, reindex: bool = False) -> bool:
        """Create ``name``, or check it was built with ``fingerprint`` (IndexMismatchError if
        not). ``reindex`` drops and recreates it. True when it was (re)created."""
        ...

    def delete_collection(self, name: str) -> None: ...

    def require(self, name: str) -> None:
        """CollectionNotFoundError unless ``name`` exists (cheap: a cached handle)."""
        ...

    def manifest(self, name: str) -> dict[str, ManifestEntry]:
        """The live entries (writing or done) by source."""
        ...

    def entries(self, name: str, sources: Sequence[str]) -> dict[str, ManifestEntry]:
        """The entries (of any status) of these sources, where there are some."""
        ...

    def changes(self, name: str, since: int) -> list[ManifestEntry]:
        """Entries that changed after version ``since``: done, deleted, or marked "writing" (a file
        whose chunks in the store are being replaced or deleted)."""
        ...

    def sums(self, name: str, sources: Sequence[str]) -> dict[str, VectorSums]:
        """The vector sums counted in the centroids for each of these sources, where recorded."""
        ...

    def state(self, name: str) -> CollectionState | None:
        """The collection's state record; None for a collection written before states existed."""
        ...

    def put_manifest(
        self, name: str, entries: Sequence[ManifestEntry], *, sums: Mapping[str, VectorSums] | None = None,
        state: CollectionState | None = None,
    ) -> None:  # fmt: skip
        """Write ``entries``, the ``sums`` of their sources and ``state`` in one atomic call."""
        ...

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

    def nearest(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None, vectors: bool = False
    ) -> list[Neighbours]:
        """The ids of the best ``top_k`` chunks for each row of ``embeddings``, with their scores
        and, with ``vectors``, their stored vectors: ``query`` without texts and metadata, which
        cost most of a query (Chroma keeps each metadata key as a row), for ranking candidates
        of which only a few are shown."""
        ...

    def languages(self, name: str, ids: Sequence[str]) -> dict[str, str | None]:
        """The language of each of ``ids`` found (None: the chunk has none); unknown ids are left out."""
        ...

    def vectors(self, name: str, ids: Sequence[str]) -> tuple[list[str], list[str | None], np.ndarray]:
        """Ids found, their languages and stored vectors (unknown ids are left out)."""
        ...

    def scan_vectors(self, name: str) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
        """Every chunk's source, language and vector, a page at a time."""
        ...

    def get(self, name: str, ids: Sequence[str]) -> list[Chunk]:
        """The chunks with these ids, in the order given; unknown ids are left out."""
        ...

    def chunks_with_vectors(self, name: str, ids: Sequence[str]) -> tuple[list[Chunk], np.ndarray]:
        """``get``, plus the stored vector of each chunk found (one row each, in that order)."""
        ...

    def filter_ids(self, name: str, ids: Sequence[str], where: Where) -> set[str]:
        """Those of ``ids`` whose chunks match ``where``."""
        ...

    def version(self, name: str) -> str:
        """Changes whenever the collection's content does (a cache key for derived indexes)."""
        ...

    def background(self) -> contextlib.AbstractContextManager[None]:
        """Within it, this thread's calls never open the store: on a store closed by its owner
        they raise StoreClosedError (for background readers and writers of derived state, which
        must not take a store, or an embedded store's lock, back from whoever let it go)."""
        ...

    def lease(self, name: str, *, job: str, ttl_s: float, wait_s: float = 0) -> Lease:
        """Hold ``name``'s ingestion lease until the returned Lease is released."""
        ...

    def close(self) -> None:
        """Let go of the store; the next call opens it again."""
        ...


# -- the store ---------------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` of ChromaStore with Chroma's failures that have an outside cause named (``_faults``)."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, ChromaStore)
        with store._faults():
            return method(*args, **kwargs)

    return call


class ChromaStore:
    """Chroma behind the VectorStore protocol. Connects on first use."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._client = None
        self._url = self.config.url  # a server URL, set or found in the embedded store's lock
        self._lock: StoreLock | None = None
        self._opening = threading.RLock()
        self._handles: dict[str, Any] = {}  # collection name -> Chroma handle
        self._thread = threading.local()  # .background: this thread must not open the store (background())

    @property
    def location(self) -> str:
        return f"Chroma server {self._url}" if self._url else f"embedded Chroma at {self.config.path}"

    @property
    def key(self) -> str:
        """Which store this is, the same from every process that uses it (for local caches)."""
        self.warm_up()
        return f"server {self._url}" if self._url else f"embedded {self.config.path.resolve()}"

    @property
    def embedded(self) -> bool:
        return self._url is None

    @property
    def lock(self) -> StoreLock | None:
        """This process's lock on the embedded store (None in server mode)."""
        self.warm_up()
        return self._lock

    @property
    def client(self):
        client = self._client
        if client is None:
            self.warm_up()
            client = self._client
        if client is None:  # closed again meanwhile, by another thread
            raise StoreClosedError(f"{self.location} was closed while this call was under way")
        return client

    def warm_up(self) -> None:
        if self._client is not None:
            return
        if getattr(self._thread, "background", False):
            raise StoreClosedError(f"{self.location} is closed; a background task does not open it again")
        with self._opening:  # chromadb's client cache is not safe against two first opens at once
            if self._client is None:
                self._open()

    def _open(self) -> None:
        import chromadb

        settings = chromadb.Settings(anonymized_telemetry=False)
        if self._url is None:
            try:
                self._lock = StoreLock.acquire(self.config.path)
            except StoreLockedError as e:
                if not e.holder.get("chroma_url"):
                    raise
                self._url = e.holder["chroma_url"]  # the holder serves it: use its Chroma server
                log.info("embedded store %s is served by %s: using it", self.config.path, self._url)
        try:
            if self._url:
                url = urlparse(self._url)
                if url.scheme not in ("http", "https") or not url.hostname:
                    raise StoreError(f"store.url must look like http://host:port, got {self._url!r}")
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
            self.close()
            raise
        except Exception as e:
            where = self.location  # before close(), which forgets a server the holder announced
            served = self._url is not None
            fault = self._fault(e)
            self.close()
            if fault is not None and not isinstance(fault, StoreUnavailableError):
                raise fault from e  # a disk that cannot be written says so itself
            fix = (
                "Start the server (`chroma run --path DIR --port PORT`) or unset store.url / BABELRAG_STORE_URL to "
                "use the embedded store"
                if served
                else "Check that the folder holds a Chroma store of this Chroma version, or point store.path elsewhere"
            )
            raise (StoreError if fault is None else StoreUnavailableError)(f"cannot open {where}: {e}. {fix}") from e
        self._client = client

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Chroma's failures whose cause lies outside it, raised as StoreErrors that name the cause:
        a server that does not answer (StoreUnavailableError: the call may work once it is back), a
        disk that is full or read-only. Other failures pass unchanged."""
        try:
            yield
        except BabelRAGError:
            raise
        except Exception as e:
            fault = self._fault(e)
            if fault is None:
                raise
            raise fault from e

    def _fault(self, e: Exception) -> StoreError | None:
        import httpx

        if isinstance(e, httpx.TransportError):  # refused, reset, or cut off mid-answer: the server went away
            return StoreUnavailableError(
                f"the Chroma server at {self._url} does not answer ({type(e).__name__}: {e}); start it again "
                "(`chroma run --path DIR --port PORT`) or check the network, then send this request again"
            )
        import chromadb.errors

        if self._url is None and isinstance(e, chromadb.errors.InternalError | OSError):
            problem = disk_problem(self.config.path)
            if problem is not None:
                return StoreError(
                    f"cannot write the embedded store at {self.config.path}: {problem} (Chroma said: {e}). Free "
                    "space or make the folder writable (or move store.path), then try again; an ingestion job "
                    "keeps what it wrote, and its re-run writes the rest"
                )
        return None

    def close(self) -> None:
        """Let go of the store (and of the embedded store's lock, for other processes): Chroma's
        in-process state for it is dropped too, so a reopen reads what others wrote meanwhile."""
        with self._opening:
            client, self._client = self._client, None
            self._handles.clear()
            if client is not None:
                try:
                    client.close()  # the last client of a path stops its System (SQLite, HNSW)
                except Exception as e:  # noqa: BLE001 - letting go must not fail on a dead server
                    log.debug("closing the Chroma client of %s: %s", self.location, e)
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self._url = self.config.url

    @property
    def page_size(self) -> int:
        return min(PAGE_SIZE, self.client.get_max_batch_size())

    # -- collections -------------------------------------------------------------------

    def _collection(self, name: str, *, fresh: bool = False):
        if not fresh and name in self._handles:
            return self._handles[name]
        import chromadb.errors

        try:
            handle = self.client.get_collection(validate_collection_name(name), embedding_function=None)
        except ValueError as e:
            raise StoreError(str(e)) from e
        except chromadb.errors.NotFoundError:
            self._handles.pop(name, None)
            existing = ", ".join(c.name for c in self.collections()) or "none"
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in {self.location} (existing: {existing}); "
                f"create it with `babelrag ingest PATH -c {name}`"
            ) from None
        self._handles[name] = handle
        return handle

    def _call(self, name: str, op: str, *args: Any, manifest: bool = False, **kwargs: Any) -> Any:
        """``handle.op(...)`` on the cached handle of ``name`` (or its manifest); once more with
        a fresh handle if the collection was dropped and recreated (by another process) since."""
        import chromadb.errors

        get = self._manifest_collection if manifest else self._collection
        try:
            return getattr(get(name), op)(*args, **kwargs)
        except chromadb.errors.NotFoundError:
            self._handles.pop(name + MANIFEST_SUFFIX if manifest else name, None)
            return getattr(get(name, fresh=True), op)(*args, **kwargs)

    @_guarded
    def require(self, name: str) -> None:
        self._collection(name)

    @_guarded
    def collections(self) -> list[CollectionInfo]:
        return [self._info(c) for c in self.client.list_collections() if not c.name.endswith(RESERVED_SUFFIXES)]

    @_guarded
    def info(self, name: str) -> CollectionInfo:
        return self._info(self._collection(name, fresh=True))

    def _info(self, collection) -> CollectionInfo:
        meta = collection.metadata or {}
        try:
            state = self.state(collection.name)
            documents = state.documents if state is not None else self._count_live_entries(collection.name)
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

    def _count_live_entries(self, name: str) -> int:
        return len(self.manifest(name))

    @_guarded
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
                self._handles[name] = existing
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
            self._drop(name)
        self._handles[name] = self.client.create_collection(
            name, configuration={"hnsw": {"space": "cosine"}}, metadata=wanted, embedding_function=None
        )
        self._manifest_collection(name, create=True).upsert(
            **_batch([_state_record(CollectionState(0, 0, VectorSums()))])
        )
        return True

    @_guarded
    def delete_collection(self, name: str) -> None:
        self._drop(name)

    def _drop(self, name: str) -> None:
        import chromadb.errors

        for n in (name, name + MANIFEST_SUFFIX):
            self._handles.pop(n, None)
            try:
                self.client.delete_collection(n)
            except (chromadb.errors.NotFoundError, ValueError):
                pass

    @_guarded
    def lease(self, name: str, *, job: str, ttl_s: float, wait_s: float = 0) -> Lease:
        validate_collection_name(name)
        return Lease(self, name, job=job, ttl_s=ttl_s).acquire(wait_s)

    # -- manifest and state -------------------------------------------------------------

    def _manifest_collection(self, name: str, *, create: bool = False, fresh: bool = False):
        key = name + MANIFEST_SUFFIX
        if create:
            handle = self._handles[key] = self.client.get_or_create_collection(key, embedding_function=None)
            return handle
        if not fresh and key in self._handles:
            return self._handles[key]
        import chromadb.errors

        try:
            handle = self.client.get_collection(key, embedding_function=None)
        except chromadb.errors.NotFoundError:
            self._collection(name)  # names the missing collection if that is the problem
            raise StoreError(
                f"collection {name!r} has no manifest (written by an older BabelRAG); "
                f"rebuild it with `babelrag ingest PATH -c {name} --reindex`"
            ) from None
        self._handles[key] = handle
        return handle

    def _entries(self, name: str, where: Where) -> Iterator[ManifestEntry]:
        """Manifest entries a page at a time. Offsets are stable: records are never deleted
        (a deleted file's entry stays, as "deleted"), only updated in place or appended."""
        offset = 0
        size = self.page_size
        while True:
            page = self._call(
                name, "get", manifest=True, where=dict(where), include=["documents", "metadatas"], limit=size,
                offset=offset,
            )  # fmt: skip
            for doc, meta in zip(page["documents"], page["metadatas"], strict=True):
                yield _entry_of(doc, meta or {})
            if len(page["ids"]) < size:
                return
            offset += len(page["ids"])

    @_guarded
    def manifest(self, name: str) -> dict[str, ManifestEntry]:
        return {e.source: e for e in self._entries(name, _ENTRIES) if e.status != "deleted"}

    @_guarded
    def entries(self, name: str, sources: Sequence[str]) -> dict[str, ManifestEntry]:
        found: dict[str, ManifestEntry] = {}
        for page in self._pages([_source_id(s) for s in sources]):
            got = self._call(name, "get", manifest=True, ids=list(page), include=["documents", "metadatas"])
            for doc, meta in zip(got["documents"], got["metadatas"], strict=True):
                entry = _entry_of(doc, meta or {})
                found[entry.source] = entry
        return found

    @_guarded
    def changes(self, name: str, since: int) -> list[ManifestEntry]:
        return list(self._entries(name, {"seq": {"$gt": int(since)}}))

    @_guarded
    def sums(self, name: str, sources: Sequence[str]) -> dict[str, VectorSums]:
        found: dict[str, VectorSums] = {}
        for page in self._pages([_sums_id(s) for s in sources]):
            got = self._call(name, "get", manifest=True, ids=list(page), include=["documents", "metadatas"])
            for doc, meta in zip(got["documents"], got["metadatas"], strict=True):
                found[str(meta["source"])] = VectorSums.from_json(json.loads(doc))
        return found

    @_guarded
    def state(self, name: str) -> CollectionState | None:
        got = self._call(name, "get", manifest=True, ids=[STATE_ID], include=["documents"])
        if not got["ids"]:
            return None
        data = json.loads(got["documents"][0])
        return CollectionState(
            version=int(data["version"]),
            documents=int(data["documents"]),
            sums=VectorSums.from_json(data["sums"]),
            collection_id=str(self._collection(name).id),
        )

    @_guarded
    def put_manifest(
        self, name: str, entries: Sequence[ManifestEntry], *, sums: Mapping[str, VectorSums] | None = None,
        state: CollectionState | None = None,
    ) -> None:  # fmt: skip
        records = [_entry_record(e) for e in entries] + [_sums_record(s, v) for s, v in (sums or {}).items()]
        # One upsert is atomic in Chroma: all records go together. More than a write takes (only
        # a whole-collection migration has that many) go a page at a time, the state last.
        size = self.page_size - 1
        pages = [records[i : i + size] for i in range(0, len(records), size)] or [[]]
        for i, page in enumerate(pages):
            if state is not None and i == len(pages) - 1:
                page = [*page, _state_record(state)]
            if page:
                self._call(name, "upsert", manifest=True, **_batch(page))

    # -- chunks ------------------------------------------------------------------------

    def _pages(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        size = self.page_size
        for i in range(0, len(items), size):
            yield items[i : i + size]

    @_guarded
    def upsert(self, name: str, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        if len(chunks) != len(embeddings):
            raise StoreError(f"upsert needs one embedding per chunk, got {len(embeddings)} for {len(chunks)}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        size = self.page_size
        for i in range(0, len(chunks), size):
            page = chunks[i : i + size]
            self._call(
                name, "upsert", ids=[c.id for c in page], embeddings=embeddings[i : i + size],
                documents=[c.text for c in page], metadatas=[_metadata(c) for c in page],
            )  # fmt: skip

    @_guarded
    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for page in self._pages(list(ids)):
            found.update(self._call(name, "get", ids=list(page), include=[])["ids"])
        return found

    @_guarded
    def chunk_ids_of_source(self, name: str, source: str) -> set[str]:
        found: set[str] = set()
        size, offset = self.page_size, 0
        while True:
            page = self._call(name, "get", where={"source": source}, include=[], limit=size, offset=offset)["ids"]
            found.update(page)
            if len(page) < size:
                return found
            offset += len(page)

    @_guarded
    def delete(self, name: str, ids: Iterable[str]) -> None:
        for page in self._pages(list(ids)):
            self._call(name, "delete", ids=list(page))

    @_guarded
    def query(self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None) -> list[list[Hit]]:
        return [hits for hits, _ in self._query(name, embeddings, top_k=top_k, where=where, vectors=False)]

    @_guarded
    def query_with_vectors(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None
    ) -> list[tuple[list[Hit], np.ndarray]]:
        return self._query(name, embeddings, top_k=top_k, where=where, vectors=True)

    def _query(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None, vectors: bool
    ) -> list[tuple[list[Hit], np.ndarray]]:
        queries = _query_rows(embeddings)
        if not len(queries):
            return []
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if vectors else [])
        result = self._search(name, queries, top_k=top_k, where=where, include=include)
        out = []
        for n, (ids, texts, metas, distances) in enumerate(
            zip(result["ids"], result["documents"], result["metadatas"], result["distances"], strict=True)
        ):
            hits, rows = [], []
            for row, (id_, text, meta, distance) in enumerate(zip(ids, texts, metas, distances, strict=True)):
                if meta is None:  # deleted by a writer between the index search and the read of its record
                    continue
                score = 1.0 - float(distance)  # cosine distance -> cosine similarity
                hits.append(Hit(chunk=_chunk(id_, text, meta), score=score, retrieval_score=score))
                rows.append(row)
            found = np.empty((len(hits), queries.shape[1] if vectors else 0), dtype=np.float32)
            if vectors and hits:
                embeddings = result["embeddings"][n]
                found = np.asarray([embeddings[r] for r in rows], dtype=np.float32).reshape(len(hits), -1)
            out.append((hits, found))
        return out

    def _search(self, name: str, queries: np.ndarray, *, top_k: int, where: Where | None, include: list[str]) -> dict:
        """Chroma's nearest-neighbour query, its error for a bad filter said as a StoreError."""
        try:
            return self._call(
                name, "query", query_embeddings=queries, n_results=top_k, where=dict(where) if where else None,
                include=include,
            )  # fmt: skip
        except ValueError as e:
            raise StoreError(f"query on collection {name!r} failed: {e}") from e

    @_guarded
    def nearest(
        self, name: str, embeddings: np.ndarray, *, top_k: int, where: Where | None = None, vectors: bool = False
    ) -> list[Neighbours]:
        queries = _query_rows(embeddings)
        if not len(queries):
            return []
        include = ["distances", "embeddings"] if vectors else ["distances"]
        result = self._search(name, queries, top_k=top_k, where=where, include=include)
        out = []
        for n, (ids, distances) in enumerate(zip(result["ids"], result["distances"], strict=True)):
            scores = [1.0 - float(d) for d in distances]  # cosine distance -> cosine similarity
            found = np.empty((len(ids), 0), dtype=np.float32)
            if vectors:
                rows = result["embeddings"][n]
                # a record deleted between the index search and the read of its vector has none
                kept = [i for i, row in enumerate(rows) if row is not None]
                if len(kept) < len(ids):
                    ids, scores, rows = [ids[i] for i in kept], [scores[i] for i in kept], [rows[i] for i in kept]
                found = np.asarray(rows, dtype=np.float32).reshape(len(ids), queries.shape[1])
            out.append(Neighbours(ids=list(ids), scores=scores, vectors=found))
        return out

    @_guarded
    def languages(self, name: str, ids: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for page in self._pages(list(ids)):
            got = self._call(name, "get", ids=list(page), include=["metadatas"])
            found.update(
                (id_, (meta or {}).get("language")) for id_, meta in zip(got["ids"], got["metadatas"], strict=True)
            )
        return found

    @_guarded
    def vectors(self, name: str, ids: Sequence[str]) -> tuple[list[str], list[str | None], np.ndarray]:
        found: list[str] = []
        languages: list[str | None] = []
        rows: list[np.ndarray] = []
        for page in self._pages(list(ids)):
            got = self._call(name, "get", ids=list(page), include=["embeddings", "metadatas"])
            found += got["ids"]
            languages += [(m or {}).get("language") for m in got["metadatas"]]
            rows.append(np.asarray(got["embeddings"], dtype=np.float32).reshape(len(got["ids"]), -1))
        return found, languages, np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def scan_vectors(self, name: str) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
        size, offset = self.page_size, 0
        while True:
            with self._faults():
                got = self._call(name, "get", include=["embeddings", "metadatas"], limit=size, offset=offset)
            if got["ids"]:
                metas = [m or {} for m in got["metadatas"]]
                yield (
                    [str(m.get("source")) for m in metas],
                    [m.get("language") for m in metas],
                    np.asarray(got["embeddings"], dtype=np.float32).reshape(len(metas), -1),
                )
            if len(got["ids"]) < size:
                return
            offset += len(got["ids"])

    @_guarded
    def get(self, name: str, ids: Sequence[str]) -> list[Chunk]:
        return [chunk for chunk, _ in self._read(name, ids, vectors=False)]

    @_guarded
    def chunks_with_vectors(self, name: str, ids: Sequence[str]) -> tuple[list[Chunk], np.ndarray]:
        found = self._read(name, ids, vectors=True)
        vectors = np.asarray([v for _, v in found], dtype=np.float32)
        return [c for c, _ in found], vectors.reshape(len(found), -1) if len(found) else np.zeros((0, 0), np.float32)

    def _read(self, name: str, ids: Sequence[str], *, vectors: bool) -> list[tuple[Chunk, Any]]:
        """(chunk, its stored vector if asked for) of each of ``ids`` found, in their order, a page a call."""
        include = ["documents", "metadatas", "embeddings"] if vectors else ["documents", "metadatas"]
        by_id: dict[str, tuple[Chunk, Any]] = {}
        for page in self._pages(list(ids)):
            got = self._call(name, "get", ids=list(page), include=include)
            rows = got["embeddings"] if vectors else [None] * len(got["ids"])
            for id_, text, meta, vector in zip(got["ids"], got["documents"], got["metadatas"], rows, strict=True):
                by_id[id_] = (_chunk(id_, text or "", meta or {}), vector)
        return [by_id[i] for i in ids if i in by_id]

    @_guarded
    def filter_ids(self, name: str, ids: Sequence[str], where: Where) -> set[str]:
        found: set[str] = set()
        try:
            for page in self._pages(list(ids)):
                found.update(self._call(name, "get", ids=list(page), where=dict(where), include=[])["ids"])
        except ValueError as e:
            raise StoreError(f"filter {dict(where)!r} on collection {name!r} failed: {e}") from e
        return found

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        before = getattr(self._thread, "background", False)
        self._thread.background = True
        try:
            yield
        finally:
            self._thread.background = before

    @_guarded
    def version(self, name: str) -> str:
        got = self._call(name, "get", manifest=True, ids=[STATE_ID], include=["metadatas"])
        if got["ids"]:
            return f"{self._collection(name).id}:{got['metadatas'][0]['version']}"
        # a collection written before states existed: its count and manifest, read whole
        rows = sorted(f"{e.source}|{e.content_hash}|{e.status}|{e.updated_at}" for e in self.manifest(name).values())
        count = self._call(name, "count")
        return "legacy:" + hashlib.sha256(f"{count}\n{chr(10).join(rows)}".encode()).hexdigest()[:16]


_ENTRIES = {"kind": {"$nin": ["sums", "state"]}}  # entries; those written before kinds existed have none


def _query_rows(embeddings: np.ndarray) -> np.ndarray:
    """Query vectors as float32 rows (one vector is one row)."""
    queries = np.asarray(embeddings, dtype=np.float32)
    return queries.reshape(1, -1) if queries.ndim == 1 else queries


def _batch(records: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    return {
        "ids": [r[0] for r in records],
        "embeddings": np.ones((len(records), 1), dtype=np.float32),  # Chroma wants one; never queried
        "documents": [r[1] for r in records],
        "metadatas": [r[2] for r in records],
    }


def _source_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def _sums_id(source: str) -> str:
    return "sums-" + _source_id(source)


def _entry_record(entry: ManifestEntry) -> tuple[str, str, dict[str, Any]]:
    return _source_id(entry.source), json.dumps(list(entry.chunk_ids)), _manifest_metadata(entry)


def _sums_record(source: str, sums: VectorSums) -> tuple[str, str, dict[str, Any]]:
    return _sums_id(source), json.dumps(sums.to_json()), {"kind": "sums", "source": source}


def _state_record(state: CollectionState) -> tuple[str, str, dict[str, Any]]:
    data = {"version": state.version, "documents": state.documents, "sums": state.sums.to_json()}
    return STATE_ID, json.dumps(data), {"kind": "state", "version": state.version}


def _entry_of(document: str, meta: Mapping[str, Any]) -> ManifestEntry:
    status = meta.get("status")
    return ManifestEntry(
        source=str(meta["source"]),
        content_hash=str(meta["content_hash"]),
        chunk_ids=tuple(json.loads(document)),
        status=status if status in ("done", "deleted") else "writing",
        language=meta.get("language"),
        title=meta.get("title"),
        pages=meta.get("pages"),
        updated_at=float(meta.get("updated_at", 0.0)),
        seq=int(meta.get("seq", 0)),
    )


def _manifest_metadata(entry: ManifestEntry) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": "entry",
        "source": entry.source,
        "content_hash": entry.content_hash,
        "status": entry.status,
        "chunks": len(entry.chunk_ids),
        "updated_at": entry.updated_at,
        "seq": entry.seq,
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
