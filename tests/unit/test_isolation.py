"""The guard of `make test-fast` (tests/isolation.py): a unit test that starts a process, reaches
a server of another process or the network, or reads a provisioned model fails, with the fix."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.helpers import FakeLLM
from tests.isolation import GUARD, MODEL_VARIABLES, NotAUnitTest


def test_the_guard_watches_an_unmarked_test(request):
    assert GUARD.test == request.node.nodeid
    assert not any(name in os.environ for name in MODEL_VARIABLES)  # a model would be asked of the hub, offline


def test_a_unit_test_may_not_start_a_process():
    with pytest.raises(NotAUnitTest, match=r"starts a process \(subprocess.Popen: true\).*mark it \(integration"):
        subprocess.run(["true"], check=False)
    with pytest.raises(NotAUnitTest, match="starts a process"):
        multiprocessing.get_context("spawn").Process(target=print).start()
    assert len(GUARD.forgive()) == 2


def test_a_unit_test_may_not_read_a_provisioned_model():
    hub = Path(GUARD.model_dirs[-1])  # the Hugging Face cache; the env.sh folders come first when set
    with pytest.raises(NotAUnitTest, match="opens the model file .*config.json.*tiny model built in tmp_path"):
        open(hub / "models--intfloat--multilingual-e5-small" / "config.json", "rb")  # noqa: SIM115
    assert GUARD.forgive()


def test_a_unit_test_may_not_leave_the_machine():
    for address in (("0.0.0.0", 0), ("192.0.2.1", 80)):  # a server open to the network; an address off the machine
        with socket.socket() as s, pytest.raises(NotAUnitTest, match="off the loopback"):
            (s.bind if address[0] == "0.0.0.0" else s.connect)(address)
    with pytest.raises(NotAUnitTest, match="looks up the host 'example.org'"):
        socket.getaddrinfo("example.org", 443)
    assert len(GUARD.forgive()) == 3


def test_its_own_loopback_server_and_a_refused_port_are_fine():
    with FakeLLM("Hallo") as llm:
        assert httpx.get(f"{llm.url}/models").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{free_port()}/v1/models")
    assert GUARD.violations == []


@pytest.mark.integration
def test_a_server_of_another_process_is_refused_and_a_swallowed_refusal_still_fails():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        refused = f"connects to 127.0.0.1:{port}, a server another process"
        with (
            pytest.raises(pytest.fail.Exception, match=refused),
            GUARD.watching("tests/unit/test_x.py::test_swallows"),
            contextlib.suppress(Exception),  # code under test that hides the refusal
        ):
            httpx.get(f"http://127.0.0.1:{port}/")
    finally:
        server.terminate()
        server.wait(timeout=30)
