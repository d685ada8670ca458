"""Typed records that cross stage boundaries: documents, chunks, hits, answers."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

MAX_CONTEXT_CHARS = 120  # title + section heading prepended to a chunk for the embedder


@dataclass(frozen=True, slots=True)
class LoadedText:
    """What a loader makes of a file's bytes: plain text plus the structure worth keeping."""

    text: str
    title: str | None = None  # the document's title (Markdown "# ", HTML <title>, docx core title)
    # Character offset in ``text`` where each page begins: page n starts at pages[n - 1]. Empty
    # for formats without pages.
    pages: tuple[int, ...] = ()
    # (offset, heading) for each section heading, in text order; carried into chunks as context.
    headings: tuple[tuple[int, str], ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. "3 invalid UTF-8 bytes replaced"


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded source file: its text and where it came from."""

    source: str  # absolute path, the document's identity in the store
    text: str
    content_hash: str  # sha256 of the raw file bytes
    title: str | None = None  # e.g. a Markdown document's first "# " heading
    pages: tuple[int, ...] = ()  # see LoadedText.pages
    headings: tuple[tuple[int, str], ...] = ()  # see LoadedText.headings
    language: str | None = None  # the language of most of the text (ISO 639-1)

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character ``offset``, or None for documents without pages."""
        if not self.pages:
            return None
        return max(bisect.bisect_right(self.pages, offset), 1)

    def heading_at(self, offset: int) -> str | None:
        """The last section heading at or before ``offset``."""
        i = bisect.bisect_right(self.headings, offset, key=lambda h: h[0])
        return self.headings[i - 1][1] if i else None


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
    title: str | None = None  # the document's title
    page: int | None = None  # 1-based page where the chunk starts (PDF)
    section: str | None = None  # the heading of the section the chunk starts in

    @property
    def file_name(self) -> str:
        return Path(self.source).name

    @property
    def context(self) -> str | None:
        """Title and section heading, the context a chunk's text alone may lack."""
        parts = []
        for part in (self.title, self.section):
            if part and part not in parts and not self.text.lstrip("# ").startswith(part):
                parts.append(part)
        context = " › ".join(parts)
        if len(context) > MAX_CONTEXT_CHARS:  # a runaway heading must not crowd out the text
            context = context[: MAX_CONTEXT_CHARS - 1] + "…"
        return context or None

    @property
    def embedding_text(self) -> str:
        """What the embedder reads: the text with its title and section heading as context."""
        context = self.context
        return f"{context}\n{self.text}" if context else self.text


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
    # The prompt held only the start of the chunk (the context budget ran out mid-chunk; the cut is
    # at a sentence end and the prompt says so): ``span`` covers only what the LLM saw.
    truncated: bool = False
    shown_chars: int | None = None  # characters of the chunk's text in the prompt, when truncated

    @property
    def chunk(self) -> Chunk:
        return self.hit.chunk

    @property
    def source(self) -> str:
        return self.hit.chunk.source

    @property
    def page(self) -> int | None:
        return self.hit.chunk.page

    @property
    def span(self) -> tuple[int, int]:
        """Character span, in the source document's text, of the passage the LLM was shown."""
        c = self.hit.chunk
        return (c.start, c.start + self.shown_chars) if self.shown_chars is not None else (c.start, c.end)


@dataclass(frozen=True, slots=True)
class CitedSentence:
    """A sentence of the answer and the source numbers it cites."""

    text: str
    start: int  # span in Answer.text
    end: int
    sources: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the LLM server counted, over every call made for one answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0  # requests: the answer, retries, language retries, translation, follow-up rewrite

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.calls + other.calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Answer:
    question: str
    text: str
    language: str | None  # detected language of ``text``
    question_language: str | None
    citations: list[Citation] = field(default_factory=list)  # every source given to the LLM, numbered
    model: str = ""
    target_language: str | None = None  # the language the answer had to be in (question's, or forced)
    standalone_question: str | None = None  # chat: the follow-up rewritten to stand alone
    found: bool = True  # False: the knowledge base does not hold the answer, and ``text`` says so
    sentences: list[CitedSentence] = field(default_factory=list)
    removed_markers: list[str] = field(default_factory=list)  # markers citing no source, cut from text
    language_attempts: int = 1  # generations it took to get ``target_language`` (1, or 2 after a retry)
    translated: bool = False  # the LLM translated its own answer into ``target_language``
    # Why text the LLM wrote was not returned as it was, one line per refusal: a try in the wrong
    # language or of markers alone, a copy of a source or of the instructions, invented numbers,
    # a translation that failed. The answer is then a retry's, or "not found".
    withheld: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, and "total"
    dropped_sources: int = 0  # retrieved chunks left out: the context budget was spent

    @property
    def language_ok(self) -> bool:
        return self.target_language is None or self.language == self.target_language

    @property
    def cited(self) -> list[Citation]:
        """Citations the answer text refers to, in order of first mention."""
        order = {c.number: self.text.find(f"[{c.number}]") for c in self.citations if c.cited}
        return sorted((c for c in self.citations if c.cited), key=lambda c: order[c.number])

    @property
    def top_citation(self) -> Citation | None:
        """The first source the answer cites, or None when it cites none."""
        cited = self.cited
        return cited[0] if cited else None
