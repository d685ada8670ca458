"""Handing an ingestion job to the `babelrag serve` that holds the embedded store.

Embedded Chroma is one process's (rag/locks.py). When ``babelrag ingest`` (or
``Pipeline.ingest``) finds the store held by a running server, it sends the job to that server's
REST API (``POST /v1/jobs``, with ``server.token``) and follows it (``GET /v1/jobs/{id}``)
until it is done, so the caller gets the same report as if it had run the job itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ingestion.job import IngestReport, JobProgress, Progress
from rag.errors import BabelRAGError, IngestionError, LeaseHeldError, StoreError

log = logging.getLogger(__name__)

_ERRORS = {"LeaseHeldError": LeaseHeldError, "StoreError": StoreError, "IngestionError": IngestionError}


def ingest_through_server(
    url: str,
    paths: Sequence[str | Path],
    collection: str,
    *,
    token: str | None,
    prune: bool = False,
    reindex: bool = False,
    lease_wait_s: float | None = None,
    progress: Progress | None = None,
    poll_s: float = 0.5,
    connect_timeout_s: float = 15,
) -> IngestReport:
    """Run an ingestion job on the server at ``url`` and return its report."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {
        "paths": [str(Path(p).expanduser().resolve()) for p in paths],
        "collection": collection,
        "prune": prune,
        "reindex": reindex,
        "wait_s": lease_wait_s,
    }
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30) as client:
        job = _submit(client, url, body, connect_timeout_s)
        log.info("ingestion job %s handed to the server at %s", job["id"], url)
        last = -1
        while True:
            job = _json(client.get(f"/v1/jobs/{job['id']}"), url)
            if progress is not None and job.get("files_total") is not None and job["files_done"] != last:
                last = job["files_done"]
                progress(JobProgress(job["files_done"], job["files_total"], job["chunks_written"], job["current"]))
            if job["status"] == "done":
                return IngestReport.from_dict(job["report"])
            if job["status"] == "failed":
                error = _ERRORS.get(job.get("error_type", ""), BabelRAGError)
                message = f"the ingestion job on {url} failed: {job['error']}"
                raise error(message, {}) if error is LeaseHeldError else error(message)
            time.sleep(poll_s)


def _submit(client: httpx.Client, url: str, body: dict, connect_timeout_s: float) -> dict:
    deadline = time.monotonic() + connect_timeout_s  # a server that just started may not listen yet
    while True:
        try:
            return _json(client.post("/v1/jobs", json=body), url)
        except httpx.TransportError as e:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"the embedded store is held by `babelrag serve` at {url}, but it does not answer ({e}); "
                    "check that server, or stop it to ingest here"
                ) from e
            time.sleep(0.5)


def _json(response: httpx.Response, url: str) -> dict:
    if response.status_code == 401:
        raise StoreError(
            f"the embedded store is held by `babelrag serve` at {url}, which wants its token to take the job: "
            "set BABELRAG_SERVER_TOKEN (server.token) to the server's token"
        )
    if response.status_code >= 400:
        try:  # the error shape of ui/errors.py: {"error": {"message", "type", "code"}}
            error = response.json().get("error")
            detail = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            detail = None
        detail = detail or response.text[:300]
        raise IngestionError(f"the server at {url} refused the ingestion job (HTTP {response.status_code}): {detail}")
    return response.json()
