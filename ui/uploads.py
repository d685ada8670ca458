"""Uploaded files: saved into their collection's upload folder under safe names, ingested from
there, and kept only if the ingestion job took them. The web UI's upload handler and REST's
``POST /v1/collections/{name}/documents`` both go through ``UploadBatch``.

A name is cut to its last path component and stripped of control and bidi characters, so it
cannot leave the folder, hide itself or display as another name; it is cut to fit the file
system (255 bytes, with room for the suffixes below) keeping its extension. Names repeated in
one batch, letter case aside, become ``name (2).ext``: both files are ingested.

Uploading a name again replaces that document. Its previous file waits, hidden, as
``.NAME.previous-upload`` until the job says whether the new one made it into the store; if not,
the previous file comes back (the store still holds its chunks). A file is written under a
hidden name and renamed into place, so a crash never leaves half a file under its own name. One
batch at a time per folder: a second waits for the first's job, so two batches of one name
cannot move each other's previous versions.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from rag import IngestReport, JobProgress, Pipeline

PREVIOUS_SUFFIX = ".previous-upload"  # the hidden copy of a replaced file, until its job ends
INCOMING_SUFFIX = ".incoming"  # a file being written
# Bytes of a saved name: ext4, XFS and btrfs allow 255; the rest leaves room for " (n)" and the
# hidden ".NAME.previous-upload".
NAME_BYTES = 200
_EXTENSION_BYTES = 16  # a longer "extension" is part of the name: cut with it
# Zero-width (non-)joiners are spelling in Persian and Indic scripts, not formatting to strip.
_JOINERS = "\u200c\u200d"


def safe_file_name(name: str) -> str:
    """``name`` as a file name of the upload folder: no folders, control, bidi or other format
    characters, no leading dot (a hidden file is never ingested), at most NAME_BYTES bytes of
    UTF-8 with the extension kept; letters of any script kept. "upload" if nothing is left."""
    name = unicodedata.normalize("NFC", re.split(r"[\\/]", name)[-1])  # a Windows client may send C:\dir\a.txt
    name = "".join(ch for ch in name if ch in _JOINERS or (unicodedata.category(ch)[0] != "C" and ch not in ':*?"<>|'))
    name = re.sub(r"\s+", " ", name).strip()
    stem, dot, extension = name.rpartition(".")
    if not (dot and extension) or " " in extension or len(extension.encode()) > _EXTENSION_BYTES:
        stem, dot, extension = name, "", ""
    stem = _cut(stem.lstrip(".").rstrip(". "), NAME_BYTES - len(f"{dot}{extension}".encode()))
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in stem):  # nothing visible: "‍.txt", ".txt"
        stem = "upload"
    return f"{stem}{dot}{extension}"


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 at a character, not inside one, and not
    leaving a combining mark (a Thai vowel, a Devanagari sign) without its letter."""
    data = text.encode()
    if len(data) <= limit:
        return text
    text = data[:limit].decode(errors="ignore")
    while text and unicodedata.category(text[-1]).startswith("M"):
        text = text[:-1]
    return text.rstrip()


def upload_names(names: Sequence[str]) -> list[str]:
    """The safe name of each upload, unique in the batch regardless of case: the second
    "a.txt" becomes "a (2).txt", so both are ingested and neither overwrites the other."""
    taken: set[str] = set()
    out = []
    for raw in names:
        name = safe_file_name(raw)
        stem, dot, extension = name.rpartition(".") if "." in name else (name, "", "")
        n, candidate = 1, name
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem} ({n}){dot}{extension}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


def too_large(name: str, size: int, limit_mb: int) -> str | None:
    """Why an upload of ``size`` bytes is refused (server.max_upload_mb), or None."""
    if size <= limit_mb * 1024 * 1024:
        return None
    return (
        f"{safe_file_name(name)} is {size / 1e6:.1f} MB, more than server.max_upload_mb={limit_mb}: "
        "split it, ingest it with `babelrag ingest`, or raise the limit"
    )


_folder_locks: dict[Path, threading.Lock] = {}
_registry = threading.Lock()


def _lock_of(folder: Path) -> threading.Lock:
    with _registry:
        return _folder_locks.setdefault(folder, threading.Lock())


class UploadBatch:
    """Files for one collection's upload folder: ``files`` is (the name the client gave, where
    its bytes are now) per file. ``paths`` (where each will be, and its source in the store) and
    ``names`` (path -> the client's name, for reports) are known before anything is written."""

    def __init__(self, folder: Path, files: Sequence[tuple[str, Path]]) -> None:
        self.folder = folder.expanduser().resolve()
        self.files = list(files)
        self.paths = [self.folder / n for n in upload_names([name for name, _ in self.files])]
        self.names = {str(p): name or p.name for p, (name, _) in zip(self.paths, self.files, strict=True)}

    def ingest(
        self, pipeline: Pipeline, collection: str, progress: Callable[[JobProgress], None] | None = None
    ) -> IngestReport:
        """Place the files, ingest them into ``collection``, keep those the job took: a file that
        failed is removed and the version before it, if any, put back."""
        with _lock_of(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            previous: dict[Path, Path | None] = {}
            failed = {str(p) for p in self.paths}  # until the job says otherwise
            try:
                for path, (_, source) in zip(self.paths, self.files, strict=True):
                    previous[path] = self._place(source, path)
                report = pipeline.ingest(self.paths, collection, progress=progress)
                failed = {i.path for i in report.failed}
                return report
            finally:
                for path, aside in previous.items():
                    _settle(path, aside, kept=str(path) not in failed)

    def _place(self, source: Path, path: Path) -> Path | None:
        """Copy ``source`` to ``path`` (written hidden, then renamed); the file there before is
        moved aside and returned."""
        incoming = path.with_name(f".{path.name}{INCOMING_SUFFIX}")
        try:
            shutil.copyfile(source, incoming)
        except BaseException:
            incoming.unlink(missing_ok=True)
            raise
        aside = None
        if path.exists():
            aside = path.with_name(f".{path.name}{PREVIOUS_SUFFIX}")
            os.replace(path, aside)
        os.replace(incoming, path)
        return aside


def _settle(path: Path, aside: Path | None, *, kept: bool) -> None:
    if kept:
        if aside is not None:
            aside.unlink(missing_ok=True)
    elif aside is not None:
        os.replace(aside, path)  # the store still holds the previous version's chunks
    else:
        path.unlink(missing_ok=True)
