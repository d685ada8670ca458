"""First stage: dense top-k candidates from the store, with optional metadata filters."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rag.embedder import Embedder
from rag.store import VectorStore, Where
from rag.types import Hit


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: str, collection: str, *, top_k: int, where: Where | None = None) -> list[Hit]: ...


class DenseRetriever:
    def __init__(self, embedder: Embedder, store: VectorStore) -> None:
        self.embedder = embedder
        self.store = store

    def retrieve(self, query: str, collection: str, *, top_k: int, where: Where | None = None) -> list[Hit]:
        vector = self.embedder.embed_queries([query])[0]
        return self.store.query(collection, vector, top_k=top_k, where=where)
