"""Keyword (BM25) first stage beside the dense embeddings: a script-aware tokenizer and an index.

Dense multilingual embeddings miss exact strings (names, numbers, rare terms); BM25 finds them.
One tokenizer serves every language, so no per-language analyzer has to be chosen or installed:
text is cut into runs of one Unicode script; scripts written with spaces give words, scripts
written without them (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) give overlapping character
bigrams, the usual dictionary-free segmentation (Lucene's CJKBigramFilter does the same).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.errors import StoreError

if TYPE_CHECKING:
    import bm25s

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


_META_FILE = "keyword_index.json"
_BM25_PARAMS_FILE = "params.index.json"  # bm25s's; absent when no chunk had a token
_FORMAT = 1


class KeywordIndex:
    """BM25 over chunk texts, addressed by chunk id. Make one with ``build`` or ``load``."""

    def __init__(self, ids: Sequence[str], languages: Sequence[str | None], bm25: bm25s.BM25 | None) -> None:
        if len(ids) != len(languages):
            raise ValueError(f"got {len(ids)} ids but {len(languages)} languages")
        self._ids = list(ids)
        self._languages = list(languages)
        self._language_array = np.array([lang or "" for lang in self._languages], dtype=str)
        self._position = {id_: i for i, id_ in enumerate(self._ids)}
        if len(self._position) != len(self._ids):
            raise ValueError("chunk ids must be unique; got duplicates")
        self._bm25 = bm25  # None when no text had a single token: bm25s cannot index that
        self._doc_freq: np.ndarray | None = None

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], languages: Sequence[str | None]) -> KeywordIndex:
        """Index ``texts[i]`` (in ``languages[i]``, None if unknown) as chunk ``ids[i]``."""
        import bm25s

        if not len(ids) == len(texts) == len(languages):
            raise ValueError(
                f"ids, texts and languages must be parallel; got {len(ids)}, {len(texts)} and {len(languages)} items"
            )
        corpus = [tokenize(text, language) for text, language in zip(texts, languages)]
        bm25 = None
        if any(corpus):
            bm25 = bm25s.BM25()
            bm25.index(corpus, show_progress=False)
        return cls(ids, languages, bm25)

    def ideal_score(self, query: str, language: str | None) -> float:
        """The BM25 score of an average-length chunk that holds each query term once: the sum of
        the terms' IDF (a term no chunk has counts at full IDF). ``score / ideal_score`` tells how
        much of the query a chunk matches, comparable across queries (unlike ``score / best``)."""
        if self._bm25 is None:
            return 0.0
        n = len(self._ids)
        vocab = self._bm25.vocab_dict
        total = 0.0
        for token in set(tokenize(query, language)):
            df = self._df(vocab[token]) if token in vocab else 0
            total += float(np.log(1 + (n - df + 0.5) / (df + 0.5)))  # Lucene's IDF, bm25s' default
        return total

    def _df(self, token_id: int) -> int:
        if self._doc_freq is None:
            scores = self._bm25.scores
            indptr = np.asarray(scores["indptr"])
            self._doc_freq = np.diff(indptr)  # CSC by token: non-zero entries = chunks holding it
        return int(self._doc_freq[token_id]) if token_id < len(self._doc_freq) else 0

    def __len__(self) -> int:
        return len(self._ids)

    def mask_for(self, languages: Collection[str] | None = None, ids: Collection[str] | None = None) -> np.ndarray:
        """Boolean mask over the indexed chunks for ``search``: chunks in one of ``languages``
        and among ``ids`` (either None: no restriction). Unknown ids are ignored."""
        mask = np.ones(len(self._ids), dtype=bool)
        if languages is not None:
            mask &= np.isin(self._language_array, [lang or "" for lang in languages])  # vectorised: 10k chunks in 0.03 ms
        if ids is not None:
            among = np.zeros(len(self._ids), dtype=bool)
            among[[self._position[i] for i in ids if i in self._position]] = True
            mask &= among
        return mask

    def search(
        self, query: str, *, language: str | None, top_k: int, mask: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """Up to ``top_k`` (chunk id, BM25 score) pairs that share a term with ``query``, best
        first, among the chunks where ``mask`` (see ``mask_for``) is True."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1; got {top_k}")
        if mask is not None and (mask.dtype != bool or mask.shape != (len(self._ids),)):
            raise ValueError(
                f"mask must be a boolean array of shape ({len(self._ids)},) like mask_for "
                f"returns; got {mask.dtype} {mask.shape}"
            )
        if self._bm25 is None:
            return []
        token_ids = self._bm25.get_tokens_ids(tokenize(query, language))
        if not token_ids:
            return []
        scores = self._bm25.get_scores_from_ids(token_ids, weight_mask=mask)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > top_k:
            hits = hits[np.argpartition(-scores[hits], top_k - 1)[:top_k]]
        hits = hits[np.lexsort((hits, -scores[hits]))]  # ties in index order: deterministic
        return [(self._ids[i], float(scores[i])) for i in hits]

    def save(self, path: Path) -> None:
        """Write the index to directory ``path``, replacing what is there. Readers never see a
        half-written index (at worst, for an instant, none): it is written beside ``path`` and
        renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            if self._bm25 is not None:
                self._bm25.save(staging, show_progress=False)
            meta = {"format": _FORMAT, "ids": self._ids, "languages": self._languages}
            (staging / _META_FILE).write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
            if path.exists():
                # a directory cannot be renamed over a non-empty one: move the old one aside
                retired = staging.with_name(staging.name + ".old")
                path.rename(retired)
                try:
                    staging.rename(path)
                except OSError:
                    retired.rename(path)
                    raise
                shutil.rmtree(retired)
            else:
                staging.rename(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: Path) -> KeywordIndex:
        """Read an index written by ``save``."""
        import bm25s

        path = Path(path)
        try:
            meta = json.loads((path / _META_FILE).read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(
                f"cannot read the keyword index in {path}: expected {_META_FILE} written by "
                f"KeywordIndex.save, got {type(e).__name__}: {e}; rebuild the index"
            ) from e
        if meta.get("format") != _FORMAT:
            raise StoreError(
                f"keyword index in {path} has format {meta.get('format')!r}, this version reads "
                f"format {_FORMAT}; rebuild the index"
            )
        ids, languages = meta["ids"], meta["languages"]
        bm25 = None
        if (path / _BM25_PARAMS_FILE).exists():
            bm25 = bm25s.BM25.load(path, show_progress=False)
            if bm25.scores["num_docs"] != len(ids):
                raise StoreError(
                    f"keyword index in {path} is inconsistent: {len(ids)} ids but "
                    f"{bm25.scores['num_docs']} BM25 documents; rebuild the index"
                )
        return cls(ids, languages, bm25)
