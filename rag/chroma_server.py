"""`babelrag serve --chroma`: the embedded store served by a `chroma run` child process.

Embedded Chroma is one process's (rag/locks.py). For several processes on one machine (serve
replicas, scheduled ingestion jobs, the CLI) the same folder is served by a Chroma server: this
process takes the folder's lock, starts ``chroma run --path STORE`` on loopback, and writes the
server's URL into the lock, so that any BabelRAG process that opens the embedded store uses the
server instead (ChromaStore does this by itself). The child dies with this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from rag.errors import StoreError
from rag.locks import StoreLock


@dataclass(frozen=True, slots=True)
class EmbeddedChromaServer:
    url: str
    lock: StoreLock
    process: subprocess.Popen


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG), so
    a killed `babelrag serve` never leaves a server writing a folder nobody holds the lock of."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def serve_embedded_store(path: Path, *, port: int = 8000, timeout_s: float = 60) -> Iterator[EmbeddedChromaServer]:
    path = Path(path)
    lock = StoreLock.acquire(path)
    chroma = Path(sys.executable).parent / "chroma"
    url = f"http://127.0.0.1:{port}"
    log_file = Path(f"{path.resolve()}.chroma.log")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        try:
            _wait_until_up(url, proc, timeout_s, log_file)
            lock.announce(chroma_url=url)
            yield EmbeddedChromaServer(url, lock, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        lock.release()


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text("utf-8", errors="replace")[-500:].strip()
            raise StoreError(
                f"`chroma run` for {url} exited at once ({tail or 'no output'}); is the port in use? "
                "pick another with --chroma-port"
            )
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise StoreError(f"`chroma run` did not answer {url} within {timeout_s:.0f} s; see {log_file}")
