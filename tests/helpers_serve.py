"""`babelrag serve` as its own process, as production runs it, and what /proc says about it:
memory (VmRSS, and VmHWM, its peak so far) and open file descriptors. Tests of hostile input and
of load measure the server alone this way, apart from the pytest process driving it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, wait_until_serving
from tests.helpers_web import ARTIFACTS
from tests.integration.test_cli import BABELRAG


@dataclass(frozen=True)
class Served:
    url: str
    pid: int
    root: Path  # its store, uploads (root/uploads/<collection>) and reports

    def memory_mb(self, field: str = "VmRSS") -> float:
        """``field`` of /proc/PID/status (VmRSS now, VmHWM the peak so far), in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def open_files(self) -> tuple[int, int]:
        """(files, pipes and other descriptors; sockets): sockets come and go with the requests in flight."""
        files = sockets = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:"):
                sockets += 1
            else:
                files += 1
        return files, sockets


@contextmanager
def babelrag_serve(tmp_path: Path, llm_url: str, **env: str) -> Iterator[Served]:
    """The app on a free port with configs/cpu-small.yaml, an embedded store and upload folder in
    ``tmp_path``, the LLM at ``llm_url``; ``env`` adds BABELRAG_* settings. Stopped at the end; its
    log is kept as test-artifacts/serve-<tmp_path's name>.log."""
    port = free_port()
    environment = {
        **os.environ,
        "BABELRAG_SERVER_PORT": str(port),
        "BABELRAG_STORE_PATH": str(tmp_path / "chroma"),
        "BABELRAG_STORE_INDEX_DIR": str(tmp_path / "index"),
        "BABELRAG_SERVER_UPLOAD_DIR": str(tmp_path / "uploads"),
        "BABELRAG_INGESTION_REPORT_DIR": str(tmp_path / "reports"),
        "BABELRAG_LLM_BASE_URL": llm_url,
        "BABELRAG_LLM_MODEL": "m",  # FakeLLM's
        "BABELRAG_GENERATION_TOKENIZER": "estimate",
        **env,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / f"serve-{tmp_path.name}.log").open("w")
    proc = subprocess.Popen(
        [BABELRAG, "serve", "--config", str(ROOT / "configs" / "cpu-small.yaml")], cwd=ROOT, env=environment,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/healthz", proc, ready=lambda r: r.status_code == 200, what="babelrag serve")
        yield Served(url, proc.pid, tmp_path)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def wait_for_job(client: httpx.Client, job: dict, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    return job


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body with the file names written as given, control characters and all, as a
    hostile client sends them (httpx would percent-encode them). Only CR, LF and '"' are encoded,
    as browsers do: raw, they would end the header, and the request would be no upload at all."""
    boundary = "babel-boundary-5c1e"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="'.encode()
        + name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22").encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
