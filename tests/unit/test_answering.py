"""The answer stage against a scripted OpenAI-compatible server: the language guard, "not found",
citations, the context budget, retries, cancellation, usage and timings."""

from __future__ import annotations

import threading

import pytest

from rag.answering import AnswerPlan, AnswerStream
from rag.budget import fit_sources
from rag.citations import map_citations
from rag.llm import estimate_tokens
from rag.text import answer_sentence_spans as sentence_spans
from rag.config import GenerationConfig, LLMConfig
from rag.errors import GenerationError
from rag.generator import OpenAIGenerator
from rag.llm import LLMClient
from rag.language import language_identifier
from rag.languages import not_found_message
from tests.conftest import free_port
from rag.metrics import Metrics
from tests.helpers import FakeLLM, hit, sample, scrape

LID = language_identifier()
HITS = [
    hit("Mitarbeitende haben 30 Urlaubstage. Urlaub wird im Personalportal beantragt.", index=0),
    hit("有給休暇は年間26日です。", source="/kb/ja.md"),
]
DE = "Mitarbeitende haben laut der Richtlinie 30 Urlaubstage im Jahr, die sie frei planen können [1]."
EN = "Employees get thirty days of paid leave per year according to the company policy document [1]. " * 2
PL = "Pracownicy mają trzydzieści dni urlopu rocznie zgodnie z polityką firmy i mogą je planować [1]."


def llm(url: str, **kw) -> LLMClient:
    return LLMClient(LLMConfig(base_url=url, model="m", retry_backoff_s=0.01, **kw))


def stream(
    url: str, hits=HITS, target: str | None = "de", *, client: LLMClient | None = None, metrics: Metrics | None = None,
    **gen,
) -> AnswerStream:  # fmt: skip
    client = client or llm(url)
    fitted = fit_sources(hits, 10_000, estimate_tokens) if hits else None
    plan = AnswerPlan(question="Wie viele Urlaubstage habe ich?", standalone_question=None, question_language=target,
                      target_language=target, hits=list(hits), fitted=fitted, model="m")  # fmt: skip
    return AnswerStream(plan, generator=OpenAIGenerator(client), llm=client, language=LID,
                        config=GenerationConfig(**gen), metrics=metrics)  # fmt: skip


# -- the language guard -----------------------------------------------------------------------


def test_right_language_first_time_streams_and_reports():
    with FakeLLM(DE) as fake:
        s = stream(fake.url)
        pieces = list(s)
        answer = s.answer()
    assert len(pieces) > 3 and "".join(pieces) == DE
    assert answer.language == "de" and answer.language_ok and answer.language_attempts == 1
    assert not answer.translated and answer.found
    assert len(fake.requests) == 1
    assert "Antworte auf Deutsch." in fake.prompts[0]
    assert answer.usage.calls == 1 and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert {"generate", "first_token", "total"} <= set(answer.timings)


def test_wrong_language_start_is_never_shown_and_asked_again_strictly():
    with FakeLLM({"text": EN, "delay_s": 0.02}, DE) as fake:
        s = stream(fake.url)
        events = list(s.events())
        answer = s.answer()
    assert [e.kind for e in events] == ["delta"] * len(events)  # no reset: English never went out
    assert "".join(e.text for e in events) == DE
    assert answer.language == "de" and answer.language_attempts == 2 and not answer.translated
    assert "IMPORTANT: write every word of the answer in German (Deutsch), not in English" in fake.prompts[1]
    assert fake.closed_early == 1  # the English stream was cut off, not read to the end
    assert answer.usage.calls == 2


def test_wrong_language_twice_is_translated_by_the_same_llm():
    with FakeLLM(EN, EN, DE) as fake:
        answer = stream(fake.url).answer()
    assert answer.text == DE and answer.language == "de" and answer.translated
    assert answer.language_attempts == 2
    assert "Translate into the target language" in fake.prompts[2] and EN.strip() in fake.prompts[2]
    assert answer.cited[0].number == 1  # the translation kept the marker
    assert answer.usage.calls == 3 and "translate" in answer.timings


def test_wrong_language_kept_when_configured_and_reported():
    with FakeLLM(PL, PL) as fake:
        answer = stream(fake.url, on_wrong_language="keep").answer()
    assert answer.language == "pl" and answer.target_language == "de" and not answer.language_ok
    assert len(fake.requests) == 2


def test_drift_after_the_checked_start_is_translated_with_a_reset():
    drift = "Mitarbeitende haben 30 Urlaubstage pro Jahr laut Richtlinie [1]. " + EN * 3
    with FakeLLM(drift, DE) as fake:
        s = stream(fake.url)
        events = list(s.events())
        answer = s.answer()
    kinds = [e.kind for e in events]
    after = kinds.index("reset")
    assert kinds.count("reset") == 1 and len(kinds) - after > 3  # the translation streams too
    assert "".join(e.text for e in events[after + 1 :]) == DE
    assert answer.text == DE and answer.translated


def test_no_check_when_verification_is_off():
    with FakeLLM(EN) as fake:
        answer = stream(fake.url, verify_language=False).answer()
    assert answer.language == "en" and len(fake.requests) == 1


def test_answer_without_letters_is_not_a_wrong_language():
    with FakeLLM("308 [1]") as fake:
        answer = stream(fake.url).answer()
    assert answer.text == "308 [1]" and len(fake.requests) == 1 and answer.language is None


# -- "not found" ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", ["NOT_FOUND", "NOT_FOUND.", " not found", "NOT_FOUND [3]", "NOT", "No.", "NOT_FOUND\n" * 50 + "NOT"]
)
def test_model_says_not_found_in_the_users_language(reply):
    with FakeLLM(reply) as fake:
        s = stream(fake.url, target="th")
        shown = "".join(s)
        answer = s.answer()
    assert not answer.found and answer.text == not_found_message("th") == shown
    assert not answer.cited and answer.language == "th"


def test_no_hits_is_not_found_without_asking_the_llm():
    with FakeLLM(DE) as fake:
        answer = stream(fake.url, hits=[], target="ar").answer()
    assert not answer.found and answer.text == not_found_message("ar") and fake.requests == []


def test_language_without_a_message_gets_a_translated_one():
    with FakeLLM("Dipendenti hanno trenta giorni di ferie all'anno, secondo la politica aziendale.") as fake:
        answer = stream(fake.url, hits=[], target="it").answer()
    assert answer.text == not_found_message("it")  # in the table: no LLM call
    assert fake.requests == []


# -- citations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sources", "clean", "cited", "removed"),
    [
        ("Ja [1]. Nein [7].", 3, "Ja [1]. Nein.", {1}, ["[7]"]),
        ("A [1, 2] b [2-3].", 3, "A [1][2] b [2][3].", {1, 2, 3}, []),
        ("甲【２】。乙［１］。", 2, "甲[2]。乙[1]。", {1, 2}, []),
        ("نعم [١].", 2, "نعم [1].", {1}, []),
        ("हाँ [१]।", 1, "हाँ [1]।", {1}, []),
        ("Laut [Quelle 2] ja.", 2, "Laut [2] ja.", {2}, []),
        ("Seit [2019] gilt [0] das [1].", 1, "Seit [2019] gilt das [1].", {1}, ["[0]"]),
        ("Nichts zitiert.", 2, "Nichts zitiert.", set(), []),
        ("A [1, 9].", 2, "A [1].", {1}, ["[1, 9]"]),
    ],
)
def test_markers_are_normalised_and_dangling_ones_removed(text, sources, clean, cited, removed):
    mapped = map_citations(text, sources)
    assert mapped.text == clean and set(mapped.cited) == cited and mapped.removed == removed


def test_sentences_carry_the_markers_after_their_end():
    mapped = map_citations("Es sind 30 Tage [1]. Ab 2024 gilt das. [2] Ohne Quelle", 2)
    assert [(s.text, s.sources) for s in mapped.sentences] == [
        ("Es sind 30 Tage [1].", (1,)),
        ("Ab 2024 gilt das. [2]", (2,)),
        ("Ohne Quelle", ()),
    ]
    for s in mapped.sentences:
        assert mapped.text[s.start : s.end] == s.text


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("有給休暇は26日です[1]。申請は上司へ[2]。", 2),
        ("क्या है? यह है।", 2),
        ("هل هذا؟ نعم.", 2),
        ("Version 3.5 gilt.", 1),
    ],
)
def test_sentence_spans_in_other_scripts(text, n):
    assert len(sentence_spans(text)) == n


def test_answer_maps_citations_to_chunk_spans():
    with FakeLLM("Es gibt 26 Tage [2]. Und 30 [1] [5].") as fake:
        answer = stream(fake.url).answer()
    assert answer.text == "Es gibt 26 Tage [2]. Und 30 [1]."
    assert answer.removed_markers == ["[5]"]
    assert [c.number for c in answer.cited] == [2, 1] and answer.top_citation.source == "/kb/ja.md"
    assert answer.citations[1].span == (0, len(HITS[1].chunk.text))
    assert [s.sources for s in answer.sentences] == [(2,), (1,)]


# -- the context budget -----------------------------------------------------------------------


def words(text: str) -> int:
    return len(text.split())


def frame(truncated: bool = False) -> int:
    """Words the prompt puts around a source's text (its tags)."""
    from rag.generator import PromptSource, format_source

    return words(format_source(PromptSource(1, "", truncated)))


def test_budget_keeps_the_best_whole_chunks_and_skips_what_does_not_fit():
    hits = [hit("one two three four five.", index=0), hit("a " * 50 + "end.", index=1), hit("six seven.", index=2)]
    budget = 2 * frame() + 7
    fitted = fit_sources(hits, budget, words)
    assert [h.chunk.index for h in fitted.hits] == [0, 2]
    assert [s.number for s in fitted.sources] == [1, 2] and fitted.dropped == 1 and fitted.tokens <= budget


def test_budget_cuts_a_chunk_only_at_a_sentence_end_and_says_so():
    long = "First sentence here. Second sentence is here. Third one is much longer than the others are."
    fitted = fit_sources([hit(long)], frame(truncated=True) + 8, words)
    source = fitted.sources[0]
    assert source.truncated and source.text == "First sentence here. Second sentence is here."
    assert fitted.shown_chars == [len(source.text)]
    from rag.generator import format_source

    assert 'excerpt="cut to fit"' in format_source(source)


def test_budget_never_cuts_mid_sentence():
    fitted = fit_sources([hit("a very long single sentence without any end at all in sight")], 5, words)
    assert fitted.sources == [] and fitted.dropped == 1


# -- the server misbehaving -------------------------------------------------------------------


def test_5xx_is_retried_with_backoff():
    with FakeLLM({"status": 503}, DE) as fake:
        answer = stream(fake.url).answer()
    assert answer.text == DE and len(fake.requests) == 2


def test_5xx_every_time_names_status_and_retries():
    with FakeLLM({"status": 500, "message": "engine died"}) as fake:
        with pytest.raises(GenerationError, match=r"answered HTTP 500 .*after 2 retries.*engine died"):
            stream(fake.url).answer()
    assert len(fake.requests) == 3


def test_4xx_is_not_retried():
    with FakeLLM({"status": 400, "message": "bad"}) as fake:
        with pytest.raises(GenerationError, match="HTTP 400"):
            stream(fake.url).answer()
    assert len(fake.requests) == 1


def test_stream_cut_after_shown_text_resumes_without_repeating_it():
    with FakeLLM({"text": DE, "cut_after": 15}, DE) as fake:
        s = stream(fake.url)
        pieces = list(s)
    assert "".join(pieces) == DE and len(fake.requests) == 2


def test_stream_cut_every_time_is_a_clear_error():
    with FakeLLM({"text": DE, "cut_after": 15}) as fake:
        with pytest.raises(GenerationError, match=r"ended the answer stream early, after \d+ characters"):
            list(stream(fake.url))


def test_stream_cut_is_not_resumed_when_sampling():
    with FakeLLM({"text": DE, "cut_after": 15}, DE) as fake:
        with pytest.raises(GenerationError, match="ended the answer stream early"):
            list(stream(fake.url, client=llm(fake.url, temperature=0.7)))
    assert len(fake.requests) == 1


def test_resumed_stream_that_differs_is_an_error():
    other = DE.replace("30", "25")
    with FakeLLM({"text": DE, "cut_after": 15}, other) as fake:
        with pytest.raises(GenerationError, match="retry wrote a different answer"):
            list(stream(fake.url))


def test_connection_refused_after_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GenerationError, match=r"cannot reach the LLM server .*after 2 retries.*babelrag llm serve"):
        stream(url).answer()


def test_timeout_names_the_setting():
    with FakeLLM({"text": DE, "delay_s": 2}) as fake:
        with pytest.raises(GenerationError, match=r"did not answer within 0.3 s"):
            stream(fake.url, client=llm(fake.url, timeout_s=0.3, max_retries=0)).answer()


def test_cancel_stops_the_stream_and_keeps_the_text_so_far():
    with FakeLLM({"text": DE * 5, "delay_s": 0.05}) as fake:
        s = stream(fake.url)
        seen = []
        for piece in s:
            seen.append(piece)
            if len(seen) == 2:
                threading.Timer(0.1, s.cancel).start()
        answer = s.answer()
    assert len("".join(seen)) < len(DE * 5)
    assert answer.text.startswith("Mitarbeitende")
    assert fake.closed_early == 1


# -- answers the sources do not support -------------------------------------------------------


def test_numbers_are_compared_across_scripts_and_separators():
    from rag.citations import invents_numbers, numbers_in

    assert numbers_in("8,678 km, ٩٠ يوما, ९० दिन, 1.5 [2]") == {"8678", "90", "15"}
    assert not invents_numbers("Das Zertifikat gilt 90 Tage.", ["証明書の有効期間は９０日です。"], "Wie lange?")
    assert invents_numbers("Der Everest ist 8,678 km hoch.", ["Mitarbeitende haben 30 Urlaubstage."], "Wie hoch?")
    assert not invents_numbers("Im Jahr 2019 gab es keine.", ["30 Tage"], "Was war 2019?")  # the question's own
    assert not invents_numbers("Keine Zahl hier.", ["30 Tage"], "Wie viele?")


def test_uncited_answer_with_invented_numbers_is_not_found():
    invented = "Der Mount Everest ist 8848 Meter hoch und liegt im Himalaya zwischen Nepal und China."
    with FakeLLM(invented) as fake:
        s = stream(fake.url)
        events = list(s.events())
        answer = s.answer()
    assert not answer.found and answer.text == not_found_message("de")
    assert [e.kind for e in events][-2:] == ["reset", "delta"]  # the shown start is taken back


def test_cited_or_sourced_numbers_are_kept():
    with FakeLLM("Laut Richtlinie sind es 30 Urlaubstage für alle Mitarbeitenden im Unternehmen.") as fake:
        assert stream(fake.url).answer().found
    with FakeLLM("Der Mount Everest ist 8848 Meter hoch, sagt die Quelle [1].") as fake:
        assert stream(fake.url).answer().found  # cited: the citation is checkable by the user
    with FakeLLM("Der Mount Everest ist 8848 Meter hoch und liegt zwischen Nepal und China.") as fake:
        assert stream(fake.url, check_numbers=False).answer().found


def test_markers_alone_are_asked_again_then_not_found():
    with FakeLLM("[1] [2]", DE) as fake:
        answer = stream(fake.url).answer()
    assert answer.text == DE and answer.language_attempts == 2
    with FakeLLM("[1] [2]") as fake:
        answer = stream(fake.url).answer()
    assert not answer.found and answer.text == not_found_message("de") and len(fake.requests) == 2


def test_answer_opening_with_a_latin_name_is_still_thai():
    thai = "Nordlicht Robotics ก่อตั้งขึ้นในปี 2009 ที่เมืองคีล ประเทศเยอรมนี โดยวิศวกรทางทะเล [1]"
    with FakeLLM(thai) as fake:
        answer = stream(fake.url, target="th").answer()
    assert answer.language == "th" and answer.language_attempts == 1 and len(fake.requests) == 1


@pytest.mark.parametrize("translation", [PL, {"status": 503}], ids=["in Polish", "server error"])
def test_answer_the_translation_cannot_fix_is_not_returned(translation):
    """Twice in English for a German question, and the translation fails: the English answer is
    not passed off as the answer (it may be a source copied whole, with the instruction the
    translator obeyed); "not found", in German, says why in ``withheld``."""
    with FakeLLM(EN, EN, translation) as fake:
        answer = stream(fake.url).answer()
    assert not answer.found and answer.text == not_found_message("de") and answer.language == "de"
    assert not answer.translated and "the answer was in en, not de, and its translation failed" in answer.withheld
    assert len(fake.requests) >= 3  # answer, strict retry, translation (retried on 503)


def test_sentinel_is_never_shown_even_without_language_checks():
    with FakeLLM("NOT_FOUND") as fake:
        s = stream(fake.url, verify_language=False)
        events = list(s.events())
    assert [e.kind for e in events] == ["delta"] and events[0].text == not_found_message("de")


def test_score_thresholds_decide_before_the_llm():
    from dataclasses import replace

    from rag.budget import below_thresholds

    hits = [replace(hit("a", score=0.05), retrieval_score=0.4), hit("b", score=0.02)]
    assert below_thresholds([], GenerationConfig(), reranked=False) == "nothing was retrieved"
    assert below_thresholds(hits, GenerationConfig(), reranked=True) is None
    assert "min_retrieval_score" in below_thresholds(hits, GenerationConfig(min_retrieval_score=0.5), reranked=False)
    assert below_thresholds(hits, GenerationConfig(min_retrieval_score=0.3), reranked=False) is None
    assert "min_rerank_score" in below_thresholds(hits, GenerationConfig(min_rerank_score=0.1), reranked=True)
    assert below_thresholds(hits, GenerationConfig(min_rerank_score=0.1), reranked=False) is None  # no reranker ran


def test_two_letters_are_no_answer():
    with FakeLLM("Ja", "Ja") as fake:  # not an answer: asked again, then not found
        answer = stream(fake.url, target="es").answer()
    assert not answer.found and answer.text == not_found_message("es") and len(fake.requests) == 2


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_what_each_answer_did():
    metrics = Metrics()
    with FakeLLM(DE) as fake:
        first = stream(fake.url, metrics=metrics).answer()  # German, first try
    with FakeLLM(EN, EN, DE) as fake:
        stream(fake.url, metrics=metrics).answer()  # English twice: asked again, then translated
    with FakeLLM("NOT_FOUND") as fake:
        stream(fake.url, target="th", metrics=metrics).answer()  # Thai "not found"
    with FakeLLM({"text": DE, "delay_s": 0.05}) as fake:
        s = stream(fake.url, metrics=metrics)
        next(iter(s))
        s.cancel()
        s.answer()
    got = scrape(metrics.render()[0].decode())
    assert sample(got, "babelrag_answers_total", outcome="answered", language="de") == 2
    assert sample(got, "babelrag_answers_total", outcome="not_found", language="th") == 1
    assert sample(got, "babelrag_answers_total", outcome="cancelled", language="de") == 1
    assert sample(got, "babelrag_answer_language_retries_total", language="de") == 1
    assert sample(got, "babelrag_answer_translations_total", language="de") == 1
    assert sample(got, "babelrag_llm_calls_total") == 1 + 3 + 1 + 1
    assert sample(got, "babelrag_llm_tokens_total", kind="completion") >= first.usage.completion_tokens > 0
    assert sample(got, "babelrag_stage_duration_seconds_count", stage="generate") == 4
    assert sample(got, "babelrag_stage_duration_seconds_count", stage="translate") == 1
    assert sample(got, "babelrag_stage_duration_seconds_sum", stage="first_token") >= first.timings["first_token"]
    assert sample(got, "babelrag_answer_duration_seconds_count") == 4
    assert not any(name == "babelrag_stage_duration_seconds_count" and ("stage", "total") in labels
                   for name, labels in got)  # "total" is the answer's duration, not a stage  # fmt: skip
