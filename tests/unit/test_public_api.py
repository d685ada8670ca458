import rag


def test_public_api_is_curated():
    assert set(rag.__all__) == {
        "Answer", "AnswerStream", "BabelRAGError", "Chunk", "Citation", "CollectionInfo",
        "CollectionNotFoundError", "ConfigError", "Document", "FileIssue", "GenerationError", "Hit",
        "IndexMismatchError", "IngestReport", "IngestionError", "JobProgress", "LoadedText", "Loader",
        "ManifestEntry", "ModelNotFoundError", "Pipeline", "QueryError", "Settings", "StoreError", "load_settings",
    }  # fmt: skip
    for name in rag.__all__:
        assert getattr(rag, name) is not None


def test_every_error_is_a_babelrag_error():
    for name in rag.__all__:
        obj = getattr(rag, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, rag.BabelRAGError)


def test_citations_map_markers_to_sources():
    from rag.pipeline import citations
    from tests.helpers import hit

    hits = [hit("a", index=0), hit("b", index=1), hit("c", index=2)]
    cs = citations("Erstens [2]. Zweitens [1, 2] und [7].", hits)
    assert [(c.number, c.cited) for c in cs] == [(1, True), (2, True), (3, False)]
    answer = rag.Answer(question="q", text="Erstens [2]. Zweitens [1].", language="de", question_language="de", citations=cs)
    assert [c.number for c in answer.cited] == [2, 1]
