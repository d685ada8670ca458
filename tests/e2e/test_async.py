"""The async Python API end to end: several answers at once in one event loop, through the async
client to the real vLLM server, each in its question's language and citing the right file."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from rag import Pipeline, QueryOptions, load_settings
from tests.conftest import EXAMPLES
from tests.e2e.conftest import CONFIG

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def pipeline(served, monkeypatch_module):
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    with Pipeline(load_settings(CONFIG)) as rag:
        yield rag


def test_concurrent_answers_in_one_event_loop(pipeline):
    langs = ["ja", "th", "en"]
    options = QueryOptions(collection="handbook")

    async def main():
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(pipeline.aask(QUESTIONS[lang]["question"], options) for lang in langs))
        return answers, time.perf_counter() - t0

    answers, wall = asyncio.run(main())
    for lang, answer in zip(langs, answers, strict=True):
        print(f"\n[{lang}] {answer.text}")
        assert answer.question_language == lang and answer.language == lang, answer.text
        assert answer.citations[0].chunk.file_name == QUESTIONS[lang]["expected_file"]
        assert answer.found and answer.usage.calls >= 1
    # they ran at once: the whole batch took less than the sum of its answers' own times
    assert wall < sum(a.timings["total"] for a in answers), (wall, [a.timings["total"] for a in answers])


def test_astream_yields_pieces_and_achat_rewrites_the_follow_up(pipeline):
    async def main():
        stream = await pipeline.astream(QUESTIONS["de"]["question"], collection="handbook", top_k=3)
        assert stream.hits and stream.hits[0].chunk.text  # sources before the first token
        pieces = [piece async for piece in stream]
        answer = await stream.aanswer()
        history = [
            {"role": "user", "content": "Wann wurde Nordlicht Robotics gegründet?"},
            {"role": "assistant", "content": "Nordlicht Robotics wurde 2009 in Kiel gegründet [1]."},
        ]
        follow_up = await pipeline.achat(history, "Und wie viele Mitarbeitende hat die Firma heute?", collection="handbook")
        return pieces, answer, follow_up

    pieces, answer, follow_up = asyncio.run(main())
    assert len(pieces) > 3 and "".join(pieces).strip() == answer.text and answer.language == "de"
    assert "Nordlicht" in (follow_up.standalone_question or "") and follow_up.language == "de"
    assert "rewrite" in follow_up.timings and follow_up.usage.calls >= 2
