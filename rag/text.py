"""Text primitives both ingestion and answering use: sentences and scripts.

Two sentence splitters, for two kinds of text: ``sentence_spans`` for source documents
(script-aware, abbreviation-aware: chunk boundaries and evidence), ``answer_sentence_spans``
for an LLM's answer (a sentence keeps the citation markers written after its full stop).
Scripts: which Unicode script a letter is in, and how much of a text each script holds.
"""

from __future__ import annotations

import re

# -- sentences of source documents --------------------------------------------------------------

# A sentence ends after terminal punctuation (Latin, Devanagari danda, Arabic, CJK, ellipsis)
# plus closing quotes/brackets, followed by whitespace -- or at once for CJK full-width marks;
# or at a line break; or at a space between two Thai letters; or at a full stop with the space
# after it missing ("yaşadı.Tesla", "المغول.سلالة"), seen in xquad.
_BOUNDARY = re.compile(
    r"(?<=[.!?।॥؟۔…])[\"'”’»)\]]*\s+"
    r"|(?<=[。！？])[」』”’）]*\s*"
    r"|\s*\n\s*"
    r"|(?<=[\u0E00-\u0E7F])[ \t]+(?=[\u0E00-\u0E7F])"
    r"|(?<=[^\W\d_A-Z]{2}\.)(?=[A-ZÀ-ÞА-ЯЁ][^\W\d_])"
    r"|(?<=[\u0621-\u064A]{2}\.)(?=[\u0621-\u064A])"
)
# A full stop after these does not end a sentence: initials ("Frederick W. Smith", "н. э."),
# ordinals ("Am 8. Februar", "19. yüzyıl") and common abbreviations. Measured on xquad, the
# plain rule cut 33 German, 19 Turkish and 12 Russian sentences into 1-2 token fragments.
_NO_END = re.compile(
    r"(?:^|[\s(\[\"'«„])(?:[^\W\d_]|\d{1,2}|"
    r"Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Nr|No|vs|ca|bzw|usw|ggf|vgl|Abs|Art|Bd|Hrsg|Jh|geb|gest|"
    r"z\.\s?B|d\.\s?h|u\.\s?a|e\.\s?g|i\.\s?e|т\.\s?е|т\.\s?д|т\.\s?к|и\.\s?т\.\s?д|г|гг|им|др|"
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.$"
)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in ``text``, whitespace trimmed, empty ones dropped."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if text[m.start() - 1 : m.start()] == "." and _NO_END.search(text, max(0, m.start() - 16), m.start()):
            continue
        spans.append((start, m.start() if m.group().strip() == "" else m.end()))
        start = m.end()
    spans.append((start, len(text)))
    return trim_spans(text, spans)


def trim_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` of ``text`` without leading and trailing whitespace; empty ones dropped."""
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


# -- sentences of answers -------------------------------------------------------------------------

# A sentence ends at . ! ? and their CJK, Devanagari, Arabic and Urdu forms, with any closing
# quotes or brackets and any citation markers right after it, or at a line break.
_TERMINATORS = ".!?。！？।॥؟۔"
_SENTENCE_END = re.compile(
    rf"(?:[{re.escape(_TERMINATORS)}]+[\"'”’»)\]]*(?:\s*\[\d+\])*(?=\s|$)|[。！？](?:\[\d+\])*|\n+)"
)


def answer_sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of an answer: a sentence ends at its terminator together with the
    citation markers after it ("… 30 Tage [1]. Dann …"). Whitespace excluded."""
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    return trim_spans(text, spans)


# -- scripts ------------------------------------------------------------------------------------

# Scripts that name their language outright (for the languages BabelRAG knows), and the Unicode
# blocks of each script. A Han character counts as 3 letters: it carries about a short word.
_SCRIPT_BLOCKS: list[tuple[str, int, int]] = [
    ("latin", 0x0041, 0x024F), ("greek", 0x0370, 0x03FF), ("cyrillic", 0x0400, 0x052F),
    ("hebrew", 0x0590, 0x05FF), ("arabic", 0x0600, 0x06FF), ("arabic", 0x0750, 0x077F),
    ("devanagari", 0x0900, 0x097F), ("bengali", 0x0980, 0x09FF), ("tamil", 0x0B80, 0x0BFF),
    ("thai", 0x0E00, 0x0E7F), ("hangul", 0x1100, 0x11FF), ("latin", 0x1E00, 0x1EFF),
    ("kana", 0x3041, 0x30FF), ("han", 0x3400, 0x4DBF), ("han", 0x4E00, 0x9FFF),
    ("hangul", 0xAC00, 0xD7AF), ("arabic", 0xFB50, 0xFDFF), ("arabic", 0xFE70, 0xFEFF),
]  # fmt: skip
SCRIPT_LANGUAGE = {"greek": "el", "hebrew": "he", "bengali": "bn", "tamil": "ta", "thai": "th", "hangul": "ko"}
LANGUAGE_SCRIPT = {
    "el": "greek", "he": "hebrew", "bn": "bengali", "ta": "tamil", "th": "thai", "ko": "hangul",
    "ru": "cyrillic", "uk": "cyrillic", "bg": "cyrillic", "sr": "cyrillic", "mk": "cyrillic", "be": "cyrillic",
    "kk": "cyrillic", "ar": "arabic", "fa": "arabic", "ur": "arabic", "ps": "arabic", "hi": "devanagari",
    "mr": "devanagari", "ne": "devanagari", "sa": "devanagari", "ja": "kana", "zh": "han",
}  # fmt: skip


def script_of(ch: str) -> str | None:
    cp = ord(ch)
    for name, lo, hi in _SCRIPT_BLOCKS:
        if lo <= cp <= hi:
            return name if ch.isalpha() or name in ("thai", "devanagari", "bengali", "tamil") else None
    return None


def script_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        script = script_of(ch)
        if script:
            counts[script] = counts.get(script, 0) + (3 if script == "han" else 1)
    return counts


def script_share(code: str, counts: dict[str, int]) -> float:
    script = LANGUAGE_SCRIPT.get(code, "latin")
    present = counts.get(script, 0) + (counts.get("han", 0) if code == "ja" else 0)
    return present / max(sum(counts.values()), 1)
