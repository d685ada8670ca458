"""An ingestion job: files -> documents -> chunks -> embeddings -> store, incrementally.

The collection's manifest (``VectorStore.manifest``) maps each source file to its content hash
and chunk ids. A file whose hash matches a finished manifest entry is skipped without being
parsed; a new or changed file is parsed, chunked and written; with ``prune``, files that were
ingested from the given folders and are gone now are deleted.

Crash safety: for every file the job writes, in this order, (1) a manifest entry with status
"writing", (2) the chunks not already stored (ids are deterministic, so a re-run rewrites the
same ids), (3) the deletion of the file's stale chunks, (4) the entry with status "done". A job
killed at any point leaves a "writing" entry, which the next run treats as changed; it then
finds the file's stored chunks by source, writes what is missing and deletes what is stale, so
it converges to the chunks of an uninterrupted run. Chunks of a source are only ever written
after its entry exists, so none can be orphaned. A changed file with no new chunks to write
skips (1): its entry still holds the old hash until (4), which makes it changed to a re-run.

The collection's state (version, document count, per-language vector sums for the centroids,
rag/store.py) changes in the same atomic write as the entries: (1) counts a new document, (4)
swaps the vector sums counted for the file (recorded beside its entry) for those of its new
chunks and stamps the entry with the new version, and a deletion removes the sums with the
entry (which stays as "deleted", for readers that follow changes). So after a crash anywhere the
sums are exactly those of the files the manifest says are counted, and readers in every process
see one consistent state. ``CollectionWriter`` does this bookkeeping for the job and for deletes.

One job writes a collection at a time: it holds the collection's lease (``VectorStore.lease``)
and checks it before every write, so a job that stalled past its lease stops.

A store that stops answering while the job runs (a Chroma server restarted: StoreUnavailableError)
does not end it: each store call is tried again for up to ``ingestion.store_retry_s``. That is safe
because every call the job makes is idempotent, even one the server applied before its answer was
lost: upserts of deterministic ids, deletes by id, reads, and bookkeeping computed before the call.

Loading and chunking run in a background thread, ahead of embedding; chunks from several
files are embedded and upserted together in batches of ``ingestion.upsert_batch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import numpy as np

from ingestion.chunker import Chunker
from ingestion.loader import DEFAULT_LOADERS, Loader, discover, load
from rag.centroids import VectorSums
from rag.config import IngestionConfig, Settings
from rag.embedder import Embedder
from rag.errors import IngestionError, StoreUnavailableError
from rag.locks import Lease
from rag.store import CollectionState, Fingerprint, ManifestEntry, VectorStore
from rag.types import Chunk, Document

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobProgress:
    files_done: int
    files_total: int
    chunks_written: int
    current: str | None  # the file just finished


Progress = Callable[[JobProgress], None]


@dataclass(frozen=True, slots=True)
class FileIssue:
    path: str
    reason: str


@dataclass(slots=True)
class IngestReport:
    collection: str
    added: list[str] = field(default_factory=list)  # new files
    updated: list[str] = field(default_factory=list)  # changed files, chunks replaced
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # pruned: ingested before, gone now
    missing: list[str] = field(default_factory=list)  # gone now, kept because prune was off
    failed: list[FileIssue] = field(default_factory=list)
    warnings: list[FileIssue] = field(default_factory=list)  # ingested, with a caveat
    chunks_written: int = 0
    chunks_deleted: int = 0
    reindexed: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["chunks_per_s"] = round(self.chunks_written / self.seconds, 2) if self.seconds else None
        return d

    @classmethod
    def from_dict(cls, data: dict) -> IngestReport:
        """The report ``to_dict`` made (e.g. sent back by a server that ran the job)."""
        issues = {"failed", "warnings"}
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k not in issues}
        return cls(**values, **{k: [FileIssue(**i) for i in data.get(k, [])] for k in issues})

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (atomically) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
        tmp.replace(path)
        return path


def index_fingerprint(embedder: Embedder, chunker: Chunker) -> dict[str, str | int]:
    """The settings a collection's vectors depend on; a change means a rebuild."""
    return {**embedder.fingerprint, **chunker.fingerprint}


def ingest_files(
    paths: Iterable[str | Path],
    collection: str,
    *,
    embedder: Embedder,
    store: VectorStore,
    chunker: Chunker,
    config: IngestionConfig,
    loaders: Sequence[Loader] = DEFAULT_LOADERS,
    prune: bool = False,
    reindex: bool = False,
    progress: Progress | None = None,
    engine: Literal["local", "ray"] | None = None,
    settings: Settings | None = None,
    job: str = "babelrag ingest",
    roots: Sequence[Path] = (),
) -> IngestReport:
    """``engine`` (default ``config.engine``): "local" loads, chunks and embeds in this process;
    "ray" does it on a Ray cluster (ingestion.ray_engine), whose workers build their chunker,
    language identifier and embedder from ``settings``. Either way this process does every write.
    ``roots``: only files whose real path lies in one of these folders are read (a server's
    ``server.ingest_roots``: a symlink inside a root must not lead out of it)."""
    started = time.perf_counter()
    paths = [Path(p).expanduser() for p in paths]
    files, unreachable = discover(paths, config.extensions, roots=roots)
    report = IngestReport(collection=collection)
    report.failed.extend(FileIssue(p, why) for p, why in unreachable)
    if not files and not unreachable and not prune:
        raise IngestionError(
            f"no files with extensions {', '.join(config.extensions)} under {', '.join(map(str, paths))}; "
            "pass other paths or add the extension to ingestion.extensions"
        )
    fingerprint: Fingerprint = index_fingerprint(embedder, chunker)
    patience = config.store_retry_s
    lease = retry_unavailable(
        patience, store.lease, collection, job=job, ttl_s=config.lease_ttl_s, wait_s=config.lease_wait_s
    )
    with lease:
        reindexed = retry_unavailable(patience, store.ensure_collection, collection, fingerprint=fingerprint,
                                      reindex=reindex)  # fmt: skip
        report.reindexed = reindexed and reindex
        manifest = retry_unavailable(patience, store.manifest, collection)
        target = CollectionWriter(store, collection, lease=lease, manifest=manifest, retry_s=patience)
        writer = _Writer(target, embedder, config.upsert_batch, manifest, report, progress, len(files))
        if (engine or config.engine) == "ray":
            from ingestion.ray_engine import prepared_on_ray

            items = prepared_on_ray(files, manifest, embedder, chunker, config, loaders, settings)
        else:
            items = _prepared(files, manifest, chunker, config, loaders)
        for item in items:
            writer.take(item)
        writer.flush(everything=True)

        gone = _gone(manifest, paths, set(map(str, files)) | {f.path for f in report.failed})
        if prune:
            report.chunks_deleted += target.delete_sources(gone)
            report.removed.extend(gone)
        else:
            report.missing.extend(gone)
    report.seconds = time.perf_counter() - started
    return report


class CollectionWriter:
    """Every write to a collection, with its bookkeeping: manifest entries, the vector sums
    counted for each source, and the collection state, in the order the module docstring gives.

    ``manifest`` is the whole manifest if the caller has read it (the job has); otherwise
    entries are read when needed. A collection written before states existed is given one first
    (``_migrate``). ``retry_s``: how long each store call is tried again while the store is
    unavailable (``retry_unavailable``); 0 fails at once.
    """

    def __init__(
        self, store: VectorStore, collection: str, *, lease: Lease | None = None,
        manifest: dict[str, ManifestEntry] | None = None, retry_s: float = 0,
    ) -> None:  # fmt: skip
        self.store = store
        self.collection = collection
        self.lease = lease
        self.retry_s = retry_s
        self.entries: dict[str, ManifestEntry] = dict(manifest or {})
        self._complete = manifest is not None  # a source not in it has no live entry
        state = self.call(store.state, collection)
        self.state: CollectionState = state if state is not None else self.call(self._migrate)

    def call(self, method: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``method(*args, **kwargs)``, a call to the store, tried again while it is unavailable."""
        return retry_unavailable(self.retry_s, method, *args, **kwargs)

    def _check(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def _entry(self, source: str) -> ManifestEntry | None:
        if source not in self.entries and not self._complete:
            self.entries.update(self.call(self.store.entries, self.collection, [source]))
        entry = self.entries.get(source)
        return entry if entry is not None and entry.status != "deleted" else None

    def begin(self, entries: Sequence[ManifestEntry]) -> None:
        """(1): mark these files "writing" (their previous entries keep counting until done)."""
        self._check()
        new = [e for e in entries if self._entry(e.source) is None]
        state = self.state.advanced(documents=len(new))
        # stamped with the new version: readers that follow changes (keyword indexes serving
        # chunks) learn that these files' chunks in the store are about to change
        marked = [replace(e, status="writing", seq=state.version) for e in entries]
        # a new file counts nothing yet: record that, so a crash before (4) leaves nothing to undo
        self.call(self.store.put_manifest, self.collection, marked, sums={e.source: VectorSums() for e in new},
                  state=state)  # fmt: skip
        self.state = state
        self.entries.update({e.source: e for e in marked})

    def write(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """(2): chunks of files marked "writing"."""
        self._check()
        self.call(self.store.upsert, self.collection, chunks, vectors)

    def finish(self, done: Sequence[tuple[ManifestEntry, VectorSums]], stale: Sequence[str]) -> None:
        """(3) and (4): delete ``stale`` chunks, then mark the files done with the sums of their chunks."""
        if not done:
            return
        self._check()
        if stale:
            # a changed file with no new chunks was not marked "writing" yet: mark it before its
            # stale chunks go, so no reader takes them for current meanwhile (or after a crash)
            unmarked = [e for e, _ in done if (previous := self._entry(e.source)) is not None and previous.done]
            if unmarked:
                self.begin(unmarked)
        self.call(self.store.delete, self.collection, stale)
        counted = self.call(self.store.sums, self.collection, [e.source for e, _ in done])
        removed, added = VectorSums(), VectorSums()
        for entry, sums in done:
            removed += counted.get(entry.source, VectorSums())
            added += sums
        state = self.state.advanced(add=added, remove=removed)
        entries = [replace(e, status="done", seq=state.version) for e, _ in done]
        self.call(self.store.put_manifest, self.collection, entries, sums={e.source: v for e, v in done}, state=state)
        self.state = state
        self.entries.update({e.source: e for e in entries})

    def delete_sources(self, sources: Sequence[str]) -> int:
        """Delete these files' chunks and entries; returns how many chunks were deleted."""
        sources = [s for s in sources if self._entry(s) is not None]
        if not sources:
            return 0
        self._check()
        # "writing" first, as for a changed file: a reader following changes stops serving these
        # files' chunks from its copy before they go (and after a crash in between)
        self.begin([self.entries[s] for s in sources])
        deleted = 0
        for source in sources:
            ids = self.call(self.store.chunk_ids_of_source, self.collection, source)
            self.call(self.store.delete, self.collection, ids)
            deleted += len(ids)
        counted = self.call(self.store.sums, self.collection, sources)
        removed = VectorSums()
        for source in sources:
            removed += counted.get(source, VectorSums())
        state = self.state.advanced(documents=-len(sources), remove=removed)
        now = time.time()
        gone = [
            replace(self.entries[s], status="deleted", chunk_ids=(), seq=state.version, updated_at=now) for s in sources
        ]
        self.call(self.store.put_manifest, self.collection, gone, sums={s: VectorSums() for s in sources}, state=state)
        self.state = state
        self.entries.update({e.source: e for e in gone})
        return deleted

    def _migrate(self) -> CollectionState:
        """A state for a collection written before states existed: the vector sums of each
        source's stored chunks, read a page at a time. Written entries-first, state last: a crash
        in between leaves no state, and the next writer migrates again."""
        started = time.perf_counter()
        per_source: dict[str, VectorSums] = {}
        for sources, languages, vectors in self.store.scan_vectors(self.collection):
            names, of_row = np.unique(np.array(sources), return_inverse=True)
            for n, source in enumerate(names):
                rows = np.flatnonzero(of_row == n)
                per_source.setdefault(str(source), VectorSums()).add([languages[i] for i in rows], vectors[rows])
        live = self.store.manifest(self.collection)
        total = VectorSums()
        for sums in per_source.values():
            total += sums
        state = CollectionState(version=1, documents=len(live), sums=total)
        sums = {s: per_source.get(s, VectorSums()) for s in live}
        self.store.put_manifest(self.collection, [], sums=sums, state=state)
        log.info(
            "collection %r: centroid sums of %d chunks in %d files recorded in %.1f s",
            self.collection, total.total, len(live), time.perf_counter() - started,
        )  # fmt: skip
        return self.store.state(self.collection) or state


def delete_sources(
    store: VectorStore, collection: str, sources: Sequence[str], *, config: IngestionConfig,
    job: str = "babelrag delete",
) -> int:  # fmt: skip
    """Delete these files from ``collection`` under its lease; returns the chunks deleted."""
    with store.lease(collection, job=job, ttl_s=config.lease_ttl_s, wait_s=config.lease_wait_s) as lease:
        return CollectionWriter(store, collection, lease=lease).delete_sources(sources)


def write_documents(
    store: VectorStore, collection: str, documents: Sequence[tuple[ManifestEntry, Sequence[Chunk], np.ndarray]],
    *, lease: Lease | None = None,
) -> None:  # fmt: skip
    """Write whole documents (entry, its chunks, their vectors) with the job's bookkeeping: for
    callers that have vectors already (benchmarks, tests, other engines). Replaces the sources' chunks."""
    if not documents:
        return
    writer = CollectionWriter(store, collection, lease=lease)
    sources = [entry.source for entry, _, _ in documents]
    writer.entries.update(store.entries(collection, sources))  # one read for all, not one per source
    writer._complete = True
    known = {s for s in sources if writer._entry(s) is not None}
    writer.begin([entry for entry, _, _ in documents])
    done = []
    stale: list[str] = []
    for entry, chunks, vectors in documents:
        if entry.source in known:  # a new source has no chunks yet
            stale += sorted(store.chunk_ids_of_source(collection, entry.source) - {c.id for c in chunks})
        done.append((entry, VectorSums.of([c.language for c in chunks], np.asarray(vectors))))
    writer.write([c for _, chunks, _ in documents for c in chunks], np.concatenate([v for _, _, v in documents]))
    writer.finish(done, stale)


def retry_unavailable(patience_s: float, method: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``method(*args, **kwargs)``, tried again while it raises StoreUnavailableError (a Chroma server
    restarting), waiting 0.2 s, 0.4 s, ... up to 5 s between tries, for ``patience_s`` in all. Only for
    idempotent calls: one the server applied before its answer was lost runs again."""
    deadline = time.monotonic() + patience_s
    wait = 0.2
    while True:
        try:
            return method(*args, **kwargs)
        except StoreUnavailableError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                if patience_s <= 0:
                    raise
                raise StoreUnavailableError(
                    f"{e}. The ingestion job waited {patience_s:g} s for it (ingestion.store_retry_s) and stopped; "
                    "re-run it once the store answers: what it wrote is kept, and the rest is written then"
                ) from e
            log.warning("the store does not answer; trying again in %.1f s: %s", min(wait, left), e)
            time.sleep(min(wait, left))
            wait = min(wait * 2, 5.0)


# -- stage 1: load and chunk, in a background thread -------------------------------------


@dataclass(frozen=True, slots=True)
class _Unchanged:
    source: str


@dataclass(frozen=True, slots=True)
class _Failed:
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Parsed:
    document: Document
    chunks: list[Chunk]
    warnings: tuple[str, ...]
    # One row per chunk, embedded with the document prompt, where the engine embeds (ray); else
    # the writer embeds the chunks it has to write.
    embeddings: np.ndarray | None = None


_Item = _Unchanged | _Failed | _Parsed
_DONE = object()


def _prepared(files, manifest, chunker, config, loaders, lookahead: int = 8) -> Iterator[_Item]:
    """Each file as _Unchanged, _Failed or _Parsed, prepared up to ``lookahead`` files ahead."""
    out: queue.Queue = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def work() -> None:
        try:
            for path in files:
                if stop.is_set():
                    return
                out.put(_prepare(path, manifest.get(str(path)), chunker, config, loaders))
        finally:
            out.put(_DONE)

    thread = threading.Thread(target=work, name="ingest-prepare", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _DONE:
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _prepare(path: Path, entry: ManifestEntry | None, chunker: Chunker, config, loaders) -> _Item:
    source = str(path)
    try:
        if entry is not None and entry.done and entry.content_hash == _file_hash(path):
            return _Unchanged(source)
        document, warnings = load(path, config, loaders)
        chunks = chunker.chunk(document)
        if not chunks:
            return _Failed(source, f"{path}: no chunk could be made of its text")
        return _Parsed(replace(document, language=_main_language(chunks)), chunks, warnings)
    except IngestionError as e:
        return _Failed(source, str(e))
    except OSError as e:
        return _Failed(source, f"{path}: cannot read it ({e.strerror or e}); check it exists and is readable")
    except Exception as e:  # a parser bug on one hostile file must not end the job
        log.warning("unexpected error on %s", path, exc_info=True)
        return _Failed(source, f"{path}: unexpected {type(e).__name__} while parsing it: {e}")


def _file_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _main_language(chunks: Sequence[Chunk]) -> str | None:
    """The language of most chunks. Chunks hold about the same number of tokens, so this weighs
    languages by tokens; characters would not (a Japanese sentence has a third of the German one's)."""
    weights = Counter(c.language for c in chunks if c.language)
    return weights.most_common(1)[0][0] if weights else None


# -- stage 2: embed and write, batched across files --------------------------------------


@dataclass(slots=True)
class _Open:
    """A file whose new chunks are not all written yet."""

    parsed: _Parsed
    stored: set[str]  # chunk ids of its source in the store when the job reached it
    waiting: int  # new chunks not yet upserted
    sums: VectorSums  # of its chunks' vectors so far: the stored ones it keeps, the new ones written
    marked: bool = False  # its "writing" manifest entry is stored


class _Writer:
    def __init__(self, target: CollectionWriter, embedder, batch, manifest, report, progress, total) -> None:
        self.target = target
        self.store: VectorStore = target.store
        self.collection = target.collection
        self.embedder: Embedder = embedder
        self.batch = batch
        self.manifest: dict[str, ManifestEntry] = manifest
        self.report: IngestReport = report
        self.progress = progress
        self.total = total
        self.done = 0
        self.pending: list[tuple[Chunk, _Open]] = []
        self.open: list[_Open] = []
        self.vectors: dict[str, np.ndarray] = {}  # chunk id -> the engine's vector, for pending chunks

    def take(self, item: _Item) -> None:
        if isinstance(item, _Unchanged):
            self.report.unchanged.append(item.source)
            self._tick(item.source)
        elif isinstance(item, _Failed):
            self.report.failed.append(FileIssue(item.source, item.reason))
            self._tick(item.source)
        else:
            source = item.document.source
            self.report.warnings.extend(FileIssue(source, w) for w in item.warnings)
            # A source without a manifest entry has no chunks: they are written after the entry.
            stored = set()
            if source in self.manifest:
                stored = self.target.call(self.store.chunk_ids_of_source, self.collection, source)
            new = [c for c in item.chunks if c.id not in stored]
            if item.embeddings is not None:
                rows = zip(item.chunks, item.embeddings, strict=True)
                self.vectors.update((c.id, v) for c, v in rows if c.id not in stored)
            kept = [c.id for c in item.chunks if c.id in stored]
            sums = VectorSums()
            if kept:  # their vectors count for the file's sums too
                _, languages, vectors = self.target.call(self.store.vectors, self.collection, kept)
                sums.add(languages, vectors)
            state = _Open(item, stored, len(new), sums)
            self.open.append(state)
            self.pending.extend((c, state) for c in new)
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        while len(self.pending) >= self.batch or (everything and self.pending):
            batch, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            self._mark(list({id(o): o for _, o in batch if not o.marked}.values()))
            chunks = [c for c, _ in batch]
            vectors = self._vectors(chunks)
            self.target.write(chunks, vectors)
            for (chunk, state), vector in zip(batch, vectors, strict=True):
                state.waiting -= 1
                state.sums.add([chunk.language], vector[None])
            self.report.chunks_written += len(chunks)
            self._finish()
        self._finish()

    def _vectors(self, chunks: list[Chunk]) -> np.ndarray:
        """The vectors of ``chunks``: those their engine computed, the embedder's for the others."""
        missing = [c for c in chunks if c.id not in self.vectors]
        if missing:
            computed = self.embedder.embed_documents([c.embedding_text for c in missing])
            self.vectors.update((c.id, v) for c, v in zip(missing, computed, strict=True))
        return np.stack([self.vectors.pop(c.id) for c in chunks])

    def _mark(self, states: list[_Open]) -> None:
        now = time.time()
        self.target.begin([_entry(s.parsed, "writing", now) for s in states])
        for s in states:
            s.marked = True

    def _finish(self) -> None:
        """Delete stale chunks of the files whose new chunks are all written; mark them done."""
        finished = [s for s in self.open if s.waiting == 0]
        if not finished:
            return
        stale = [i for s in finished for i in s.stored - {c.id for c in s.parsed.chunks}]
        now = time.time()
        self.target.finish([(_entry(s.parsed, "done", now), s.sums) for s in finished], stale)
        self.report.chunks_deleted += len(stale)
        self.open = [s for s in self.open if s.waiting > 0]
        for s in finished:
            source = s.parsed.document.source
            (self.report.updated if source in self.manifest else self.report.added).append(source)
            self._tick(source)

    def _tick(self, source: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(JobProgress(self.done, self.total, self.report.chunks_written, source))


def _entry(parsed: _Parsed, status, now: float) -> ManifestEntry:
    d = parsed.document
    return ManifestEntry(
        source=d.source,
        content_hash=d.content_hash,
        chunk_ids=tuple(c.id for c in parsed.chunks),
        status=status,
        language=d.language,
        title=d.title,
        pages=len(d.pages) or None,
        updated_at=now,
    )


def _gone(manifest: dict[str, ManifestEntry], roots: Sequence[Path], seen: set[str]) -> list[str]:
    """Manifest sources under ``roots`` that this run did not find."""
    resolved = [r.resolve() for r in roots]
    gone = []
    for source in manifest:
        if source in seen:
            continue
        path = Path(source)
        if any(path == r or r in path.parents for r in resolved):
            gone.append(source)
    return sorted(gone)


__all__ = [
    "CollectionWriter",
    "FileIssue",
    "IngestReport",
    "JobProgress",
    "Progress",
    "delete_sources",
    "index_fingerprint",
    "ingest_files",
    "write_documents",
]
