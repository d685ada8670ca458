"""Keyword (BM25) first stage beside the dense embeddings: a script-aware tokenizer and an index.

Dense multilingual embeddings miss exact strings (names, numbers, rare terms); BM25 finds them.
One tokenizer serves every language, so no per-language analyzer has to be chosen or installed:
text is cut into runs of one Unicode script; scripts written with spaces give words, scripts
written without them (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) give overlapping character
bigrams, the usual dictionary-free segmentation (Lucene's CJKBigramFilter does the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.disk import disk_problem
from rag.errors import StoreClosedError, StoreError
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.store import ManifestEntry, VectorStore

log = logging.getLogger(__name__)

# Script of each block that matters; other letters form words of the script "other". Marks
# (Mn/Mc: Devanagari matras, Thai vowels, Arabic signs) belong to their block's script so they
# stay inside words; "inherited" marks (generic combining accents) join any script.
_BLOCKS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "latin"),
    (0x0061, 0x007A, "latin"),
    (0x00C0, 0x024F, "latin"),
    (0x0250, 0x02AF, "latin"),
    (0x02B0, 0x036F, "inherited"),  # modifier letters, combining diacritics
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),
    (0x0870, 0x08FF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0E00, 0x0E7F, "thai"),
    (0x0E80, 0x0EFF, "lao"),
    (0x1000, 0x109F, "myanmar"),
    (0x1100, 0x11FF, "hangul"),
    (0x1780, 0x17FF, "khmer"),
    (0x19E0, 0x19FF, "khmer"),
    (0x1AB0, 0x1AFF, "inherited"),
    (0x1C80, 0x1C8F, "cyrillic"),
    (0x1CD0, 0x1CFF, "devanagari"),
    (0x1D00, 0x1DBF, "latin"),
    (0x1DC0, 0x1DFF, "inherited"),
    (0x1E00, 0x1EFF, "latin"),
    (0x1F00, 0x1FFF, "greek"),
    (0x20D0, 0x20FF, "inherited"),
    (0x2C60, 0x2C7F, "latin"),
    (0x2DE0, 0x2DFF, "cyrillic"),
    (0x2E80, 0x2FDF, "cjk"),
    (0x3005, 0x3007, "cjk"),
    (0x3031, 0x3035, "cjk"),
    (0x303B, 0x303C, "cjk"),
    (0x3040, 0x312F, "cjk"),  # kana with Han: Japanese words mix them, bigrams may span both
    (0x3130, 0x318F, "hangul"),
    (0x31A0, 0x31FF, "cjk"),
    (0x3400, 0x4DBF, "cjk"),
    (0x4E00, 0x9FFF, "cjk"),
    (0xA640, 0xA69F, "cyrillic"),
    (0xA720, 0xA7FF, "latin"),
    (0xA8E0, 0xA8FF, "devanagari"),
    (0xA960, 0xA97F, "hangul"),
    (0xA9E0, 0xA9FF, "myanmar"),
    (0xAA60, 0xAA7F, "myanmar"),
    (0xAB30, 0xAB6F, "latin"),
    (0xAC00, 0xD7FF, "hangul"),
    (0xF900, 0xFAFF, "cjk"),
    (0xFB1D, 0xFB4F, "hebrew"),
    (0xFB50, 0xFDFF, "arabic"),
    (0xFE00, 0xFE0F, "inherited"),  # variation selectors
    (0xFE20, 0xFE2F, "inherited"),
    (0xFE70, 0xFEFF, "arabic"),
)
# Planes 2 and 3 hold only Han ideographs: added whole instead of scanned, a third of the scan.
_SUPPLEMENTARY_HAN = (0x20000, 0x323AF)
# Written without spaces between words: a run of these is cut into character bigrams.
_UNSPACED = ("cjk", "thai", "lao", "khmer", "myanmar")
_SPACED = ("latin", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "hangul", "other")

# Languages written in a script other than Latin. Languages written in Latin or in several
# scripts (sr, az, uz, ku) are left out, so their short tokens are always kept.
_NON_LATIN_LANGUAGES = frozenset(
    {
        "ar",
        "fa",
        "ur",
        "ps",
        "he",
        "yi",
        "ru",
        "uk",
        "be",
        "bg",
        "mk",
        "kk",
        "ky",
        "tg",
        "mn",
        "el",
        "hi",
        "mr",
        "ne",
        "sa",
        "bn",
        "pa",
        "gu",
        "or",
        "ta",
        "te",
        "kn",
        "ml",
        "si",
        "th",
        "lo",
        "km",
        "my",
        "zh",
        "ja",
        "ko",
        "ka",
        "hy",
        "am",
        "bo",
        "dv",
    }
)

# The most frequent function words of the languages we serve, matched after normalization.
# They are removed whatever the text's language (an English "the" inside Thai text is noise
# too, and the language of a chunk or query may be unknown or wrong), so a function word that
# is also a common content word elsewhere stays out: German "war", "hat", "man", "mit" (MIT),
# Spanish "son", "sin", Romanian "care", "cine". German "die" stays in: the article is far
# more frequent than the English verb.
_STOPWORDS_BY_LANGUAGE = {
    "en": "the a an and or but of to in on at by for with from as is are was were be been it its "
    "this that these those which who what how when where did does do has have had not",
    "de": "der die das den dem des ein eine einer eines einem einen und oder in im zu zum zur von "
    "vom auf für ist sind wurde wurden nicht sich es als auch an am bei aus dass wie was wer",
    "es": "de la que el en y a los del se las por un para con una su al lo como más pero sus le es "
    "o fue ha este esta entre cuando muy sobre también hasta donde desde qué cuál",
    "ro": "și în de la a cu pe din ce nu o un este sunt fost fi au să se al ale lui mai pentru prin "
    "dar sau cel cea acest această după între către",
    "tr": "ve bir bu da de için ile ki ne o olarak olan gibi daha çok en mi mı mu mü ise ya veya "
    "kadar sonra şu her ama değil",
    "vi": "của và các có là được trong cho với này một những không đã để từ khi ra đến thì như cũng "
    "vào lại theo về tại do bị sẽ rằng nên gì nào",
    "ru": "и в во не что он на я с со как а то все она так его но да к у же за бы по только ее от "
    "из о это был была были быть или для мы они их при также который которые",
    "el": "και το η ο της του των τον την τα οι σε με για από που στο στη στην στον στα είναι ένα "
    "μια θα να δεν ως τις τους αυτό ή",
    "ar": "في من على إلى عن مع أن إن ما لا هذا هذه التي الذي كان كانت و أو ثم قد كل بين هو هي ذلك "
    "تلك لم لن حتى عند بعد قبل غير أي إذا",
    "hi": "का की के है में से और को पर यह था थे थी हैं एक भी ने तो कि इस वह हो लिए या गया कर जो इसके उसके किया",
}

_ARABIC_FOLDING = {
    0x0640: None,  # tatweel: stretches a word for layout, no letter
    **dict.fromkeys(range(0x064B, 0x0660), None),  # harakat: optional vowel marks
    0x0670: None,  # superscript alef
    **dict.fromkeys([*range(0x06D6, 0x06DD), *range(0x06DF, 0x06E9), *range(0x06EA, 0x06EE)]),
    # hamza-carrying alefs, alef maqsura and teh marbuta are written interchangeably in practice;
    # Lucene's ArabicNormalizer folds them the same way.
    0x0622: "ا",
    0x0623: "ا",
    0x0625: "ا",
    0x0671: "ا",
    0x0649: "ي",
    0x0629: "ه",
}
# Romanian s/t with cedilla (legacy encodings) and with comma below (correct) are one letter.
_ROMANIAN_FOLDING = {0x015F: "ș", 0x0163: "ț"}


def _script_tables() -> tuple[dict[str, list[tuple[int, int]]], list[tuple[int, int]], dict[int, str]]:
    """Word characters (letters and marks) of each script and all marks as code point ranges,
    and a translation of every non-ASCII decimal digit to its ASCII digit, from one pass over
    the first two Unicode planes (about 60 ms)."""
    code_points: dict[str, list[int]] = {s: [] for s in (*_SPACED, *_UNSPACED, "inherited")}
    marks: list[int] = []
    digits: dict[int, str] = {}
    block = 0
    category_of = unicodedata.category
    for cp in range(_SUPPLEMENTARY_HAN[0]):
        category = category_of(chr(cp))
        if category == "Nd":
            if cp > 0x7F:
                digits[cp] = str(unicodedata.decimal(chr(cp)))
        elif category[0] in "LM":
            while block < len(_BLOCKS) and _BLOCKS[block][1] < cp:
                block += 1
            in_block = block < len(_BLOCKS) and _BLOCKS[block][0] <= cp
            code_points[_BLOCKS[block][2] if in_block else "other"].append(cp)
            if category[0] == "M":
                marks.append(cp)
    ranges = {script: _spans(cps) for script, cps in code_points.items()}
    ranges["cjk"].append(_SUPPLEMENTARY_HAN)
    return ranges, _spans(marks), digits


def _spans(code_points: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted code points as (first, last) ranges of consecutive ones."""
    spans: list[tuple[int, int]] = []
    for cp in code_points:
        if spans and spans[-1][1] == cp - 1:
            spans[-1] = (spans[-1][0], cp)
        else:
            spans.append((cp, cp))
    return spans


def _one_of(spans: Iterable[tuple[int, int]]) -> str:
    """A regex matching one character of ``spans``. sre tests a class holding characters
    beyond the BMP range by range, not with one table lookup, so those characters sit behind
    a one-range lookahead that BMP text fails at once."""

    def char_class(spans: Iterable[tuple[int, int]]) -> str:
        return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)

    spans = list(spans)
    bmp = char_class((a, min(b, 0xFFFF)) for a, b in spans if a <= 0xFFFF)
    beyond = char_class((max(a, 0x10000), b) for a, b in spans if b > 0xFFFF)
    if not beyond:
        return f"[{bmp}]"
    return f"(?:[{bmp}]|(?=[\\U00010000-\\U0010ffff])[{beyond}])"


def _token_pattern(ranges: dict[str, list[tuple[int, int]]]) -> re.Pattern[str]:
    """Group 1 matches a word of a spaced script, group 2 a run of an unspaced one. One
    alternative per script, so a change of script ends a token. Digits join words of spaced
    scripts ("covid19"); a standalone number is matched by the first (Latin) alternative.
    sre would try every alternative at every space and punctuation mark; the leading
    lookahead for any word character turns them away with one test (twice as fast)."""
    digits = (ord("0"), ord("9"))
    inherited = ranges["inherited"]
    spaced = "|".join(f"{_one_of([*ranges[s], *inherited, digits])}+" for s in _SPACED)
    unspaced = "|".join(f"{_one_of([*ranges[s], *inherited])}+" for s in _UNSPACED)
    word_char = _one_of([*(span for spans in ranges.values() for span in spans), digits])
    return re.compile(f"(?={word_char})(?:({spaced})|({unspaced}))")


_SCRIPT_RANGES, _MARKS, _DIGITS = _script_tables()
_TOKEN = _token_pattern(_SCRIPT_RANGES)
# A character and the marks on it: Thai, Lao, Khmer and Myanmar write vowels and tones as
# marks, and a bigram of a mark and the next letter means little. On xquad, Thai bigrams of
# these clusters rank the gold paragraph higher than bigrams of code points (MRR@10 +0.02).
_CLUSTER = re.compile(f"(?s).{_one_of(_MARKS)}*")
_LATIN_LETTER = re.compile(_one_of(_SCRIPT_RANGES["latin"]))
_FOLDING = {**_ARABIC_FOLDING, **_ROMANIAN_FOLDING, **_DIGITS}
# str.translate looks every character up in a dict: only texts that need it pay for that.
_FOLDABLE = re.compile(_one_of(_spans(sorted(_FOLDING))))


def _normalize(text: str) -> str:
    # NFKC folds compatibility forms (full-width Latin, half-width kana, ligatures, Arabic
    # presentation forms); casefold also maps "ß" to "ss". Casefolding "İ" leaves "i" plus a
    # combining dot, which Turkish text without the capital would not have.
    text = unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i")
    return text.translate(_FOLDING) if _FOLDABLE.search(text) else text


_STOPWORDS = frozenset(_normalize(word) for words in _STOPWORDS_BY_LANGUAGE.values() for word in words.split())


def _uses_latin_script(language: str | None) -> bool:
    return language is None or language.lower().replace("_", "-").split("-")[0] not in (_NON_LATIN_LANGUAGES)


def tokenize(text: str, language: str | None = None) -> list[str]:
    """BM25 terms of ``text``: words of spaced scripts, character bigrams of unspaced ones.

    ``language`` (ISO 639-1, optional) is the text's language; only its script is used.
    """
    # In text of a non-Latin language, short Latin tokens are mostly stray function words,
    # units and markup ("of", "km", "px") that would match across unrelated languages; longer
    # ones (names, terms) are kept, and so are numbers.
    drop_short_latin = not _uses_latin_script(language)
    tokens: list[str] = []
    for word, run in _TOKEN.findall(_normalize(text)):
        if run:
            # a one-character run has no bigram; its character is the token
            clusters = _CLUSTER.findall(run)
            tokens.extend([a + b for a, b in itertools.pairwise(clusters)] or clusters)
        elif word not in _STOPWORDS and not (drop_short_latin and len(word) < 4 and _LATIN_LETTER.search(word)):
            tokens.append(word)
    return tokens


# -- the index ---------------------------------------------------------------------------

# of the folder: schema and babelrag.json; another format is rebuilt (3: "lang" stored; 4: each
# chunk's fields stored and its vector in a file beside, so a query reads its candidates here)
_FORMAT = 4
_META = "babelrag.json"  # beside tantivy's files: the store version the index reflects
_GENERATION = "vectors.generation"  # the highest vector-file generation ever used in the folder
_NO_LANGUAGE = "-"  # the "lang" term of chunks without a language
_WRITER_HEAP = 64_000_000  # tantivy flushes a segment whenever this much is buffered
INLINE_BUILD_CHUNKS = 50_000  # a first query builds a missing index itself up to this size (~10 s)
COMPACT_VECTOR_ROWS = 50_000  # unused vector rows beyond the live ones (and this many) rebuild the index
_ROW_BITS = 40  # "vector" fast field: generation << 40 | row (generation 0: no vector)
_VECTORS = re.compile(r"vectors-(\d+)-(\d+)\.f32")  # vectors-<generation>-<dimension>.f32


def _schema():
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("source", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("lang", stored=True, tokenizer_name="raw", index_option="basic")
    # tokenize() has made the terms: joined by spaces, split on them again, nothing else done
    builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
    # the chunk's fields as JSON, as the store has them: the shown hits are read from here
    builder.add_bytes_field("chunk", stored=True)
    # Fast (columnar) fields, read for a query's ~100 dense candidates in one call each without
    # fetching their documents: a hash of the chunk id, where the chunk's vector is, its language
    # packed into a number, and a hash of its source (to leave out files being rewritten).
    for name in ("id_key", "vector", "lang_code", "source_key"):
        builder.add_unsigned_field(name, stored=False, indexed=False, fast=True)
    return builder.build()


_CHUNK_FIELDS = tuple(f.name for f in dataclasses.fields(Chunk) if f.name != "id")


def _encode_chunk(chunk: Chunk) -> bytes:
    return json.dumps({name: getattr(chunk, name) for name in _CHUNK_FIELDS}, ensure_ascii=False).encode()


def _decode_chunk(id_: str, data: bytes) -> Chunk:
    return Chunk(id=id_, **json.loads(data))


def _language_code(language: str | None) -> int:
    """A language tag as a number: its ASCII bytes (up to 8), 0 for none, 1 for one that does not fit."""
    if not language:
        return 0
    data = language.encode("ascii", "replace")
    return int.from_bytes(data, "big") if len(data) <= 8 and data.isascii() and b"?" not in data else 1


def _language_of_code(code: int) -> str | None:
    return None if code == 0 else code.to_bytes(8, "big").lstrip(b"\0").decode("ascii")


def _key(text: str) -> int:
    """A 64-bit hash of a chunk id or source, for fast fields."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _VectorFile:
    """The vectors of an index's chunks: float32 rows appended to ``vectors-<generation>-<dim>.f32``
    in its folder, never changed in place. A document holds its row's generation and number; a
    rebuild starts a new generation, and the old file goes once the rebuild is committed."""

    def __init__(self, path: Path, generation: int, dim: int) -> None:
        self.path, self.generation, self.dim = path, generation, dim
        self._file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - closed by close()
        size = os.fstat(self._file.fileno()).st_size
        self.rows = size // (4 * dim)
        self._file.truncate(self.rows * 4 * dim)  # a row half written by a writer that died
        self._file.seek(self.rows * 4 * dim)

    def append(self, vectors: np.ndarray) -> list[int]:
        """``vector`` field values of these rows."""
        self._file.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        first, self.rows = self.rows, self.rows + len(vectors)
        return [self.generation << _ROW_BITS | row for row in range(first, self.rows)]

    def sync(self) -> None:
        """On disk before the documents that point at the rows are committed."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _unused_vector_rows(folder: Path, live: int) -> int:
    """Rows of the vector files no document points at any more (their chunks replaced or deleted)."""
    rows = sum(path.stat().st_size // (4 * dim) for path, dim in _vector_files(folder).values())
    return max(rows - live, 0)


def _vector_files(folder: Path) -> dict[int, tuple[Path, int]]:
    """generation -> (file, dimension) of the vector files in ``folder``."""
    found = {}
    for path in folder.glob("vectors-*.f32"):
        m = _VECTORS.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = (path, int(m.group(2)))
    return found


def _tantivy():
    try:
        import tantivy
    except ImportError as e:  # a dependency of babelrag; missing only in a broken install
        raise StoreError(f"the keyword index needs the tantivy package ({e}); reinstall babelrag") from e
    return tantivy


class KeywordIndex:
    """BM25 over chunk texts, addressed by chunk id: a tantivy index in a folder.

    On disk and memory-mapped, so processes of one machine share it through the page cache and
    a restart reads it instead of rebuilding it; written incrementally (``writing``: documents
    added and deleted by source, committed as a new segment), read by any number of processes.
    BM25 statistics (document frequencies, average length) are over the whole index, as before
    with bm25s, and ``languages`` only filters. Chosen over SQLite FTS5 and in-memory bm25s by
    measurement (README, "Scale").
    """

    def __init__(self, path: Path, index: Any) -> None:
        self.path = path
        self._index = index
        self._schema = index.schema
        self._maps: dict[int, np.ndarray] = {}  # generation -> its vector file, memory-mapped
        self._maps_lock = threading.Lock()
        self.rewriting = frozenset()

    @property
    def rewriting(self) -> frozenset[str]:
        """Sources being rewritten as of the version the index reflects: the store may have
        deleted or replaced their chunks that the index still holds, so ``candidates`` and
        ``chunks`` leave them to the store (KeywordIndexes sets this on each catch-up)."""
        return self._rewriting[0]

    @rewriting.setter
    def rewriting(self, sources: Collection[str]) -> None:
        self._rewriting = (frozenset(sources), frozenset(_key(s) for s in sources))

    @classmethod
    def open(cls, path: Path) -> KeywordIndex:
        """The index in ``path``, created empty if there is none."""
        tantivy = _tantivy()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, tantivy.Index(_schema(), path=str(path), reuse=True))
        except (OSError, ValueError) as e:
            raise StoreError(
                f"cannot open the keyword index in {path}: {e}; delete that folder, it is rebuilt from the store"
            ) from e

    @classmethod
    def build(
        cls, path: Path, ids: Sequence[str], texts: Sequence[str], languages: Sequence[str | None],
        sources: Sequence[str] | None = None,
    ) -> KeywordIndex:  # fmt: skip
        """A new index in ``path`` of ``texts[i]`` (in ``languages[i]``) as chunk ``ids[i]``."""
        if not len(ids) == len(texts) == len(languages):
            raise ValueError(
                f"ids, texts and languages must be parallel; got {len(ids)}, {len(texts)} and {len(languages)} items"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("chunk ids must be unique; got duplicates")
        index = cls.open(path)
        with index.writing() as writer:
            writer.clear()
            writer.add(ids, texts, languages, sources or ids)
        return index

    def __len__(self) -> int:
        return int(self._index.searcher().num_docs)

    def reload(self) -> None:
        """See what other writers (processes) committed since."""
        self._index.reload()

    @contextlib.contextmanager
    def writing(self) -> Iterator[KeywordWriter]:
        """Changes made through the writer are committed together at the end, or not at all.
        One writer per folder at a time (tantivy's own lock; KeywordIndexes serialises them)."""
        writer = self._index.writer(_WRITER_HEAP, 1)
        changes = KeywordWriter(writer, self.path)
        try:
            yield changes
            changes.sync()  # the vectors on disk before the documents that point at them
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        finally:
            writer.wait_merging_threads()
            changes.close()
        changes.committed()
        self._index.reload()

    def search(
        self, query: str, *, language: str | None, top_k: int, languages: Collection[str | None] | None = None
    ) -> list[tuple[str, float]]:
        """Up to ``top_k`` (chunk id, BM25 score) pairs that share a term with ``query``, best
        first; with ``languages``, only chunks in one of them."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1; got {top_k}")
        tokens = sorted(set(tokenize(query, language)))
        if not tokens:
            return []
        tantivy = _tantivy()
        q, should, must = tantivy.Query, tantivy.Occur.Should, tantivy.Occur.Must
        found = q.boolean_query([(should, q.term_query(self._schema, "body", t)) for t in tokens])
        if languages is not None:
            allowed = q.term_set_query(self._schema, "lang", sorted({lang or _NO_LANGUAGE for lang in languages}))
            found = q.boolean_query([(must, found), (must, q.const_score_query(allowed, 0.0))])
        searcher = self._index.searcher()
        hits = searcher.search(found, top_k, count=False).hits
        return [(searcher.doc(address)["id"][0], float(score)) for score, address in hits]

    def _find(self, ids: Collection[str]) -> tuple[Any, list[Any]]:
        """(a searcher, the addresses of the documents of ``ids``): one search for all."""
        tantivy = _tantivy()
        q = tantivy.Query
        searcher = self._index.searcher()
        wanted = sorted(set(ids))
        if not wanted:
            return searcher, []
        if len(wanted) <= 512:  # a term query each: faster than a term set, for a query's candidates
            found = q.boolean_query([(tantivy.Occur.Should, q.term_query(self._schema, "id", i)) for i in wanted])
        else:
            found = q.term_set_query(self._schema, "id", wanted)
        return searcher, [address for _, address in searcher.search(found, len(wanted), count=False).hits]

    def languages(self, ids: Collection[str]) -> dict[str, str | None]:
        """The language of each of ``ids`` that the index holds (None: a chunk without one);
        ids it does not hold are left out."""
        searcher, addresses = self._find(ids)
        out: dict[str, str | None] = {}
        for address in addresses:
            doc = searcher.doc(address)
            lang = doc.get_first("lang")
            out[doc.get_first("id")] = None if lang == _NO_LANGUAGE else lang
        return out

    def candidates(
        self, ids: Collection[str], *, skip: tuple[Collection[str], Collection[int]] | None = None
    ) -> dict[str, tuple[str | None, np.ndarray]]:
        """(language, stored vector) of each of ``ids`` that the index holds with its vector
        (float32, as the store has it), unless its source is being rewritten (or in ``skip``:
        sources and their hashes, KeywordIndexes.pending_keys); others are left out. Read from
        fast fields and the vector file, no document fetched."""
        wanted = {_key(i): i for i in set(ids)}
        searcher, addresses = self._find(wanted.values())
        if not addresses:
            return {}
        ids_found = [wanted.get(k) for k in searcher.fast_field_values("id_key", addresses)]
        places = searcher.fast_field_values("vector", addresses)
        codes = searcher.fast_field_values("lang_code", addresses)
        skip_keys = (skip if skip is not None else self._rewriting)[1]
        sources = searcher.fast_field_values("source_key", addresses) if skip_keys else [None] * len(addresses)
        by_generation: dict[int, list[int]] = {}
        for n, (id_, place, code, source) in enumerate(zip(ids_found, places, codes, sources, strict=True)):
            # no vector, a language tag too long to pack, a hash of an id not asked for: the store knows
            if id_ is None or not place or code in (None, 1) or (skip_keys and source in skip_keys):
                continue
            by_generation.setdefault(place >> _ROW_BITS, []).append(n)
        out: dict[str, tuple[str | None, np.ndarray]] = {}
        for generation, picked in by_generation.items():
            rows = np.array([places[n] & ((1 << _ROW_BITS) - 1) for n in picked])
            vectors = self._vectors(generation, int(rows.max()))
            if vectors is None:  # a file gone with a rebuild this process has not seen yet
                continue
            rows_of = np.asarray(vectors[rows])
            for n, vector in zip(picked, rows_of, strict=True):
                out[ids_found[n]] = (_language_of_code(codes[n]), vector)
        return out

    def _vectors(self, generation: int, row: int) -> np.ndarray | None:
        """The memory-mapped vector file of ``generation``, with at least ``row + 1`` rows (it is
        mapped again when it has grown); None when there is no such file or row."""
        with self._maps_lock:
            mapped = self._maps.get(generation)
            if mapped is not None and row < len(mapped):
                return mapped
            files = _vector_files(self.path)
            for gone in set(self._maps) - set(files):
                del self._maps[gone]
            if generation not in files:
                return None
            path, dim = files[generation]
            try:
                rows = path.stat().st_size // (4 * dim)
                if row >= rows:
                    return None
                mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
            except (OSError, ValueError):  # removed by another process's rebuild since it was listed
                return None
            self._maps[generation] = mapped
            return mapped

    def chunks(self, ids: Collection[str], *, skip: Collection[str] | None = None) -> dict[str, Chunk]:
        """The chunk (text and fields, as the store has them) of each of ``ids`` that the index
        holds with its fields, unless its source is being rewritten (or in ``skip``,
        KeywordIndexes.pending); others are left out."""
        searcher, addresses = self._find(ids)
        rewriting = self.rewriting if skip is None else skip
        out: dict[str, Chunk] = {}
        for address in addresses:
            doc = searcher.doc(address)
            data = doc.get_first("chunk")
            if data and not (rewriting and doc.get_first("source") in rewriting):
                id_ = doc.get_first("id")
                out[id_] = _decode_chunk(id_, data)
        return out

    def ideal_score(self, query: str, language: str | None) -> float:
        """The BM25 score of an average-length chunk that holds each query term once: the sum of
        the terms' IDF (a term no chunk has counts at full IDF). ``score / ideal_score`` tells how
        much of the query a chunk matches, comparable across queries (unlike ``score / best``)."""
        searcher = self._index.searcher()
        n = searcher.num_docs
        if not n:
            return 0.0
        total = 0.0
        for token in set(tokenize(query, language)):
            df = searcher.doc_freq("body", token)
            total += math.log(1 + (n - df + 0.5) / (df + 0.5))  # Lucene's (and tantivy's) IDF
        return total


class KeywordWriter:
    def __init__(self, writer: Any, folder: Path) -> None:
        self._writer = writer
        self._folder = folder
        self._vectors: _VectorFile | None = None
        self._cleared = False

    def _add(self, id_: str, source: str, language: str | None, text: str, place: int = 0, chunk: bytes | None = None):
        tantivy = _tantivy()
        doc = tantivy.Document(
            id=id_, source=source, lang=language or _NO_LANGUAGE, body=" ".join(tokenize(text, language))
        )
        if chunk is not None:
            doc.add_bytes("chunk", chunk)
        for name, value in (("id_key", _key(id_)), ("vector", place), ("lang_code", _language_code(language)),
                            ("source_key", _key(source))):  # fmt: skip
            doc.add_unsigned(name, value)
        self._writer.add_document(doc)

    def add(
        self, ids: Sequence[str], texts: Sequence[str], languages: Sequence[str | None], sources: Sequence[str]
    ) -> None:
        """Texts to search, without vectors or fields to serve."""
        for id_, text, language, source in zip(ids, texts, languages, sources, strict=True):
            self._add(id_, source, language, text)

    def add_chunks(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """``chunks`` with their vectors (one row each) and all their fields, so that
        ``KeywordIndex.candidates`` and ``.chunks`` can serve them."""
        rows = np.asarray(vectors, dtype=np.float32)
        if len(rows) != len(chunks):
            raise ValueError(f"add_chunks needs one vector per chunk; got {len(rows)} for {len(chunks)}")
        if not len(chunks):
            return
        places = self._vector_file(rows.shape[1]).append(rows)
        for chunk, place in zip(chunks, places, strict=True):
            self._add(chunk.id, chunk.source, chunk.language, chunk.text, place, _encode_chunk(chunk))

    def _vector_file(self, dim: int) -> _VectorFile:
        if self._vectors is None or self._vectors.dim != dim:
            if self._vectors is not None:
                self._vectors.sync()
                self._vectors.close()
            files = _vector_files(self._folder)
            latest = max(files, default=0)
            # after a clear, a new generation (the old rows stay for readers until the commit)
            if self._cleared or latest == 0 or files[latest][1] != dim or self._vectors is not None:
                latest = _new_generation(self._folder, latest)
            self._vectors = _VectorFile(self._folder / f"vectors-{latest}-{dim}.f32", latest, dim)
        return self._vectors

    def delete_sources(self, sources: Iterable[str]) -> None:
        for source in sources:
            self._writer.delete_documents_by_term("source", source)

    def clear(self) -> None:
        if self._vectors is not None:
            raise ValueError("clear() must come before add_chunks() in one writing()")
        self._writer.delete_all_documents()
        self._cleared = True

    def sync(self) -> None:
        if self._vectors is not None:
            self._vectors.sync()

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()

    def committed(self) -> None:
        """After a committed clear no document points at an older vector file: remove those
        (a reader that has one mapped keeps it until it unmaps it)."""
        if not self._cleared:
            return
        keep = self._vectors.generation if self._vectors is not None else None
        for generation, (path, _) in _vector_files(self._folder).items():
            if generation != keep:
                path.unlink(missing_ok=True)


# -- kept in step with the store ---------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``: processes of one machine take turns."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _covers(applied: str | None, version: str) -> bool:
    """Whether an index caught up with store version ``applied`` reflects ``version`` or later."""
    if not applied:
        return False
    if applied == version:
        return True
    applied_id, applied_seq = _parse_version(applied)
    version_id, version_seq = _parse_version(version)
    return applied_id == version_id and not applied_id.startswith("legacy") and applied_seq >= version_seq > 0


def _parse_version(version: str) -> tuple[str, int]:
    """(collection id, version counter) of a store version "ID:N"; legacy versions (a hash of a
    collection without a version counter) are their own id, so that any change rebuilds."""
    head, _, tail = version.rpartition(":")
    if head and not head.startswith("legacy") and tail.isdigit():
        return head, int(tail)
    return version, 0


class KeywordIndexes:
    """The keyword index of each collection of one store, kept in step with the store.

    Each lives in ``root/<store>/<collection>``: a tantivy index plus ``babelrag.json``, the store
    version it reflects. To catch up, a process takes the folder's lock, reads the manifest
    entries that changed since that version (``VectorStore.changes``: every write and delete
    bumps the collection's version and stamps the entries it touched), deletes those sources'
    chunks from the index and adds the chunks of those now done, and records the version. So
    the job that writes the chunks updates the index at once, another process of the machine
    finds it up to date and only reloads it, and a process on another machine (its own folder)
    catches up from the store alone. A missing, foreign or outdated folder is rebuilt from the
    manifest, a page of chunks at a time.

    ``get`` never makes a query wait for an update of an index it already has: that runs in a
    background thread, and the query uses the index as it is.
    """

    def __init__(self, store: VectorStore, root: Path) -> None:
        self.store = store
        self.root = Path(root)
        self._open: dict[str, KeywordIndex] = {}
        self._applied: dict[str, str] = {}  # collection -> store version its index reflects here
        self._busy: set[str] = set()
        # collection -> ((version applied, version asked), sources changed in between, their keys)
        self._pending: dict[str, tuple[tuple[str, str], frozenset[str], frozenset[int]]] = {}
        self._lock = threading.Lock()

    def folder(self, collection: str) -> Path:
        store = hashlib.sha256(self.store.key.encode()).hexdigest()[:16]
        return self.root / store / collection

    def get(self, collection: str, version: str) -> KeywordIndex:
        """The index of ``collection``; catching up with store version ``version`` if behind."""
        with self._lock:
            index = self._open.get(collection)
            current = index is not None and _covers(self._applied.get(collection), version)
        if index is None:
            index = self._first_use(collection)
            if index is None:
                return self.refresh(collection)
        if not current:
            self._catch_up_in_background(collection)
        return index

    def _first_use(self, collection: str) -> KeywordIndex | None:
        """This process's first query of ``collection``: the machine's copy if there is one (it
        catches up in the background), or an empty index while a big collection is indexed in the
        background (queries meanwhile have no keyword evidence: a warning says so). None: small
        enough to index now (seconds)."""
        folder = self.folder(collection)
        meta = _read_meta(folder)
        collection_id, _ = _parse_version(self.store.version(collection))
        if meta is not None and meta.get("format") == _FORMAT and meta.get("collection_id") == collection_id:
            index = KeywordIndex.open(folder)
        else:
            state = self.store.state(collection)
            if state is None or state.sums.total <= INLINE_BUILD_CHUNKS:
                return None
            log.warning(
                "keyword index of %r (%d chunks) is being built on this machine in the background; until it is "
                "done, queries use the dense first stage only", collection, state.sums.total,
            )  # fmt: skip
            index = KeywordIndex.open(folder.parent / f".{collection}.empty")
        with self._lock:
            self._open.setdefault(collection, index)
            self._applied.setdefault(collection, "")
        return index

    def refresh(self, collection: str) -> KeywordIndex:
        """Bring the index up to date with the store now."""
        folder = self.folder(collection)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _file_lock(folder / ".lock"):
                version = self.store.version(collection)
                index = self._catch_up(collection, folder, version)
        except (OSError, ValueError) as e:  # tantivy reports a write it could not make as a ValueError
            problem = disk_problem(folder) or str(e)
            raise StoreError(
                f"cannot write the keyword index of {collection!r} in {folder}: {problem}. Free space or point "
                "store.index_dir at a writable folder: the index is rebuilt from the store"
            ) from e
        with self._lock:
            self._open[collection] = index
            self._applied[collection] = version
        return index

    def reflects(self, collection: str, version: str) -> bool:
        """Whether this process's index of ``collection`` is caught up with store version ``version``."""
        with self._lock:
            return self._applied.get(collection) == version

    def pending(self, collection: str, version: str) -> frozenset[str] | None:
        """The sources whose chunks may differ between this process's index of ``collection``
        and store version ``version``: those changed since the version the index reflects (one
        read of the store's change feed per version, while the index catches up), and those
        being rewritten. The index serves every other chunk exactly as the store has it. None:
        the index cannot serve ``version`` (none caught up yet, or another collection)."""
        keys = self.pending_keys(collection, version)
        return None if keys is None else keys[0]

    def pending_keys(self, collection: str, version: str) -> tuple[frozenset[str], frozenset[int]] | None:
        """``pending``, with the fast-field hashes of those sources (for KeywordIndex.candidates)."""
        with self._lock:
            index = self._open.get(collection)
            applied = self._applied.get(collection)
            cached = self._pending.get(collection)
        if index is None or not applied:
            return None
        rewriting, rewriting_keys = index._rewriting
        if _covers(applied, version):  # caught up with it, or with a later one
            return rewriting, rewriting_keys
        if cached is not None and cached[0] == (applied, version):
            return cached[1], cached[2]
        applied_id, applied_seq = _parse_version(applied)
        if applied_id != _parse_version(version)[0] or applied_id.startswith("legacy"):
            return None
        changed = frozenset(e.source for e in self.store.changes(collection, since=applied_seq)) | rewriting
        keys = frozenset(_key(source) for source in changed)
        with self._lock:
            self._pending[collection] = ((applied, version), changed, keys)
        return changed, keys

    def prepare(self, collection: str, version: str) -> None:
        """Before queries see ``version`` (VersionWatch.on_change): the files changed since the
        version the index reflects are read from the store's change feed (``pending``: one read),
        so that queries take those files' chunks from the store, never a deleted or replaced one
        from the index, while it catches up (``catch_up``, after)."""
        with self._lock:
            if not self._applied.get(collection):
                return  # not in use here yet: the first query opens or builds it
        self.pending(collection, version)

    def catch_up(self, collection: str, version: str) -> None:
        """After queries see ``version``: the index catches up with it in the background."""
        with self._lock:
            applied = self._applied.get(collection)
        if applied and not _covers(applied, version):  # in use here, and behind
            self._catch_up_in_background(collection)

    def forget(self, collection: str) -> None:
        with self._lock:
            self._open.pop(collection, None)
            self._applied.pop(collection, None)

    def _catch_up_in_background(self, collection: str) -> None:
        with self._lock:
            if collection in self._busy:
                return
            self._busy.add(collection)

        def run() -> None:
            try:
                with self.store.background():
                    self.refresh(collection)
            except StoreClosedError:  # let go of by its owner (Pipeline.close): not opened again from here
                log.debug("keyword index of %r: the store was closed, catch-up stopped", collection)
            except Exception:  # noqa: BLE001 - the next query tries again; queries keep the index they have
                log.warning("cannot update the keyword index of %r", collection, exc_info=True)
            finally:
                with self._lock:
                    self._busy.discard(collection)

        threading.Thread(target=run, name=f"keyword-{collection}", daemon=True).start()

    def _catch_up(self, collection: str, folder: Path, version: str) -> KeywordIndex:
        collection_id, seq = _parse_version(version)
        meta = _read_meta(folder)
        rebuild = meta is None or meta.get("format") != _FORMAT or meta.get("collection_id") != collection_id
        if rebuild and meta is not None and meta.get("format") != _FORMAT:
            _wipe(folder)
        index = self._open.get(collection)
        if index is None or index.path != folder:  # not the stand-in of _first_use
            index = KeywordIndex.open(folder)
        if not rebuild and meta["version"] >= seq:
            index.reload()  # another process of this machine brought it up to date
            index.rewriting = frozenset(meta.get("writing", ()))
            return index
        started = time.perf_counter()
        if not rebuild and _unused_vector_rows(folder, len(index)) > max(len(index), COMPACT_VECTOR_ROWS):
            # rows of replaced and deleted chunks outnumber the live ones: rebuilt into a new file
            log.info("keyword index of %r: vector file compacted by a rebuild", collection)
            rebuild = True
        if rebuild:
            entries = [e for e in self.store.manifest(collection).values() if e.status in ("done", "writing")]
            writing = {e.source for e in entries if e.status == "writing"}
        else:
            entries = self.store.changes(collection, since=meta["version"])
            writing = set(meta.get("writing", ())) - {e.source for e in entries}
            writing |= {e.source for e in entries if e.status == "writing"}
        chunks = self._apply(index, collection, entries, clear=rebuild)
        index.rewriting = frozenset(writing)
        _write_meta(
            folder, {"format": _FORMAT, "collection_id": collection_id, "version": seq, "writing": sorted(writing)}
        )
        log.info(
            "keyword index of %r %s: %d documents, %d chunks in %.2f s",
            collection, "rebuilt" if rebuild else "updated", len(entries), chunks, time.perf_counter() - started,
        )  # fmt: skip
        return index

    def _apply(self, index: KeywordIndex, collection: str, entries: Sequence[ManifestEntry], *, clear: bool) -> int:
        # A "writing" entry is a file being rewritten: its index entries stay until it is done.
        touched = [e.source for e in entries if e.status in ("done", "deleted")]
        ids = [i for e in entries if e.done for i in e.chunk_ids]
        page = 4000
        with index.writing() as writer:
            if clear:
                writer.clear()
            else:
                writer.delete_sources(touched)
            for i in range(0, len(ids), page):
                writer.add_chunks(*self.store.chunks_with_vectors(collection, ids[i : i + page]))
        return len(ids)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _META).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".{_META}.tmp"
    tmp.write_text(json.dumps(meta), "utf-8")
    tmp.replace(folder / _META)


def _new_generation(folder: Path, latest: int) -> int:
    """A vector-file generation never used in ``folder`` (above ``latest``, the highest there now,
    and every one used before, even if its file is gone): readers cache a mapped file by its
    generation, so a number reused for another file would hand them the old file's rows. Called
    under the folder's lock."""
    mark = folder / _GENERATION
    try:
        used = int(mark.read_text("ascii"))
    except (OSError, ValueError):
        used = 0
    generation = max(latest, used) + 1
    if generation >= 1 << (64 - _ROW_BITS):
        raise ValueError(f"keyword index {folder}: vector-file generations used up; delete the folder to rebuild it")
    tmp = folder / f".{_GENERATION}.tmp"
    tmp.write_text(str(generation), "ascii")
    tmp.replace(mark)
    return generation


def _wipe(folder: Path) -> None:
    for child in folder.iterdir():
        if child.name not in (".lock", _GENERATION):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
