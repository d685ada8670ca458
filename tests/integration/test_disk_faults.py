"""The embedded store on a disk that fills up during an ingestion job, or turns read-only: a clear
error that names the cause and the fix, and nothing half-written (after the fault, the store is one
a reader can trust, and a re-run converges to what an uninterrupted job leaves).

The disk is a real tmpfs of a few MB mounted for the test: tests run as root, and chmod does not stop
root from writing (checked), while a read-only mount does; a full tmpfs fails writes with ENOSPC.
Mounting needs CAP_SYS_ADMIN (root here and in CI); without it the tests skip and say why."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Self

import pytest

from rag import Pipeline, StoreError, load_settings
from tests.conftest import ROOT, need_env
from tests.integration.test_ingest_jobs import TEXTS, assert_consistent, snapshot, write_kb

pytestmark = [pytest.mark.model, pytest.mark.integration]


class Tmpfs:
    """A tmpfs of ``size`` mounted at ``path`` for one test, remountable (read-only, bigger)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path, self.size = path, size

    def __enter__(self) -> Self:
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], capture_output=True,
            text=True, check=False,
        )  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root with CAP_SYS_ADMIN")
        return self

    def remount(self, options: str) -> None:
        """Mount it again with ``options``. A read-only remount is refused (EBUSY) while a file is open for
        writing: Chroma's connection pool lets go of its SQLite files a moment after the client closes."""
        deadline = time.monotonic() + 30
        while True:
            command = ["mount", "-o", f"remount,{options}", str(self.path)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return
            assert time.monotonic() < deadline, f"cannot remount {self.path} {options}: {done.stderr}"
            time.sleep(0.2)

    def fill(self, leave_kb: int) -> Path:
        """A file that takes all the space but ``leave_kb``."""
        filler = self.path / "filler"
        st = os.statvfs(self.path)
        with filler.open("wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - leave_kb * 1024))
        return filler

    def __exit__(self, *exc) -> None:
        # lazy: the keyword index (tantivy) keeps its files open
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def settings_on(store: Path, index: Path):
    return load_settings(ROOT / "configs" / "cpu-small.yaml", store={"path": str(store), "index_dir": str(index)})


def trustworthy(pipeline: Pipeline, name: str) -> dict:
    """What a reader sees after a failed job must hold together: each done entry has all its chunks,
    each stored chunk belongs to a live entry (done, or "writing", which the next run redoes), the
    state counts every live entry and the chunks of the done ones."""
    snap = snapshot(pipeline.store, name)
    done = {i for _, ids, status in snap["manifest"].values() if status == "done" for i in ids}
    assert done <= set(snap["chunks"]), "a done entry lost chunks"
    assert {m["source"] for _, m in snap["chunks"].values()} <= set(snap["manifest"]), "orphan chunks"
    state = pipeline.store.state(name)
    assert state.documents == len(snap["manifest"])
    assert state.sums.counts == Counter(m.get("language") for i, (_, m) in snap["chunks"].items() if i in done)
    return snap


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_job_is_named_and_a_rerun_converges(tmp_path, embedder, language, figure):
    need_env("BABELRAG_EMBEDDING_MODEL")
    kb = write_kb(tmp_path / "kb", TEXTS)
    with Tmpfs(tmp_path / "disk", "64m") as disk:
        store = disk.path / "chroma"
        pipeline = Pipeline(settings_on(store, disk.path / "index"), embedder=embedder, language=language)
        assert pipeline.ingest([kb], "trains").ok  # v1: 8 files
        texts = {f"{i:02d}-{name}": f"{text} ({i})" for i in range(3) for name, text in TEXTS.items()}
        write_kb(kb, texts)  # v2: 24 more
        filler = disk.fill(leave_kb=256)
        with pytest.raises(StoreError) as failed:
            pipeline.ingest([kb], "trains")
        message = str(failed.value)
        assert f"cannot write the embedded store at {store}: its disk is full" in message, message
        assert "Free space" in message and "re-run writes the rest" in message
        pipeline.close()

        filler.unlink()  # space again: what did the failed job leave?
        pipeline = Pipeline(settings_on(store, disk.path / "index"), embedder=embedder, language=language)
        left = trustworthy(pipeline, "trains")
        writing = sum(status == "writing" for _, _, status in left["manifest"].values())
        report = pipeline.ingest([kb], "trains")
        assert report.ok and len(report.unchanged) + len(report.updated) + len(report.added) == 32
        got = trustworthy(pipeline, "trains")
        pipeline.close()
        assert not list(disk.path.rglob(".babelrag-space-probe-*"))  # the probe of the free space is gone
    reference = Pipeline(settings_on(tmp_path / "reference", tmp_path / "index"), embedder=embedder, language=language)
    assert reference.ingest([kb], "trains").ok
    expected = snapshot(reference.store, "trains")
    assert_consistent(got)
    figure(
        f"reliability: disk full (ENOSPC, a tmpfs) during an ingestion job: error names the cause and the fix, "
        f"{writing} files left 'writing' and redone, store consistent after the fault, re-run converged "
        f"{'yes' if got == expected else 'NO'}"
    )
    assert got == expected


def test_a_read_only_store_is_a_clear_error_and_changes_nothing(tmp_path, embedder, language, figure):
    need_env("BABELRAG_EMBEDDING_MODEL")
    kb = write_kb(tmp_path / "kb", TEXTS)
    with Tmpfs(tmp_path / "disk", "64m") as disk:
        store = disk.path / "chroma"
        settings = settings_on(store, tmp_path / "index")  # the keyword index elsewhere: its files stay open
        pipeline = Pipeline(settings, embedder=embedder, language=language)
        assert pipeline.ingest([kb], "trains").ok
        before = snapshot(pipeline.store, "trains")
        pipeline.close()
        disk.remount("ro")
        (kb / "de.txt").write_text(TEXTS["de.txt"] + " Neu: ein Fahrradabteil.", encoding="utf-8")
        refused = []
        for attempt in (
            lambda p: p.ingest([kb], "trains"),
            lambda p: p.retrieve("Zug nach Hamburg", collection="trains"),
        ):
            with pytest.raises(StoreError) as caught:
                attempt(Pipeline(settings, embedder=embedder, language=language))
            message = str(caught.value)
            assert f"cannot lock the embedded store {store}" in message, message
            assert "its file system is mounted read-only" in message and "writable folder" in message
            refused.append(message)
        disk.remount("rw")
        pipeline = Pipeline(settings, embedder=embedder, language=language)
        after = snapshot(pipeline.store, "trains")
        pipeline.close()
    figure(
        f"reliability: read-only store (a read-only mount; chmod does not stop root): ingest and search refused "
        f"{len(refused)} of 2 with the cause and the fix, store unchanged {'yes' if after == before else 'NO'}"
    )
    assert after == before


def test_a_full_disk_under_the_keyword_index_leaves_the_job_done_and_queries_say_why(
    tmp_path, embedder, language, caplog, figure
):
    """The keyword index (store.index_dir) is derived from the store: a job whose store writes went
    through is done even when the index cannot be written (a warning says why), and a query that needs
    the index says what is wrong and where (a 503 over REST), not tantivy's "index writer was killed"."""
    need_env("BABELRAG_EMBEDDING_MODEL")
    with Tmpfs(tmp_path / "disk", "1m") as disk:
        disk.fill(leave_kb=8)
        settings = settings_on(tmp_path / "chroma", disk.path / "index")
        pipeline = Pipeline(settings, embedder=embedder, language=language)
        with caplog.at_level(logging.WARNING, logger="rag.pipeline"):
            report = pipeline.ingest([write_kb(tmp_path / "kb", TEXTS)], "trains")
        assert report.ok and len(report.added) == 8
        warned = [r.getMessage() for r in caplog.records if "not refreshed" in r.getMessage()]
        assert warned and "its disk is full" in warned[0], warned
        with pytest.raises(StoreError) as caught:
            pipeline.retrieve("Wann fährt der Zug nach Hamburg?", collection="trains")
        message = str(caught.value)
        assert f"cannot write the keyword index of 'trains' in {disk.path / 'index'}" in message, message
        assert "its disk is full" in message and "store.index_dir" in message
        pipeline.close()
    figure("reliability: disk full under the keyword index: job done with a warning, queries refused with the "
           "cause and the fix 1 of 1")  # fmt: skip
