"""Uploaded files (ui/uploads.py): safe names for hostile ones, nothing of a batch lost or
overwritten, previous versions back when the new one fails, batches of one folder one at a time.
The job is a stand-in here (what the pipeline's ingest answers for each file); the REST route
and the web UI's handler run these with the real pipeline in tests/integration/test_hostile.py."""

from __future__ import annotations

import threading
import time
import unicodedata
from pathlib import Path

import pytest

from ingestion.job import FileIssue, IngestReport
from tests.helpers_hostile import HOSTILE_NAMES
from ui.uploads import NAME_BYTES, PREVIOUS_SUFFIX, UploadBatch, safe_file_name, upload_names


class Job:
    """Pipeline.ingest's stand-in: a file whose bytes start with b"bad" fails; it records what
    each path held while the job ran."""

    def __init__(self, delay_s: float = 0) -> None:
        self.seen: list[dict[str, bytes]] = []
        self.delay_s = delay_s

    def ingest(self, paths, collection, progress=None) -> IngestReport:
        time.sleep(self.delay_s)  # a job reads its files some time after they were placed
        self.seen.append({str(p): Path(p).read_bytes() for p in paths})
        report = IngestReport(collection)
        for p in map(str, paths):
            if self.seen[-1][p].startswith(b"bad"):
                report.failed.append(FileIssue(p, f"{p}: bad"))
            else:
                report.added.append(p)
        return report


def sources(tmp_path: Path, contents: list[tuple[str, bytes]]) -> list[tuple[str, Path]]:
    """(name as the client sent it, a file of ``contents``): bytes as a Gradio or staging file holds them."""
    out = []
    for i, (name, data) in enumerate(contents):
        (tmp_path / "in").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / str(i)).write_bytes(data)
        out.append((name, tmp_path / "in" / str(i)))
    return out


@pytest.mark.parametrize(("what", "name"), HOSTILE_NAMES, ids=[w for w, _ in HOSTILE_NAMES])
def test_a_hostile_name_becomes_a_visible_file_name_inside_the_folder(what, name):
    safe = safe_file_name(name)
    assert safe and "/" not in safe and "\\" not in safe and not safe.startswith(".")
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Co") for ch in safe)
    assert not {"\u202e", "\u2067", "\u2069", "\u200f", "\u200e", "\u200b", "\u2060"} & set(
        safe
    )  # no bidi, no invisible
    assert len(safe.encode()) <= NAME_BYTES and len(f".{safe} (99){PREVIOUS_SUFFIX}".encode()) <= 255
    if name.endswith((".txt", ".md")) and "long" in what:
        assert safe.endswith(name[name.rindex(".") :])  # cut, the extension kept: it says how to read the file


def test_safe_names_keep_every_script_and_cut_long_ones_between_letters():
    assert safe_file_name("C:\\Users\\admin\\de_bericht.txt") == "de_bericht.txt"
    assert safe_file_name("rechnung\u202etxt.exe\u202c.md") == "rechnungtxt.exe.md"  # displays as it is named
    assert safe_file_name("\u2067تقرير\u2069.txt") == "تقرير.txt"
    assert safe_file_name("गोपनीय\u200dदस्तावेज़.md") == "गोपनीय\u200dदस्तावेज़.md"  # a joiner is spelling
    assert safe_file_name("\u200b\u2060.txt") == "upload.txt" and safe_file_name("..") == "upload"
    assert safe_file_name("x." + "a" * 300) == "x." + "a" * (NAME_BYTES - 2)  # no extension that long
    thai = safe_file_name("เอกสารภายใน" * 40 + ".txt")
    assert thai.endswith("ใน.txt") or not unicodedata.category(thai[-5]).startswith("M")  # no vowel without its letter
    assert safe_file_name("cafe\u0301.txt") == safe_file_name("caf\u00e9.txt") == "caf\u00e9.txt"


def test_names_repeated_in_a_batch_are_numbered_not_overwritten():
    names = ["dup.txt", "DUP.txt", "dup.txt ", "../dup.txt", "cafe\u0301.txt", "caf\u00e9.txt", "a", "a"]
    assert upload_names(names) == [
        "dup.txt", "DUP (2).txt", "dup (3).txt", "dup (4).txt", "café.txt", "café (2).txt", "a", "a (2)",
    ]  # fmt: skip


def test_every_file_of_a_batch_with_hostile_names_is_kept_inside_the_folder(tmp_path):
    contents = [(name, f"file {i}: {what}".encode()) for i, (what, name) in enumerate(HOSTILE_NAMES)]
    batch = UploadBatch(tmp_path / "uploads" / "kb", sources(tmp_path, contents))
    job = Job()
    report = batch.ingest(job, "kb")
    folder = (tmp_path / "uploads" / "kb").resolve()
    assert len(report.added) == len(HOSTILE_NAMES) == len(set(batch.paths))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in batch.paths)  # nothing else, no leftovers
    assert [p.read_bytes() for p in batch.paths] == [data for _, data in contents]  # none overwrote another
    assert [batch.names[str(p)] for p in batch.paths] == [name for name, _ in contents]  # reports use the sent names
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and folder not in p.parents and "in" not in p.parts]


def test_a_failed_new_version_brings_the_previous_one_back(tmp_path):
    folder = tmp_path / "kb"
    UploadBatch(folder, sources(tmp_path / "1", [("a.txt", b"alt"), ("b.txt", b"alt b")])).ingest(Job(), "kb")
    again = UploadBatch(
        folder, sources(tmp_path / "2", [("a.txt", b"bad new"), ("b.txt", b"neu b"), ("c.txt", b"bad")])
    )
    report = again.ingest(Job(), "kb")
    assert [Path(i.path).name for i in report.failed] == ["a.txt", "c.txt"]
    assert (folder / "a.txt").read_bytes() == b"alt" and (folder / "b.txt").read_bytes() == b"neu b"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]  # no previous copies, no failed file


def test_a_batch_that_breaks_while_placing_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "kb"
    UploadBatch(folder, sources(tmp_path / "1", [("a.txt", b"alt")])).ingest(Job(), "kb")
    batch = UploadBatch(folder, [*sources(tmp_path / "2", [("a.txt", b"neu")]), ("b.txt", tmp_path / "gone")])
    with pytest.raises(FileNotFoundError):
        batch.ingest(Job(), "kb")
    assert [(p.name, p.read_bytes()) for p in folder.iterdir()] == [("a.txt", b"alt")]


def test_two_batches_of_one_name_wait_for_each_other(tmp_path):
    folder = tmp_path / "kb"
    job = Job(delay_s=0.3)
    batches = [UploadBatch(folder, sources(tmp_path / str(i), [("a.txt", f"version {i}".encode())])) for i in (1, 2)]
    threads = [threading.Thread(target=b.ingest, args=(job, "kb")) for b in batches]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    # each job read its own version (the second did not replace the file under the first one's job)
    assert sorted(seen[str(batches[0].paths[0])] for seen in job.seen) == [b"version 1", b"version 2"]
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
