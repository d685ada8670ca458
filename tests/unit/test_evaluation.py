"""Metrics of the retrieval evaluation harness, against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from rag.errors import ConfigError
from rag.evaluation.retrieval import (
    CorpusDoc,
    EvalQuery,
    EvalReport,
    RunLine,
    format_report,
    heatmap,
    polyglot_metrics,
    read_queries,
    read_run,
    score_matrix,
    score_polyglot,
    single_relevant,
    write_run,
)

LANGS = ["ar", "de", "th"]
DOCS = [CorpusDoc(f"p{p}-{lang}", p, lang, f"text {p} {lang}") for p in range(3) for lang in LANGS]


def q(para: int, lang: str, n: int = 0) -> EvalQuery:
    return EvalQuery(f"q{para}x{n}-{lang}", lang, f"question {para}", para)


def test_single_relevant_metrics_at_each_rank():
    assert single_relevant(["a", "b"], "a") == {"ndcg@10": 1.0, "r@1": 1.0, "r@5": 1.0, "r@20": 1.0, "mrr@10": 1.0}
    at3 = single_relevant(["x", "y", "a"], "a")
    assert at3["ndcg@10"] == pytest.approx(1 / math.log2(4)) and at3["mrr@10"] == pytest.approx(1 / 3)
    assert (at3["r@1"], at3["r@5"], at3["r@20"]) == (0.0, 1.0, 1.0)
    at12 = single_relevant([f"x{i}" for i in range(11)] + ["a"], "a")
    assert at12 == {"ndcg@10": 0.0, "r@1": 0.0, "r@5": 0.0, "r@20": 1.0, "mrr@10": 0.0}
    assert single_relevant([f"x{i}" for i in range(20)] + ["a"], "a")["r@20"] == 0.0  # rank 21 is past the cut
    assert single_relevant([], "a")["ndcg@10"] == 0.0


def test_polyglot_gains_two_for_own_language_one_for_other_versions():
    by_id = {d.doc_id: d for d in DOCS}
    query = q(1, "de")
    ideal = polyglot_metrics(["p1-de", "p1-ar", "p1-th"], query, by_id, versions=3)
    assert ideal["ndcg@10"] == pytest.approx(1.0)
    assert ideal["own@10"] == pytest.approx(0.1) and ideal["para_mrr@10"] == 1.0 and ideal["r@20(own)"] == 1.0
    # the other-language version first, own second: DCG 1 + 2/log2(3) over ideal 2 + 1/log2(3) + 1/2
    swapped = polyglot_metrics(["p1-ar", "p1-de"], query, by_id, versions=3)
    assert swapped["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3) + 0.5))
    wrong = polyglot_metrics(["p0-de", "p2-de", "p1-th"], query, by_id, versions=3)
    assert wrong["para_mrr@10"] == pytest.approx(1 / 3) and wrong["r@20(own)"] == 0.0
    assert wrong["own@10"] == pytest.approx(0.2)


def test_matrix_summaries_separate_diagonal_and_off_diagonal_cells():
    queries = [q(p, lang) for p in range(3) for lang in LANGS]
    run = []
    for query in queries:
        for y in LANGS:
            gold = f"p{query.para}-{y}"
            # perfect except ar queries on th docs, where the gold doc comes second
            ranked = [gold] if not (query.lang == "ar" and y == "th") else [f"p{(query.para + 1) % 3}-th", gold]
            run.append(RunLine(query.qid, y, ranked))
    m = score_matrix(run, queries)
    assert m.languages == LANGS
    assert m.mono["ndcg@10"] == 1.0
    worst = 1 / math.log2(3)
    assert m.worst == ("ar", "th", pytest.approx(worst))
    assert m.xling["ndcg@10"] == pytest.approx((5 + worst) / 6)
    assert m.by_query_language["ar"] == pytest.approx((1 + worst) / 2)
    assert m.by_query_language["de"] == 1.0
    assert m.by_doc_language["th"] == pytest.approx((1 + worst) / 2)
    assert m.cells["ar"]["th"]["r@1"] == 0.0 and m.cells["ar"]["th"]["r@5"] == 1.0


def test_polyglot_score_ignores_matrix_lines_and_averages_per_language():
    queries = [q(0, "de"), q(0, "th")]
    run = [RunLine(queries[0].qid, "all", ["p0-de", "p0-ar", "p0-th"]), RunLine(queries[1].qid, "all", ["p2-th"])]
    run.append(RunLine(queries[1].qid, "th", ["p0-th"]))  # a matrix line: not part of the polyglot task
    p = score_polyglot(run, queries, DOCS)
    assert p.by_language["de"]["ndcg@10"] == pytest.approx(1.0)
    assert p.by_language["th"]["para_r@20"] == 0.0
    assert p.metrics["para_r@20"] == pytest.approx(0.5)


def test_run_file_round_trip_keeps_unicode_and_order(tmp_path):
    lines = [RunLine("q1-zh", "all", ["p3-zh", "p3-ja"]), RunLine("q1-zh", "ar", ["p1-ar"])]
    path = tmp_path / "runs" / "run.jsonl"
    write_run(path, lines)
    assert read_run(path) == lines
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"qid": "q1-zh", "corpus": "all", "ranked": ["p3-zh", "p3-ja"]}


def test_sample_keeps_every_language_of_the_chosen_questions(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"qid": f"id{n}-{lang}", "lang": lang, "question": f"Frage {n}", "para": n}
        for n in range(10)
        for lang in ("de", "hi")
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    picked = read_queries(path, sample=3)
    assert len(picked) == 6
    assert {x.qid.split("-")[0] for x in picked} == {"id0", "id3", "id6"}
    assert read_queries(path, languages=["hi"], sample=2)[0].lang == "hi"


def test_bad_benchmark_files_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"qid": "a", "question": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"q.jsonl: each line needs qid, lang, question and para"):
        read_queries(path)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"q.jsonl:1 is not a JSON line"):
        read_queries(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_queries(tmp_path / "missing.jsonl")


def test_report_text_and_heatmap_png(tmp_path):
    queries = [q(p, lang) for p in range(3) for lang in LANGS]
    run = [RunLine(x.qid, y, [f"p{x.para}-{y}"]) for x in queries for y in LANGS]
    run += [RunLine(x.qid, "all", [f"p{x.para}-{x.lang}"]) for x in queries]
    report = EvalReport(corpus="c", queries=len(queries), settings={})
    report.matrix = score_matrix(run, queries)
    report.polyglot = score_polyglot(run, queries, DOCS)
    text = format_report(report)
    assert "mono              1.000" in text and "Polyglot" in text
    png = heatmap(report.matrix, tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(report.to_json())["matrix"]["mono"]["ndcg@10"] == 1.0
