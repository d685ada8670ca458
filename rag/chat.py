"""Conversations: bounded history, and follow-ups rewritten into standalone questions."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rag.config import ChatConfig
from rag.errors import QueryError
from rag.keyword import tokenize
from rag.language import LanguageIdentifier, dominant_language
from rag.languages import LANGUAGES, english_name
from rag.llm import LLMClient, Message
from rag.types import Usage

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 600  # each earlier message is cut to this in the rewrite prompt


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


def bound_history(history: Sequence[ChatMessage | Mapping[str, Any]], config: ChatConfig) -> list[ChatMessage]:
    """The last ``config.max_messages`` text messages, within ``config.max_history_chars``.

    Accepts ChatMessage or ``{"role", "content"}`` mappings (Gradio's messages format); messages
    whose content is not text (files, images) are skipped, other roles are an error.
    """
    messages: list[ChatMessage] = []
    for i, m in enumerate(history):
        role, content = (m.role, m.content) if isinstance(m, ChatMessage) else (m.get("role"), m.get("content"))
        if role not in ("user", "assistant"):
            if role == "system":
                continue
            raise QueryError(f"history message {i} has role {role!r}; expected 'user' or 'assistant'")
        if isinstance(content, str) and content.strip():
            messages.append(ChatMessage(role, content.strip()))
    messages = messages[-config.max_messages :] if config.max_messages else []
    while messages and sum(len(m.content) for m in messages) > config.max_history_chars:
        messages.pop(0)
    return messages


_EXAMPLE = (
    "Conversation:\nUser: Who won the 2014 World Cup?\nAssistant: Germany won the 2014 World Cup [1].\n"
    "Last message: And in 2018?\nStandalone question: Who won the 2018 World Cup?"
)


def rewrite_messages(history: Sequence[ChatMessage], message: str, language: str | None) -> list[Message]:
    named = english_name(language) if language else "the language of the last message"
    native = LANGUAGES.get(language or "", ("", "", "", ""))[1]
    if native and native != named:
        named = f"{named} ({native})"
    lines = []
    for m in history:
        text = re.sub(r"\s*\[\d+\]", "", m.content)
        text = text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
        lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {' '.join(text.split())}")
    return [
        {
            "role": "system",
            "content": "You rewrite the last message of a conversation into one standalone question that can be "
            "understood without the conversation: replace pronouns and ellipses with what they refer to. Do not "
            f"answer it. Write only the question, in {named}.\n\nExample:\n{_EXAMPLE}",
        },
        {
            "role": "user",
            "content": "Conversation:\n" + "\n".join(lines) + f"\nLast message: {message}\n"
            f"Standalone question in {named}:",
        },
    ]


_PREFIX = re.compile(r"^\s*(?:standalone question|question|rewritten question)\s*[:：]\s*", re.IGNORECASE)


def rewrite_follow_up(
    llm: LLMClient, identifier: LanguageIdentifier, history: Sequence[ChatMessage], message: str,
    language: str | None,
) -> tuple[str, Usage]:  # fmt: skip
    """``message`` rewritten to stand alone, and the tokens it cost (see ``accept_rewrite``)."""
    completion = llm.complete(rewrite_messages(history, message, language), max_tokens=96)
    return accept_rewrite(completion.text, history, message, language, identifier), completion.usage


def accept_rewrite(
    completion: str, history: Sequence[ChatMessage], message: str, language: str | None,
    identifier: LanguageIdentifier,
) -> str:  # fmt: skip
    """The standalone question to retrieve for, from the LLM's rewrite ``completion``.

    A rewrite that is empty, runs on, is in another language than ``language``, or takes no
    term from the conversation is not trusted: the previous question and the message together
    are used instead (they retrieve well; small models often just drop the "and").
    """
    previous = next((m.content for m in reversed(history) if m.role == "user"), "")
    fallback = f"{previous} {message}".strip()
    text = completion.strip().splitlines()[0] if completion.strip() else ""
    text = _PREFIX.sub("", text).strip().strip('"“”«»「」').strip()
    rewritten_language = dominant_language(identifier, text, fallback=language)
    if not text or len(text) > 3 * len(fallback) + 200:
        log.info("follow-up rewrite %r not used (empty or too long)", text)
        return fallback
    if language and rewritten_language != language:
        log.info("follow-up rewrite %r is in %s, not %s; not used", text, rewritten_language, language)
        return fallback
    if not carries_context(text, message, history):
        log.info("follow-up rewrite %r adds nothing from the conversation; not used", text)
        return fallback
    return text


def carries_context(rewrite: str, message: str, history: Sequence[ChatMessage]) -> bool:
    """The rewrite holds a term from the conversation that the message lacks ("die Firma" became
    "Nordlicht Robotics"); a rewrite that only rephrases the message resolved nothing."""
    added = _terms(rewrite) - _terms(message)
    earlier = set().union(*(_terms(m.content) for m in history)) if history else set()
    return bool(added & earlier)


_HIRAGANA = re.compile(r"[\u3041-\u309f]")


def _terms(text: str) -> set[str]:
    """Content terms: BM25 tokens without stopwords, and without Japanese bigrams that hold a
    particle or an inflection (hiragana: "は何", "です")."""
    return {t for t in tokenize(text) if not _HIRAGANA.search(t)}
