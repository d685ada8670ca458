"""Generation stage: the prompt that has an LLM answer from numbered sources, and the Generator
protocol that streams the answer (sync or async) through ``rag.llm.LLMClient``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rag.languages import answer_instruction, strict_instruction
from rag.llm import AsyncChatStream, ChatStream, LLMClient, Message

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

    def astream(
        self, question: str, sources: Sequence[PromptSource], *, language: str | None,
        wrong_language: str | None = None, strict: bool = False,
    ) -> AsyncChatStream:  # fmt: skip
        """``stream`` for ``async for``, on the async client."""
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

    def astream(
        self, question: str, sources: Sequence[PromptSource], *, language: str | None,
        wrong_language: str | None = None, strict: bool = False,
    ) -> AsyncChatStream:  # fmt: skip
        messages = build_messages(question, sources, language=language, wrong_language=wrong_language, strict=strict)
        return self.client.astream_chat(messages)
