"""The one way to the LLM server (vLLM, or any OpenAI-compatible server).

``LLMClient``: chat completions streamed (sync ``stream_chat``, async ``astream_chat`` on the
``openai`` package's async client), retries with backoff where that is safe, streams that can be
cancelled, token usage, the served model's context length and its token counts, and errors
that name the server and the fix.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rag.config import LLMConfig
from rag.errors import ConfigError, GenerationError, ModelNotFoundError
from rag.types import Usage

log = logging.getLogger(__name__)

Message = dict[str, str]


class _Truncated(Exception):
    """The stream ended without a finish reason: the server or the network cut it short."""


class _Mismatch(Exception):
    """A resumed stream wrote other text than the one already shown."""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str | None


class ChatStream:
    """The text of one chat completion, piece by piece, as the server writes it.

    Iterate once. Failures before the first piece are retried (``llm.max_retries``, backoff
    ``llm.retry_backoff_s`` doubling); a stream cut after pieces were shown is resumed at
    temperature 0 only, skipping the text already shown once the retry is seen to repeat it.
    ``close()`` (from any thread) cancels: the HTTP response is closed and iteration ends.
    ``usage`` and ``finish_reason`` are known after the last piece.
    """

    def __init__(self, client: LLMClient, messages: Sequence[Message], *, max_tokens: int | None) -> None:
        self._client = client
        self._messages = list(messages)
        self._max_tokens = max_tokens
        self._response = None
        self._lock = threading.Lock()
        self.closed = False
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.text = ""  # everything yielded so far

    def close(self) -> None:
        with self._lock:
            self.closed = True
            response, self._response = self._response, None
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001, S110 - a half-read response may raise on close; it is closed either way
                pass

    def __iter__(self) -> Iterator[str]:
        config = self._client.config
        attempt = 0
        while not self.closed:
            try:
                yield from self._one_request()
                return
            except Exception as e:
                if self.closed:
                    return
                retryable = _retryable(e)
                resumable = not self.text or config.temperature == 0
                if not retryable or not resumable or attempt >= config.max_retries:
                    raise self._client.error(e, shown=len(self.text)) from e
                attempt += 1
                wait = config.retry_backoff_s * 2 ** (attempt - 1)
                log.warning("LLM call failed (%s); retry %d of %d in %.1f s", _describe(e), attempt,
                            config.max_retries, wait)  # fmt: skip
                time.sleep(wait)

    def _one_request(self) -> Iterator[str]:
        response = self._client.client.chat.completions.create(**self._client.request(self._messages, self._max_tokens))
        with self._lock:
            if self.closed:
                response.close()
                return
            self._response = response
        self.usage = self.usage + Usage(calls=1)
        pieces = _Pieces(self)
        for event in response:
            new = pieces.take(event)
            if new:
                yield new
        pieces.finish()


class _Pieces:
    """One request's events, against what its stream showed already: a resumed request repeats
    that text first, which is skipped (and must match); usage and the finish reason are kept."""

    def __init__(self, stream: ChatStream | AsyncChatStream) -> None:
        self.stream = stream
        self.written = ""  # this request's text
        self.reason: str | None = None

    def take(self, event: Any) -> str | None:
        s = self.stream
        if event.usage:
            s.usage = s.usage + Usage(event.usage.prompt_tokens or 0, event.usage.completion_tokens or 0)
        if not event.choices:
            return None
        choice = event.choices[0]
        self.reason = choice.finish_reason or self.reason
        piece = choice.delta.content if choice.delta else None
        if not piece:
            return None
        self.written += piece
        if len(self.written) <= len(s.text):
            if not s.text.startswith(self.written):
                raise _Mismatch(self.written)
            return None
        if not self.written.startswith(s.text):
            raise _Mismatch(self.written)
        new = self.written[len(s.text) :]
        s.text = self.written
        return new

    def finish(self) -> None:
        if self.reason is None and not self.stream.closed:
            raise _Truncated()
        self.stream.finish_reason = self.reason


class AsyncChatStream:
    """``ChatStream`` on the async client: ``async for piece in stream``; ``await aclose()``
    cancels (``close()`` from another thread of the loop's does too). Same retries and resume."""

    def __init__(self, client: LLMClient, messages: Sequence[Message], *, max_tokens: int | None) -> None:
        self._client = client
        self._messages = list(messages)
        self._max_tokens = max_tokens
        self._response = None
        self.closed = False
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.text = ""

    async def aclose(self) -> None:
        self.closed = True
        response, self._response = self._response, None
        if response is not None:
            try:
                await response.close()
            except Exception:  # noqa: BLE001, S110 - closed either way
                pass

    def close(self) -> None:
        """Mark closed; iteration ends at the next piece (the response is closed there)."""
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[str]:
        config = self._client.config
        attempt = 0
        try:
            while not self.closed:
                try:
                    async for piece in self._one_request():
                        yield piece
                    return
                except Exception as e:
                    if self.closed:
                        return
                    retryable = _retryable(e)
                    resumable = not self.text or config.temperature == 0
                    if not retryable or not resumable or attempt >= config.max_retries:
                        raise self._client.error(e, shown=len(self.text)) from e
                    attempt += 1
                    wait = config.retry_backoff_s * 2 ** (attempt - 1)
                    log.warning("LLM call failed (%s); retry %d of %d in %.1f s", _describe(e), attempt,
                                config.max_retries, wait)  # fmt: skip
                    await asyncio.sleep(wait)
        finally:
            await self.aclose()

    async def _one_request(self) -> AsyncIterator[str]:
        response = await self._client.async_client.chat.completions.create(
            **self._client.request(self._messages, self._max_tokens)
        )
        self._response = response
        self.usage = self.usage + Usage(calls=1)
        pieces = _Pieces(self)
        async for event in response:
            if self.closed:
                return
            new = pieces.take(event)
            if new:
                yield new
        pieces.finish()


def _retryable(e: Exception) -> bool:
    import httpx
    import openai

    if isinstance(e, (_Truncated, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code >= 500
    return isinstance(e, (httpx.TransportError, ConnectionError))


def _describe(e: Exception) -> str:
    return "stream cut short" if isinstance(e, _Truncated) else f"{type(e).__name__}: {_one_line(str(e), 120)}"


TokenCount = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """About 3 UTF-8 bytes per token: generous for English, about right for CJK, Thai, Hindi."""
    return math.ceil(len(text.encode("utf-8")) / 3)


class LLMClient:
    """Chat completions against ``llm.base_url``, sync and async; every failure becomes a
    GenerationError that names the server and what to do. Cheap to build: clients are made on
    first use."""

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig()
        self._client = None
        self._async_clients: dict[int, Any] = {}  # one per event loop: an httpx pool is bound to its loop
        self._context: int | None = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(**self._client_args())
        return self._client

    @property
    def async_client(self):
        """The ``openai.AsyncOpenAI`` client of the running event loop."""
        from openai import AsyncOpenAI

        loop = id(asyncio.get_running_loop())
        if loop not in self._async_clients:
            if len(self._async_clients) > 8:  # loops come and go (asyncio.run per call): drop the old ones
                self._async_clients.clear()
            self._async_clients[loop] = AsyncOpenAI(**self._client_args())
        return self._async_clients[loop]

    def _client_args(self) -> dict[str, Any]:
        return {
            "base_url": self.config.base_url,
            "api_key": self.config.api_key,
            "timeout": self.config.timeout_s,
            "max_retries": 0,  # the streams retry, knowing what is safe to repeat
        }

    def request(self, messages: Sequence[Message], max_tokens: int | None) -> dict[str, Any]:
        c = self.config
        return {
            "model": c.model,
            "messages": list(messages),
            "temperature": c.temperature,
            "max_tokens": max_tokens or c.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "extra_body": c.extra_body or None,
        }

    def served_models(self) -> list[str]:
        try:
            return [m.id for m in self.client.models.list()]
        except Exception as e:
            raise self.error(e) from e

    def stream_chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> ChatStream:
        return ChatStream(self, messages, max_tokens=max_tokens)

    def astream_chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> AsyncChatStream:
        return AsyncChatStream(self, messages, max_tokens=max_tokens)

    def complete(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> Completion:
        stream = self.stream_chat(messages, max_tokens=max_tokens)
        text = "".join(stream)
        return Completion(text=text, usage=stream.usage, finish_reason=stream.finish_reason)

    async def acomplete(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> Completion:
        stream = self.astream_chat(messages, max_tokens=max_tokens)
        text = "".join([piece async for piece in stream])
        return Completion(text=text, usage=stream.usage, finish_reason=stream.finish_reason)

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        return self.complete(messages, max_tokens=max_tokens).text

    # -- the served model: context length and tokens -------------------------------------------

    def context_length(self) -> int | None:
        """The served model's context (vLLM's ``max_model_len``), asked once; None when the server
        does not say or cannot be asked (a server that is down fails the answer itself)."""
        if self._context is None:
            try:
                listed = self.client.models.list()
                lengths = {m.id: (m.model_extra or {}).get("max_model_len") for m in listed}
                length = lengths.get(self.config.model)
                self._context = length if isinstance(length, int) else 0
            except Exception as e:  # noqa: BLE001 - see the docstring
                log.info("cannot ask the LLM server for its context length: %s", e)
                return None
        return self._context or None

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the served model, counted by the server (vLLM's POST /tokenize)."""
        import httpx

        root = self.config.base_url.rstrip("/").removesuffix("/v1")
        try:
            r = httpx.post(f"{root}/tokenize", json={"model": self.config.model, "prompt": text}, timeout=10)
            r.raise_for_status()
            return int(r.json()["count"])
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise GenerationError(
                f"the LLM server at {root} cannot count tokens (POST /tokenize: {e}); set generation.tokenizer "
                "to 'estimate' or 'local'"
            ) from e

    def token_counter(self, mode: Literal["auto", "local", "server", "estimate"]) -> tuple[TokenCount, str]:
        """A token counter for ``llm.model`` and what it is: "local" (the model's tokenizer,
        when its folder is here), "server" (POST /tokenize) or "estimate"."""
        model = self.config.model
        if mode in ("auto", "local"):
            try:
                return _local_counter(model), "local"
            except (ModelNotFoundError, OSError, ValueError) as e:
                if mode == "local":
                    raise ConfigError(
                        f"generation.tokenizer is 'local' but the tokenizer of llm.model {model!r} cannot be "
                        f"loaded ({e}); point BABELRAG_LLM_MODEL at the model folder or use tokenizer 'server'"
                    ) from e
        if mode in ("auto", "server"):
            try:
                self.count_tokens("probe")
                return self.count_tokens, "server"
            except GenerationError:
                if mode == "server":
                    raise
        return estimate_tokens, "estimate"

    def error(self, e: Exception, *, shown: int = 0) -> GenerationError:
        import openai

        url, model = self.config.base_url, self.config.model
        tries = f" (after {self.config.max_retries} retries)" if self.config.max_retries and _retryable(e) else ""
        if isinstance(e, GenerationError):
            return e
        if isinstance(e, _Mismatch):
            return GenerationError(
                f"the LLM server at {url} cut the answer off after {shown} characters, and the retry wrote a "
                "different answer; ask again"
            )
        if isinstance(e, _Truncated):
            return GenerationError(
                f"the LLM server at {url} ended the answer stream early, after {shown} characters and without a "
                f"finish reason{tries}; check the server's log"
            )
        if isinstance(e, openai.APITimeoutError):
            return GenerationError(
                f"the LLM server at {url} did not answer within {self.config.timeout_s:g} s{tries}; "
                "raise llm.timeout_s or check the server's load"
            )
        if isinstance(e, openai.APIConnectionError):
            cut = f" (the answer broke off after {shown} characters)" if shown else ""
            return GenerationError(
                f"cannot reach the LLM server at {url}{tries}{cut}; start one with `babelrag llm serve` "
                "or point BABELRAG_LLM_BASE_URL at a running OpenAI-compatible server"
            )
        if isinstance(e, openai.NotFoundError):
            try:
                served = ", ".join(m.id for m in self.client.models.list()) or "none"
            except Exception:  # noqa: BLE001 - only decorates the message
                served = "unknown"
            return GenerationError(
                f"the LLM server at {url} does not serve model {model!r} (served: {served}); "
                "set BABELRAG_LLM_MODEL to one of those"
            )
        if isinstance(e, openai.BadRequestError) and "context" in str(e.message).lower():
            return GenerationError(
                f"the prompt does not fit model {model!r} at {url}: {_one_line(e.message)}; lower retrieval.top_k "
                "or generation.context_tokens, or serve the model with a longer max_model_len"
            )
        if isinstance(e, openai.APIStatusError):
            return GenerationError(
                f"the LLM server at {url} answered HTTP {e.status_code} for model {model!r}{tries}: "
                f"{_one_line(e.message)}; check the server's log"
            )
        return GenerationError(f"the LLM call to {url} failed: {type(e).__name__}: {_one_line(str(e))}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"




def _local_counter(model: str) -> TokenCount:
    from transformers import AutoTokenizer

    from rag.logs import transformers_through_root
    from rag.models import resolve_model

    path = resolve_model(model, role="LLM", setting="BABELRAG_LLM_MODEL")
    transformers_through_root()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
