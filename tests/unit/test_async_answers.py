"""The async answer path: the same answer logic as the sync one (one generator, two drivers), on
the async client, many answers at once in one event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag.errors import GenerationError, QueryError
from tests.conftest import free_port
from tests.helpers import FakeLLM
from tests.unit.test_answering import DE, EN, llm, stream
from tests.unit.test_injection import ECHO, LEAK

JA = "有給休暇は年間30日で、会社の規程に基づいて自由に計画できます[1]。"
INVENTED = "Der Mount Everest ist 8848 Meter hoch und liegt im Himalaya zwischen Nepal und China."

# name -> (scripted replies, the answer language)
SCENARIOS = {
    "right language": ((DE,), "de"),
    "wrong language, asked again": (({"text": EN, "delay_s": 0.01}, DE), "de"),
    "wrong twice, translated": ((EN, EN, DE), "de"),
    "translation fails, not found": ((EN, EN, {"status": 503}), "de"),
    "model says not found": (("NOT_FOUND",), "de"),
    "invented numbers": ((INVENTED,), "de"),
    "markers alone": (("[1] [2]", "[1]"), "de"),
    "cut and resumed": (({"text": DE, "cut_after": 15}, DE), "de"),
    "japanese": ((JA,), "ja"),
    "copied a source, asked again": ((ECHO, DE), "de"),
    "repeated the instructions twice": ((LEAK,), "de"),
    "repeated the sentinel until cut": (("NOT_FOUND\n" * 40 + "NOT",), "de"),
}


def outcome(answer, events) -> tuple:
    return (
        answer.text, answer.found, answer.language, answer.language_attempts, answer.translated,
        answer.usage.calls, [c.cited for c in answer.citations], answer.withheld, [(e.kind, e.text) for e in events],
    )  # fmt: skip


def run_sync(replies, target):
    with FakeLLM(*replies) as fake:
        s = stream(fake.url, target=target)
        events = list(s.events())
        return outcome(s.answer(), events), len(fake.requests)


def run_async(replies, target):
    async def main():
        with FakeLLM(*replies) as fake:
            s = stream(fake.url, target=target)
            events = [e async for e in s.aevents()]
            return outcome(await s.aanswer(), events), len(fake.requests)

    return asyncio.run(main())


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_async_driver_gives_the_answer_the_sync_one_gives(name):
    replies, target = SCENARIOS[name]
    sync, sync_requests = run_sync(replies, target)
    asynchronous, async_requests = run_async(replies, target)
    assert asynchronous == sync and async_requests == sync_requests


def test_async_iteration_yields_the_text_and_the_trace():
    async def main():
        with FakeLLM(DE) as fake:
            s = stream(fake.url)
            pieces = [p async for p in s]
            return pieces, await s.aanswer()

    pieces, answer = asyncio.run(main())
    assert len(pieces) > 3 and "".join(pieces) == DE == answer.text
    assert answer.usage.calls == 1 and answer.usage.completion_tokens > 0
    assert {"generate", "first_token", "total"} <= set(answer.timings)


def test_many_answers_stream_at_once_in_one_event_loop():
    """32 answers from a server that takes ~2.4 s per answer are all streaming at the same time:
    the server sees 32 streams open at once. (A thread per blocking stream would queue on the
    default executor, 6 workers on 2 CPUs: at most 6 open at once, ~13 s in all.) Counted at the
    server, not timed: wall-clock differences on a shared CI machine are noise at this size."""

    async def main(n, delay_s):
        with FakeLLM({"text": DE, "delay_s": delay_s}) as fake:  # 24 pieces
            streams = [stream(fake.url) for _ in range(n)]
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(s.aanswer() for s in streams))
            assert all(a.text == DE and a.language == "de" for a in answers)
            return fake.peak_streams, time.perf_counter() - t0

    asyncio.run(main(1, 0))  # warm up the language identifier
    peak, took = asyncio.run(main(32, 0.1))
    assert peak == 32, f"only {peak} of 32 answers streamed at the same time ({took:.1f} s in all)"


def test_async_cancel_stops_the_stream_and_keeps_the_text_so_far():
    async def main():
        with FakeLLM({"text": DE * 5, "delay_s": 0.03}) as fake:
            s = stream(fake.url)
            seen = []
            async for piece in s:
                seen.append(piece)
                if len(seen) == 2:
                    s.cancel()
            answer = await s.aanswer()
            await asyncio.sleep(0.2)
            return seen, answer, fake.closed_early

    seen, answer, closed = asyncio.run(main())
    assert len("".join(seen)) < len(DE * 5) and answer.text.startswith("Mitarbeitende")
    assert closed == 1  # the server saw the client go


def test_async_llm_down_is_the_same_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"

    async def main():
        await stream(url, client=llm(url, max_retries=1)).aanswer()

    with pytest.raises(GenerationError, match=r"cannot reach the LLM server .*after 1 retries.*babelrag llm serve"):
        asyncio.run(main())


def test_a_stream_is_read_sync_or_async_not_both():
    with FakeLLM(DE) as fake:
        s = stream(fake.url)
        next(iter(s))

        async def main():
            return [p async for p in s]

        with pytest.raises(QueryError, match="being read sync; it cannot also be read async"):
            asyncio.run(main())
        s.cancel()
