"""An ingestion job: files -> documents -> chunks -> embeddings -> store, incrementally.

A file whose chunk ids are all in the collection already is skipped without embedding. For a
changed file the new chunks are written first and the stale ones deleted after, so a crash
in between leaves extra chunks that the next run removes, never a file with none. One bad
file is recorded in the report and the job goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingestion.chunker import Chunker
from ingestion.loader import DEFAULT_LOADERS, Loader, discover, load_document
from rag.config import IngestionConfig
from rag.embedder import Embedder
from rag.errors import IngestionError
from rag.store import VectorStore

Progress = Callable[[int, int, Path], None]  # (files done, files total, current file)


@dataclass(frozen=True, slots=True)
class FileFailure:
    path: str
    reason: str


@dataclass(slots=True)
class IngestReport:
    collection: str
    added: list[str] = field(default_factory=list)  # new files
    updated: list[str] = field(default_factory=list)  # changed files, chunks replaced
    unchanged: list[str] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def ingest_files(
    paths: Iterable[str | Path],
    collection: str,
    *,
    embedder: Embedder,
    store: VectorStore,
    chunker: Chunker,
    config: IngestionConfig,
    loaders: Sequence[Loader] = DEFAULT_LOADERS,
    progress: Progress | None = None,
) -> IngestReport:
    files = discover(paths, config.extensions)
    if not files:
        raise IngestionError(
            f"no files with extensions {', '.join(config.extensions)} under {', '.join(map(str, paths))}"
        )
    store.ensure_collection(collection, embedding_model=embedder.model_id, dimension=embedder.dimension)
    report = IngestReport(collection=collection)
    for done, path in enumerate(files):
        if progress:
            progress(done, len(files), path)
        try:
            _ingest_one(path, collection, embedder, store, chunker, config, loaders, report)
        except IngestionError as e:
            report.failed.append(FileFailure(str(path), str(e)))
    if progress:
        progress(len(files), len(files), files[-1])
    return report


def _ingest_one(path, collection, embedder, store, chunker, config, loaders, report: IngestReport) -> None:
    document = load_document(path, config, loaders)
    chunks = chunker.chunk(document)
    stored = store.chunk_ids_of_source(collection, document.source)
    wanted = {c.id for c in chunks}
    if wanted == stored:
        report.unchanged.append(document.source)
        return
    new = [c for c in chunks if c.id not in stored]
    if new:
        store.upsert(collection, new, embedder.embed_documents([c.embedding_text for c in new]))
    stale = stored - wanted
    store.delete(collection, stale)
    report.chunks_written += len(new)
    report.chunks_deleted += len(stale)
    (report.updated if stored else report.added).append(document.source)
