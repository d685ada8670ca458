"""BabelRAG: two-stage multilingual retrieval-augmented generation.

The public API is what this module exports; everything else is an implementation detail.
"""

from ingestion.job import FileFailure, IngestReport
from rag.config import Settings, load_settings
from rag.errors import (
    BabelRAGError,
    CollectionNotFoundError,
    ConfigError,
    GenerationError,
    IngestionError,
    ModelNotFoundError,
    QueryError,
    StoreError,
)
from rag.pipeline import AnswerStream, Pipeline
from rag.store import CollectionInfo
from rag.types import Answer, Chunk, Citation, Document, Hit

__all__ = [
    "Answer",
    "AnswerStream",
    "BabelRAGError",
    "Chunk",
    "Citation",
    "CollectionInfo",
    "CollectionNotFoundError",
    "ConfigError",
    "Document",
    "FileFailure",
    "GenerationError",
    "Hit",
    "IngestReport",
    "IngestionError",
    "ModelNotFoundError",
    "Pipeline",
    "QueryError",
    "Settings",
    "StoreError",
    "load_settings",
]
__version__ = "0.1.0"
