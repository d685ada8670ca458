"""Fault injection for the Ray engine's tests, installed in every Ray worker process by the test
cluster's ``worker_process_setup_hook``: a worker that loads a file, or embeds, while a marker file
exists in the folder ``$BABELRAG_TEST_RAY_FAULTS`` removes the marker and kills its own process
(SIGKILL: no exception, no cleanup), as an OOM kill or a lost node would. The retry finds the
marker gone and proceeds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULTS = "BABELRAG_TEST_RAY_FAULTS"
KILL_PARSER = "kill-parser"  # the next worker to load a file dies (a Ray task)
KILL_EMBEDDER = "kill-embedder"  # the next worker to embed dies (an embedding actor)


def install_faults() -> None:
    folder = os.environ.get(FAULTS)
    if not folder:
        return
    import ingestion.job
    from rag.embedder import SentenceTransformerEmbedder

    load, embed_documents = ingestion.job.load, SentenceTransformerEmbedder.embed_documents

    def killing_load(*args, **kwargs):
        _die_if_marked(Path(folder) / KILL_PARSER)
        return load(*args, **kwargs)

    def killing_embed_documents(self, texts):
        _die_if_marked(Path(folder) / KILL_EMBEDDER)
        return embed_documents(self, texts)

    ingestion.job.load = killing_load
    SentenceTransformerEmbedder.embed_documents = killing_embed_documents


def _die_if_marked(marker: Path) -> None:
    try:
        marker.unlink()  # atomic: of workers racing for it, exactly one dies
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
