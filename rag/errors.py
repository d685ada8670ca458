"""BabelRAG's exception hierarchy.

    BabelRAGError
    ├── ConfigError            settings file or values are invalid
    ├── ModelNotFoundError     a model id/path cannot be loaded (no local folder, hub unreachable)
    ├── QueryError             the question itself is unusable (empty, too long)
    ├── IngestionError         a file or folder cannot be ingested
    ├── StoreError             the vector store refused or cannot be reached
    │   ├── CollectionNotFoundError
    │   └── IndexMismatchError a collection was built with other embedding/chunking settings
    └── GenerationError        the LLM server is down, slow or answered garbage

Every message says what was expected, what came, and what to do. The CLI prints
``str(error)`` as one line and exits non-zero, so messages must stand on their own.
"""

from __future__ import annotations


class BabelRAGError(Exception):
    """Base class of every error BabelRAG raises on purpose."""


class ConfigError(BabelRAGError):
    pass


class ModelNotFoundError(BabelRAGError):
    pass


class QueryError(BabelRAGError):
    pass


class IngestionError(BabelRAGError):
    pass


class StoreError(BabelRAGError):
    pass


class CollectionNotFoundError(StoreError):
    pass


class IndexMismatchError(StoreError):
    pass


class GenerationError(BabelRAGError):
    pass
