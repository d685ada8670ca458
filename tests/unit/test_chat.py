"""Conversation history bounds and follow-up rewriting, against a scripted server."""

from __future__ import annotations

import pytest

from rag.chat import ChatMessage, bound_history, rewrite_follow_up
from rag.config import ChatConfig, LLMConfig
from rag.errors import QueryError
from rag.llm import LLMClient
from rag.language import language_identifier
from tests.helpers import FakeLLM

LID = language_identifier()
HISTORY = [
    {"role": "user", "content": "Wie viele Urlaubstage hatte BabelCorp 2018?"},
    {"role": "assistant", "content": "2018 waren es 28 Urlaubstage [1]."},
]


def llm(url: str) -> LLMClient:
    return LLMClient(LLMConfig(base_url=url, model="m", retry_backoff_s=0.01))


def test_history_keeps_the_last_messages_within_the_character_bound():
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Nachricht {i} " + "x" * 90}
               for i in range(20)]  # fmt: skip
    kept = bound_history(history, ChatConfig(max_messages=6, max_history_chars=350))
    assert [m.content.split()[1] for m in kept] == ["17", "18", "19"]
    assert bound_history(history, ChatConfig(max_messages=0)) == []


def test_history_accepts_gradio_messages_and_skips_files_and_system():
    history = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": {"path": "/tmp/a.pdf"}},  # a file message
        ChatMessage("user", "  Frage  "),
        {"role": "assistant", "content": "Antwort", "metadata": {}},
    ]
    assert bound_history(history, ChatConfig()) == [ChatMessage("user", "Frage"), ChatMessage("assistant", "Antwort")]


def test_history_with_an_unknown_role_says_so():
    with pytest.raises(QueryError, match="history message 0 has role 'tool'"):
        bound_history([{"role": "tool", "content": "x"}], ChatConfig())


def test_follow_up_rewritten_in_the_users_language():
    turns = bound_history(HISTORY, ChatConfig())
    with FakeLLM("Standalone question: Wie viele Urlaubstage hatte BabelCorp 2019?") as fake:
        text, usage = rewrite_follow_up(llm(fake.url), LID, turns, "Und 2019?", "de")
    assert text == "Wie viele Urlaubstage hatte BabelCorp 2019?"
    prompt = fake.prompts[0]
    assert "User: Wie viele Urlaubstage hatte BabelCorp 2018?" in prompt
    assert "Assistant: 2018 waren es 28 Urlaubstage." in prompt  # markers stripped
    assert "Last message: Und 2019?" in prompt and "German (Deutsch)" in prompt
    assert usage.calls == 1


@pytest.mark.parametrize("reply", ["How many vacation days did BabelCorp have in 2019?", "", "Wie " * 400])
def test_untrusted_rewrite_falls_back_to_the_previous_question_and_the_message(reply):
    turns = bound_history(HISTORY, ChatConfig())
    with FakeLLM(reply) as fake:
        text, _ = rewrite_follow_up(llm(fake.url), LID, turns, "Und 2019?", "de")
    assert text == "Wie viele Urlaubstage hatte BabelCorp 2018? Und 2019?"


def test_rewrite_that_only_rephrases_the_message_is_not_trusted():
    turns = bound_history(
        [{"role": "user", "content": "Wann wurde Nordlicht Robotics gegründet?"},
         {"role": "assistant", "content": "2009 in Kiel [1]."}], ChatConfig())  # fmt: skip
    with FakeLLM("Wie viele Mitarbeitende hat die Firma heute?") as fake:
        text, _ = rewrite_follow_up(llm(fake.url), LID, turns, "Und wie viele Mitarbeitende hat die Firma heute?", "de")
    assert text == "Wann wurde Nordlicht Robotics gegründet? Und wie viele Mitarbeitende hat die Firma heute?"
    with FakeLLM("Wie viele Mitarbeitende hat Nordlicht Robotics heute?") as fake:
        text, _ = rewrite_follow_up(llm(fake.url), LID, turns, "Und wie viele Mitarbeitende hat die Firma heute?", "de")
    assert text == "Wie viele Mitarbeitende hat Nordlicht Robotics heute?"


def test_context_check_works_without_spaces():
    from rag.chat import carries_context

    history = [ChatMessage("user", "有給休暇は何日ですか？"), ChatMessage("assistant", "26日です[1]。")]
    assert carries_context("有給休暇の申請方法は？", "申請方法は？", history)
    assert not carries_context("申請方法は何ですか？", "申請方法は？", history)
