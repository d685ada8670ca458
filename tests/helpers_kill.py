"""Ingestion jobs killed with SIGKILL at chosen points, many of them in one test run.

A process that loads torch and the embedding model takes ~15 s to start here, and a kill-point test
needs two jobs per point. So one process (``Zygote``) loads the models once and forks a child for
each job: the child opens the store itself (embedded Chroma, in its own folder), runs the job and,
if told to, kills itself with SIGKILL at its n-th call to the store: before the call, after it, or
a few milliseconds into it. The store, the job, the kill and the re-run are real; only the start-up
is shared (and the tokenizer copy a job's chunker makes). torch runs one thread here: OpenMP's thread pool does not survive a fork (a child hangs
in it), and one thread never starts it.

Driven over stdin/stdout, one JSON line per job (``Zygote.run``); the child's result comes back
through a file, since a killed child cannot answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Self

from tests.conftest import ROOT

MOMENTS = ("before", "during", "after")


class Zygote:
    """The forking job runner, in a process of its own (see the module's doc)."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        env = {**os.environ, **self.env, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.helpers_kill import serve; serve()", str(self.config)], cwd=ROOT,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert ready.strip() == "ready", f"the job runner did not start: {ready!r}"
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def run(
        self, store: Path, paths: list[Path], collection: str, *, kill: tuple[int, str, float] | None = None,
        snapshot: bool = False, prune: bool = True, batch: int = 2,
    ) -> dict[str, Any]:  # fmt: skip
        """One job in a forked child: ``kill`` = (n, moment, delay_s) kills it at its n-th store call.
        Returns {"status": "killed" | "exited", "code", "signal", "result": {"report", "calls", "snapshot"}}."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        request = {
            "store": str(store), "paths": [str(p) for p in paths], "collection": collection, "kill": kill,
            "snapshot": snapshot, "prune": prune, "batch": batch,
        }  # fmt: skip
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the job runner died"
        return json.loads(line)


class KillingStore:
    """The real store; counts the calls made to it and SIGKILLs this process at the chosen one."""

    def __init__(self, store: Any, kill: tuple[int, str, float] | None) -> None:
        self._store = store
        self._kill = kill
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            n = len(self.calls)
            self.calls.append(name)
            if self._kill is None or self._kill[0] != n:
                return attr(*args, **kwargs)
            _, moment, delay = self._kill
            if moment == "before":
                _die()
            if moment == "during":
                threading.Timer(delay, _die).start()
            result = attr(*args, **kwargs)
            if moment == "during":
                time.sleep(delay + 5)  # the timer fires meanwhile: in the call, or right after it
            _die()
            return result

        return call


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def serve() -> None:
    """The zygote: load the models once, then fork one child per request line."""
    import torch

    torch.set_num_threads(1)  # before any parallel region: see the module's doc
    # chromadb imported here, once, with what PersistentClient imports on first use (~2 s); a client
    # (and its threads, which a fork would not copy) only in the children
    import chromadb.api.rust  # noqa: F401

    from ingestion.chunker import SentenceChunker, tokenizer_spans
    from rag.config import load_settings
    from rag.embedder import SentenceTransformerEmbedder
    from rag.language import language_identifier
    from rag.types import Document

    settings = load_settings(sys.argv[1])
    embedder = SentenceTransformerEmbedder(settings.embedding)
    embedder.embed_documents(["warm-up"])
    language = language_identifier(settings.language)
    language.warm_up()
    # A job's chunker copies the tokenizer on first use (2-5 s): made once here, each child chunks with it.
    chunker = SentenceChunker(tokenizer_spans(embedder.tokenizer), settings.chunking, detect_language=language.detect)
    chunker.chunk(Document(source="warm-up", text="Warm-up. Aufwärmen.", content_hash="-"))
    channel = os.fdopen(os.dup(1), "w")  # replies only: anything else printed goes to stderr
    os.dup2(2, 1)
    print("ready", file=channel, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        fd, out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(request, settings, embedder, language, chunker, Path(out))
            except BaseException:  # noqa: BLE001 - reported through the exit code and stderr
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        text = Path(out).read_text(encoding="utf-8")
        os.unlink(out)
        reply = {
            "status": "killed" if os.WIFSIGNALED(status) else "exited",
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "result": json.loads(text) if text else None,
        }
        print(json.dumps(reply), file=channel, flush=True)


def _child(request: dict[str, Any], settings: Any, embedder: Any, language: Any, chunker: Any, out: Path) -> None:
    from rag.pipeline import Pipeline
    from rag.store import ChromaStore

    class WarmPipeline(Pipeline):
        def _chunker(self) -> Any:
            return chunker

    settings = settings.model_copy(deep=True)
    settings.store.path = Path(request["store"])
    settings.store.index_dir = Path(request["store"] + ".index")
    settings.ingestion.upsert_batch = request["batch"]
    store = ChromaStore(settings.store)
    killing = KillingStore(store, tuple(request["kill"]) if request["kill"] else None)
    pipeline = WarmPipeline(settings, embedder=embedder, language=language, store=killing)  # type: ignore[arg-type]
    report = pipeline.ingest(request["paths"], request["collection"], prune=request["prune"])
    result: dict[str, Any] = {"report": report.to_dict(), "calls": killing.calls}
    if request["snapshot"]:
        result["snapshot"] = snapshot(store, request["collection"])
    out.write_text(json.dumps(result), encoding="utf-8")


def snapshot(store: Any, name: str) -> dict[str, Any]:
    """Everything a job leaves in a collection, as JSON: chunks (id -> text, metadata), the manifest
    (source -> hash, chunk ids, status) and the state record's counts (documents; chunks per language)."""
    got = store.client.get_collection(name).get(include=["documents", "metadatas"])
    chunks = {i: [d, m] for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
    manifest = {s: [e.content_hash, list(e.chunk_ids), e.status] for s, e in store.manifest(name).items()}
    state = store.state(name)
    stored = Counter(str(m.get("language")) for _, m in chunks.values())
    return {
        "chunks": chunks,
        "manifest": manifest,
        "state": {"documents": state.documents, "counts": {str(k): v for k, v in state.sums.counts.items()}},
        "languages": dict(stored),
    }
