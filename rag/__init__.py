"""BabelRAG: two-stage multilingual retrieval-augmented generation.

The public API is what this module exports; everything else is an implementation detail.
"""

from ingestion.job import FileIssue, IngestReport, JobProgress
from ingestion.loader import Loader
from rag.answering import AnswerEvent, AnswerStream
from rag.chat import ChatMessage
from rag.config import Settings, load_settings
from rag.errors import (
    AccessDeniedError,
    BabelRAGError,
    CollectionNotFoundError,
    ConfigError,
    GenerationError,
    IndexMismatchError,
    IngestionError,
    LeaseHeldError,
    LeaseLostError,
    ModelNotFoundError,
    QueryError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from rag.evidence import Evidence
from rag.logs import request_scope
from rag.metrics import Metrics
from rag.options import QueryOptions
from rag.pipeline import Pipeline, Readiness
from rag.trace import Trace
from rag.store import CollectionInfo, ManifestEntry
from rag.types import Answer, Chunk, Citation, CitedSentence, Document, Hit, LoadedText, Usage

__all__ = [
    "AccessDeniedError",
    "Answer",
    "AnswerEvent",
    "AnswerStream",
    "BabelRAGError",
    "ChatMessage",
    "Chunk",
    "Citation",
    "CitedSentence",
    "CollectionInfo",
    "CollectionNotFoundError",
    "ConfigError",
    "Document",
    "Evidence",
    "FileIssue",
    "GenerationError",
    "Hit",
    "IndexMismatchError",
    "IngestReport",
    "IngestionError",
    "JobProgress",
    "LeaseHeldError",
    "LeaseLostError",
    "LoadedText",
    "Loader",
    "ManifestEntry",
    "Metrics",
    "ModelNotFoundError",
    "Pipeline",
    "QueryError",
    "QueryOptions",
    "Readiness",
    "Settings",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
    "Trace",
    "Usage",
    "load_settings",
    "request_scope",
]
__version__ = "0.1.0"
