"""Generation stage: an OpenAI-compatible server (vLLM) answers from numbered sources.

``LLMClient`` is the one way to the server: retries with backoff where that is safe, streams
that can be cancelled, token usage, and errors that name the server and the fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rag.config import LLMConfig
from rag.errors import GenerationError
from rag.languages import answer_instruction, strict_instruction
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
        c = self._client.config
        response = self._client.client.chat.completions.create(
            model=c.model,
            messages=self._messages,
            temperature=c.temperature,
            max_tokens=self._max_tokens or c.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=c.extra_body or None,
        )
        with self._lock:
            if self.closed:
                response.close()
                return
            self._response = response
        self.usage = self.usage + Usage(calls=1)
        written = ""  # this request's text; the part already shown is skipped
        finish = None
        for event in response:
            if event.usage:
                self.usage = self.usage + Usage(event.usage.prompt_tokens or 0, event.usage.completion_tokens or 0)
            if not event.choices:
                continue
            choice = event.choices[0]
            finish = choice.finish_reason or finish
            piece = choice.delta.content if choice.delta else None
            if not piece:
                continue
            written += piece
            if len(written) <= len(self.text):
                if not self.text.startswith(written):
                    raise _Mismatch(written)
                continue
            if not written.startswith(self.text):
                raise _Mismatch(written)
            new = written[len(self.text) :]
            self.text = written
            yield new
        if finish is None and not self.closed:
            raise _Truncated()
        self.finish_reason = finish


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


class LLMClient:
    """Chat completions against ``llm.base_url``; every failure becomes a GenerationError that
    names the server and what to do."""

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(
                base_url=self.config.base_url,
                api_key=self.config.api_key,
                timeout=self.config.timeout_s,
                max_retries=0,  # ChatStream retries, knowing what is safe to repeat
            )
        return self._client

    def served_models(self) -> list[str]:
        try:
            return [m.id for m in self.client.models.list()]
        except Exception as e:
            raise self.error(e) from e

    def stream_chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> ChatStream:
        return ChatStream(self, messages, max_tokens=max_tokens)

    def complete(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> Completion:
        stream = self.stream_chat(messages, max_tokens=max_tokens)
        text = "".join(stream)
        return Completion(text=text, usage=stream.usage, finish_reason=stream.finish_reason)

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        return self.complete(messages, max_tokens=max_tokens).text

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


# -- prompts -------------------------------------------------------------------------------

NOT_FOUND = "NOT_FOUND"  # what the model writes, alone, when the sources do not hold the answer

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. The sources may be "
    "in any language; your answer must be in the language of the question. After each statement, "
    "cite the source it comes from by its number in square brackets, for example [1]. "
    f"If the sources do not contain the answer, write only {NOT_FOUND}. "
    "Explain the answer in one to three full sentences."
)


# Repeated at the end of the user message, where small models look last.
REMINDER = "Cite the sources you use by number, like [1]."


@dataclass(frozen=True, slots=True)
class PromptSource:
    """A source as the prompt shows it: its number, its text, and whether the text was cut."""

    number: int
    text: str
    truncated: bool = False


def format_source(source: PromptSource) -> str:
    cut = " […] (excerpt: cut to fit)" if source.truncated else ""
    return f"[{source.number}] {source.text}{cut}"


def build_messages(
    question: str, sources: Sequence[PromptSource], *, language: str | None, wrong_language: str | None = None,
    strict: bool = False,
) -> list[Message]:  # fmt: skip
    """System and user messages. ``strict`` is the second try after an answer in ``wrong_language``."""
    instruction = answer_instruction(language) if language else "Answer in the language of the question."
    if strict and language:
        instruction = strict_instruction(language, wrong_language)
    listed = "\n\n".join(format_source(s) for s in sources)
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT} {instruction}"},
        {"role": "user", "content": f"Sources:\n\n{listed}\n\nQuestion: {question}\n\n{REMINDER} {instruction}"},
    ]


def translation_messages(text: str, language: str) -> list[Message]:
    instruction = answer_instruction(language)
    return [
        {
            "role": "system",
            "content": "You translate text. Keep every source marker such as [1] exactly where it is. "
            "Write only the translation.",
        },
        {"role": "user", "content": f"Translate into the target language.\n{instruction}\n\nText:\n{text}"},
    ]


@runtime_checkable
class Generator(Protocol):
    def stream(
        self, question: str, sources: Sequence[PromptSource], *, language: str | None,
        wrong_language: str | None = None, strict: bool = False,
    ) -> ChatStream:  # fmt: skip
        """The answer to ``question`` from ``sources`` (cited as [n]), in ``language``, streamed."""
        ...


class OpenAIGenerator:
    def __init__(self, client: LLMClient) -> None:
        self.client = client

    def stream(
        self, question: str, sources: Sequence[PromptSource], *, language: str | None,
        wrong_language: str | None = None, strict: bool = False,
    ) -> ChatStream:  # fmt: skip
        messages = build_messages(question, sources, language=language, wrong_language=wrong_language, strict=strict)
        return self.client.stream_chat(messages)
