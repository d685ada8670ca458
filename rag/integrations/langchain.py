"""LangChain over BabelRAG's public API: a retriever, two agent tools, an agent middleware and
an embeddings adapter.

``pip install 'babelrag[langchain]'``. Everything here calls ``rag.Pipeline`` only, so a
retriever or tool sees the same knowledge base, options and errors as the CLI and the REST API.

    >>> from rag import Pipeline
    >>> from rag.integrations.langchain import BabelRAGRetriever, knowledge_base_tools
    >>> rag = Pipeline()
    >>> docs = BabelRAGRetriever(pipeline=rag, collection="handbook", k=3).invoke("Wie viele Urlaubstage?")
    >>> search, ask = knowledge_base_tools(rag, collection="handbook")   # for create_agent(model, [search])
    >>> vectors = BabelRAGEmbeddings(rag).embed_documents(["..."])        # the model's prompts applied

``SearchFirst`` makes an agent's model call the search tool first, for models whose own tool
calls do not parse (the 0.5B CPU stand-in's: bench/agent_tools.py).

The query options are ``rag.QueryOptions``' fields: ``k`` is its ``top_k``; ``where``,
``collection``, ``reranker`` (and, for answers, ``language``) keep their names. A bad value is a
``rag.QueryError``; an unknown collection is a ``rag.CollectionNotFoundError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rag import Answer, Citation, Hit, Pipeline, QueryError, QueryOptions

__all__ = [
    "AGENT_SYSTEM_PROMPT",
    "ASK_DESCRIPTION",
    "SEARCH_DESCRIPTION",
    "BabelRAGEmbeddings",
    "BabelRAGRetriever",
    "SearchFirst",
    "ask_tool",
    "citation_dict",
    "hit_dict",
    "hit_document",
    "knowledge_base_tools",
    "search_tool",
]

# Invoke keyword arguments LangChain itself may leave in ``kwargs`` (BaseRetriever.invoke reads it).
_LANGCHAIN_KWARGS = frozenset({"verbose"})
_RETRIEVER_OPTIONS = ("k", "where", "collection", "reranker")


class BabelRAGRetriever(BaseRetriever):
    """A BabelRAG collection as a LangChain retriever: ``Pipeline.retrieve`` (``aretrieve`` for
    ``ainvoke``), one ``Document`` per hit, best first.

    Each option is a field (the default for every call) and an ``invoke``/``ainvoke`` keyword
    argument (this call only): ``retriever.invoke("Urlaub?", k=2, where={"language": "hi"})``.
    ``None`` means the pipeline's configured default. ``Document.metadata`` holds where the text
    is (source, file_name, page, start/end: its character span in the source's text), its
    language, the scores and the chunk's id (also ``Document.id``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Pipeline = Field(description="The BabelRAG pipeline to retrieve through.")
    k: int | None = Field(None, ge=1, description="How many documents; default retrieval.top_k.")
    where: dict[str, Any] | None = Field(
        None, description='Filter on chunk metadata, e.g. {"language": "de"} or {"file_name": "de_remote_work.md"}.'
    )
    collection: str | None = Field(None, description="Knowledge base (collection); default store.collection.")
    reranker: str | None = Field(None, description="none | cross-encoder | llm-listwise; default reranker.kind.")

    @model_validator(mode="after")
    def _valid_options(self) -> BabelRAGRetriever:
        self.options()  # a bad field is a QueryError now, not at the first query
        return self

    def options(
        self, *, k: int | None = None, where: dict[str, Any] | None = None, collection: str | None = None,
        reranker: str | None = None, **unknown: Any,
    ) -> QueryOptions:  # fmt: skip
        """The ``QueryOptions`` of one call: its arguments over this retriever's fields."""
        unknown = {name: v for name, v in unknown.items() if name not in _LANGCHAIN_KWARGS}
        if unknown:
            raise QueryError(
                f"unknown retriever option(s) {', '.join(map(repr, unknown))}; the options are "
                f"{', '.join(_RETRIEVER_OPTIONS)}"
            )
        base = QueryOptions.of(top_k=self.k, where=self.where, collection=self.collection, reranker=self.reranker)
        return QueryOptions.of(base, top_k=k, where=where, collection=collection, reranker=reranker)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None,
        where: dict[str, Any] | None = None, collection: str | None = None, reranker: str | None = None,
        **unknown: Any,
    ) -> list[Document]:  # fmt: skip
        options = self.options(k=k, where=where, collection=collection, reranker=reranker, **unknown)
        return self._documents(self.pipeline.retrieve(query, options), options)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None,
        where: dict[str, Any] | None = None, collection: str | None = None, reranker: str | None = None,
        **unknown: Any,
    ) -> list[Document]:  # fmt: skip
        options = self.options(k=k, where=where, collection=collection, reranker=reranker, **unknown)
        return self._documents(await self.pipeline.aretrieve(query, options), options)

    def _documents(self, hits: Sequence[Hit], options: QueryOptions) -> list[Document]:
        collection = options.resolve(self.pipeline.settings).collection
        return [hit_document(h, collection) for h in hits]


def hit_document(hit: Hit, collection: str) -> Document:
    """One hit as a LangChain ``Document``: the chunk's text, its place and scores as metadata."""
    meta = hit_dict(hit, collection)
    text = meta.pop("text")
    return Document(page_content=text, metadata=meta, id=hit.chunk.id)


def hit_dict(hit: Hit, collection: str | None = None) -> dict[str, Any]:
    """A hit as plain data (JSON-ready): text, source, span, language, scores, chunk id."""
    c = hit.chunk
    return {
        "text": c.text,
        "source": c.source,
        "file_name": c.file_name,
        "page": c.page,
        "start": c.start,  # c.text == the source document's text[start:end]
        "end": c.end,
        "language": c.language,
        "score": hit.score,  # the last stage's (the reranker's, else the first stage's)
        "retrieval_score": hit.retrieval_score,
        "chunk_id": c.id,
        "chunk_index": c.index,
        "title": c.title,
        "section": c.section,
        "collection": collection,
    }


def citation_dict(citation: Citation) -> dict[str, Any]:
    """An answer's source ``[number]`` as plain data; ``text`` and ``span`` are what the LLM was shown."""
    c = citation.chunk
    start, end = citation.span
    return {
        "number": citation.number,
        "cited": citation.cited,
        "source": c.source,
        "file_name": c.file_name,
        "page": c.page,
        "span": [start, end],
        "text": c.text[: end - c.start],
        "language": c.language,
        "score": citation.hit.score,
        "chunk_id": c.id,
        "truncated": citation.truncated,
    }


# -- tools -------------------------------------------------------------------------------------

SEARCH_DESCRIPTION = (
    "Search the company knowledge base for passages relevant to a question. The knowledge base is "
    "multilingual (its documents are in many languages) and the search is cross-lingual: write the "
    "query in any language, e.g. the user's own; it finds documents in other languages too. "
    "Returns numbered passages with their file name and page."
)
ASK_DESCRIPTION = (
    "Answer a question from the company knowledge base, with numbered citations [n] and the list of "
    "sources. The knowledge base is multilingual: ask in any language; the answer comes in the "
    "question's language, whatever language the sources are in."
)


# A system prompt for an agent over the search tool (examples/langchain_agent.py, the e2e test).
AGENT_SYSTEM_PROMPT = (
    "You answer questions about the company using the passages that the search_knowledge_base tool "
    "returns. Write the answer in the language of the user's question, in one to three sentences, and "
    "cite the passages you use by number, like [1]."
)


# The argument descriptions are what a small model copies: "What to look for, ..." came back as the
# query itself in 2 of 16 forced calls of Qwen2.5-0.5B; this wording gave the question verbatim in
# 11 to 14 of 16 and never itself (bench/agent_tools.py).
class SearchInput(BaseModel):
    query: str = Field(description="The user's question, in the user's language.")


class AskInput(BaseModel):
    question: str = Field(description="The user's question, in the user's language.")


def search_tool(
    pipeline: Pipeline, *, collection: str | None = None, k: int | None = None, where: dict[str, Any] | None = None,
    reranker: str | None = None, name: str = "search_knowledge_base", description: str = SEARCH_DESCRIPTION,
) -> BaseTool:  # fmt: skip
    """``search_knowledge_base(query)``: content = the numbered passages the model reads; artifact =
    ``{"collection", "query", "hits": [hit_dict, ...]}`` for the application (sources, spans, ids)."""
    options = QueryOptions.of(collection=collection, top_k=k, where=where, reranker=reranker)
    kb = options.resolve(pipeline.settings).collection

    def result(query: str, hits: list[Hit]) -> tuple[str, dict[str, Any]]:
        return _passages(kb, hits), {"collection": kb, "query": query, "hits": [hit_dict(h, kb) for h in hits]}

    def search(query: str) -> tuple[str, dict[str, Any]]:
        with _model_errors():
            return result(query, pipeline.retrieve(query, options))

    async def asearch(query: str) -> tuple[str, dict[str, Any]]:
        with _model_errors():
            return result(query, await pipeline.aretrieve(query, options))

    return StructuredTool.from_function(
        search, coroutine=asearch, name=name, description=description, args_schema=SearchInput,
        response_format="content_and_artifact", handle_tool_error=True,
    )  # fmt: skip


def ask_tool(
    pipeline: Pipeline, *, collection: str | None = None, k: int | None = None, where: dict[str, Any] | None = None,
    reranker: str | None = None, language: str | None = None, name: str = "ask_knowledge_base",
    description: str = ASK_DESCRIPTION,
) -> BaseTool:  # fmt: skip
    """``ask_knowledge_base(question)``: BabelRAG's own answer (``Pipeline.ask``, ``aask``).
    Content = the answer with its [n] markers and the sources; artifact = ``{"answer", "found",
    "language", "question_language", "citations": [citation_dict, ...]}``."""
    options = QueryOptions.of(collection=collection, top_k=k, where=where, reranker=reranker, language=language)

    def ask(question: str) -> tuple[str, dict[str, Any]]:
        with _model_errors():
            return _answer(pipeline.ask(question, options))

    async def aask(question: str) -> tuple[str, dict[str, Any]]:
        with _model_errors():
            return _answer(await pipeline.aask(question, options))

    return StructuredTool.from_function(
        ask, coroutine=aask, name=name, description=description, args_schema=AskInput,
        response_format="content_and_artifact", handle_tool_error=True,
    )  # fmt: skip


def knowledge_base_tools(
    pipeline: Pipeline, *, collection: str | None = None, k: int | None = None, where: dict[str, Any] | None = None,
    reranker: str | None = None, language: str | None = None,
) -> list[BaseTool]:  # fmt: skip
    """``[search_knowledge_base, ask_knowledge_base]`` over one collection, for ``create_agent``.
    An agent whose own model writes the answer needs only the first."""
    return [
        search_tool(pipeline, collection=collection, k=k, where=where, reranker=reranker),
        ask_tool(pipeline, collection=collection, k=k, where=where, reranker=reranker, language=language),
    ]


class SearchFirst(AgentMiddleware):
    """Agent middleware: the model's first call after each user message must call the tool
    ``tool_name`` (a named ``tool_choice``: vLLM then constrains the output to that call, which
    parses whatever the model writes). After the tool's result, ``then="auto"``: the model
    chooses freely (another search, or the answer); ``then="answer"``: it is offered no tools, so
    it writes the answer.

    For models whose own tool calls do not parse (Qwen2.5-Coder-0.5B with vLLM's hermes parser:
    0 of 16 with tool_choice auto, 16 of 16 forced; bench/agent_tools.py), and for agents that
    must ground every answer in the knowledge base. Such a small model needs ``then="answer"``:
    offered the tool again, it writes another call as text instead of answering.
    ``create_agent(model, [search], middleware=[SearchFirst(then="answer")])``.
    """

    def __init__(self, tool_name: str = "search_knowledge_base", *, then: Literal["auto", "answer"] = "auto") -> None:
        super().__init__()
        if then not in ("auto", "answer"):
            raise ValueError(f"then must be 'auto' or 'answer', got {then!r}")
        self.tool_name = tool_name
        self.then = then

    def _request(self, request: ModelRequest) -> ModelRequest:
        last = request.messages[-1] if request.messages else None
        if isinstance(last, HumanMessage):
            return request.override(tool_choice=self.tool_name)
        if isinstance(last, ToolMessage) and self.then == "answer":
            return request.override(tools=[], tool_choice=None)
        return request

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Any]) -> Any:
        return handler(self._request(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]) -> Any:
        return await handler(self._request(request))


@contextmanager
def _model_errors() -> Iterator[None]:
    """A question the model got wrong (empty, too long) goes back to it as the tool's answer;
    a configuration error (unknown collection, store down) is raised to the application."""
    try:
        yield
    except QueryError as e:
        raise ToolException(str(e)) from e


def _where(hit: Hit) -> str:
    c = hit.chunk
    parts = [c.file_name]
    if c.page is not None:
        parts.append(f"page {c.page}")
    if c.section:
        parts.append(c.section)
    if c.language:
        parts.append(f"language: {c.language}")
    return " · ".join(parts)


def _passages(collection: str, hits: Sequence[Hit]) -> str:
    if not hits:
        return f"No passages found in knowledge base {collection!r}."
    blocks = [f"[{i}] {_where(h)}\n{h.chunk.text.strip()}" for i, h in enumerate(hits, 1)]
    return "\n\n".join(blocks)


def _answer(answer: Answer) -> tuple[str, dict[str, Any]]:
    lines = [answer.text]
    shown = answer.cited or (answer.citations if answer.found else [])
    if shown:
        lines += ["", "Sources:"] + [f"[{c.number}] {_where(c.hit)}" for c in shown]
    artifact = {
        "answer": answer.text,
        "found": answer.found,
        "language": answer.language,
        "question_language": answer.question_language,
        "citations": [citation_dict(c) for c in answer.citations],
    }
    return "\n".join(lines), artifact


# -- embeddings --------------------------------------------------------------------------------


class BabelRAGEmbeddings(Embeddings):
    """The pipeline's embedding model as LangChain ``Embeddings``, with its query and document
    prompts (e5: "query: " / "passage: ") applied as at ingestion and retrieval: vectors made
    here are comparable with a BabelRAG collection's. Unit length (cosine = dot product)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.pipeline.embedder.embed_documents(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.pipeline.embedder.embed_queries([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
