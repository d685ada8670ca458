"""Log lines as `babelrag --log-format json` writes them: one JSON object each, with the request id
of the context they were logged in, across worker threads and the async API."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import warnings

import pytest

from rag.config import LoggingConfig
from rag.logs import configure_logging, request_scope, transformers_through_root
from rag.trace import Trace, substage


@pytest.fixture
def logged():
    """Configure logging as the CLI does, into a buffer; give back the lines; restore the root logger."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()

    def lines(config: LoggingConfig | None = None) -> io.StringIO:
        configure_logging(config or LoggingConfig(format="json", level="info"), stream=buffer)
        return buffer

    yield lines
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def parsed(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_stage_lines_carry_the_request_id_across_threads_and_the_async_api(logged):
    buffer = logged()
    trace = Trace()

    def retrieve() -> None:  # as Pipeline._retrieve_many runs in asyncio.to_thread for the async API
        with trace.stage("retrieve"), substage("embed"):
            pass

    async def answer() -> None:
        with request_scope("frage-7f3a") as request_id:
            assert request_id == "frage-7f3a"
            await asyncio.to_thread(retrieve)
            trace.mark("first_token")
        trace.mark("generate")  # after the request: no id

    asyncio.run(answer())
    lines = parsed(buffer)
    assert [(line["stage"], line.get("request_id")) for line in lines] == [
        ("embed", "frage-7f3a"), ("retrieve", "frage-7f3a"), ("first_token", "frage-7f3a"), ("generate", None),
    ]  # fmt: skip
    assert all(line["level"] == "info" and line["logger"] == "rag.trace" and line["time"].endswith("Z") for line in lines)
    assert 0 <= trace.timings["embed"] <= trace.timings["retrieve"]  # embed is timed inside retrieve
    assert lines[1]["seconds"] == pytest.approx(trace.timings["retrieve"], abs=1e-5)


def test_a_client_id_is_kept_only_when_safe():
    with request_scope("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") as kept:
        assert kept.startswith("00-4bf92f")  # a W3C traceparent
    for unsafe in ("mit Leerzeichen", 'x"}\n{"level": "error"', "x" * 129, "", None, "クエリ"):
        with request_scope(unsafe) as made:
            assert made != unsafe and len(made) == 32 and int(made, 16) >= 0


def test_extras_exceptions_and_warnings_become_json_fields(logged):
    buffer = logged()
    log = logging.getLogger("babelrag.test")
    with request_scope("r1"):
        log.info("ingested %d chunks", 12, extra={"collection": "handbuch", "chunks_per_s": 4.5})
        try:
            raise ValueError("schlecht")
        except ValueError:
            log.exception("Fehler beim Laden von %s", "bericht.pdf")
    warnings.warn("veraltet", DeprecationWarning, stacklevel=1)
    info, error, warned = parsed(buffer)
    assert info["message"] == "ingested 12 chunks" and info["collection"] == "handbuch" and info["chunks_per_s"] == 4.5
    assert error["level"] == "error" and error["message"] == "Fehler beim Laden von bericht.pdf"
    assert error["request_id"] == "r1" and "ValueError: schlecht" in error["exception"]
    assert warned["logger"] == "py.warnings" and "veraltet" in warned["message"] and "request_id" not in warned


def test_text_lines_show_the_request_id_and_the_level_filters(logged):
    buffer = logged(LoggingConfig(format="text", level="warning"))
    log = logging.getLogger("babelrag.test")
    with request_scope("abc-1"):
        log.info("not shown at level warning")
        log.warning("Zeitüberschreitung")
    log.warning("ohne Anfrage")
    first, second = buffer.getvalue().splitlines()
    assert first.endswith("WARNING babelrag.test [abc-1]: Zeitüberschreitung")
    assert second.endswith("WARNING babelrag.test: ohne Anfrage")


def test_transformers_warnings_are_json_lines_too(logged):
    from transformers.utils import logging as transformers_logging

    buffer = logged()
    transformers_through_root()  # as loading a model does
    transformers_logging.get_logger("transformers.tokenization_utils_base").warning("Token indices sequence too long")
    (line,) = parsed(buffer)
    assert line["logger"] == "transformers.tokenization_utils_base" and line["level"] == "warning"
