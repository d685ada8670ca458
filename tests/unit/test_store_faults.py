"""What a job does while the store does not answer (ingestion.job.retry_unavailable), and how a
folder that cannot be written is described (rag.disk). The real faults (a Chroma server killed, a
full or read-only disk) are in tests/integration/test_chroma_outage.py and test_disk_faults.py."""

from __future__ import annotations

import errno
import os
import time

import pytest

from ingestion.job import retry_unavailable
from rag.disk import disk_problem, os_problem
from rag.errors import StoreUnavailableError

DOWN = "the Chroma server at http://127.0.0.1:9 does not answer (ConnectError: refused)"


def failing(times: int):
    calls: list[float] = []

    def call(value: str) -> str:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise StoreUnavailableError(DOWN)
        return value

    return call, calls


def test_a_call_is_tried_again_until_the_store_answers():
    call, calls = failing(2)
    assert retry_unavailable(30, call, "Zug") == "Zug"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.2 and calls[2] - calls[1] >= 0.4  # backing off


def test_a_store_that_stays_down_ends_the_job_after_its_patience_saying_what_to_do():
    call, calls = failing(10**6)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        retry_unavailable(0.7, call, "Zug")
    assert 0.7 <= time.monotonic() - started < 5 and len(calls) >= 3
    message = str(caught.value)
    assert message.startswith(DOWN) and "waited 0.7 s" in message and "ingestion.store_retry_s" in message
    assert "re-run it" in message and "what it wrote is kept" in message


def test_no_patience_fails_at_once_with_the_stores_own_error():
    call, calls = failing(1)
    with pytest.raises(StoreUnavailableError) as caught:
        retry_unavailable(0, call, "Zug")
    assert str(caught.value) == DOWN and len(calls) == 1


def test_a_writable_folder_has_no_disk_problem_and_the_probe_leaves_nothing(tmp_path):
    (tmp_path / "store").mkdir()
    assert disk_problem(tmp_path / "store" / "not-yet" / "there") is None  # the nearest existing parent is asked
    assert list(tmp_path.rglob("*")) == [tmp_path / "store"]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "its disk is full ("),
        (errno.EROFS, "mounted read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EDQUOT, "quota"),
        (errno.EIO, "writing there fails (Input/output error)"),
    ],
)
def test_os_errors_are_described_by_their_cause(tmp_path, code, says):
    assert says in os_problem(OSError(code, os.strerror(code)), tmp_path)
