"""Logs: text or JSON lines, each stamped with the id of the request it belongs to.

The request id lives in a context variable: ``request_scope`` sets it (the web app does, per HTTP
request, from ``X-Request-ID`` or a new id), and everything that runs in that context logs with it:
the answer's stages in ``asyncio.to_thread`` workers (which copy the context) as much as the
event loop's task. Threads started by hand do not inherit a context; they run their work in
``contextvars.copy_context()`` (the server's ingestion jobs do).

Only programs configure logging (``configure_logging``: the CLI); as a library BabelRAG leaves
the root logger to its user, who may install ``JsonFormatter`` and ``RequestIdFilter`` themselves.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from rag.config import LoggingConfig

_REQUEST_ID: ContextVar[str | None] = ContextVar("babelrag_request_id", default=None)
# What a client may send as X-Request-ID: what proxies and tracers use (uuids, hex, trace ids),
# nothing a log reader could mistake for structure.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Attributes every LogRecord has; anything else on a record was passed as ``extra`` and goes into the JSON.
# uvicorn adds color_message, its message with terminal colour codes.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_id", "color_message"
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> bool:
    """Whether ``value`` may be used as a request id as sent (else the server makes its own)."""
    return value is not None and bool(_SAFE_ID.match(value))


@contextmanager
def request_scope(request_id: str | None = None) -> Iterator[str]:
    """Log everything in this block (and what it hands to ``asyncio.to_thread``) with ``request_id``
    as sent by a client (X-Request-ID), or with a new id when none came or it is not a safe one
    (1-128 letters, digits, ``._:-``): a header value is not trusted into every log line. Yields the id."""
    rid = request_id if valid_request_id(request_id) else new_request_id()
    token = _REQUEST_ID.set(rid)
    try:
        yield rid
    finally:
        _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context it is logged in. A filter, not the
    formatter: it runs in the logging thread, where the context is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id when
    there is one, the record's ``extra`` fields (stage, seconds, method, route, status ...), and
    the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request id]: message`` (the id only when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        rid = f" [{request_id}]" if request_id else ""
        line = f"{self.formatTime(record)} {record.levelname} {record.name}{rid}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(config: LoggingConfig, stream: IO[str] | None = None) -> None:
    """Send every log record at ``config.level`` or above to ``stream`` (stderr) in ``config.format``.
    Python's warnings become records too, so that a JSON log holds nothing but JSON. Calling it
    again replaces the handler it installed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_babelrag", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._babelrag = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    logging.captureWarnings(True)


def transformers_through_root() -> None:
    """Send transformers' records to the root logger, like every other library's: by default it
    prints them through a handler of its own, in its own format, past ``--log-format json``.
    Called where BabelRAG loads a transformers model (importing it here would slow every command)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
