"""Incremental ingestion jobs on real Chroma with the real embedding model: skip, replace,
prune, reindex, and convergence after a crash at any write (and after SIGKILL at seeded random points)."""

from __future__ import annotations

import random
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from rag import Pipeline
from rag.store import ChromaStore
from tests.conftest import ROOT, need_env
from tests.helpers_kill import MOMENTS, Zygote

pytestmark = [pytest.mark.model, pytest.mark.integration]

# A small knowledge base in eight languages, one sentence set per file.
TEXTS = {
    "de.txt": "Der Zug nach Hamburg fährt um acht Uhr. Er hat zehn Wagen. Der Speisewagen ist in der Mitte.",
    "ru.txt": "Поезд в Москву отправляется в девять. В нём двенадцать вагонов. Буфет находится в голове поезда.",
    "ar.txt": "يغادر القطار إلى القاهرة في العاشرة. فيه ثماني عربات. عربة الطعام في المؤخرة.",
    "hi.md": "# रेलगाड़ी\n\nदिल्ली की रेलगाड़ी सात बजे चलती है। इसमें नौ डिब्बे हैं। भोजन यान बीच में है।",
    "th.txt": "รถไฟไปเชียงใหม่ออกตอนหกโมง มีรถสิบเอ็ดตู้ ตู้เสบียงอยู่ตรงกลาง",
    "zh.md": "# 火车\n\n去上海的火车六点出发。它有八节车厢。餐车在中间。",
    "ja.txt": "大阪行きの電車は五時に出発します。車両は七両です。食堂車は後ろにあります。",
    "en.md": "# Trains\n\nThe train to Leeds leaves at four. It has six coaches. The buffet car is at the front.",
}


def write_kb(folder: Path, texts: dict[str, str] = TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def snapshot(store: ChromaStore, name: str) -> dict:
    """Everything a job leaves in a collection: chunks (ids, text, metadata) and the manifest."""
    got = store.client.get_collection(name).get(include=["documents", "metadatas"])
    chunks = {i: (d, {k: v for k, v in m.items()}) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}
    manifest = {s: (e.content_hash, e.chunk_ids, e.status) for s, e in store.manifest(name).items()}
    return {"chunks": chunks, "manifest": manifest}


def assert_consistent(snap: dict) -> None:
    """Manifest and chunks agree: every entry done, and its ids are exactly the chunks stored."""
    listed = [i for _, ids, _ in snap["manifest"].values() for i in ids]
    assert all(status == "done" for _, _, status in snap["manifest"].values())
    assert len(listed) == len(set(listed)) == len(snap["chunks"])
    assert set(listed) == set(snap["chunks"])
    for _id, (_text, meta) in snap["chunks"].items():
        assert meta["source"] in snap["manifest"]


def script(ch: str) -> str:
    if "\u0600" <= ch <= "\u06ff":
        return "arabic"
    return "latin" if ch.isascii() or "\u00c0" <= ch <= "\u024f" else "cjk"


@pytest.fixture
def pipeline(model_settings, embedder, language, tmp_path):
    settings = model_settings.model_copy(update={"store": model_settings.store.model_copy(update={"path": tmp_path / "db"})})
    return Pipeline(settings, embedder=embedder, language=language)


def test_rerun_skips_changed_replaces_removed_prunes(pipeline, tmp_path):
    kb = write_kb(tmp_path / "kb")
    first = pipeline.ingest([kb], "jobs")
    assert len(first.added) == 8 and first.ok
    docs = {Path(e.source).name: e for e in pipeline.documents("jobs")}
    assert {n: e.language for n, e in docs.items()} == {n: n[:2] for n in TEXTS}
    assert_consistent(snapshot(pipeline.store, "jobs"))

    again = pipeline.ingest([kb], "jobs")
    assert len(again.unchanged) == 8 and again.chunks_written == again.chunks_deleted == 0

    (kb / "de.txt").write_text(TEXTS["de.txt"].replace("zehn Wagen", "elf Wagen"), encoding="utf-8")
    (kb / "ru.txt").unlink()
    (kb / "el.txt").write_text("Το τρένο για την Αθήνα φεύγει στις πέντε. Έχει δέκα βαγόνια.", encoding="utf-8")
    third = pipeline.ingest([kb], "jobs")
    assert [Path(p).name for p in third.updated] == ["de.txt"]
    assert [Path(p).name for p in third.added] == ["el.txt"]
    assert [Path(p).name for p in third.missing] == ["ru.txt"] and not third.removed
    assert "ru.txt" in {Path(e.source).name for e in pipeline.documents("jobs")}  # kept without --prune

    fourth = pipeline.ingest([kb], "jobs", prune=True)
    assert [Path(p).name for p in fourth.removed] == ["ru.txt"] and fourth.chunks_deleted >= 1
    assert len(fourth.unchanged) == 8
    snap = snapshot(pipeline.store, "jobs")
    assert_consistent(snap)
    assert {Path(s).name for s in snap["manifest"]} == {"de.txt", "el.txt"} | set(TEXTS) - {"ru.txt"}
    texts = " ".join(t for t, _ in snap["chunks"].values())
    assert "elf Wagen" in texts and "zehn Wagen" not in texts and "Москву" not in texts


def test_prune_only_touches_the_paths_given(pipeline, tmp_path):
    a = write_kb(tmp_path / "a", {"de.txt": TEXTS["de.txt"]})
    b = write_kb(tmp_path / "b", {"ja.txt": TEXTS["ja.txt"]})
    pipeline.ingest([a], "two")
    pipeline.ingest([b], "two")
    (b / "ja.txt").unlink()
    (b / "zh.md").write_text(TEXTS["zh.md"], encoding="utf-8")
    report = pipeline.ingest([b], "two", prune=True)
    assert [Path(p).name for p in report.removed] == ["ja.txt"]
    assert {Path(e.source).name for e in pipeline.documents("two")} == {"de.txt", "zh.md"}


def test_mixed_language_document_gets_per_chunk_labels(pipeline, tmp_path):
    mixed = "\n\n".join([TEXTS["de.txt"]] * 3 + [TEXTS["ja.txt"]] * 9 + [TEXTS["ar.txt"]] * 3)
    kb = write_kb(tmp_path / "mixed", {"mixed.txt": mixed})
    pipeline.settings.chunking.max_tokens = 48  # several chunks per language
    pipeline.ingest([kb], "mixed")
    hits = pipeline.retrieve("Zug", collection="mixed", top_k=50)
    by_language = {h.chunk.language for h in hits}
    assert by_language == {"de", "ja", "ar"}
    for h in hits:
        scripts = {script(ch) for ch in h.chunk.text if ch.isalpha()}
        if len(scripts) == 1:  # a chunk that straddles two languages gets the majority's
            assert h.chunk.language == {"latin": "de", "cjk": "ja", "arabic": "ar"}[scripts.pop()], h.chunk.text
    (entry,) = pipeline.documents("mixed")
    assert entry.language == "ja"  # the language of most of the text, by tokens (not by characters)


def test_reindex_rebuilds_after_a_chunking_change(pipeline, tmp_path):
    kb = write_kb(tmp_path / "kb")
    pipeline.ingest([kb], "rebuild")
    before = snapshot(pipeline.store, "rebuild")
    pipeline.settings.chunking = pipeline.settings.chunking.model_copy(update={"max_tokens": 16, "overlap_tokens": 0})
    report = pipeline.ingest([kb], "rebuild", reindex=True)
    assert report.reindexed and len(report.added) == 8
    after = snapshot(pipeline.store, "rebuild")
    assert_consistent(after)
    assert len(after["chunks"]) > len(before["chunks"])
    assert pipeline.store.info("rebuild").fingerprint["chunk_max_tokens"] == 16


class Crash(Exception):
    pass


class CrashingStore:
    """The real ChromaStore, raising Crash instead of its ``after``-th write (a kill -9 between
    two writes leaves the same state: Chroma writes are atomic per call)."""

    WRITES = {"upsert", "delete", "put_manifest", "delete_manifest"}

    def __init__(self, store: ChromaStore, after: int) -> None:
        self._store, self.after, self.writes = store, after, 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if name not in self.WRITES:
            return attr

        def write(*args, **kwargs):
            if self.writes == self.after:
                raise Crash(f"crash before write {self.after} ({name})")
            self.writes += 1
            return attr(*args, **kwargs)

        return write


def test_a_crash_before_any_write_converges_on_rerun(model_settings, embedder, language, tmp_path):
    """Start from v1 ingested; run the v2 job (one file changed, one added, one removed, with
    prune), crashing before its n-th write, for every n; re-run: the collection must equal the
    one an uninterrupted v2 job leaves."""
    kb = write_kb(tmp_path / "kb")
    settings = model_settings.model_copy(deep=True)
    settings.store.path = tmp_path / "db"
    settings.ingestion.upsert_batch = 4  # several batches, so crashes land between them
    store = ChromaStore(settings.store)

    def v2() -> None:
        (kb / "de.txt").write_text(TEXTS["de.txt"] + " Neu: ein Fahrradabteil.", encoding="utf-8")
        (kb / "ru.txt").unlink(missing_ok=True)
        (kb / "el.txt").write_text("Το τρένο για την Αθήνα φεύγει στις πέντε.", encoding="utf-8")

    def run(name: str, crash_after: int | None = None) -> bool:
        s = store if crash_after is None else CrashingStore(store, crash_after)
        try:
            Pipeline(settings, embedder=embedder, language=language, store=s).ingest([kb], name, prune=True)
        except Crash:
            return True
        return False

    write_kb(kb)
    run("reference")  # v1
    v2()
    counter = CrashingStore(store, after=10**9)
    Pipeline(settings, embedder=embedder, language=language, store=counter).ingest([kb], "reference", prune=True)
    reference = snapshot(store, "reference")
    assert_consistent(reference)
    writes = counter.writes
    assert writes >= 6

    for n in range(writes):
        name = f"crash-{n}"
        write_kb(kb)
        (kb / "el.txt").unlink(missing_ok=True)
        assert not run(name)  # v1
        v2()
        assert run(name, crash_after=n), f"no crash at write {n}"
        assert not run(name)  # the re-run finishes
        got = snapshot(store, name)
        assert got == reference, f"crash before write {n}: the re-run did not converge"


KILL_SEED = 15  # issue #15
KILL_POINTS = 24


@pytest.mark.slow
def test_sigkill_at_seeded_random_points_then_rerun_converges(tmp_path, figure):
    """Over a v1 collection (17 files, 8 languages), the v2 job (5 files changed, 2 added, 2 removed,
    with prune) is killed with SIGKILL at 24 points drawn with a fixed seed among its calls to the
    store (every kind of call at least once; before, during or right after the call), then run again.
    Each re-run must leave what an uninterrupted v2 job leaves: the same chunks and ids (none lost,
    none doubled), the same manifest, a state record whose counts are the store's. Jobs run in forked
    children of one process that loaded the models (tests/helpers_kill.py): ~2 s a job, not ~16 s."""
    need_env("BABELRAG_EMBEDDING_MODEL")
    texts = {f"{i}-{name}": f"{text} ({i})" for i in range(2) for name, text in TEXTS.items()}
    texts["lang.txt"] = " ".join(f"Zug {n}: {TEXTS['de.txt']}" for n in range(30))  # several chunks, most kept in v2
    kb = write_kb(tmp_path / "kb", texts)
    with Zygote(ROOT / "configs" / "cpu-small.yaml", env={}) as jobs:
        v1 = tmp_path / "v1"
        first = jobs.run(v1, [kb], "jobs")
        assert first["code"] == 0 and first["result"]["report"]["ok"], first
        for name in ("0-de.txt", "0-ja.txt", "1-hi.md", "1-th.txt", "lang.txt"):
            (kb / name).write_text((kb / name).read_text(encoding="utf-8") + " (v2)", encoding="utf-8")
        (kb / "0-ru.txt").unlink()
        (kb / "1-ar.txt").unlink()
        (kb / "el.txt").write_text("Το τρένο για την Αθήνα φεύγει στις πέντε. Έχει δέκα βαγόνια.", encoding="utf-8")
        (kb / "ko.txt").write_text("부산행 기차는 일곱 시에 출발합니다. 객차는 아홉 량입니다.", encoding="utf-8")

        done = jobs.run(copy_store(v1, tmp_path / "reference"), [kb], "jobs", snapshot=True)
        assert done["code"] == 0 and done["result"]["report"]["ok"], done
        reference, calls = done["result"]["snapshot"], done["result"]["calls"]
        assert_consistent(as_snapshot(reference))
        assert reference["state"]["documents"] == len(reference["manifest"]) == 17
        assert reference["state"]["counts"] == reference["languages"]  # the state's counts are the store's

        points = kill_points(calls, KILL_POINTS, random.Random(KILL_SEED))
        failed = []
        for n, (call, moment, delay) in enumerate(points):
            store = copy_store(v1, tmp_path / f"point-{n}")
            killed = jobs.run(store, [kb], "jobs", kill=(call, moment, delay))
            assert killed["status"] == "killed" and killed["signal"] == signal.SIGKILL, killed
            rerun = jobs.run(store, [kb], "jobs", snapshot=True)
            where = f"SIGKILL {moment} call {call} ({calls[call]})"
            if rerun["code"] != 0 or not rerun["result"]["report"]["ok"]:
                failed.append(f"{where}: the re-run failed")
            elif rerun["result"]["snapshot"] != reference:
                failed.append(f"{where}: the re-run did not converge")
    phases = ", ".join(f"{name} {k}" for name, k in Counter(calls[c] for c, _, _ in points).most_common())
    figure(
        f"reliability: kill points {len(points)} tried (SIGKILL at seeded random store calls of an ingestion job, "
        f"seed {KILL_SEED}: {phases}), {len(points) - len(failed)} converged"
    )
    assert not failed, failed


def kill_points(calls: list[str], k: int, rng: random.Random) -> list[tuple[int, str, float]]:
    """``k`` distinct calls, every kind of call at least once, each with a moment and a delay (for "during")."""
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(calls):
        by_name.setdefault(name, []).append(i)
    chosen = {rng.choice(indexes) for indexes in by_name.values()}
    chosen |= set(rng.sample([i for i in range(len(calls)) if i not in chosen], max(0, k - len(chosen))))
    return [(i, rng.choice(MOMENTS), rng.uniform(0, 0.02)) for i in sorted(chosen)]


def copy_store(store: Path, to: Path) -> Path:
    shutil.copytree(store, to)
    return to


def as_snapshot(data: dict) -> dict:
    """A snapshot made by tests/helpers_kill.py (JSON), in snapshot()'s form."""
    return {
        "chunks": {i: (d, m) for i, (d, m) in data["chunks"].items()},
        "manifest": {s: (h, tuple(ids), status) for s, (h, ids, status) in data["manifest"].items()},
    }


def test_pdf_chunks_know_their_page_and_docx_chunks_their_section(pipeline, tmp_path):
    from tests.helpers_files import write_docx, write_pdf

    kb = tmp_path / "kb"
    kb.mkdir()
    write_pdf(kb / "fahrplan.pdf", ["Der Zug nach Hamburg fährt um acht Uhr.", "Поезд в Москву отправляется в девять."])
    osaka = [f"大阪行きの{i}番の電車は五時に出発します。" for i in range(12)]  # longer than one chunk
    kyoto = [f"京都行きの{i}番の電車は六時に出発します。" for i in range(12)]
    write_docx(kb / "時刻表.docx", "時刻表", [("大阪", osaka), ("京都", kyoto)])
    report = pipeline.ingest([kb], "formats")
    assert report.ok and len(report.added) == 2
    (moscow,) = pipeline.retrieve("Поезд в Москву", collection="formats", top_k=1, where={"page": 2})
    assert moscow.chunk.file_name == "fahrplan.pdf" and "Москву" in moscow.chunk.text and moscow.chunk.language == "ru"
    kyoto = pipeline.retrieve("京都行きの電車", collection="formats", top_k=5, where={"source": str((kb / "時刻表.docx").resolve())})
    assert {h.chunk.section for h in kyoto} <= {"時刻表", "大阪", "京都"} and any(h.chunk.section == "京都" for h in kyoto)
    entry = {Path(e.source).name: e for e in pipeline.documents("formats")}
    assert entry["fahrplan.pdf"].pages == 2 and entry["時刻表.docx"].language == "ja"
