"""The Ray ingestion engine on a local 2-CPU Ray cluster, writing to a real `chroma run` server: the
same collection as the local engine, a re-run that writes nothing, a changed file replaced, bad
files reported, and killed workers (a parse task's and an embedding actor's) retried."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rag import Pipeline
from rag.store import ChromaStore
from tests.conftest import ROOT, unavailable
from tests.helpers_ray import FAULTS, KILL_EMBEDDER, KILL_PARSER
from tests.integration.test_ingest_jobs import TEXTS, assert_consistent, snapshot, write_kb

pytestmark = [pytest.mark.model, pytest.mark.integration]

BAD = "broken.pdf"


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """A local Ray cluster for this module, its workers set up to die on a marker in the folder yielded."""
    try:
        import ray
    except ImportError:
        unavailable("ray is not installed; pip install 'babelrag[ray]'")
    folder = tmp_path_factory.mktemp("ray-faults")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # workers import tests.*
    ray.init(
        num_cpus=2,
        object_store_memory=600 * 2**20,
        include_dashboard=False,
        runtime_env={
            "worker_process_setup_hook": "tests.helpers_ray.install_faults",
            "env_vars": {"PYTHONPATH": path, FAULTS: str(folder)},
        },
    )
    yield folder
    ray.shutdown()


class CountingEmbedder:
    """The session's embedder, counting the document texts this process embeds."""

    def __init__(self, embedder) -> None:
        self._embedder, self.embedded = embedder, 0

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def embed_documents(self, texts):
        self.embedded += len(texts)
        return self._embedder.embed_documents(texts)


@pytest.fixture(scope="module")
def jobs(model_settings, embedder, language, chroma_server, faults, tmp_path_factory):
    """A knowledge base in eight languages plus a corrupt PDF, ingested by each engine into its own
    collection; the Ray engine's pipeline counts what it embeds in this process."""
    kb = write_kb(tmp_path_factory.mktemp("ray-kb"))
    (kb / BAD).write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nthis is not a PDF body")
    settings = model_settings.model_copy(deep=True)
    settings.store.url = chroma_server
    settings.ingestion.ray_batch_files = 2  # several tasks and embedding calls, so kills land mid-job
    counting = CountingEmbedder(embedder)
    local = Pipeline(settings, embedder=embedder, language=language)
    ray = Pipeline(settings, embedder=counting, language=language)
    reports = {"local": local.ingest([kb], "ray-local"), "ray": ray.ingest([kb], "ray-ray", engine="ray")}
    return kb, local, ray, counting, reports


def vectors(store: ChromaStore, name: str) -> dict[str, np.ndarray]:
    got = store.client.get_collection(name).get(include=["embeddings"])
    return dict(zip(got["ids"], np.asarray(got["embeddings"]), strict=True))


def assert_same_collections(store: ChromaStore, ray_name: str, local_name: str = "ray-local") -> None:
    ray_snap, local_snap = snapshot(store, ray_name), snapshot(store, local_name)
    assert_consistent(ray_snap)
    assert ray_snap == local_snap  # chunk ids, texts, metadata, manifest hashes, chunk ids and status
    ray_vectors, local_vectors = vectors(store, ray_name), vectors(store, local_name)
    assert ray_vectors.keys() == local_vectors.keys()
    # Batches of other shapes round differently (in bf16 on a CPU with native bf16: ~1e-3 per
    # component), so equal means the same direction.
    cosines = [float(vector @ local_vectors[chunk_id]) for chunk_id, vector in ray_vectors.items()]
    assert min(cosines) > 0.999, min(cosines)


def test_the_ray_engine_writes_what_the_local_engine_writes(jobs):
    _, local, ray, counting, _ = jobs
    assert_same_collections(ray.store, "ray-ray")
    assert len(snapshot(ray.store, "ray-ray")["manifest"]) == len(TEXTS)
    assert counting.embedded == 0  # the actors embedded; this process only wrote
    languages = {Path(e.source).name: e.language for e in ray.documents("ray-ray")}
    assert languages == {name: name[:2] for name in TEXTS}
    assert {Path(e.source).name: e.language for e in local.documents("ray-local")} == languages


def test_a_bad_file_is_reported_and_the_rest_ingested(jobs):
    kb, _, _, _, reports = jobs
    report = reports["ray"]
    assert len(report.added) == len(TEXTS) and not report.ok
    (failed,) = report.failed
    assert failed.path == str(kb / BAD) and "not a readable PDF" in failed.reason
    assert report.failed == reports["local"].failed  # the same reason, word for word


def test_a_rerun_writes_nothing_and_a_changed_file_is_replaced(jobs):
    kb, local, ray, counting, _ = jobs
    again = ray.ingest([kb], "ray-ray", engine="ray")
    assert len(again.unchanged) == len(TEXTS) and again.chunks_written == again.chunks_deleted == 0
    assert [f.path for f in again.failed] == [str(kb / BAD)]  # failed files are tried again, as locally

    (kb / "de.txt").write_text(TEXTS["de.txt"].replace("zehn Wagen", "elf Wagen"), encoding="utf-8")
    changed = ray.ingest([kb], "ray-ray", engine="ray")
    local.ingest([kb], "ray-local")
    assert [Path(p).name for p in changed.updated] == ["de.txt"] and changed.chunks_deleted >= 1
    assert len(changed.unchanged) == len(TEXTS) - 1
    assert_same_collections(ray.store, "ray-ray")
    texts = " ".join(text for text, _ in snapshot(ray.store, "ray-ray")["chunks"].values())
    assert "elf Wagen" in texts and "zehn Wagen" not in texts
    assert counting.embedded == 0


def test_killed_workers_are_retried_and_the_job_completes(jobs, faults):
    kb, _, ray, _, _ = jobs
    markers = [faults / KILL_PARSER, faults / KILL_EMBEDDER]
    for marker in markers:
        marker.touch()
    report = ray.ingest([kb], "ray-killed", engine="ray")
    assert not any(m.exists() for m in markers)  # a parse task's worker and an embedding actor died
    assert len(report.added) == len(TEXTS) and [Path(f.path).name for f in report.failed] == [BAD]
    assert_same_collections(ray.store, "ray-killed")


def test_a_workers_error_reaches_the_caller_as_itself(jobs, model_settings):
    """A node without the model folder: the worker's message, not Ray's wrapper of it."""
    import ray

    from ingestion.loader import DEFAULT_LOADERS
    from ingestion.ray_engine import _cause, _pipeline, _Workers
    from rag.errors import ModelNotFoundError

    kb, *_ = jobs
    s = model_settings
    elsewhere = s.embedding.model_copy(update={"model": "/not/on/this/node"})
    workers = _Workers(s.ingestion, s.chunking, s.language, elsewhere, tuple(DEFAULT_LOADERS))
    with pytest.raises(Exception) as raised:
        next(iter(_pipeline(ray, [str(kb / "de.txt")], workers, s.ingestion).iter_rows()))
    error = _cause(ray, raised.value)
    assert isinstance(error, ModelNotFoundError) and not isinstance(error, ray.exceptions.RayError)
    assert str(error).startswith("embedding model folder /not/on/this/node is not on Ray node ")
