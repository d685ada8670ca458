"""What an answer's text says about its sources: ``[n]`` markers mapped to sources, the numbers it
states, the model's "not found" sentinel, and whether it copies its sources or its instructions."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rag.text import answer_sentence_spans, sentence_spans
from rag.types import CitedSentence

log = logging.getLogger(__name__)

# [1], [1, 2], [1-3], [Source 1], fullwidth ［１］ and 【１】, any script's digits
MARKER = re.compile(
    r"\s?[\[【［]\s*(?:[^\W\d_]{1,12}\s*)?(\d{1,3}(?:\s*[,，、;]\s*\d{1,3}|\s*[-–]\s*\d{1,3})*)\s*[\]】］]"
)
_NUMBER = re.compile(r"\d{1,3}(?:\s*[-–]\s*\d{1,3})?")


@dataclass(frozen=True, slots=True)
class MappedCitations:
    text: str  # markers normalised to [n], markers that cite nothing removed
    cited: frozenset[int]
    removed: list[str]
    sentences: list[CitedSentence]


def _ascii_int(digits: str) -> int:
    return int("".join(str(unicodedata.digit(ch)) for ch in digits if ch.isdigit()))


def map_citations(text: str, sources: int) -> MappedCitations:
    """Normalise the answer's source markers to ``[n]``, drop those that point at no source
    (logged), and list which sentence cites which sources."""
    removed: list[str] = []

    def replace(m: re.Match) -> str:
        numbers: list[int] = []
        for part in _NUMBER.findall(m.group(1)):
            values = [_ascii_int(p) for p in re.split(r"\s*[-–]\s*", part)]
            if len(values) == 2 and values[0] <= values[1] <= values[0] + 20:
                numbers.extend(range(values[0], values[1] + 1))
            else:
                numbers.extend(values)
        valid = [n for n in dict.fromkeys(numbers) if 1 <= n <= sources]
        invalid = [n for n in numbers if not 1 <= n <= sources]
        if invalid:
            removed.append(m.group(0).strip())
            log.info("answer cites %s, but %d sources were given; removed", m.group(0).strip(), sources)
        lead = m.group(0)[0] if m.group(0)[0].isspace() and valid else ""  # a line break stays one
        return lead + "".join(f"[{n}]" for n in valid)

    clean = MARKER.sub(replace, text)
    clean = re.sub(r"[ \t]+([.,;:!?])", r"\1", clean) if removed else clean
    cited: set[int] = set()
    sentences = []
    for s, e in answer_sentence_spans(clean):
        found = (int(n) for n in re.findall(r"\[(\d{1,3})\]", clean[s:e]))
        numbers = tuple(dict.fromkeys(n for n in found if 1 <= n <= sources))
        cited.update(numbers)
        sentences.append(CitedSentence(text=clean[s:e], start=s, end=e, sources=numbers))
    return MappedCitations(clean, frozenset(cited), removed, sentences)


_NUMBER_TOKEN = re.compile(r"\d+(?:[.,'’ ]\d+)*")


def numbers_in(text: str) -> set[str]:
    """The numbers of ``text`` in ASCII digits without separators: "8,678" and "८६७८" are "8678"."""
    text = re.sub(r"\[\d{1,3}\]", " ", text)
    return {
        "".join(str(unicodedata.digit(ch)) for ch in m.group(0) if ch.isdigit()) for m in _NUMBER_TOKEN.finditer(text)
    }


def invents_numbers(answer: str, sources: Sequence[str], question: str) -> bool:
    """The answer states numbers, and none of them (other than the question's own) is in any source.

    Numbers are the one kind of fact that can be checked across languages and scripts without
    a model: a German answer from a Japanese source still says "90". An answer that cites no
    source and whose every number is in none of them was not taken from the knowledge base.
    """
    stated = numbers_in(answer) - numbers_in(question)
    if not stated:
        return False
    known = set().union(*(numbers_in(s) for s in sources)) if sources else set()
    return not (stated & known)


_NOT_FOUND = re.compile(r"^\W*not[\s_-]?found\b\W*", re.IGNORECASE)


_REPEATED_SENTINEL = re.compile(r"(?:\bNOT[\s_-]?FOUND\b\W*){2,}", re.IGNORECASE)


def says_not_found(text: str) -> bool:
    """The model's sentinel for "the sources do not hold the answer" (possibly with stray markers,
    or repeated until the token limit cut it), or the start of it alone ("NO", "NOT": small models
    stop early)."""
    stripped = _REPEATED_SENTINEL.sub("NOT_FOUND ", text).strip()
    if len(stripped) <= 12 and not re.search(r"\[\d+\]", stripped) and could_be_sentinel(stripped):
        return len(re.sub(r"[\W_]+", "", stripped)) >= 2
    rest = _NOT_FOUND.sub("", stripped, count=1) if _NOT_FOUND.match(stripped) else None
    return rest is not None and not re.search(r"\[\d+\]", rest) and len(rest) < 40


def could_be_sentinel(held: str) -> bool:
    core = re.sub(r"[\W_]+", "", held).upper()
    return bool(core) and ("NOTFOUND".startswith(core) or core.startswith("NOTFOUND"))


def has_content(text: str) -> bool:
    """A number, or at least 3 letters ("NO" alone answers nothing), besides the markers."""
    rest = MARKER.sub(" ", text)
    return any(ch.isdigit() for ch in rest) or sum(ch.isalpha() for ch in rest) >= 3


def strip_sentinel(text: str) -> str:
    """An answer that also wrote the sentinel somewhere: the sentinel goes, the answer stays."""
    return re.sub(r"\s*\bNOT[_ ]FOUND\b\.?", "", text).strip()


# -- copies: an answer that reproduces its sources or its instructions ----------------------------

# Noise a copy may add or drop: source markers, the "(7)" the prompt turns a source's own markers
# into, and the "&lt;" it turns a tag's "<" into; then everything but letters and digits.
_COPY_NOISE = re.compile(rf"{MARKER.pattern}|[(（]\s*\d{{1,3}}\s*[)）]|&lt;")
_NOT_ALNUM = re.compile(r"[\W_]+")
MIN_SENTENCE_LETTERS = 8  # shorter "sentences" ("Answer:", "Frage:") are not worth counting
# A leak of the instructions: any of their 40-letter pieces taken every 10 letters, so that a run of
# 49 letters (about 9 words) in a row is always caught, and nothing shorter than 40 ever is.
INSTRUCTION_PIECE, INSTRUCTION_STEP = 40, 10
LEAK = "the answer repeated the prompt's instructions"


def letters(text: str) -> str:
    """The letters and digits of ``text``, NFKC and casefolded, without source markers: what a
    word-for-word copy keeps, whatever it does to spacing, punctuation, case and markers."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", _COPY_NOISE.sub(" ", text)).casefold())


class CopyCheck:
    """Whether an answer copies what it must not pass on as it is: a source wholesale, with whatever
    instruction that carries, or the prompt's instructions.

    Quoting the sentences that hold the answer is answering; an answer that holds a source's every
    sentence word for word (two or more), or three or more of them making up at least half of its
    letters, echoes the source. (Two sentences of a four-sentence chunk are a quote: measured on
    xquad, the stand-in quotes like that, and the quote holds the answer.)
    Both compare letters and digits only; a translated copy is not caught (no model here can tell).
    Cheap enough to run on every streamed piece: substring searches, no per-letter Python loop.
    """

    def __init__(self, sources: Sequence[str], instructions: Sequence[str]) -> None:
        self._sources = []
        for text in sources:
            sentences = [letters(text[s:e]) for s, e in sentence_spans(text)]
            self._sources.append(([s for s in sentences if len(s) >= MIN_SENTENCE_LETTERS], len(letters(text))))
        self._pieces = {
            run[i : i + INSTRUCTION_PIECE]
            for run in map(letters, instructions)
            for i in range(0, max(len(run) - INSTRUCTION_PIECE, 0) + 1, INSTRUCTION_STEP)
        }

    def __call__(self, answer: str) -> str | None:
        """Why ``answer`` must not go out as it is, or None."""
        said = letters(answer)
        if any(piece in said for piece in self._pieces):
            return LEAK
        for number, (sentences, total) in enumerate(self._sources, 1):
            copied = [s for s in sentences if s in said]
            whole = len(copied) == len(sentences) >= 2
            if whole or (len(copied) >= 3 and 2 * sum(map(len, copied)) >= total):
                return f"the answer copied source [{number}] word for word"
        return None
