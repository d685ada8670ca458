import rag


def test_public_api_is_curated():
    assert set(rag.__all__) == {
        "AccessDeniedError", "Answer", "AnswerEvent", "AnswerStream", "BabelRAGError", "ChatMessage", "Chunk", "Citation",
        "CitedSentence", "CollectionInfo", "Usage",
        "CollectionNotFoundError", "ConfigError", "Document", "Evidence", "FileIssue", "GenerationError", "Hit",
        "IndexMismatchError", "IngestReport", "IngestionError", "JobProgress", "LoadedText", "Loader",
        "ManifestEntry", "ModelNotFoundError", "Pipeline", "QueryError", "Settings", "StoreError", "load_settings",
        "LeaseHeldError", "LeaseLostError", "StoreLockedError", "StoreUnavailableError", "QueryOptions", "Readiness",
        "Trace", "Metrics", "request_scope",
    }  # fmt: skip
    for name in rag.__all__:
        assert getattr(rag, name) is not None


def test_every_error_is_a_babelrag_error():
    for name in rag.__all__:
        obj = getattr(rag, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, rag.BabelRAGError)


def test_answer_cited_is_in_order_of_first_mention():
    from tests.helpers import hit

    cs = [rag.Citation(number=i, hit=hit(t, index=i), cited=True) for i, t in enumerate("abc", 1)]
    answer = rag.Answer(question="q", text="Erstens [2]. Zweitens [1].", language="de", question_language="de", citations=cs[:2])
    assert [c.number for c in answer.cited] == [2, 1]
    assert answer.top_citation.number == 2
