"""Generation stage: an OpenAI-compatible server (vLLM) answers from numbered sources."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from rag.config import LLMConfig
from rag.errors import GenerationError
from rag.languages import answer_instruction
from rag.types import Hit

Message = dict[str, str]


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
                max_retries=self.config.max_retries,
            )
        return self._client

    def served_models(self) -> list[str]:
        try:
            return [m.id for m in self.client.models.list()]
        except Exception as e:
            raise self._error(e) from e

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> str:
        return "".join(self.stream_chat(messages, max_tokens=max_tokens))

    def stream_chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> Iterator[str]:
        try:
            stream = self.client.chat.completions.create(
                model=self.config.model,
                messages=list(messages),
                temperature=self.config.temperature,
                max_tokens=max_tokens or self.config.max_tokens,
                stream=True,
                extra_body=self.config.extra_body or None,
            )
            for event in stream:
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
        except GenerationError:
            raise
        except Exception as e:
            raise self._error(e) from e

    def _error(self, e: Exception) -> GenerationError:
        import openai

        url, model = self.config.base_url, self.config.model
        if isinstance(e, openai.APITimeoutError):
            return GenerationError(
                f"the LLM server at {url} did not answer within {self.config.timeout_s:g} s; "
                "raise llm.timeout_s or check the server's load"
            )
        if isinstance(e, openai.APIConnectionError):
            return GenerationError(
                f"cannot reach the LLM server at {url}; start one with `babelrag llm serve` "
                "or point BABELRAG_LLM_BASE_URL at a running OpenAI-compatible server"
            )
        if isinstance(e, openai.NotFoundError):
            try:
                served = ", ".join(m.id for m in self.client.models.list()) or "none"
            except Exception:
                served = "unknown"
            return GenerationError(
                f"the LLM server at {url} does not serve model {model!r} (served: {served}); "
                "set BABELRAG_LLM_MODEL to one of those"
            )
        if isinstance(e, openai.APIStatusError):
            return GenerationError(
                f"the LLM server at {url} answered HTTP {e.status_code} for model {model!r}: "
                f"{_one_line(e.message)}; check the server's log"
            )
        return GenerationError(f"the LLM call to {url} failed: {type(e).__name__}: {_one_line(str(e))}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@runtime_checkable
class Generator(Protocol):
    def stream(self, question: str, hits: Sequence[Hit], *, language: str | None) -> Iterator[str]:
        """Answer text, piece by piece, citing ``hits`` as [1], [2], ... in their order."""
        ...


SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given. The sources may be "
    "in any language; your answer must be in the language of the question. After each statement, "
    "cite the source it comes from by its number in square brackets, for example [1]. "
    "If the sources do not contain the answer, say that the knowledge base does not contain it. "
    "Explain the answer in one to three full sentences."
)


def build_messages(question: str, hits: Sequence[Hit], *, language: str | None) -> list[Message]:
    instruction = answer_instruction(language) if language else "Answer in the language of the question."
    sources = "\n\n".join(f"[{i}] {hit.chunk.text}" for i, hit in enumerate(hits, 1))
    return [
        {"role": "system", "content": f"{SYSTEM_PROMPT} {instruction}"},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}\n\n{instruction}"},
    ]


class OpenAIGenerator:
    def __init__(self, client: LLMClient) -> None:
        self.client = client

    def stream(self, question: str, hits: Sequence[Hit], *, language: str | None) -> Iterator[str]:
        return self.client.stream_chat(build_messages(question, hits, language=language))
