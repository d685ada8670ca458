"""Prometheus metrics of one Pipeline; `babelrag serve` exposes them at /metrics (behind the token).

Where each number comes from, so that nothing is timed twice:
- answers, whatever asked (REST, the OpenAI endpoint, MCP, the web UI, the CLI, Python): the
  finished Answer: its trace's stage timings (rag/trace.py), tokens, language retries,
  translations, "not found";
- searches: their trace's stage timings;
- ingestion jobs this process ran: their IngestReport;
- HTTP requests: the web app's middleware (``observe_request``);
- the store's and the LLM server's health: each ``Pipeline.readiness`` check (GET /metrics runs
  one per scrape, /readyz one per call).

Each Metrics has its own registry (a process may hold several pipelines: tests, notebooks).
Counters live in this process's memory: right for `babelrag serve`, which runs one process with
one worker. Several worker processes would each count their own share and need prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR), which is not set up.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from rag.types import Answer

# From a cached language check (~5 ms) to a CPU LLM writing a long answer (minutes).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
INGEST_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)

IngestOutcome = Literal["ok", "with_failures", "error"]


class Health(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def seconds(self) -> float: ...


class Metrics:
    """The counters and histograms of one Pipeline (``Pipeline.metrics``); ``render`` gives the
    Prometheus text exposition."""

    def __init__(self, *, models: Mapping[str, str] | None = None) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=r)  # python_info
        Info("babelrag_build", "BabelRAG's version and the models it is set up with.", registry=r).info(
            {"version": _version("babelrag"), **(models or {})}
        )
        self.up = Gauge("babelrag_up", "1 when the component (store, llm) answered its last health check, else 0.",
                        ["component"], registry=r)  # fmt: skip
        self.health_seconds = Gauge(
            "babelrag_health_check_duration_seconds", "Seconds the component's last health check took.",
            ["component"], registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "babelrag_http_requests", "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "babelrag_http_request_duration_seconds", "Seconds to answer an HTTP request, streamed bodies included.",
            ["method", "route"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "babelrag_stage_duration_seconds",
            "Seconds per stage of answers and searches: language, embed (part of retrieve), retrieve, rerank, "
            "fit, rewrite, first_token (from the question on), generate, translate.",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.answer_seconds = Histogram(
            "babelrag_answer_duration_seconds", "Seconds from the question to the whole answer.",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.answers = Counter(
            "babelrag_answers", "Answers, by outcome (answered, not_found, cancelled) and answer language.",
            ["outcome", "language"], registry=r,
        )  # fmt: skip
        self.tokens = Counter("babelrag_llm_tokens", "LLM tokens spent on answers, by kind (prompt, completion).",
                              ["kind"], registry=r)  # fmt: skip
        self.llm_calls = Counter(
            "babelrag_llm_calls", "LLM calls made for answers (first tries, language retries, translations, rewrites).",
            registry=r,
        )  # fmt: skip
        self.language_retries = Counter(
            "babelrag_answer_language_retries",
            "Answers asked for again because they started in another language than the answer language.",
            ["language"], registry=r,
        )  # fmt: skip
        self.translations = Counter(
            "babelrag_answer_translations", "Answers translated into the answer language after both tries missed it.",
            ["language"], registry=r,
        )  # fmt: skip
        self.ingest_jobs = Counter(
            "babelrag_ingest_jobs", "Ingestion jobs this process ran, by outcome (ok, with_failures, error).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.ingest_files = Counter(
            "babelrag_ingest_files",
            "Files ingestion jobs saw, by outcome (added, updated, unchanged, removed, failed).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.ingest_chunks = Counter("babelrag_ingest_chunks_written", "Chunks ingestion jobs wrote to the store.",
                                     registry=r)  # fmt: skip
        self.ingest_seconds = Histogram("babelrag_ingest_duration_seconds", "Seconds per ingestion job.",
                                        buckets=INGEST_BUCKETS, registry=r)  # fmt: skip
        self.ingest_rate = Gauge(
            "babelrag_ingest_chunks_per_second", "Chunks per second of the last ingestion job that wrote any.",
            registry=r,
        )  # fmt: skip

    # -- what the pipeline and the web app report ---------------------------------------------

    def observe_health(self, checks: Mapping[str, Health]) -> None:
        for component, check in checks.items():
            self.up.labels(component).set(1 if check.ok else 0)
            self.health_seconds.labels(component).set(check.seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        """A finished trace's stages; "total" is an answer's (``observe_answer``), not a stage."""
        for stage, seconds in timings.items():
            if stage != "total":
                self.stage_seconds.labels(stage).observe(seconds)

    def observe_answer(self, answer: Answer, *, cancelled: bool = False) -> None:
        language = answer.target_language or answer.language or "unknown"
        outcome = "cancelled" if cancelled else "answered" if answer.found else "not_found"
        self.answers.labels(outcome, language).inc()
        self.observe_stages(answer.timings)
        if "total" in answer.timings:
            self.answer_seconds.observe(answer.timings["total"])
        self.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        self.tokens.labels("completion").inc(answer.usage.completion_tokens)
        self.llm_calls.inc(answer.usage.calls)
        if answer.language_attempts > 1:
            self.language_retries.labels(language).inc()
        if answer.translated:
            self.translations.labels(language).inc()

    def observe_ingest(
        self, outcome: IngestOutcome, *, files: Mapping[str, int] | None = None, chunks_written: int = 0,
        seconds: float | None = None,
    ) -> None:  # fmt: skip
        """One job: ``files`` counts by outcome (added, updated, unchanged, removed, failed)."""
        self.ingest_jobs.labels(outcome).inc()
        for kind, count in (files or {}).items():
            self.ingest_files.labels(kind).inc(count)
        self.ingest_chunks.inc(chunks_written)
        if seconds is not None:
            self.ingest_seconds.observe(seconds)
            if chunks_written and seconds > 0:
                self.ingest_rate.set(chunks_written / seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type, as GET /metrics answers them."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
