"""`babelrag eval retrieval` end to end on a slice of the xquad dev data: real ingestion, real
embedding model, real Chroma, the real Pipeline.retrieve_many; dense and hybrid."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, need_env
from tests.integration.test_cli import run

XQUAD = ROOT.parent / "shared" / "data" / "xquad"
LANGS = ("ar", "de", "hi", "th", "zh")  # RTL, Latin, Devanagari, two scripts without spaces
PARAS = range(10)  # articles 0 and 1: 10 paragraphs with close, on-topic negatives

pytestmark = [pytest.mark.model, pytest.mark.integration]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    need_env("BABELRAG_EMBEDDING_MODEL")
    if not (XQUAD / "corpus.jsonl").exists():
        pytest.fail(f"the xquad dev data is missing at {XQUAD}")
    folder = tmp_path_factory.mktemp("xquad-slice")
    corpus = [json.loads(line) for line in (XQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (XQUAD / "queries_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    (folder / "corpus.jsonl").write_text(
        "\n".join(json.dumps(d, ensure_ascii=False) for d in corpus if d["lang"] in LANGS and d["para"] in PARAS),
        encoding="utf-8",
    )
    picked = [q for q in queries if q["lang"] in LANGS and q["para"] in PARAS]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in picked), "utf-8")
    return folder


def eval_cli(bench, tmp_path, *extra: str, env: dict[str, str] | None = None):
    args = ["eval", "retrieval", "--corpus", str(bench / "corpus.jsonl"), "--queries", str(bench / "queries.jsonl")]
    return run(*args, *extra, env={"BABELRAG_STORE_PATH": str(bench / "store"), **(env or {})}, timeout=900)


def test_eval_writes_run_file_metrics_and_heatmap(bench, tmp_path):
    result = eval_cli(bench, tmp_path, "--sample", "12", "--out", str(tmp_path / "run.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    m, p = report["matrix"], report["polyglot"]
    assert m["languages"] == sorted(LANGS)
    # e5-small on 10 paragraphs: a strong system, far above chance (nDCG@10 of a random order ≈ 0.3)
    assert m["mono"]["ndcg@10"] > 0.85 and m["xling"]["ndcg@10"] > 0.6
    assert p["metrics"]["para_r@20"] > 0.9
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == report["queries"] * (len(LANGS) + 1) == 12 * len(LANGS) * (len(LANGS) + 1)
    assert {line["corpus"] for line in lines} == {*LANGS, "all"}
    for line in lines:
        assert len(line["ranked"]) == len(set(line["ranked"])) == (10 if line["corpus"] != "all" else 20)
        if line["corpus"] != "all":  # the language filter holds: only that language's docs
            assert all(d.endswith("-" + line["corpus"]) for d in line["ranked"])
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    assert f"({len(LANGS) * len(PARAS)} added, 0 updated, 0 unchanged" in result.stderr

    # the second run reuses the collection: nothing is embedded again
    again = eval_cli(bench, tmp_path, "--sample", "2", "--task", "polyglot")
    assert again.returncode == 0, again.stderr
    assert f"0 added, 0 updated, {len(LANGS) * len(PARAS)} unchanged, 0 chunks written" in again.stderr
    assert "Polyglot" in again.stdout and "Matrix" not in again.stdout


def test_hybrid_mode_runs_through_the_same_harness(bench, tmp_path):
    result = eval_cli(bench, tmp_path, "--sample", "12", "--mode", "hybrid", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["retrieval"]["mode"] == "hybrid"
    assert report["matrix"]["mono"]["ndcg@10"] > 0.85


def test_bad_task_and_missing_file_are_one_line_errors(bench, tmp_path):
    bad = eval_cli(bench, tmp_path, "--task", "pairs")
    assert bad.returncode == 1 and "--task must be matrix, polyglot or both, got 'pairs'" in bad.stderr
    missing = run("eval", "retrieval", "--corpus", str(tmp_path / "none.jsonl"), "--queries", str(tmp_path / "q"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
