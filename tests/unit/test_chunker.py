import re

import pytest

from ingestion.chunker import SentenceChunker, chunk_id
from rag.text import sentence_spans
from rag.config import ChunkingConfig
from rag.types import Document


def char_tokens(text: str) -> list[tuple[int, int]]:
    """A tokenizer stand-in: one token per non-space character, so budgets are easy to reason about."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S", text)]


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hallo Welt. Wie geht's? Gut!", ["Hallo Welt.", "Wie geht's?", "Gut!"]),
        ("Привет. Как дела?", ["Привет.", "Как дела?"]),
        ("今日は晴れです。明日は雨です。", ["今日は晴れです。", "明日は雨です。"]),
        ("我们很好。你呢？", ["我们很好。", "你呢？"]),
        ("مرحبا بك. كيف حالك؟ أنا بخير.", ["مرحبا بك.", "كيف حالك؟", "أنا بخير."]),
        ("यह पहला वाक्य है। यह दूसरा है।", ["यह पहला वाक्य है।", "यह दूसरा है।"]),
        ("วันนี้อากาศดี พรุ่งนี้ฝนตก", ["วันนี้อากาศดี", "พรุ่งนี้ฝนตก"]),
        ("# Title\n\nFirst line\nsecond line", ["# Title", "First line", "second line"]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("Version 2.5 is out. Good", ["Version 2.5 is out.", "Good"]),
        # initials, ordinals and abbreviations do not end sentences (xquad: de, tr, ru, en)
        ("Der Historiker Frederick W. Smith kam am 8. Februar. Er blieb.", ["Der Historiker Frederick W. Smith kam am 8. Februar.", "Er blieb."]),
        ("Tesla 18. ve 19. yüzyıl arasında yaşadı. Sonra öldü.", ["Tesla 18. ve 19. yüzyıl arasında yaşadı.", "Sonra öldü."]),
        ("Это было в 300 г. н. э. в Риме. Потом всё кончилось.", ["Это было в 300 г. н. э. в Риме.", "Потом всё кончилось."]),
        ("Es gibt z. B. Äpfel. Dr. Meier isst sie.", ["Es gibt z. B. Äpfel.", "Dr. Meier isst sie."]),
        ("The team won in 2016. The next season was worse.", ["The team won in 2016.", "The next season was worse."]),
        # a missing space after the full stop still ends the sentence
        ("Tesla Graz'da yaşadı.Tesla sonra Prag'a gitti.", ["Tesla Graz'da yaşadı.", "Tesla sonra Prag'a gitti."]),
        ("حكم المغول.سلالة يوان حكمت الصين.", ["حكم المغول.", "سلالة يوان حكمت الصين."]),
        ("Visit example.com today. Or e.g. later.", ["Visit example.com today.", "Or e.g. later."]),
    ],
)
def test_sentences_in_many_scripts(text, expected):
    assert sentences(text) == expected


def doc(text: str) -> Document:
    return Document(source="/kb/a.txt", text=text, content_hash="h")


def test_chunks_stay_within_budget_and_spans_point_at_the_text():
    text = " ".join(f"Satz Nummer {i} ist hier." for i in range(40))
    chunker = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=60, overlap_tokens=20))
    chunks = chunker.chunk(doc(text))
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start : c.end] == c.text
        assert len(char_tokens(c.text)) <= 60
    # consecutive chunks overlap by whole sentences
    assert chunks[1].start < chunks[0].end
    # every sentence is in some chunk
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def subword_tokens(text: str) -> list[tuple[int, int]]:
    """A tokenizer stand-in that splits words into 3-character pieces, like subword tokenizers."""
    return [(m.start() + k, min(m.start() + k + 3, m.end())) for m in re.finditer(r"\S+", text) for k in range(0, len(m.group()), 3)]


def test_long_sentence_is_cut_before_a_word_not_inside_one():
    text = " ".join(["Donaudampfschifffahrt"] * 12)  # one sentence, 7 tokens per word
    chunks = SentenceChunker(subword_tokens, ChunkingConfig(max_tokens=30, overlap_tokens=0)).chunk(doc(text))
    assert len(chunks) > 2
    for c in chunks:
        assert c.text.split() == ["Donaudampfschifffahrt"] * len(c.text.split()), c.text
        assert len(subword_tokens(c.text)) <= 30


def test_sentence_longer_than_budget_is_cut_at_token_boundaries():
    text = "x" * 250  # one "sentence" of 250 tokens
    chunks = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=100, overlap_tokens=0)).chunk(doc(text))
    assert [len(c.text) for c in chunks] == [100, 100, 50]
    assert "".join(c.text for c in chunks) == text


def test_thai_and_chinese_without_spaces_are_split():
    thai = " ".join(["วันนี้อากาศดีมาก"] * 30)
    zh = "。".join(["我们今天去公园散步"] * 30) + "。"
    for text in (thai, zh):
        chunks = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=50, overlap_tokens=0)).chunk(doc(text))
        assert len(chunks) >= 5
        assert all(len(char_tokens(c.text)) <= 50 for c in chunks)


def test_ids_are_deterministic_and_depend_on_source_and_content():
    chunker = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=30, overlap_tokens=0))
    a = chunker.chunk(doc("Eins. Zwei. Drei."))
    b = chunker.chunk(doc("Eins. Zwei. Drei."))
    assert [c.id for c in a] == [c.id for c in b]
    other = Document(source="/kb/b.txt", text="Eins. Zwei. Drei.", content_hash="h")
    assert {c.id for c in chunker.chunk(other)}.isdisjoint(c.id for c in a)
    retitled = Document(source="/kb/a.txt", text="Eins. Zwei. Drei.", content_hash="h", title="Neu")
    assert {c.id for c in chunker.chunk(retitled)}.isdisjoint(c.id for c in a)  # the embedder reads the title
    assert all(chunk_id(c) == c.id for c in a)


def test_chunks_carry_page_and_section_heading():
    pages = ["Seite eins. Noch ein Satz.", "Seite zwei hat Text.", "Seite drei."]
    text = "\n\n".join(pages)
    starts = tuple(text.index(p) for p in pages)
    headings = ((0, "Einleitung"), (starts[1], "Teil B"))
    d = Document(source="/kb/a.pdf", text=text, content_hash="h", title="Bericht", pages=starts, headings=headings)
    chunks = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=22, overlap_tokens=0)).chunk(d)
    assert [(c.page, c.section) for c in chunks] == [(1, "Einleitung"), (2, "Teil B"), (3, "Teil B")]
    wide = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=100, overlap_tokens=10)).chunk(d)
    assert [c.text for c in wide] == pages  # room for all, but chunks do not cross page breaks
    assert chunks[1].embedding_text == f"Bericht › Teil B\n{chunks[1].text}"
    assert d.page_at(0) == 1 and d.page_at(len(text)) == 3


def test_chunks_of_documents_without_pages_or_headings_have_none():
    (c,) = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=30, overlap_tokens=0)).chunk(doc("Ein Satz."))
    assert c.page is None and c.section is None and c.embedding_text == c.text


def test_language_is_detected_per_chunk():
    text = "Das ist ein deutscher Satz.\nЭто русское предложение."
    chunker = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=24, overlap_tokens=0), detect_language=lambda t: "ru" if "р" in t else "de")
    assert [c.language for c in chunker.chunk(doc(text))] == ["de", "ru"]


def test_title_is_context_for_embedding_but_not_part_of_the_text():
    text = "# Urlaub\n\nEs gibt 26 Tage Urlaub im Jahr. Nicht genommene Tage verfallen im März."
    d = Document(source="/kb/a.md", text=text, content_hash="h", title="Urlaub")
    first, *rest = SentenceChunker(char_tokens, ChunkingConfig(max_tokens=30, overlap_tokens=0)).chunk(d)
    assert first.embedding_text == first.text  # the title is already there
    assert rest and all(c.embedding_text == f"Urlaub\n{c.text}" and not c.text.startswith("#") for c in rest)


@pytest.mark.model
def test_real_tokenizer_budget_on_eight_languages(embedder):
    from ingestion.chunker import tokenizer_spans
    from ingestion.loader import load_document
    from rag.config import IngestionConfig
    from tests.conftest import EXAMPLES

    chunker = SentenceChunker(tokenizer_spans(embedder.tokenizer), ChunkingConfig(max_tokens=64, overlap_tokens=8))
    langs = set()
    for path in sorted((EXAMPLES / "handbook").glob("*.md")):
        d = load_document(path, IngestionConfig())
        for c in chunker.chunk(d):
            assert embedder.count_tokens(c.text) <= 64 + 2  # a cut may re-tokenize a boundary
            assert d.text[c.start : c.end] == c.text
        langs.add(path.name[:2])
    assert len(langs) == 8
