"""BabelRAG: two-stage multilingual retrieval-augmented generation.

The public API is what this module exports; everything else is an implementation detail.
"""

from ingestion.job import FileIssue, IngestReport, JobProgress
from ingestion.loader import Loader
from rag.config import Settings, load_settings
from rag.errors import (
    BabelRAGError,
    CollectionNotFoundError,
    ConfigError,
    GenerationError,
    IndexMismatchError,
    IngestionError,
    ModelNotFoundError,
    QueryError,
    StoreError,
)
from rag.pipeline import AnswerStream, Pipeline
from rag.store import CollectionInfo, ManifestEntry
from rag.types import Answer, Chunk, Citation, Document, Hit, LoadedText

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
    "FileIssue",
    "GenerationError",
    "Hit",
    "IndexMismatchError",
    "IngestReport",
    "IngestionError",
    "JobProgress",
    "LoadedText",
    "Loader",
    "ManifestEntry",
    "ModelNotFoundError",
    "Pipeline",
    "QueryError",
    "Settings",
    "StoreError",
    "load_settings",
]
__version__ = "0.1.0"
