"""Ingest the sample handbook (8 languages) and search it, against embedded Chroma and a
real `chroma run` server, with the real embedding model."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from rag import CollectionNotFoundError, IndexMismatchError, Pipeline
from rag.embedder import SentenceTransformerEmbedder
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.model, pytest.mark.integration]

QUESTIONS = yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))


@pytest.fixture(params=["embedded", "server"])
def pipeline(request, model_settings, embedder, language, tmp_path):
    store = {"path": tmp_path / "chroma"} if request.param == "embedded" else {"url": request.getfixturevalue("chroma_server")}
    settings = model_settings.model_copy(update={"store": model_settings.store.model_copy(update=store)})
    return Pipeline(settings, embedder=embedder, language=language)


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"  # the server fixture is shared by tests


def test_ingest_search_reingest(pipeline):
    kb = unique("handbook")
    report = pipeline.ingest([EXAMPLES / "handbook"], kb)
    assert len(report.added) == 8 and report.ok and report.chunks_written > 8
    info = pipeline.store.info(kb)
    assert info.count == report.chunks_written
    assert info.embedding_model == pipeline.settings.embedding.model

    hits = pipeline.retrieve("Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?", collection=kb, top_k=info.count)
    assert {h.chunk.language for h in hits} == {"en", "de", "ja", "ar", "hi", "zh", "ru", "th"}
    assert len(hits) == info.count
    for h in hits:
        text = Path(h.chunk.source).read_text(encoding="utf-8")
        assert text[h.chunk.start : h.chunk.end] == h.chunk.text  # spans point at the source text

    again = pipeline.ingest([EXAMPLES / "handbook"], kb)
    assert len(again.unchanged) == 8 and again.chunks_written == 0
    assert pipeline.store.info(kb).count == info.count


def test_language_filter(pipeline):
    kb = unique("filtered")
    pipeline.ingest([EXAMPLES / "handbook"], kb)
    hits = pipeline.retrieve("security certificate", collection=kb, where={"language": "ja"}, top_k=5)
    assert hits and all(h.chunk.language == "ja" for h in hits)
    assert all(h.chunk.file_name == "ja_security_policy.md" for h in hits)


def test_cross_lingual_questions_find_their_file(pipeline):
    """Each question's answer is only in a file of another language. Measured with e5-small and
    the default first stage (file ranks de->ja 2, ja->ar 1, ar->hi 2, hi->zh 12, zh->ru 4,
    ru->th 1, th->en 1, en->de 1; MRR 0.667; plain dense: 1, 1, 3, 9, 4, 2, 1, 1, MRR 0.649).
    Guard the level reached."""
    kb = unique("xling")
    pipeline.ingest([EXAMPLES / "handbook"], kb)
    ranks = []
    for q in QUESTIONS:
        files = [h.chunk.file_name for h in pipeline.retrieve(q["question"], collection=kb, top_k=20)]
        ranks.append(files.index(q["expected_file"]) + 1 if q["expected_file"] in files else None)
    reciprocal = [1 / r if r else 0.0 for r in ranks]
    assert ranks.count(1) >= 4, ranks
    assert sum(reciprocal) / len(ranks) >= 0.6, ranks  # measured 0.667
    assert sum(r is not None and r <= 5 for r in ranks) >= 7, ranks


def test_changed_file_replaces_its_chunks_and_bad_file_is_reported(pipeline, tmp_path):
    kb = unique("changes")
    folder = tmp_path / "kb"
    shutil.copytree(EXAMPLES / "handbook", folder)
    (folder / "broken.txt").write_bytes(b"\x00\x01\x02binary\x00")
    first = pipeline.ingest([folder], kb)
    assert len(first.added) == 8
    assert [f.path for f in first.failed] == [str((folder / "broken.txt").resolve())]
    assert "binary" in first.failed[0].reason

    de = folder / "de_remote_work.md"
    de.write_text(de.read_text(encoding="utf-8").replace("drei Tage", "vier Tage"), encoding="utf-8")
    second = pipeline.ingest([folder], kb)
    assert second.updated == [str(de.resolve())] and len(second.unchanged) == 7
    assert second.chunks_written >= 1 and second.chunks_deleted == second.chunks_written
    stored = pipeline.store.chunk_ids_of_source(kb, str(de.resolve()))
    hits = pipeline.retrieve("vier Tage pro Woche zu Hause", collection=kb, where={"source": str(de.resolve())}, top_k=20)
    assert {h.chunk.id for h in hits} == stored
    assert any("vier Tage" in h.chunk.text for h in hits) and not any("drei Tage" in h.chunk.text for h in hits)


def test_unknown_collection_and_mixed_embedding_spaces(pipeline):
    with pytest.raises(CollectionNotFoundError, match=r"collection 'nope-kb' does not exist .*babelrag ingest PATH -c nope-kb"):
        pipeline.retrieve("hallo", collection="nope-kb")
    kb = unique("space")
    de = EXAMPLES / "handbook" / "de_remote_work.md"
    pipeline.ingest([de], kb)
    other = pipeline.settings.model_copy(deep=True)
    other.embedding.document_prompt = "passage:"
    with pytest.raises(IndexMismatchError, match=r"document_prompt: built with 'passage: ', now 'passage:'.*--reindex"):
        Pipeline(other, embedder=SentenceTransformerEmbedder(other.embedding), language=pipeline.language).ingest([de], kb)
    other.chunking.max_tokens = 64
    with pytest.raises(IndexMismatchError, match=r"chunk_max_tokens: built with 128, now 64"):
        Pipeline(other, embedder=pipeline.embedder, language=pipeline.language).ingest([de], kb)


def test_keyword_index_and_centroids_follow_this_process_writes_at_once(pipeline, tmp_path):
    """The derived indexes re-check the store only every index_recheck_s (10 s) for other
    processes' writes; this process's ingest and delete refresh them immediately."""
    kb = unique("fresh")
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "a.md").write_text("Der Kühlschrank kühlt nicht mehr richtig.", encoding="utf-8")
    pipeline.ingest([folder], kb)
    pipeline.retrieve("Fehlercode Q-7731", collection=kb)  # builds both caches
    before = len(pipeline.retriever.keyword_index(kb))
    (folder / "b.md").write_text("Der Fehlercode Q-7731 bedeutet: Sensor defekt.", encoding="utf-8")
    pipeline.ingest([folder], kb)
    assert len(pipeline.retriever.keyword_index(kb)) == before + 1
    hits = pipeline.retrieve("Was bedeutet Fehlercode Q-7731?", collection=kb, top_k=1)
    assert hits[0].chunk.file_name == "b.md"
    pipeline.delete_document(str((folder / "b.md").resolve()), kb)
    assert len(pipeline.retriever.keyword_index(kb)) == before
