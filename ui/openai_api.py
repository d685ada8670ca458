"""The OpenAI-compatible API: BabelRAG's knowledge bases as "models" any OpenAI client can chat with.

    GET  /v1/models             the knowledge bases (collections), one model each, id = the collection name
    POST /v1/chat/completions   ``model`` names the knowledge base; the answer cites its sources as [n]

Open WebUI, LibreChat, LangChain's ``ChatOpenAI`` or the ``openai`` package point their base URL
at ``http://host:7860/v1`` and their API key at ``server.token`` (sent as ``Authorization: Bearer``,
checked like the REST API's). A thin layer over ``rag.Pipeline``: nothing here retrieves or prompts.
One model id per knowledge base, its collection name, and no ``babelrag/<name>`` aliases: a model
picker (Open WebUI's) would list each twice, and a router that prefixes a provider (LiteLLM's
``openai/handbook``) strips its own prefix before it calls us.

The request, mapped onto BabelRAG:

* ``messages``: the last ``user`` message is the question; the ``user``/``assistant`` messages
  before it are the conversation (``Pipeline.achat_stream``: a follow-up is rewritten to stand
  alone), none means a single question (``Pipeline.astream``). ``system``/``developer`` messages
  are ignored: BabelRAG writes its own prompt (the numbered sources, the citation rule, the answer
  language), and a client's generic "You are a helpful assistant" would only weaken it. ``tool``
  messages and tool calls are ignored too. Content is text, or text parts; images are refused (400).
* ``top_k``, ``where``, ``reranker``, ``language`` (BabelRAG's ``QueryOptions``; the ``openai``
  client sends them with ``extra_body={...}``) choose how many sources, a metadata filter, the
  reranker and a forced answer language.
* ``temperature``, ``top_p``, ``max_tokens``, ``max_completion_tokens``, ``seed``, ``stop``,
  ``tools`` and OpenAI's other sampling parameters are accepted and ignored: the answer's
  generation settings (``llm.*``, ``generation.*``) are the server's, tuned for grounded,
  cited answers in the asker's language. ``n`` must be 1.

The response keeps OpenAI's fields standard and adds two top-level fields (as Perplexity puts
``citations`` beside ``choices``; RAGFlow puts a ``reference`` in the message):

* ``citations``: every source the LLM was shown, numbered as the ``[n]`` markers in the content:
  ``{number, cited, source, file_name, page, span: [start, end], text, chunk_id, language,
  truncated}`` (``span``: characters of the source file's text the LLM saw, ``text`` those characters).
* ``babelrag``: ``{found, language, question_language, target_language, standalone_question}``
  (``found`` false: the knowledge base does not hold the answer, and the content says so).

With ``stream: true`` they come on the last chunk, the one with ``finish_reason: "stop"``, whose
``babelrag`` also has ``content``: the finished answer text. A stream cannot take back what it
sent; when BabelRAG replaces the text shown so far (the model found nothing after all, or its
answer was translated into the asker's language) the stream sends ``RESET_SEPARATOR`` with the
reason, then the replacement, and ``babelrag.replaced`` is true: the answer is what follows the
last separator, and ``babelrag.content``. ``stream_options: {"include_usage": true}`` adds
OpenAI's usage chunk (empty ``choices``) before ``data: [DONE]``. A client that disconnects stops
the LLM. ``usage`` counts every LLM call made for the answer (a follow-up rewrite, a language retry).

Errors have OpenAI's shape (``ui.errors``): 400 a bad request, 401 no or a wrong token, 404 a
model that is no knowledge base (the message names those there are), 503 the LLM server or the
store unreachable. An error after a stream started comes as one ``data: {"error": ...}`` event,
which the ``openai`` client raises as ``openai.APIError``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag import Answer, AnswerEvent, AnswerStream, BabelRAGError, Citation, Pipeline, QueryOptions
from ui.errors import error_body, error_response, status_of, validation_message

OWNER = "babelrag"
RESET_SEPARATOR = "\n\n---\n"  # then "*<why the text above was replaced>*\n\n" and the replacement
T = TypeVar("T")


# -- the request ---------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request as BabelRAG reads it; parameters not named here are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, description="The knowledge base (collection) to answer from.")
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: Literal[1] = 1
    # BabelRAG's query options (QueryOptions validates them)
    top_k: int | None = None
    where: dict[str, Any] | None = None
    reranker: str | None = None
    language: str | None = None


class OpenAIError(Exception):
    """An error answered in OpenAI's shape (``ui.errors.error_body``)."""

    def __init__(
        self, status: int, message: str, type: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type, headers

    @classmethod
    def of(cls, error: BabelRAGError) -> OpenAIError:
        return cls(status_of(error), str(error), type(error).__name__)


# -- the routes ----------------------------------------------------------------------------------


def install(app: FastAPI, pipeline: Pipeline, authorize: Callable[[Request], None]) -> None:
    """Add /v1/models and /v1/chat/completions over ``pipeline`` to ``app``, behind ``authorize``
    (the server's token check, a FastAPI dependency raising HTTPException)."""

    def guard(request: Request) -> None:  # the token check's refusal, in OpenAI's shape
        try:
            authorize(request)
        except HTTPException as e:
            raise OpenAIError(e.status_code, str(e.detail), headers=e.headers) from None

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(guard)], tags=["OpenAI-compatible"])

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        """The knowledge bases, as OpenAI model objects (``created``: 0, BabelRAG keeps no creation time)."""
        collections = await _call(asyncio.to_thread(pipeline.collections))
        return {"object": "list", "data": [_model_json(c.name, c.count, c.documents) for c in collections]}

    @v1.post("/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        """Answer the last user message from the knowledge base ``model`` names (see the module's doc)."""
        body = await _read(request)
        history, question = _conversation(body.messages)
        await _require_collection(pipeline, body.model)  # first: "openai/gpt-4o" is a 404, not a bad name
        options = _call_sync(
            lambda: QueryOptions.of(
                collection=body.model, top_k=body.top_k, where=body.where, reranker=body.reranker,
                language=body.language,
            )
        )  # fmt: skip
        start = pipeline.achat_stream(history, question, options) if history else pipeline.astream(question, options)
        stream = await _call(_unless_disconnected(request, start, None))
        completion = _Completion(body.model)
        if not body.stream:
            answer = await _call(_unless_disconnected(request, stream.aanswer(), stream))
            return JSONResponse(completion.whole(answer))
        events = stream.aevents()
        # the first event before the response starts: an LLM server that is down is a 503, not a broken stream
        first = await _call(_unless_disconnected(request, anext(events, None), stream))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            completion.chunks(stream, events, first, include_usage=include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(v1)
    app.add_exception_handler(OpenAIError, _on_error)


async def _on_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OpenAIError)
    return error_response(error.status, error.message, error.type, headers=error.headers)


async def _read(request: Request) -> ChatCompletionRequest:
    try:
        raw = await request.json()
    except ValueError:
        raise OpenAIError(400, "the body is not JSON; send a chat request such as "
                          '{"model": "handbook", "messages": [{"role": "user", "content": "..."}]}') from None  # fmt: skip
    try:
        return ChatCompletionRequest.model_validate(raw)
    except ValidationError as e:
        raise OpenAIError(400, validation_message(RequestValidationError(e.errors()))) from None


def _conversation(messages: list[_Message]) -> tuple[list[dict[str, str]], str]:
    """The earlier user/assistant turns and the last user message (the question)."""
    turns = []
    for i, m in enumerate(messages):
        if m.role in ("user", "assistant"):
            text = _text(m.content, i)
            if text.strip():
                turns.append({"role": m.role, "content": text})
    last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
    if last is None:
        roles = ", ".join(m.role for m in messages)
        raise OpenAIError(400, f"no user message with text among the messages (roles: {roles}); the last "
                          "user message is the question to answer from the knowledge base")  # fmt: skip
    return turns[:last], turns[last]["content"]


def _text(content: str | list[_Part] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    other = [p.type for p in content if p.type != "text"]
    if other:
        raise OpenAIError(400, f"messages[{index}] has a {other[0]!r} part; BabelRAG answers text only: "
                          "send the content as a string or as text parts")  # fmt: skip
    return "\n".join(p.text or "" for p in content)


async def _require_collection(pipeline: Pipeline, name: str) -> None:
    known = [c.name for c in await _call(asyncio.to_thread(pipeline.collections))]
    if name not in known:
        there = ", ".join(sorted(known)) or "none yet: ingest files first (babelrag ingest DIR -c NAME)"
        raise OpenAIError(
            404,
            f"model {name!r} is not a knowledge base of this BabelRAG server; the models are its knowledge "
            f"bases (GET /v1/models): {there}",
            "model_not_found",
        )


async def _call(work: Awaitable[T]) -> T:
    try:
        return await work
    except BabelRAGError as e:
        raise OpenAIError.of(e) from None


def _call_sync(work: Callable[[], T]) -> T:
    try:
        return work()
    except BabelRAGError as e:
        raise OpenAIError.of(e) from None


async def _unless_disconnected(request: Request, work: Awaitable[T], stream: AnswerStream | None) -> T:
    """``work``'s result; if the client goes away first, the LLM is stopped and the request ends."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        if stream is not None:
            stream.cancel()
        task.cancel()
        raise OpenAIError(499, "the client closed the connection before the answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- the response --------------------------------------------------------------------------------


class _Completion:
    """One completion's id and time, shared by its chunks."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def whole(self, answer: Answer) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
            "usage": _usage_json(answer), "citations": [_citation_json(c) for c in answer.citations],
            "babelrag": _answer_json(answer),
        }  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _sse(self._chunk([choice], **extra))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return {**head, "choices": choices, **extra}

    async def chunks(
        self, stream: AnswerStream, events: AsyncIterator[AnswerEvent], first: AnswerEvent | None, *,
        include_usage: bool,
    ) -> AsyncIterator[str]:  # fmt: skip
        finished = replaced = False
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            event = first
            while event is not None:
                if event.kind == "reset":
                    replaced = True
                    yield self.chunk({"content": f"{RESET_SEPARATOR}*{event.text}*\n\n"})
                else:
                    yield self.chunk({"content": event.text})
                event = await anext(events, None)
            answer = await stream.aanswer()
            finished = True
            about = {**_answer_json(answer), "content": answer.text, "replaced": replaced}
            citations = [_citation_json(c) for c in answer.citations]
            yield self.chunk({}, "stop", citations=citations, babelrag=about)
            if include_usage:
                yield _sse(self._chunk([], usage=_usage_json(answer)))
            yield "data: [DONE]\n\n"
        except BabelRAGError as e:
            finished = True
            yield _sse(error_body(status_of(e), str(e), type(e).__name__))
        finally:  # the client went away (the task is cancelled here), or the answer is done
            if not finished:
                stream.cancel()
            await events.aclose()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _model_json(name: str, chunks: int, documents: int | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER, "chunks": chunks, "documents": documents}


def _usage_json(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def _answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "found": answer.found, "language": answer.language, "question_language": answer.question_language,
        "target_language": answer.target_language, "standalone_question": answer.standalone_question,
    }  # fmt: skip


def _citation_json(c: Citation) -> dict[str, Any]:
    chunk = c.chunk
    text = chunk.text[: c.shown_chars] if c.shown_chars is not None else chunk.text  # what the LLM saw
    return {
        "number": c.number, "cited": c.cited, "source": c.source, "file_name": chunk.file_name, "page": c.page,
        "span": list(c.span), "text": text, "chunk_id": chunk.id, "language": chunk.language,
        "truncated": c.truncated,
    }  # fmt: skip
