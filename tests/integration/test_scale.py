"""The default retrieval on a collection above 40k chunks, embedded and on a `chroma run` server:
before issue 13 every query failed there ("too many SQL variables" from reading 50k vectors in
one call for the centroids). Random vectors (what they mean does not matter to paging), real
multilingual text for the keyword index, the real query embedder."""

from __future__ import annotations

import numpy as np
import pytest

from ingestion.job import write_documents
from rag import Pipeline
from rag.store import ManifestEntry
from rag.types import Chunk

pytestmark = [pytest.mark.model, pytest.mark.integration]

DOCUMENTS, PER_DOCUMENT = 410, 100  # 41,000 chunks
DIM = 384
LANGUAGES = {
    "de": "Der Zug nach Hamburg Nummer {n} fährt um acht Uhr.",
    "en": "Train number {n} to Leeds leaves at four.",
    "ru": "Поезд номер {n} в Москву отправляется в девять.",
    "ar": "يغادر القطار رقم {n} إلى القاهرة في العاشرة.",
    "hi": "दिल्ली की रेलगाड़ी संख्या {n} सात बजे चलती है।",
    "th": "รถไฟขบวนที่ {n} ไปเชียงใหม่ออกตอนหกโมง",
    "zh": "去上海的第{n}次列车六点出发。",
    "ja": "大阪行きの{n}番の電車は五時に出発します。",
}
NEEDLE = "Die Prüfnummer Zaunkönig-4711 steht auf dem Typenschild der Kaffeemaschine."


@pytest.fixture(scope="module", params=["embedded", "server"])
def big(request, model_settings, embedder, language, tmp_path_factory):
    settings = model_settings.model_copy(deep=True)
    settings.store.path = tmp_path_factory.mktemp("big") / "chroma"
    settings.store.index_dir = settings.store.path.parent / "index"
    if request.param == "server":
        settings.store.url = request.getfixturevalue("chroma_server")
    pipeline = Pipeline(settings, embedder=embedder, language=language)
    store = pipeline.store
    store.ensure_collection("big", fingerprint={"embedding_model": "random", "dimension": DIM})
    rng = np.random.default_rng(0)
    names = list(LANGUAGES)
    documents = []
    for d in range(DOCUMENTS):
        lang = names[d % len(names)]
        source = f"/kb/{lang}/{d}.txt"
        texts = [LANGUAGES[lang].format(n=d * PER_DOCUMENT + i) for i in range(PER_DOCUMENT)]
        if d == 7:
            texts[3] = NEEDLE  # one German chunk only the keyword side can find
        chunks = [
            Chunk(id=f"{d}-{i}", text=t, source=source, index=i, start=0, end=len(t), language="de" if t == NEEDLE else lang,
                  doc_hash=str(d))  # fmt: skip
            for i, t in enumerate(texts)
        ]
        vectors = rng.standard_normal((PER_DOCUMENT, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        entry = ManifestEntry(source, str(d), tuple(c.id for c in chunks), "done", language=lang)
        documents.append((entry, chunks, vectors))
    for i in range(0, DOCUMENTS, 41):  # as a job writes: a batch of files at a time
        write_documents(store, "big", documents[i : i + 41])
    yield pipeline
    store.close()


def test_default_retrieval_works_above_40k_chunks(big):
    info = big.store.info("big")
    assert info.count == DOCUMENTS * PER_DOCUMENT > 40_000 and info.documents == DOCUMENTS
    assert big.settings.retrieval.mode == "hybrid" and big.settings.retrieval.centring
    for question in ("Wo steht die Prüfnummer Zaunkönig-4711?", "Когда отправляется поезд?", "火车几点出发？"):
        hits = big.retrieve(question, collection="big", top_k=5)
        assert len(hits) == 5
    (needle, *_) = big.retrieve("Wo steht die Prüfnummer Zaunkönig-4711?", collection="big", top_k=3)
    assert needle.chunk.text == NEEDLE  # found by the keyword index among 41,000 chunks
    only_thai = big.retrieve("รถไฟออกกี่โมง", collection="big", top_k=5, where={"language": "th"})
    assert {h.chunk.language for h in only_thai} == {"th"}


def test_derived_state_covers_every_chunk(big):
    state = big.store.state("big")
    assert state.sums.total == DOCUMENTS * PER_DOCUMENT  # the centroids count every chunk, no sample
    assert sum(state.sums.counts.values()) == DOCUMENTS * PER_DOCUMENT
    assert len(big.retriever.keyword_index("big")) == DOCUMENTS * PER_DOCUMENT
    assert len(big.documents("big")) == DOCUMENTS


def test_a_document_is_deleted_from_everything(big):
    source = "/kb/de/8.txt"
    before = big.store.state("big").sums.counts["de"]
    assert big.delete_document(source, "big") == PER_DOCUMENT
    state = big.store.state("big")
    assert state.documents == DOCUMENTS - 1 and state.sums.counts["de"] == before - PER_DOCUMENT
    assert len(big.retriever.keyword_index("big")) == (DOCUMENTS - 1) * PER_DOCUMENT
    assert source not in {e.source for e in big.documents("big")}
