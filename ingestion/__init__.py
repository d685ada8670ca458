"""Ingestion stages: loader (file -> Document), chunker (Document -> Chunks), job (the loop)."""

# rag's public API re-exports ingestion types, and ingestion uses rag's config and types:
# load rag first, so that either package can be the first one imported.
import rag  # noqa: F401
