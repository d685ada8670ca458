"""Which source sentence supports a cited answer sentence (the span the UI highlights)."""

from __future__ import annotations

import numpy as np

from rag import Answer, Citation, CitedSentence
from rag.evidence import locate_evidence
from tests.helpers import hit

# A stand-in for the multilingual embedder: a German word and its Japanese translation share an axis.
AXES = [("Passwort", "パスワード"), ("Laptop", "ノートパソコン"), ("Zertifikat", "証明書")]


class KeywordEmbedder:
    def _embed(self, texts):
        return np.array([[float(any(w in t for w in pair)) for pair in AXES] + [0.01] for t in texts])

    embed_queries = embed_documents = _embed


SOURCE = (
    "## パスワードと端末の管理\n\n"
    "電子証明書は90日ごとに更新しなければなりません。"
    "パスワードは14文字以上で設定してください。"
    "ノートパソコンを紛失した場合は、2時間以内に報告してください。"
)


def answer_with(*sentences: tuple[str, tuple[int, ...]]) -> Answer:
    text, spans = "", []
    for sentence, sources in sentences:
        start = len(text)
        text += sentence + " "
        spans.append(CitedSentence(sentence, start, start + len(sentence), sources))
    h = hit(SOURCE, source="/kb/ja_security_policy.md")
    return Answer(question="?", text=text.strip(), language="de", question_language="de",
                  citations=[Citation(1, h, True)], sentences=spans)  # fmt: skip


def highlighted(answer: Answer) -> list[str]:
    evidence = locate_evidence(answer, KeywordEmbedder())
    return [SOURCE[s:e] for s, e in evidence[1].spans]


def test_the_source_sentence_of_the_claim_across_languages_is_found():
    answer = answer_with(("Ein Passwort braucht mindestens 14 Zeichen [1].", (1,)))
    assert highlighted(answer) == ["パスワードは14文字以上で設定してください。"]


def test_a_bare_source_line_stands_for_the_sentence_before_it():
    answer = answer_with(("Einen verlorenen Laptop meldet man binnen 2 Stunden.", ()), ("Quelle: [1]", (1,)))
    assert highlighted(answer) == ["ノートパソコンを紛失した場合は、2時間以内に報告してください。"]


def test_headings_are_never_evidence_and_uncited_sources_get_none():
    answer = answer_with(("Passwort und Laptop [1].", (1,)))
    assert not any(h.startswith("#") for h in highlighted(answer))
    assert locate_evidence(answer_with(("Nichts zitiert.", ())), KeywordEmbedder()) == {}
