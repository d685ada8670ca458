"""Typed records that cross stage boundaries: documents, chunks, hits, answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded source file: its text and where it came from."""

    source: str  # absolute path, the document's identity in the store
    text: str
    content_hash: str  # sha256 of the raw file bytes
    title: str | None = None  # e.g. a Markdown document's first "# " heading


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document, sized for the embedding model, with its place in the source."""

    id: str
    text: str
    source: str
    index: int
    start: int  # character span of ``text`` in the document's text
    end: int
    language: str | None
    doc_hash: str
    title: str | None = None

    @property
    def file_name(self) -> str:
        return Path(self.source).name

    @property
    def embedding_text(self) -> str:
        """What the embedder reads: the text with its document's title as context."""
        if self.title and not self.text.lstrip("# ").startswith(self.title):
            return f"{self.title}\n{self.text}"
        return self.text


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved chunk with the score of the stage that ranked it last."""

    chunk: Chunk
    score: float
    retrieval_score: float  # first-stage score, kept after reranking


@dataclass(frozen=True, slots=True)
class Citation:
    """Source ``number`` as shown to the LLM (``[number]`` in the answer), and its chunk."""

    number: int
    hit: Hit
    cited: bool  # the answer text carries the marker [number]

    @property
    def chunk(self) -> Chunk:
        return self.hit.chunk


@dataclass(slots=True)
class Answer:
    question: str
    text: str
    language: str | None  # detected language of ``text``
    question_language: str | None
    citations: list[Citation] = field(default_factory=list)
    model: str = ""

    @property
    def cited(self) -> list[Citation]:
        """Citations the answer text refers to, in order of first mention."""
        order = {c.number: self.text.find(f"[{c.number}]") for c in self.citations if c.cited}
        return sorted((c for c in self.citations if c.cited), key=lambda c: order[c.number])
