"""The LangChain integration (rag.integrations.langchain) over a real pipeline: the sample
handbook (8 languages) in an embedded store, the real embedding model, no LLM. LangChain's own
standard tests for retrievers and embeddings, then ours: options as fields and invoke kwargs,
Document metadata and spans, errors, cross-lingual hits, the tools' content and artifact, and an
agent loop driven by a scripted chat model through the real tools."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from pydantic import Field, ValidationError

from rag import Answer, Citation, CollectionNotFoundError, Pipeline, QueryError
from rag.integrations.langchain import (
    BabelRAGEmbeddings,
    BabelRAGRetriever,
    SearchFirst,
    ask_tool,
    knowledge_base_tools,
    search_tool,
)
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.model]

HANDBOOK = EXAMPLES / "handbook"
QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}
SUBSET = ("de_remote_work.md", "ja_security_policy.md")  # the second collection: two files only


@pytest.fixture(scope="module")
def kb(tmp_path_factory, model_settings, embedder, language):
    """A pipeline over collections "handbook" (all 8 files) and "subset" (2 files)."""
    root = tmp_path_factory.mktemp("langchain")
    store = model_settings.store.model_copy(update={"path": root / "chroma", "index_dir": root / "index", "url": None})
    with Pipeline(model_settings.model_copy(update={"store": store}), embedder=embedder, language=language) as rag:
        assert rag.ingest([HANDBOOK], "handbook").ok
        assert rag.ingest([HANDBOOK / name for name in SUBSET], "subset").ok
        yield rag


def mark_async_standard_tests(cls: type) -> type:
    """This project runs pytest-asyncio in strict mode: mark the library's async standard tests
    (the function objects themselves, so that they stay the library's: its no-override check)."""
    for name in dir(cls):
        test = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(test):
            pytest.mark.asyncio(test)
    return cls


# -- LangChain's standard tests -----------------------------------------------------------------


@mark_async_standard_tests
class TestStandardRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _pipeline(self, kb):
        self.pipeline = kb

    @property
    def retriever_constructor(self) -> type[BabelRAGRetriever]:
        return BabelRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "collection": "handbook"}

    @property
    def retriever_query_example(self) -> str:
        return "Wie viele Urlaubstage bekommt eine Vollzeitkraft?"


@mark_async_standard_tests
class TestStandardEmbeddings(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _pipeline(self, kb):
        self.pipeline = kb

    @property
    def embeddings_class(self) -> type[BabelRAGEmbeddings]:
        return BabelRAGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline}


# -- the retriever ---------------------------------------------------------------------------------


def files(docs: list[Document]) -> list[str]:
    return [d.metadata["file_name"] for d in docs]


def test_options_as_fields_and_as_invoke_kwargs(kb):
    retriever = BabelRAGRetriever(pipeline=kb, collection="handbook", k=2, where={"language": "ja"})
    docs = retriever.invoke("certificate")
    assert len(docs) == 2 and set(files(docs)) == {"ja_security_policy.md"}
    # a kwarg is for this call only, over the fields
    docs = retriever.invoke("certificate", k=3, where={"language": "de"})
    assert len(docs) == 3 and set(files(docs)) == {"de_remote_work.md"}
    docs = retriever.invoke("certificate", collection="subset", where={"file_name": "ja_security_policy.md"}, k=1)
    assert files(docs) == ["ja_security_policy.md"] and docs[0].metadata["collection"] == "subset"
    assert files(retriever.invoke("certificate")) == ["ja_security_policy.md"] * 2  # the fields again
    # no fields: the pipeline's defaults (retrieval.top_k of configs/cpu-small.yaml)
    docs = BabelRAGRetriever(pipeline=kb, collection="subset").invoke("Homeoffice")
    assert len(docs) == kb.settings.retrieval.top_k and set(files(docs)) <= set(SUBSET)


@pytest.mark.asyncio
async def test_ainvoke_awaits_aretrieve_with_the_same_options(kb, monkeypatch):
    retriever = BabelRAGRetriever(pipeline=kb, collection="handbook", k=3)
    expected = retriever.invoke("食事手当", where={"language": "ar"}, k=2)
    calls = []
    aretrieve = kb.aretrieve

    async def spy(query, options=None, **fields):
        calls.append(options)
        return await aretrieve(query, options, **fields)

    def no_sync(*args, **kwargs):
        raise AssertionError("ainvoke must not run the sync retrieve (in an executor or otherwise)")

    monkeypatch.setattr(kb, "aretrieve", spy)
    monkeypatch.setattr(kb, "retrieve", no_sync)
    docs = await retriever.ainvoke("食事手当", where={"language": "ar"}, k=2)
    assert [d.id for d in docs] == [d.id for d in expected] and set(files(docs)) == {"ar_travel_expenses.md"}
    assert calls[0].top_k == 2 and calls[0].where == {"language": "ar"} and calls[0].collection == "handbook"
    docs = await retriever.ainvoke("certificate", collection="subset")
    assert len(docs) == 3 and set(files(docs)) <= set(SUBSET)


def test_documents_carry_source_span_language_scores_and_id(kb):
    docs = BabelRAGRetriever(pipeline=kb, collection="handbook", k=12).invoke("Nordlicht Robotics")
    assert len(docs) == 12
    keys = {"source", "file_name", "page", "start", "end", "language", "score", "retrieval_score", "chunk_id"}
    keys |= {"title", "section", "collection", "chunk_index"}
    for doc in docs:
        meta = doc.metadata
        assert keys <= set(meta), keys - set(meta)
        assert doc.id == meta["chunk_id"]
        assert Path(meta["source"]).name == meta["file_name"] and meta["collection"] == "handbook"
        text = Path(meta["source"]).read_text(encoding="utf-8")
        assert text[meta["start"] : meta["end"]] == doc.page_content  # the span points at the source text
        assert meta["language"] == meta["file_name"][:2]  # the handbook's files are named by language
        assert isinstance(meta["score"], float) and isinstance(meta["retrieval_score"], float)
        assert meta["page"] is None and meta["title"]  # Markdown: no pages, a "# " title
        assert kb.get_chunk(doc.id, "handbook").text == doc.page_content
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("lang", ["de", "ja", "ar"])
def test_cross_lingual_query_finds_the_file_in_another_language(kb, lang):
    """Ranks of the answer's file with the default first stage: de 2, ja 1, ar 2 (see
    tests/integration/test_ingest_and_search.py)."""
    q = QUESTIONS[lang]
    docs = BabelRAGRetriever(pipeline=kb, collection="handbook", k=3).invoke(q["question"])
    assert q["expected_file"] in files(docs), files(docs)
    assert q["expected_file"][:2] != lang


@pytest.mark.asyncio
async def test_unknown_collection_is_rags_error_with_its_message(kb):
    retriever = BabelRAGRetriever(pipeline=kb, collection="nope")
    with pytest.raises(
        CollectionNotFoundError, match=r"collection 'nope' does not exist.*babelrag ingest PATH -c nope"
    ):
        retriever.invoke("Urlaub")
    with pytest.raises(CollectionNotFoundError, match="collection 'nope' does not exist"):
        await retriever.ainvoke("Urlaub")
    with pytest.raises(CollectionNotFoundError, match="collection 'gone' does not exist"):
        BabelRAGRetriever(pipeline=kb).invoke("Urlaub", collection="gone")
    # an agent's tool raises it too: a configuration error, not something for the model to read
    search = search_tool(kb, collection="nope")
    with pytest.raises(CollectionNotFoundError):
        search.invoke(tool_call(search, query="Urlaub"))


def test_bad_options_are_query_errors(kb):
    with pytest.raises(ValidationError):
        BabelRAGRetriever(pipeline=kb, k=0)
    with pytest.raises(QueryError, match="reranker must be"):
        BabelRAGRetriever(pipeline=kb, reranker="magic")  # at construction, not at the first query
    retriever = BabelRAGRetriever(pipeline=kb, collection="handbook")
    with pytest.raises(QueryError, match="top_k must be a whole number from 1 to 200"):
        retriever.invoke("Urlaub", k=1000)
    with pytest.raises(QueryError, match="unknown retriever option.*'top_n'.*the options are k, where, collection"):
        retriever.invoke("Urlaub", top_n=3)
    with pytest.raises(QueryError, match="the question is empty"):
        retriever.invoke("  ")


# -- the embeddings adapter ------------------------------------------------------------------------


def test_embeddings_apply_the_models_query_and_document_prompts(kb):
    embeddings = BabelRAGEmbeddings(kb)
    text = "Wie viele Urlaubstage bekommt eine Vollzeitkraft?"
    assert kb.settings.embedding.query_prompt == "query: "  # multilingual-e5: prompts are part of the model
    query = np.array(embeddings.embed_query(text))
    document = np.array(embeddings.embed_documents([text])[0])
    assert np.allclose(query, kb.embedder.embed_queries([text])[0], atol=1e-6)
    assert np.allclose(document, kb.embedder.embed_documents([text])[0], atol=1e-6)
    assert float(query @ document) < 0.99  # "query: " vs "passage: ": not the same vector
    assert abs(float(np.linalg.norm(query)) - 1) < 1e-2  # unit length (bf16 on a CPU that has it)


def test_embeddings_are_cross_lingual(kb):
    embeddings = BabelRAGEmbeddings(kb)
    query = np.array(embeddings.embed_query("Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?"))
    same_ja, other_ja, same_zh, other_zh = np.array(
        embeddings.embed_documents(
            [
                "リモートアクセス用の電子証明書は90日ごとに更新しなければなりません。",
                "社員食堂では毎週金曜日に特別なカレーが出ます。",
                "远程访问公司网络的电子证书必须每90天更新一次。",
                "新员工在前六十天内由其他部门的导师陪伴。",
            ]
        )
    )
    assert query @ same_ja > query @ other_ja
    assert query @ same_zh > query @ other_zh


# -- the tools ---------------------------------------------------------------------------------------


def tool_call(tool, **args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call-1", "name": tool.name, "args": args}


def test_tools_say_the_knowledge_base_is_multilingual(kb):
    search, ask = knowledge_base_tools(kb, collection="handbook")
    assert (search.name, ask.name) == ("search_knowledge_base", "ask_knowledge_base")
    for tool in (search, ask):
        assert "multilingual" in tool.description and "any language" in tool.description
        assert tool.response_format == "content_and_artifact"
        assert tool.coroutine is not None  # ainvoke awaits the pipeline's async methods
    assert set(search.args) == {"query"} and set(ask.args) == {"question"}


def test_search_tool_content_and_artifact(kb):
    search = search_tool(kb, collection="handbook", k=3)
    q = QUESTIONS["ja"]
    message = search.invoke(tool_call(search, query=q["question"]))
    assert isinstance(message, ToolMessage) and message.tool_call_id == "call-1" and message.status == "success"
    hits = message.artifact["hits"]
    assert (
        len(hits) == 3 and message.artifact["collection"] == "handbook" and message.artifact["query"] == q["question"]
    )
    assert hits[0]["file_name"] == q["expected_file"]  # ja -> ar ranks 1st
    for i, hit in enumerate(hits, 1):
        assert f"[{i}] {hit['file_name']}" in message.content  # numbered passages, with their file
        assert hit["text"].strip() in message.content
        text = Path(hit["source"]).read_text(encoding="utf-8")
        assert text[hit["start"] : hit["end"]] == hit["text"]
        assert {"chunk_id", "page", "language", "score"} <= set(hit)
    assert "language: ar" in message.content


@pytest.mark.asyncio
async def test_search_tool_async_awaits_aretrieve(kb, monkeypatch):
    search = search_tool(kb, collection="subset", where={"language": "de"}, k=2)
    monkeypatch.setattr(kb, "retrieve", lambda *a, **k: pytest.fail("the async tool ran the sync retrieve"))
    message = await search.ainvoke(tool_call(search, query="Homeoffice Pauschale"))
    assert [h["file_name"] for h in message.artifact["hits"]] == ["de_remote_work.md"] * 2


def test_search_tool_gives_a_bad_query_back_to_the_model(kb):
    search = search_tool(kb, collection="handbook")
    message = search.invoke(tool_call(search, query="   "))
    assert message.status == "error" and "the question is empty" in message.content


def canned_answer(kb: Pipeline, question: str) -> Answer:
    """An answer as Pipeline.ask returns it, on real hits (the LLM is the e2e tests' part)."""
    hits = kb.retrieve(question, collection="handbook", top_k=3, where={"language": "ja"})
    citations = [Citation(number=i, hit=h, cited=i == 1) for i, h in enumerate(hits, 1)]
    return Answer(
        question=question, text="Die Zertifikate werden alle 90 Tage erneuert [1].", language="de",
        question_language="de", citations=citations, target_language="de",
    )  # fmt: skip


@pytest.mark.asyncio
async def test_ask_tool_content_and_artifact(kb, monkeypatch):
    question = QUESTIONS["de"]["question"]
    answer = canned_answer(kb, question)
    asked = []

    def ask(q, options=None, **fields):
        asked.append(("sync", q, options))
        return answer

    async def aask(q, options=None, **fields):
        asked.append(("async", q, options))
        return answer

    monkeypatch.setattr(kb, "ask", ask)
    monkeypatch.setattr(kb, "aask", aask)
    tool = ask_tool(kb, collection="handbook", k=3, language="de")
    message = tool.invoke(tool_call(tool, question=question))
    again = await tool.ainvoke(tool_call(tool, question=question))
    assert [(how, q) for how, q, _ in asked] == [("sync", question), ("async", question)]
    assert asked[0][2].collection == "handbook" and asked[0][2].top_k == 3 and asked[0][2].language == "de"
    assert again.content == message.content and again.artifact == message.artifact
    first = answer.citations[0]
    answer_text, sources = message.content.split("\n\nSources:\n")
    assert answer_text == answer.text  # the only cited source is listed, with where it is
    assert sources.splitlines() == [f"[1] ja_security_policy.md · {first.chunk.section} · language: ja"]
    artifact = message.artifact
    assert artifact["answer"] == answer.text and artifact["found"] and artifact["language"] == "de"
    assert [c["number"] for c in artifact["citations"]] == [1, 2, 3]
    assert [c["cited"] for c in artifact["citations"]] == [True, False, False]
    top = artifact["citations"][0]
    assert top["file_name"] == "ja_security_policy.md" and top["chunk_id"] == first.chunk.id
    assert top["span"] == [first.chunk.start, first.chunk.end] and top["text"] == first.chunk.text
    assert Path(top["source"]).read_text(encoding="utf-8")[slice(*top["span"])] == top["text"]


# -- an agent loop: a scripted chat model, the real tools ---------------------------------------------


class ScriptedChatModel(GenericFakeChatModel):
    """Replies with the scripted messages in turn; records what each call was bound with."""

    bound: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        self.bound.append({"tools": [t.name for t in tools], "tool_choice": tool_choice})
        return self


def scripted(query: str, final: str) -> ScriptedChatModel:
    call = {"name": "search_knowledge_base", "args": {"query": query}, "id": "call-1", "type": "tool_call"}
    return ScriptedChatModel(messages=iter([AIMessage(content="", tool_calls=[call]), AIMessage(content=final)]))


def agent_turns(result: dict[str, Any]) -> tuple[list[AIMessage], list[ToolMessage]]:
    messages = result["messages"]
    return [m for m in messages if isinstance(m, AIMessage)], [m for m in messages if isinstance(m, ToolMessage)]


def test_agent_loop_runs_the_real_search_tool(kb):
    q = QUESTIONS["de"]
    model = scripted(q["question"], "Alle 90 Tage [1].")
    agent = create_agent(model, [search_tool(kb, collection="handbook", k=3)], middleware=[SearchFirst()])
    result = agent.invoke({"messages": [HumanMessage(q["question"])]})
    ais, tools = agent_turns(result)
    assert len(ais) == 2 and len(tools) == 1 and ais[-1].content == "Alle 90 Tage [1]."
    assert tools[0].name == "search_knowledge_base" and tools[0].tool_call_id == "call-1"
    assert q["expected_file"] in [h["file_name"] for h in tools[0].artifact["hits"]]  # de -> ja ranks 2nd
    assert q["expected_file"] in tools[0].content  # what the model read
    # SearchFirst: the first call after the user's message must call the search tool, the next one is free
    assert [b["tool_choice"] for b in model.bound] == ["search_knowledge_base", None]
    assert model.bound[0]["tools"] == ["search_knowledge_base"]


@pytest.mark.asyncio
async def test_agent_loop_async_uses_the_async_tool(kb, monkeypatch):
    q = QUESTIONS["ar"]
    monkeypatch.setattr(kb, "retrieve", lambda *a, **k: pytest.fail("the async agent ran the sync retrieve"))
    agent = create_agent(scripted(q["question"], "٢٦ يوماً [1]."), knowledge_base_tools(kb, collection="handbook"))
    result = await agent.ainvoke({"messages": [HumanMessage(q["question"])]})
    ais, tools = agent_turns(result)
    assert len(tools) == 1 and ais[-1].content == "٢٦ يوماً [1]."
    assert q["expected_file"] in [h["file_name"] for h in tools[0].artifact["hits"]]  # ar -> hi ranks 2nd
