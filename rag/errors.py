"""BabelRAG's exception hierarchy.

    BabelRAGError
    ├── ConfigError            settings file or values are invalid
    ├── ModelNotFoundError     a model id/path cannot be loaded (no local folder, hub unreachable)
    ├── QueryError             the question itself is unusable (empty, too long)
    ├── AccessDeniedError      the caller's token does not reach this collection or may not write
    ├── IngestionError         a file or folder cannot be ingested
    ├── StoreError             the vector store refused or cannot be reached
    │   ├── CollectionNotFoundError
    │   ├── IndexMismatchError a collection was built with other embedding/chunking settings
    │   ├── StoreUnavailableError  the Chroma server does not answer (down, restarting): try again
    │   ├── StoreLockedError   the embedded store is open in another process
    │   ├── LeaseHeldError     another ingestion job writes the collection
    │   └── LeaseLostError     this job's lease was taken over (it stalled past the lease's time)
    ├── GenerationError        the LLM server is down, slow or answered garbage
    └── InstallError           `babelrag llm install` could not build the vLLM runtime

Every message says what was expected, what came, and what to do. The CLI prints
``str(error)`` as one line and exits non-zero, so messages must stand on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BabelRAGError(Exception):
    """Base class of every error BabelRAG raises on purpose."""


class ConfigError(BabelRAGError):
    pass


class ModelNotFoundError(BabelRAGError):
    pass


class QueryError(BabelRAGError):
    pass


class AccessDeniedError(BabelRAGError):
    pass


class IngestionError(BabelRAGError):
    pass


class StoreError(BabelRAGError):
    pass


class CollectionNotFoundError(StoreError):
    pass


class IndexMismatchError(StoreError):
    pass


class StoreUnavailableError(StoreError):
    """The Chroma server cannot be reached (stopped, restarting, network down). Nothing was refused:
    the same call may work once it is back, which is why an ingestion job retries it."""


class StoreClosedError(StoreError):
    """A background task (VectorStore.background) found the store closed by its owner: it stops
    rather than open the store again."""


class StoreLockedError(StoreError):
    """The embedded store is open in another process; ``holder`` is what it wrote about itself."""

    def __init__(self, message: str, holder: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.holder = dict(holder)


class LeaseHeldError(StoreError):
    """Another ingestion job writes the collection; ``holder`` describes it."""

    def __init__(self, message: str, holder: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.holder = dict(holder)


class LeaseLostError(StoreError):
    pass


class GenerationError(BabelRAGError):
    pass


class InstallError(BabelRAGError):
    pass
