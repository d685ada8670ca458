"""One shape for a query: QueryOptions, resolved against the settings once."""

from __future__ import annotations

import inspect
import typing

import pytest

from rag import Pipeline, QueryError, QueryOptions
from rag.config import load_settings
from rag.options import QueryFields

QUERY_METHODS = [
    "retrieve", "retrieve_many", "aretrieve", "stream", "ask", "astream", "aask", "chat_stream", "chat",
    "achat_stream", "achat",
]  # fmt: skip


def test_the_keyword_form_names_exactly_the_options():
    assert set(typing.get_type_hints(QueryFields)) == set(QueryOptions.model_fields)


@pytest.mark.parametrize("name", QUERY_METHODS)
def test_no_query_method_declares_an_option_of_its_own(name):
    """Adding an option touches QueryOptions (and the front ends that show it), not six signatures."""
    params = inspect.signature(getattr(Pipeline, name)).parameters
    assert not set(params) & set(QueryOptions.model_fields), f"Pipeline.{name} re-declares an option"
    assert "options" in params and params["options"].default is None
    assert [p.kind for p in params.values()][-1] is inspect.Parameter.VAR_KEYWORD
    assert "Unpack[QueryFields]" in str(params[list(params)[-1]].annotation)


def test_resolve_fills_in_the_settings_once():
    settings = load_settings(
        retrieval={"top_k": 4, "candidates": 30}, reranker={"kind": "none"}, store={"collection": "kbase"},
        generation={"answer_language": "de"},
    )  # fmt: skip
    q = QueryOptions().resolve(settings)
    assert (q.collection, q.top_k, q.reranker, q.language, q.candidates, q.where) == ("kbase", 4, "none", "de", 30, None)
    q = QueryOptions(collection="other", top_k=50, reranker="llm-listwise", language="ja").resolve(settings)
    assert (q.collection, q.top_k, q.reranker, q.language, q.candidates) == ("other", 50, "llm-listwise", "ja", 50)


def test_of_merges_keywords_over_options_and_keeps_the_rest():
    base = QueryOptions(collection="kbase", top_k=3)
    assert QueryOptions.of(base) is base
    merged = QueryOptions.of(base, top_k=5, where={"language": "th"})
    assert (merged.collection, merged.top_k, merged.where) == ("kbase", 5, {"language": "th"})
    assert QueryOptions.of(base, top_k=None) is base  # None means "not given"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_k": 0}, "top_k must be a whole number from 1 to 200, got 0"),
        ({"top_k": 5000}, "top_k must be a whole number from 1 to 200, got 5000"),
        ({"reranker": "bm25"}, "reranker must be none | cross-encoder | llm-listwise, got 'bm25'"),
        ({"language": "Deutsch"}, "language must be an ISO 639-1 code such as 'de' or 'zh', got 'Deutsch'"),
        ({"collection": "a/b"}, "collection name 'a/b' is not valid"),
        ({"topk": 3}, "unknown query option 'topk'; the options are collection, top_k, where, reranker, language"),
    ],
)
def test_a_bad_option_is_a_query_error_that_says_what_is_allowed(fields, message):
    with pytest.raises(QueryError) as e:
        QueryOptions.of(**fields)
    assert message in str(e.value)


def test_options_are_frozen():
    with pytest.raises(Exception, match="frozen"):
        QueryOptions(top_k=3).top_k = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "call",
    [
        lambda rag: rag.ingest([], "hb"), lambda rag: rag.documents("hb"), lambda rag: rag.delete_document("/x", "hb"),
        lambda rag: rag.get_chunk("id", "hb"), lambda rag: rag.create_collection("hb"),
        lambda rag: rag.delete_collection("hb"), lambda rag: rag.retrieve("q", collection="hb"),
    ],
)
def test_a_bad_collection_name_is_a_query_error_before_the_store_opens(call, tmp_path):
    rag = Pipeline(load_settings(store={"path": tmp_path / "never"}))
    with pytest.raises(QueryError, match="collection name 'hb' is not valid"):
        call(rag)
    assert not (tmp_path / "never").exists()
