"""Answer evaluation: normalisation in several scripts, scoring hand-built Answers, aggregation,
the report table, the error rule and the run file. No models, no LLM server."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest

from rag.evaluation.answers import (
    AnswerScore,
    aggregate,
    answer_queries,
    contains_gold,
    evaluate_answers,
    format_answer_report,
    normalise,
    score_answer,
    summarise,
)
from rag.config import load_settings
from rag.errors import GenerationError
from rag.evaluation.retrieval import CorpusDoc, EvalQuery, eval_collection_name, eval_index_settings
from rag.types import Answer, Citation, Usage
from tests.helpers import hit

LANGS = ["ar", "de", "zh"]
DOCS = {f"p{p}-{lang}": CorpusDoc(f"p{p}-{lang}", p, lang, f"text {p} {lang}") for p in range(3) for lang in LANGS}


def query(lang: str = "de", para: int = 1, answers: tuple[str, ...] = ("Denver Broncos",), n: int = 0) -> EvalQuery:
    return EvalQuery(f"q{para}x{n}-{lang}", lang, f"question {para} in {lang}", para, answers)


def answer(text: str, language: str | None, cites=(), given=(), **fields) -> Answer:
    """An Answer whose sources are the docs ``given`` + ``cites`` (files of the corpus folder), the
    ``cites`` ones cited in that order."""
    sources = [*cites, *(d for d in given if d not in cites)]
    citations = [
        Citation(number=i, hit=hit("t", source=f"/tmp/eval/corpus-x/{doc}.txt"), cited=doc in cites)
        for i, doc in enumerate(sources, 1)
    ]
    marked = text + "".join(f" [{i}]" for i, doc in enumerate(sources, 1) if doc in cites)
    return Answer(
        question="q", text=marked, language=language, question_language=language, citations=citations, **fields
    )


# -- normalise / contains_gold -------------------------------------------------------------


def test_arabic_indic_and_persian_digits_match_ascii_gold():
    assert normalise("تخلى عن ٣٠٨ نقطة.", "ar") == "تخلى عن 308 نقطة"
    assert contains_gold("لم يتخل الدفاع إلا عن ٣٠٨ نقطة [1].", ["308"], "ar")
    assert contains_gold("۳۰۸ امتیاز", ["308"], "fa")
    assert contains_gold("فريق «دنفر بـرونكو»", ["دِنفر برونكو"], "ar")  # harakat and tatweel are optional
    assert contains_gold("تقاليد الهندوسية بغورو", ["غورو"], "ar")  # a clitic attached: بـ
    assert contains_gold("الأنثى و١٣٨٨ من", ["1388"], "ar")


def test_hindi_devanagari_digits_and_words():
    assert normalise("यह १९४५ में हुआ।", "hi") == "यह 1945 में हुआ"
    assert contains_gold("यह १९४५ में हुआ।", ["1945"], "hi")
    assert contains_gold("डेनवर ब्रोंकोस ने सुपर बाउल जीता।", ["डेनवर ब्रोंकोस"], "hi")
    assert not contains_gold("डेनवर ने जीता", ["डेनवर ब्रोंकोस"], "hi")


def test_thai_and_chinese_ignore_spaces():
    assert contains_gold("ทีม เดนเวอร์ บรองโกส์ ชนะ", ["เดนเวอร์บรองโกส์"], "th")
    assert normalise("ปี ๒๕๐๐", "th") == "ปี2500"
    assert contains_gold("答案是 丹佛 野马队。[2]", ["丹佛野马队"], "zh")
    assert contains_gold("共得到３０８分", ["308"], "zh")  # full-width digits: NFKC
    # a space between two numbers stays, so they do not merge into one
    assert normalise("包含 超过14,000 1600年", "zh") == "包含超过14000 1600年"
    assert contains_gold("其中 30,547(19.3%)户", ["19.3%"], "zh")
    assert not contains_gold("ปี 1974 20% ของ", ["197420"], "th")
    assert not contains_gold("卡罗来纳黑豹队", ["丹佛野马队"], "zh")


def test_german_case_punctuation_quotes_and_numbers():
    assert contains_gold("Gewonnen haben die DENVER-BRONCOS.", ["Denver Broncos"], "de")
    assert contains_gold("Es war der „Super Bowl 50“.", ["Super Bowl 50"], "de")
    assert contains_gold("Es waren 1000 Zuschauer", ["1.000"], "de")  # a separator between digits
    assert not contains_gold("Es waren 1308 Punkte", ["308"], "de")  # a number does not run on
    assert contains_gold("Trotz Mannings Problemen", ["Manning"], "de")  # an ending attached
    assert not contains_gold("Siehe Quelle [1].", ["1"], "de")  # citation markers are no answer


def test_russian_casefold_and_hyphens():
    assert contains_gold("Игра прошла в Санта-Кларе, штат Калифорния.", ["Санта-Кларе"], "ru")
    assert contains_gold("ИГРА ПРОШЛА В САНТА КЛАРЕ", ["санта-кларе"], "ru")
    assert contains_gold("Это была камера сгорания.", ["камера сгорания"], "ru")
    assert contains_gold("1939–1945", ["1939 - 1945"], "ru")
    assert not contains_gold("", ["Санта-Кларе"], "ru")
    assert not contains_gold("что-то", ["—"], "ru")  # a gold answer of punctuation only matches nothing


# -- scoring one answer ----------------------------------------------------------------------


def test_top_citation_of_the_gold_paragraph_in_another_language_counts():
    a = answer(
        "Die Denver Broncos.",
        "de",
        cites=["p1-zh", "p1-de"],
        given=["p0-de"],
        target_language="de",
        usage=Usage(900, 30, 1),
        timings={"total": 2.5},
    )
    s = score_answer(query("de"), a, DOCS, wall_seconds=9.0)
    assert (s.in_language, s.contains_gold, s.top_gold, s.top_gold_own) == (True, True, True, False)
    assert s.top_citation == "p1-zh" and s.cited == ("p1-zh", "p1-de")
    assert (s.seconds, s.prompt_tokens, s.completion_tokens, s.llm_calls) == (2.5, 900, 30, 1)
    assert s.error is None and s.found


def test_same_language_gold_citation_and_wall_clock_fallback():
    s = score_answer(query("ar", answers=("308",)), answer("٣٠٨ نقاط", "ar", cites=["p1-ar"]), DOCS, wall_seconds=4.0)
    assert s.top_gold and s.top_gold_own and s.contains_gold
    assert s.seconds == 4.0  # the pipeline gave no timings


def test_no_citation_is_not_gold_and_wrong_language_is_flagged():
    a = answer(
        "The Denver Broncos.",
        "en",
        given=["p1-de"],
        target_language="de",
        language_attempts=2,
        translated=True,
        found=False,
    )
    s = score_answer(query("de"), a, DOCS)
    assert s.top_citation is None and not s.top_gold and not s.top_gold_own and s.cited == ()
    assert not s.cites and s.first_source == "p1-de" and s.first_gold  # retrieval had it first; uncited
    assert not s.in_language and s.language == "en"
    assert s.contains_gold  # the text holds the gold answer, whatever its language
    assert s.language_retry and s.translated and not s.found


def test_top_citation_of_another_paragraph_is_not_gold():
    s = score_answer(query("zh", answers=("丹佛野马队",)), answer("丹佛野马队", "zh", cites=["p2-zh", "p1-zh"]), DOCS)
    assert s.top_citation == "p2-zh" and not s.top_gold and s.contains_gold
    assert s.cites and s.first_source == "p2-zh" and not s.first_gold


# -- aggregation and report --------------------------------------------------------------------


def scored(lang: str, n: int, **flags) -> AnswerScore:
    q = query(lang, n=n)
    base = {"found": True, "seconds": 2.0, "prompt_tokens": 1000, "completion_tokens": 40, "llm_calls": 1}
    return AnswerScore(q.qid, q.lang, q.question, q.answers, q.para, **{**base, **flags})


def test_aggregate_counts_errors_as_misses_and_averages_latency_over_answers():
    scores = [
        scored("de", 0, in_language=True, contains_gold=True, top_gold=True, top_gold_own=True),
        scored("de", 1, in_language=True, top_gold=True, seconds=4.0, prompt_tokens=2000, language_retry=True),
        scored("de", 2, in_language=False, found=False, translated=True, seconds=6.0, completion_tokens=10),
        scored("de", 3, error="the LLM server answered HTTP 500"),
    ]
    stats = aggregate(scores)
    assert (stats.n, stats.errors) == (4, 1)
    assert stats.in_language == 0.5 and stats.contains_gold == 0.25
    assert stats.top_gold == 0.5 and stats.top_gold_own == 0.25
    assert stats.not_found == 0.25 and stats.language_retry == 0.25 and stats.translated == 0.25
    assert stats.seconds == pytest.approx(4.0)
    assert stats.prompt_tokens == pytest.approx(4000 / 3) and stats.completion_tokens == pytest.approx(30)
    assert math.isnan(aggregate([scored("de", 0, error="x")]).seconds)


def test_report_has_a_row_per_language_and_all():
    scores = [scored(lang, n, in_language=True, contains_gold=lang == "de") for lang in ("zh", "de") for n in range(2)]
    report = summarise(
        scores,
        corpus="c.jsonl",
        queries="q.jsonl",
        collection="eval-abc",
        model="Qwen/Qwen2.5-7B-Instruct",
        settings={"top_k": 5, "reranker": "none"},
    )
    assert report.questions == 2 and list(report.by_language) == ["de", "zh"]
    text = format_answer_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("Answers of Qwen/Qwen2.5-7B-Instruct: 2 questions × 2 languages (4 asks)")
    assert "eval-abc" in lines[0] and "top_k 5" in lines[0]
    header = lines[2]
    assert header.startswith("| lang | n | in language % | contains gold % | top cite gold para %")
    assert lines[3].startswith("|---|---:|")
    assert lines[4].startswith("| de | 2 | 100.0 | 100.0 |")
    assert lines[5].startswith("| zh | 2 | 100.0 | 0.0 |")
    assert lines[6].startswith("| **all** | 4 | 100.0 | 50.0 |")
    assert all(line.count("|") == header.count("|") for line in lines[2:])
    assert lines[6].endswith("| 2.00 | 1000 | 40 | 1.00 | 0 |")
    assert json.loads(report.to_json())["overall"]["contains_gold"] == 0.5


# -- running: the error rule and the run file -----------------------------------------------


class FailingAsker:
    """Answers correctly except on call number ``fail_on`` (1-based), which raises ``error``."""

    def __init__(self, fail_on: int, error: str = "the LLM server answered HTTP 500 for model 'm'") -> None:
        self.fail_on, self.error, self.calls = fail_on, error, []

    def ask(self, question: str, **options) -> Answer:
        self.calls.append((question, options))
        if len(self.calls) == self.fail_on:
            raise GenerationError(self.error)
        return answer("Denver Broncos", "de", cites=["p1-de"], target_language="de", timings={"total": 1.0})


QUERIES = [query("de", n=n) for n in range(3)]


def test_a_later_generation_error_is_recorded_and_the_run_goes_on(tmp_path):
    asker, said = FailingAsker(fail_on=2), []
    out = tmp_path / "runs" / "answers.jsonl"
    scores = answer_queries(asker, QUERIES, DOCS, collection="eval-x", top_k=4, out=out, progress=said.append)
    assert len(asker.calls) == 3
    assert asker.calls[0] == (QUERIES[0].question, {"collection": "eval-x", "top_k": 4, "reranker": None})
    assert [s.error is None for s in scores] == [True, False, True]
    assert "HTTP 500" in scores[1].error
    assert said[0].startswith("[1/3] q1x0-de de language ok · gold ok · top cite ok")
    assert said[1].startswith("[2/3] q1x1-de de error: the LLM server answered HTTP 500")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["qid"] == "q1x0-de" and first["gold"] == ["Denver Broncos"] and first["text"] == "Denver Broncos [1]"
    assert first["cited"] == ["p1-de"] and first["top_citation"] == "p1-de" and first["top_gold"] is True
    assert first["seconds"] == 1.0 and first["error"] is None and first["language"] == "de"
    assert lines[1]["error"].startswith("the LLM server answered HTTP 500") and lines[1]["text"] == ""


def test_an_error_on_the_first_question_stops_the_run():
    asker = FailingAsker(fail_on=1)
    with pytest.raises(GenerationError, match="HTTP 500"):
        answer_queries(asker, QUERIES, DOCS, collection="eval-x", progress=lambda _: None)
    assert len(asker.calls) == 1


def test_an_unreachable_server_stops_the_run_at_any_question():
    asker = FailingAsker(fail_on=2, error="cannot reach the LLM server at http://127.0.0.1:8011/v1; start one")
    with pytest.raises(GenerationError, match="cannot reach"):
        answer_queries(asker, QUERIES, DOCS, collection="eval-x", progress=lambda _: None)
    assert len(asker.calls) == 2


def test_evaluate_answers_ingests_every_language_and_asks_only_the_chosen_ones(tmp_path):
    corpus, queries = tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"doc_id": d.doc_id, "para": d.para, "lang": d.lang, "text": d.text}) for d in DOCS.values()
        )
    )
    rows = [
        {
            "qid": f"id{n}-{lang}",
            "lang": lang,
            "question": f"Frage {n} {lang}",
            "answers": ["Denver Broncos"],
            "para": 1,
        }
        for lang in LANGS
        for n in range(4)
    ]
    queries.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    ingested = []

    class Pipeline(FailingAsker):
        settings = load_settings(store={"path": tmp_path / "chroma"})

        def ingest(self, paths, collection, **options):
            ingested.append((paths, collection))
            return SimpleNamespace(failed=[], added=paths, updated=[], unchanged=[], chunks_written=9)

    fake = Pipeline(fail_on=0)
    report = evaluate_answers(fake, corpus, queries, sample=2, languages=["de", "zh"], progress=lambda _: None)
    folder, collection = ingested[0][0][0], ingested[0][1]
    assert len(list(folder.glob("*.txt"))) == len(DOCS)  # all three languages of the corpus
    fingerprint = eval_index_settings(fake.settings)
    assert collection == eval_collection_name(list(DOCS.values()), fingerprint)  # the one `eval retrieval` makes
    # each question in all its languages before the next question
    assert [q for q, _ in fake.calls] == ["Frage 0 de", "Frage 0 zh", "Frage 2 de", "Frage 2 zh"]
    assert all(options["collection"] == collection for _, options in fake.calls)
    assert report.questions == 2 and list(report.by_language) == ["de", "zh"]
    assert report.collection == collection and report.settings["top_k"] == fake.settings.retrieval.top_k
    assert set(report.seconds) == {"ingest", "answer"}


def test_cli_names_a_missing_corpus_file(tmp_path, monkeypatch, capsys):
    from rag import cli

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    argv = ["babelrag", "eval", "answers", "--corpus", str(missing), "--queries", str(tmp_path / "q.jsonl")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert message.startswith("error: cannot read") and str(missing) in message.replace("\n", "")


def test_numbers_alone_count_as_in_the_questions_language():
    s = score_answer(query("th", answers=("1901",)), answer("1901", None, cites=["p1-th"]), DOCS)
    assert s.in_language and s.contains_gold
    s = score_answer(query("th", answers=("1901",)), answer("NO", None, cites=["p1-th"]), DOCS)
    assert not s.in_language  # letters of no identifiable language are not the question's
