"""Chunker stage: Document -> token-bounded Chunks with character spans.

Sentences are found by script-aware rules (CJK full stops need no following space; Thai has
no sentence punctuation, so a space between Thai letters ends a sentence), then packed up to
``max_tokens`` tokens of the embedding model's tokenizer, with about ``overlap_tokens`` of
trailing sentences repeated at the start of the next chunk. A sentence longer than the budget
is cut at token boundaries, before a word where the script has spaces.
"""

from __future__ import annotations

import copy
import hashlib
import queue
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from rag.config import ChunkingConfig
from rag.text import sentence_spans
from rag.types import Chunk, Document

class TokenSpans(Protocol):
    def __call__(self, text: str) -> list[tuple[int, int]]:
        """Character (start, end) of each token of ``text``."""
        ...


@runtime_checkable
class Chunker(Protocol):
    def chunk(self, document: Document) -> list[Chunk]: ...

    @property
    def fingerprint(self) -> dict[str, str | int]:
        """The settings chunk boundaries depend on; a change means a collection rebuild."""
        ...


class SentenceChunker:
    """Packs sentences into chunks of at most ``max_tokens`` tokens of ``token_spans``.

    Each chunk carries its document's title, the heading of the section it starts in and, for
    paged documents, its page (chunks do not cross page breaks); ``detect_language`` labels every chunk, so a
    mixed-language document gets per-chunk languages.
    """

    version = "sentence/2"  # bump when boundaries or ids change for the same settings

    def __init__(
        self,
        token_spans: TokenSpans,
        config: ChunkingConfig | None = None,
        detect_language: Callable[[str], str | None] | None = None,
    ) -> None:
        self.config = config or ChunkingConfig()
        self.token_spans = token_spans
        self.detect_language = detect_language

    @property
    def fingerprint(self) -> dict[str, str | int]:
        return {
            "chunker": self.version,
            "chunk_max_tokens": self.config.max_tokens,
            "chunk_overlap_tokens": self.config.overlap_tokens,
        }

    def _pieces(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, tokens) for each sentence, long sentences cut into token windows."""
        budget = self.config.max_tokens
        pieces = []
        for s, e in sentence_spans(text):
            offsets = self.token_spans(text[s:e])
            if len(offsets) <= budget:
                pieces.append((s, e, max(len(offsets), 1)))
                continue
            sentence, n, i = text[s:e], len(offsets), 0
            while i < n:
                j = min(i + budget, n)
                if j < n:  # cut before a word, not inside one, if one starts in the last quarter
                    j = next((k for k in range(j, i + budget * 3 // 4, -1) if sentence[offsets[k][0] - 1].isspace()), j)
                pieces.append((s + offsets[i][0], s + (offsets[j][0] if j < n else e - s), j - i))
                i = j
        return pieces

    def chunk(self, document: Document) -> list[Chunk]:
        text = document.text
        pieces = self._pieces(text)
        groups: list[list[tuple[int, int, int]]] = []
        current: list[tuple[int, int, int]] = []
        tokens = 0
        for piece in pieces:
            if current and document.page_at(piece[0]) != document.page_at(current[0][0]):
                groups.append(current)  # chunks stay on one page, so a citation names its page
                current, tokens = [], 0
            elif current and tokens + piece[2] > self.config.max_tokens:
                groups.append(current)
                current, tokens = self._overlap(current, piece[2])
            current.append(piece)
            tokens += piece[2]
        if current:
            groups.append(current)
        chunks = []
        for index, group in enumerate(groups):
            start, end = group[0][0], group[-1][1]
            body = text[start:end]
            chunk = Chunk(
                id="",
                text=body,
                source=document.source,
                index=index,
                start=start,
                end=end,
                language=self.detect_language(body) if self.detect_language else None,
                doc_hash=document.content_hash,
                title=document.title,
                page=document.page_at(start),
                section=document.heading_at(start),
            )
            chunks.append(replace(chunk, id=chunk_id(chunk)))
        return chunks

    def _overlap(self, previous: Sequence[tuple[int, int, int]], next_tokens: int) -> tuple[list, int]:
        """Trailing sentences of ``previous`` worth at most overlap_tokens, leaving room for the next."""
        room = min(self.config.overlap_tokens, self.config.max_tokens - next_tokens)
        kept: list[tuple[int, int, int]] = []
        tokens = 0
        for piece in reversed(previous[1:]):  # never repeat a whole chunk
            if tokens + piece[2] > room:
                break
            kept.insert(0, piece)
            tokens += piece[2]
        return kept, tokens


def chunk_id(chunk: Chunk) -> str:
    """Deterministic id from where the chunk is and what the embedder reads of it: the same
    chunk gets the same id in every run, and a chunk whose context changed gets a new one."""
    key = "\x00".join(map(str, (chunk.source, chunk.start, chunk.end, chunk.page, chunk.embedding_text)))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def tokenizer_spans(tokenizer) -> TokenSpans:
    """A TokenSpans backed by a Hugging Face fast tokenizer's offset mapping.

    It works on private copies: the job chunks in a background thread while the embedder
    encodes with the same tokenizer, and a fast tokenizer's padding/truncation state is not
    safe to share across threads ("Unable to create tensor" errors, seen here). A copy costs
    ~3 s and ~260 MB (XLM-R's vocabulary), so copies are kept for the next call, and the next
    job: a caller takes an idle one, or makes one when all are in use by callers in other
    threads. A copy per job, made in each job's new thread, grew a server by ~300 MB a job to
    ~3 GB (the allocator's per-thread arenas keep what each freed) and cost every job 3 s.
    """
    idle: queue.SimpleQueue = queue.SimpleQueue()

    def spans(text: str) -> list[tuple[int, int]]:
        try:
            own = idle.get_nowait()
        except queue.Empty:
            own = copy.deepcopy(tokenizer)
        try:
            enc = own(text, add_special_tokens=False, return_offsets_mapping=True)
        finally:
            idle.put(own)
        return [tuple(o) for o in enc["offset_mapping"]]

    return spans
