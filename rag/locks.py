"""Who may use a store, and who may write a collection: the embedded store's process lock and
the ingestion lease of a collection (see rag/store.py)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LEASE_SUFFIX
from rag.disk import os_problem
from rag.errors import LeaseHeldError, LeaseLostError, StoreError, StoreLockedError

if TYPE_CHECKING:
    from rag.store import ChromaStore

log = logging.getLogger(__name__)


class StoreLock:
    """An exclusive ``flock`` on ``<store.path>.lock`` for as long as this process uses the
    embedded store. The kernel drops it when the process dies, so a lock is never stale. The
    file holds JSON about the holder (pid, host, command; ``serve_url``/``chroma_url`` once
    ``babelrag serve`` announces them) for the error a second process gets."""

    _held: dict[Path, StoreLock] = {}  # one per folder and process: flock is per open file
    _registry = threading.Lock()

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python",
            "since": time.time(),
        }
        self.users = 0

    @classmethod
    def acquire(cls, store_path: Path) -> StoreLock:
        path = Path(f"{Path(store_path).resolve()}.lock")
        with cls._registry:
            held = cls._held.get(path)
            if held is None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as e:
                    raise StoreError(_unwritable_message(store_path, path, e)) from e
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise StoreLockedError(
                        _locked_message(store_path, holder := read_lock(store_path)), holder
                    ) from None
                held = cls(path, fd)
                try:
                    held._write()
                except OSError as e:  # a full disk: let go of the lock rather than hold it unnamed
                    os.close(fd)
                    raise StoreError(_unwritable_message(store_path, path, e)) from e
                cls._held[path] = held
            held.users += 1
            return held

    def announce(self, **info: Any) -> None:
        """Add ``info`` (e.g. ``serve_url``, ``chroma_url``) to what other processes read."""
        with self._registry:
            self.info.update(info)
            self._write()

    def _write(self) -> None:
        data = json.dumps(self.info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        with self._registry:
            self.users -= 1
            if self.users > 0:
                return
            self._held.pop(self.path, None)
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock


def read_lock(store_path: Path) -> dict[str, Any]:
    """What the holder of the embedded store at ``store_path`` says about itself ({} if nothing)."""
    path = Path(f"{Path(store_path).resolve()}.lock")
    for _ in range(5):  # the holder may be rewriting it this instant
        try:
            text = path.read_text("utf-8")
            return json.loads(text) if text else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            time.sleep(0.02)
    return {}


def _holder_text(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
    what = f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {since})"
    if holder.get("serve_url"):
        what += f", serving {holder['serve_url']}"
    return what


def _unwritable_message(store_path: Path, lock: Path, error: OSError) -> str:
    return (
        f"cannot lock the embedded store {store_path}: writing {lock} fails, {os_problem(error, lock.parent)}. "
        "Embedded Chroma writes its folder even to read: free space, or point store.path (BABELRAG_STORE_PATH) "
        "at a writable folder"
    )


def _locked_message(store_path: Path, holder: Mapping[str, Any]) -> str:
    return (
        f"the embedded store {store_path} is in use by {_holder_text(holder)}; embedded Chroma is safe for "
        "one process only. Either stop that process; or ingest through it (`babelrag ingest` hands the job "
        "to a running `babelrag serve` by itself); or serve the store to many processes with "
        "`babelrag serve --chroma` (or `chroma run --path STORE --port 8000` and store.url / --chroma-url)"
    )


# -- ingestion leases ----------------------------------------------------------------------


class Lease:
    """The right to write one collection, held as the collection ``NAME.lease``.

    Taken by creating it (only one create of a name succeeds), renewed in the background every
    ``ttl_s / 3`` (its metadata says until when it holds), released by deleting it. An expired
    lease (its holder died elsewhere), or one whose holder process on this machine is gone, is
    taken over by renaming it away first: a rename of a name that is gone fails, so two jobs
    cannot both take over. ``check`` raises LeaseLostError once the lease
    was taken over (this job stalled longer than ``ttl_s``): the job must stop writing.
    """

    def __init__(self, store: ChromaStore, name: str, *, job: str, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.holder = {
            "job": job,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": uuid.uuid4().hex,
            "since": time.time(),
        }
        self._id: Any = None
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def _lease_name(self) -> str:
        return self.name + LEASE_SUFFIX

    def _metadata(self) -> dict[str, Any]:
        return {**self.holder, "expires_at": time.time() + self.ttl_s}

    def acquire(self, wait_s: float = 0) -> Lease:
        import chromadb.errors

        client = self.store.client
        deadline = time.monotonic() + wait_s
        while True:
            try:
                created = client.create_collection(self._lease_name, metadata=self._metadata(), embedding_function=None)
                self._id = created.id
                break
            except chromadb.errors.ChromaError as e:
                if "already exists" not in str(e):
                    raise StoreError(
                        f"cannot take the ingestion lease of {self.name!r} in {self.store.location}: {e}"
                    ) from e
            try:
                current = client.get_collection(self._lease_name, embedding_function=None)
            except chromadb.errors.NotFoundError:
                continue  # released between our create and get: try again at once
            holder = dict(current.metadata or {})
            if float(holder.get("expires_at", 0)) < time.time() or _dead_here(holder):
                log.warning("taking over the ingestion lease of %r from %s", self.name, _lease_holder_text(holder))
                with contextlib.suppress(chromadb.errors.ChromaError):  # another job renamed it first
                    current.modify(name=f"{self.name}.stale-{uuid.uuid4().hex[:8]}{LEASE_SUFFIX}")
                    client.delete_collection(current.name)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"collection {self.name!r} is being written by another ingestion job: "
                    f"{_lease_holder_text(holder)}. Wait for it to finish (or pass --wait SECONDS / set "
                    f"ingestion.lease_wait_s); if that job died, its lease expires by itself within "
                    f"{self.ttl_s:.0f} s",
                    holder,
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3) and self._renew_once():
            pass

    def _renew_once(self) -> bool:
        """Extend the lease; False once it is lost."""
        try:
            current = self.store.client.get_collection(self._lease_name, embedding_function=None)
            if current.id != self._id:
                self._lost = f"another job took it over: {_lease_holder_text(current.metadata or {})}"
                return False
            current.modify(metadata=self._metadata())
        except Exception as e:  # noqa: BLE001 - a store down for a moment: the next renewal may work
            if "does not exist" in str(e):
                self._lost = "it was deleted (or taken over) while this job was stalled"
                return False
            log.warning("cannot renew the ingestion lease of %r: %s", self.name, e)
        return True

    def check(self) -> None:
        if self._lost:
            raise LeaseLostError(
                f"this job lost the ingestion lease of collection {self.name!r} ({self._lost}); it stopped "
                "writing. Re-run it: what it wrote is kept and the rest is written then"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lost or self._id is None:
            return
        import chromadb.errors

        try:
            current = self.store.client.get_collection(self._lease_name, embedding_function=None)
            if current.id == self._id:
                self.store.client.delete_collection(self._lease_name)
        except chromadb.errors.ChromaError:
            pass  # gone already (taken over, or the collection was deleted with it)
        except Exception as e:  # noqa: BLE001 - release runs while another error may unwind: it must not replace it
            log.warning(
                "cannot release the ingestion lease of %r (%s); it expires by itself within %.0f s",
                self.name, e, self.ttl_s,
            )  # fmt: skip
        self._id = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _dead_here(holder: Mapping[str, Any]) -> bool:
    """The holder ran on this machine and its process is gone (killed): no need to wait for expiry."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _lease_holder_text(holder: Mapping[str, Any]) -> str:
    left = float(holder.get("expires_at", 0)) - time.time()
    since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("since", 0))))
    return (
        f"{holder.get('job', 'a job')} (pid {holder.get('pid')} on {holder.get('host')}, since {since}, "
        f"lease {'expired' if left < 0 else f'valid for {left:.0f} s more unless renewed'})"
    )
