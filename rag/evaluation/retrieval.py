"""Retrieval evaluation on a parallel multilingual benchmark (format of shared/data/xquad).

The corpus is ingested with the real ingestion job into a throwaway collection (reused while the
corpus is unchanged) and every query goes through ``Pipeline.retrieve_many``, the code the UI and
the agents call. Two tasks:

* ``matrix``: for query language X and document language Y, search only the Y documents (a
  language filter on the store) for the one relevant doc ``p{para}-{Y}``.
* ``polyglot``: search all documents; every language version of the gold paragraph is relevant,
  with gain 2 in the query's language and 1 in the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rag.errors import ConfigError, IndexMismatchError

if TYPE_CHECKING:
    from rag.pipeline import Pipeline

Task = Literal["matrix", "polyglot"]
DEPTH = 20  # run files hold the top 20 doc ids; the scorer reads no deeper
CHUNKS_PER_DOC = 3  # chunks fetched per wanted doc id: a doc has several chunks
_SAFE_ID = re.compile(r"^[\w.-]{1,120}$")


@dataclass(frozen=True, slots=True)
class CorpusDoc:
    doc_id: str
    para: int
    lang: str
    text: str


@dataclass(frozen=True, slots=True)
class EvalQuery:
    qid: str
    lang: str
    question: str
    para: int
    answers: tuple[str, ...] = ()  # gold answer texts, in the query's language


@dataclass(frozen=True, slots=True)
class RunLine:
    qid: str
    corpus: str  # a language code (matrix) or "all" (polyglot)
    ranked: list[str]


@dataclass(slots=True)
class MatrixResult:
    languages: list[str]
    # cells[x][y][metric]: query language x, document language y
    cells: dict[str, dict[str, dict[str, float]]]
    mono: dict[str, float]
    xling: dict[str, float]
    worst: tuple[str, str, float]  # (query lang, doc lang, nDCG@10) of the worst off-diagonal cell
    by_query_language: dict[str, float]  # nDCG@10 over the off-diagonal cells of each row
    by_doc_language: dict[str, float]


@dataclass(slots=True)
class PolyglotResult:
    metrics: dict[str, float]
    by_language: dict[str, dict[str, float]]


@dataclass(slots=True)
class EvalReport:
    corpus: str
    queries: int
    settings: dict[str, object]
    matrix: MatrixResult | None = None
    polyglot: PolyglotResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)


# -- reading ------------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterable[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n} is not a JSON line: {e.msg}") from e


def read_corpus(path: Path, languages: Sequence[str] | None = None) -> list[CorpusDoc]:
    docs = []
    for row in _jsonl(path):
        try:
            doc = CorpusDoc(str(row["doc_id"]), int(row["para"]), str(row["lang"]), str(row["text"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: each line needs doc_id, para, lang and text; got keys {sorted(row)}") from e
        if not _SAFE_ID.match(doc.doc_id):
            raise ConfigError(f"{path}: doc_id {doc.doc_id!r} must be 1-120 letters, digits, '.', '_' or '-'")
        if languages is None or doc.lang in languages:
            docs.append(doc)
    if not docs:
        raise ConfigError(f"{path}: no documents" + (f" in languages {', '.join(languages)}" if languages else ""))
    return docs


def read_queries(path: Path, languages: Sequence[str] | None = None, sample: int | None = None) -> list[EvalQuery]:
    """The queries of ``path``; ``sample`` keeps that many questions (all their languages), spread
    evenly over the file so that every article is represented."""
    queries = []
    for row in _jsonl(path):
        try:
            q = EvalQuery(
                str(row["qid"]),
                str(row["lang"]),
                str(row["question"]),
                int(row["para"]),
                tuple(str(a) for a in row.get("answers") or ()),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: each line needs qid, lang, question and para; got keys {sorted(row)}") from e
        if languages is None or q.lang in languages:
            queries.append(q)
    if sample is not None:
        groups = list(dict.fromkeys(_question_id(q) for q in queries))
        step = max(len(groups) / max(sample, 1), 1.0)
        keep = {groups[int(i * step)] for i in range(min(sample, len(groups)))}
        queries = [q for q in queries if _question_id(q) in keep]
    if not queries:
        raise ConfigError(f"{path}: no queries" + (f" in languages {', '.join(languages)}" if languages else ""))
    return queries


def _question_id(q: EvalQuery) -> str:
    suffix = f"-{q.lang}"
    return q.qid.removesuffix(suffix)


def read_run(path: Path) -> list[RunLine]:
    return [RunLine(str(r["qid"]), str(r.get("corpus", "all")), [str(d) for d in r["ranked"]]) for r in _jsonl(path)]


def write_run(path: Path, lines: Iterable[RunLine]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(
                json.dumps(
                    {"qid": line.qid, "corpus": line.corpus, "ranked": line.ranked},
                    ensure_ascii=False,
                )
            )
            f.write("\n")
    tmp.replace(path)


# -- metrics ------------------------------------------------------------------------------


def _rank(ranked: Sequence[str], relevant: str) -> int | None:
    try:
        return ranked.index(relevant) + 1
    except ValueError:
        return None


def single_relevant(ranked: Sequence[str], relevant: str) -> dict[str, float]:
    rank = _rank(ranked[:DEPTH], relevant)
    return {
        "ndcg@10": 1 / math.log2(1 + rank) if rank and rank <= 10 else 0.0,
        "r@1": float(rank == 1),
        "r@5": float(bool(rank and rank <= 5)),
        "r@20": float(bool(rank and rank <= 20)),
        "mrr@10": 1 / rank if rank and rank <= 10 else 0.0,
    }


def polyglot_metrics(
    ranked: Sequence[str], query: EvalQuery, docs: dict[str, CorpusDoc], versions: int
) -> dict[str, float]:
    """``versions``: how many language versions of each paragraph the corpus holds."""
    top = [docs[d] for d in ranked[:DEPTH] if d in docs]
    gains = [(2 if d.lang == query.lang else 1) if d.para == query.para else 0 for d in top[:10]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = [2] + [1] * min(versions - 1, 9)
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i + 1 for i, d in enumerate(top[:10]) if d.para == query.para), None)
    return {
        "ndcg@10": dcg / idcg,
        "para_r@20": float(any(d.para == query.para for d in top[:20])),
        "para_mrr@10": 1 / first if first else 0.0,
        "own@10": sum(d.lang == query.lang for d in top[:10]) / 10,
        "r@20(own)": float(any(d.para == query.para and d.lang == query.lang for d in top[:20])),
    }


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def score_matrix(run: Iterable[RunLine], queries: Sequence[EvalQuery]) -> MatrixResult:
    by_qid = {q.qid: q for q in queries}
    per_cell: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for line in run:
        q = by_qid.get(line.qid)
        if q is None or line.corpus == "all":
            continue
        per_cell[(q.lang, line.corpus)].append(single_relevant(line.ranked, f"p{q.para}-{line.corpus}"))
    languages = sorted({x for x, _ in per_cell} | {y for _, y in per_cell})
    cells: dict[str, dict[str, dict[str, float]]] = {x: {} for x in languages}
    for (x, y), rows in per_cell.items():
        cells[x][y] = _mean(rows)
    diagonal = [cells[x][x] for x in languages if x in cells[x]]
    off = [(x, y, cells[x][y]) for x in languages for y in languages if x != y and y in cells[x]]
    worst = min(off, key=lambda c: c[2]["ndcg@10"]) if off else None
    return MatrixResult(
        languages=languages,
        cells=cells,
        mono=_mean(diagonal),
        xling=_mean([c for _, _, c in off]),
        worst=(worst[0], worst[1], worst[2]["ndcg@10"]) if worst else ("", "", float("nan")),
        by_query_language={
            x: _mean([c for qx, _, c in off if qx == x]).get("ndcg@10", float("nan")) for x in languages
        },
        by_doc_language={y: _mean([c for _, dy, c in off if dy == y]).get("ndcg@10", float("nan")) for y in languages},
    )


def score_polyglot(run: Iterable[RunLine], queries: Sequence[EvalQuery], docs: Sequence[CorpusDoc]) -> PolyglotResult:
    by_qid = {q.qid: q for q in queries}
    by_id = {d.doc_id: d for d in docs}
    versions = max(sum(1 for d in docs if d.para == p) for p in {d.para for d in docs})
    per_lang: dict[str, list[dict[str, float]]] = defaultdict(list)
    for line in run:
        q = by_qid.get(line.qid)
        if q is not None and line.corpus == "all":
            per_lang[q.lang].append(polyglot_metrics(line.ranked, q, by_id, versions))
    every = [m for rows in per_lang.values() for m in rows]
    return PolyglotResult(
        metrics=_mean(every),
        by_language={lang: _mean(rows) for lang, rows in sorted(per_lang.items())},
    )


# -- running ------------------------------------------------------------------------------


def corpus_folder(docs: Sequence[CorpusDoc], workdir: Path) -> Path:
    """The corpus as one text file per doc (``DOC_ID.txt``), the form ingestion reads.
    Files are only rewritten when their text changed, so the job skips them on a re-run."""
    digest = hashlib.sha256("\n".join(f"{d.doc_id}\t{d.text}" for d in docs).encode()).hexdigest()[:12]
    folder = workdir / f"corpus-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for d in docs:
        path = folder / f"{d.doc_id}.txt"
        if not path.exists() or path.read_text(encoding="utf-8") != d.text:
            path.write_text(d.text, encoding="utf-8")
    return folder


def ranked_doc_ids(hits, depth: int = DEPTH) -> list[str]:
    """Doc ids (file stems) in order of their best chunk."""
    return list(dict.fromkeys(Path(h.chunk.source).stem for h in hits))[:depth]


def run_retrieval(
    pipeline: Pipeline,
    *,
    collection: str,
    docs: Sequence[CorpusDoc],
    queries: Sequence[EvalQuery],
    tasks: Sequence[Task],
    reranker: str | None = None,
    batch: int = 256,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[RunLine], dict[str, float]]:
    """Every query through ``pipeline.retrieve_many``: against each document language with a
    language filter (matrix) and against the whole corpus (polyglot)."""
    say = progress or (lambda _msg: None)
    top_k = DEPTH * CHUNKS_PER_DOC
    lines: list[RunLine] = []
    corpora: list[tuple[str, dict | None]] = []
    if "matrix" in tasks:
        corpora += [(lang, {"language": lang}) for lang in sorted({d.lang for d in docs})]
    if "polyglot" in tasks:
        corpora.append(("all", None))
    # batches outside, corpora inside: each batch's query vectors are embedded once and then
    # served from the pipeline's query cache for every language filter
    seconds = dict.fromkeys((c for c, _ in corpora), 0.0)
    for i in range(0, len(queries), batch):
        part = queries[i : i + batch]
        for corpus, where in corpora:
            started = time.perf_counter()
            results = pipeline.retrieve_many(
                [q.question for q in part], collection=collection, top_k=top_k, where=where, reranker=reranker
            )
            lines += [RunLine(q.qid, corpus, ranked_doc_ids(hits)) for q, hits in zip(part, results, strict=True)]
            seconds[corpus] += time.perf_counter() - started
        say(f"{min(i + batch, len(queries))}/{len(queries)} queries against {len(corpora)} corpora")
    return lines, seconds


def heatmap(result: MatrixResult, path: Path, *, title: str = "nDCG@10") -> Path:
    """The matrix as a PNG: rows are query languages, columns document languages."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the heatmap needs matplotlib: pip install 'babelrag[eval]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = result.languages
    values = [[result.cells[x].get(y, {}).get("ndcg@10", float("nan")) for y in langs] for x in langs]
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(langs), 0.8 + 0.55 * len(langs)))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xlabel("document language")
    ax.set_ylabel("query language")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}"[1:] if v < 1 else "1",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.6 else "black",
                )
    ax.set_title(f"{title}: mono {result.mono.get('ndcg@10', 0):.3f}, x-ling {result.xling.get('ndcg@10', 0):.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eval_index_settings(settings) -> dict:
    """What an eval collection's vectors depend on. Wider than the collection fingerprint: it
    names the embedding backend, quantization and dtype, which the fingerprint leaves out (their
    vectors are interchangeable within a collection, rag/embedder.py) but an evaluation compares."""
    e = settings.embedding
    return {
        "model": e.model,
        "embedding_run": f"{e.backend}/{e.quantization}/{e.dtype}",
        **settings.chunking.model_dump(),
    }


def eval_collection_name(docs: Sequence[CorpusDoc], fingerprint: dict) -> str:
    digest = hashlib.sha256(
        json.dumps([sorted(d.doc_id for d in docs), fingerprint], sort_keys=True).encode()
    ).hexdigest()[:12]
    return f"eval-{digest}"


def format_report(report: EvalReport) -> str:
    out = []
    m = report.matrix
    if m is not None:

        def row(label: str, r: dict[str, float]) -> str:
            return f"{label:<14}" + "".join(
                f"{r.get(k, float('nan')):>9.3f}" for k in ("ndcg@10", "r@1", "r@5", "r@20", "mrr@10")
            )

        out.append(
            f"Matrix ({len(m.languages)}×{len(m.languages)}), metric{'':<4}"
            + "".join(f"{k:>9}" for k in ("ndcg@10", "r@1", "r@5", "r@20", "mrr@10"))
        )
        out.append(row("mono", m.mono))
        out.append(row("cross-lingual", m.xling))
        out.append(f"worst cell    {m.worst[0]}→{m.worst[1]} nDCG@10 {m.worst[2]:.3f}")
        out.append("nDCG@10 (rows: query language, columns: document language)")
        out.append("      " + "".join(f"{y:>6}" for y in m.languages) + "   x-ling")
        for x in m.languages:
            cells = "".join(f"{m.cells[x].get(y, {}).get('ndcg@10', float('nan')):>6.2f}" for y in m.languages)
            out.append(f"{x:<6}{cells}   {m.by_query_language[x]:.3f}")
        out.append("x-ling" + "".join(f"{m.by_doc_language[y]:>6.2f}" for y in m.languages))
    p = report.polyglot
    if p is not None:
        keys = ("ndcg@10", "para_r@20", "para_mrr@10", "own@10", "r@20(own)")
        out.append("")
        out.append("Polyglot      " + "".join(f"{k:>12}" for k in keys))
        out.append("all           " + "".join(f"{p.metrics[k]:>12.3f}" for k in keys))
        for lang, r in p.by_language.items():
            out.append(f"{lang:<14}" + "".join(f"{r[k]:>12.3f}" for k in keys))
    if report.seconds:
        out.append("")
        out.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
    return "\n".join(out)


def ingest_corpus(pipeline: Pipeline, docs: Sequence[CorpusDoc], *, label: str, progress: Callable[[str], None]) -> str:
    """The name of the eval collection holding ``docs``, made or brought up to date by the real
    ingestion job; the same docs and index settings always give the same collection."""
    folder = corpus_folder(docs, Path(pipeline.settings.store.path).parent / "eval")
    collection = eval_collection_name(docs, eval_index_settings(pipeline.settings))
    try:
        job = pipeline.ingest([folder], collection=collection, prune=True)
    except IndexMismatchError:  # a throwaway collection: rebuild it for the current settings
        job = pipeline.ingest([folder], collection=collection, prune=True, reindex=True)
    if job.failed:
        first = job.failed[0]
        raise ConfigError(f"{len(job.failed)} corpus files failed to ingest, e.g. {first.path}: {first.reason}")
    progress(
        f"corpus {label}: {len(docs)} docs in collection {collection!r} ({len(job.added)} added, "
        f"{len(job.updated)} updated, {len(job.unchanged)} unchanged, {job.chunks_written} chunks written)"
    )
    return collection


def evaluate_retrieval(
    pipeline: Pipeline,
    *,
    corpus: Path,
    queries: Path,
    tasks: Sequence[Task] = ("matrix", "polyglot"),
    languages: Sequence[str] | None = None,
    sample: int | None = None,
    reranker: str | None = None,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalReport:
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    docs = read_corpus(corpus, languages)
    qs = read_queries(queries, languages, sample)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    collection = ingest_corpus(pipeline, docs, label=str(corpus), progress=say)
    seconds["ingest"] = time.perf_counter() - started
    lines, per_corpus = run_retrieval(
        pipeline,
        collection=collection,
        docs=docs,
        queries=qs,
        tasks=tasks,
        reranker=reranker,
        progress=say,
    )
    seconds.update({f"retrieve {k}": v for k, v in per_corpus.items()})
    if out is not None:
        write_run(out, lines)
    report = EvalReport(
        corpus=str(corpus),
        queries=len(qs),
        settings={
            "retrieval": pipeline.settings.retrieval.model_dump(),
            "reranker": reranker or pipeline.settings.reranker.kind,
            "embedding": pipeline.settings.embedding.model,
            "sample": sample,
        },
        seconds=seconds,
    )
    stage = pipeline.reranker(reranker)
    if hasattr(stage, "failures"):  # llm-listwise: windows the LLM could not rank kept their order
        report.settings["reranker_windows"] = stage.windows
        report.settings["reranker_failed_windows"] = stage.failures
    if "matrix" in tasks:
        report.matrix = score_matrix(lines, qs)
    if "polyglot" in tasks:
        report.polyglot = score_polyglot(lines, qs, docs)
    return report
