import pytest

from rag.config import LLMConfig
from rag.errors import ConfigError, GenerationError
from rag.generator import PromptSource, build_messages
from rag.llm import LLMClient
from tests.conftest import free_port
from tests.helpers import FakeLLM, FakeServer, reply

MESSAGES = [{"role": "user", "content": "Hallo?"}]


def client(url: str, **kw) -> LLMClient:
    return LLMClient(LLMConfig(base_url=url, model="m", max_retries=0, **kw))


def test_server_down_says_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GenerationError, match=r"cannot reach the LLM server at .*babelrag llm serve"):
        client(url).chat(MESSAGES)


def test_http_500_names_status_and_server():
    with FakeServer(reply(500, {"error": {"message": "engine died"}})) as server:
        with pytest.raises(GenerationError, match=r"answered HTTP 500 .*engine died"):
            client(server.url).chat(MESSAGES)


def test_timeout_names_the_setting():
    with FakeServer(reply(200, {}, delay_s=3)) as server:
        with pytest.raises(GenerationError, match=r"did not answer within 0.5 s; raise llm.timeout_s"):
            client(server.url, timeout_s=0.5).chat(MESSAGES)


def test_unknown_model_lists_the_served_ones():
    def respond(handler):
        if handler.command == "GET":
            reply(200, {"object": "list", "data": [{"id": "served-a", "object": "model"}]})(handler)
        else:
            reply(404, {"error": {"message": "The model `m` does not exist."}})(handler)

    with FakeServer(respond) as server:
        with pytest.raises(GenerationError, match=r"does not serve model 'm' \(served: served-a\)"):
            client(server.url).chat(MESSAGES)


def test_prompt_numbers_sources_and_names_the_language_twice():
    messages = build_messages("Wie viele Tage?", [PromptSource(1, "26 日"), PromptSource(2, "30 days")], language="de")
    user = messages[-1]["content"]
    assert '<source id="1">\n26 日\n</source>' in user and '<source id="2">\n30 days\n</source>' in user
    assert "Answer in German (Deutsch). Antworte auf Deutsch." in user
    assert "Answer in German" in messages[0]["content"]
    assert "NOT_FOUND" in messages[0]["content"]


def test_strict_prompt_names_the_wrong_language():
    messages = build_messages("Сколько дней?", [PromptSource(1, "30 days")], language="ru", wrong_language="en", strict=True)
    assert "in Russian (русский), not in English" in messages[-1]["content"]
    assert "Отвечай на русском языке." in messages[0]["content"]


def test_chat_helper_returns_text_and_usage():
    with FakeLLM("Hallo Welt") as fake:
        completion = client(fake.url).complete(MESSAGES)
    assert completion.text == "Hallo Welt" and completion.finish_reason == "stop"
    assert completion.usage.calls == 1 and completion.usage.completion_tokens == 3


def test_token_counters(monkeypatch):
    from rag.config import load_settings  # not Settings(), which refuses other tools' env vars (BABELRAG_LLM_GGUF)
    from rag.llm import estimate_tokens

    def token_counter(settings):
        return LLMClient(settings.llm).token_counter(settings.generation.tokenizer)

    with FakeLLM("x") as fake:
        settings = load_settings(llm={"base_url": fake.url, "model": "m"}, generation={"tokenizer": "server"})
        count, kind = token_counter(settings)
        assert kind == "server" and count("drei kleine Wörter") == 3
        # auto: no local model folder for "m" -> the server's /tokenize
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        count, kind = token_counter(load_settings(llm={"base_url": fake.url, "model": "/nonexistent/m"}))
        assert kind == "server"
    down = load_settings(llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "/nonexistent/m"})
    count, kind = token_counter(down)
    assert kind == "estimate" and count("日本語") == estimate_tokens("日本語") == 3
    with pytest.raises(ConfigError, match="generation.tokenizer is 'local'"):
        token_counter(down.model_copy(update={"generation": down.generation.model_copy(update={"tokenizer": "local"})}))
