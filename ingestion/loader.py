"""Loader stage: a file on disk -> Document. One loader per family of extensions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from rag.config import IngestionConfig
from rag.errors import IngestionError
from rag.types import Document


@runtime_checkable
class Loader(Protocol):
    extensions: tuple[str, ...]

    def load(self, path: Path, data: bytes) -> str:
        """The text of ``data`` (the bytes of ``path``); raises IngestionError when it has none."""
        ...


class TextLoader:
    """Plain text and Markdown. UTF-8 (with or without BOM) first, else a detected encoding."""

    extensions = (".txt", ".md", ".markdown")

    def load(self, path: Path, data: bytes) -> str:
        if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise IngestionError(f"{path}: looks binary (NUL bytes), not text; remove it or fix its extension")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            pass
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is None:
            raise IngestionError(f"{path}: not UTF-8 and no other text encoding fits; convert it to UTF-8")
        return str(best)


DEFAULT_LOADERS: tuple[Loader, ...] = (TextLoader(),)


def discover(paths: Iterable[str | Path], extensions: Sequence[str]) -> list[Path]:
    """Files under ``paths`` with one of ``extensions``, resolved, sorted, without duplicates."""
    wanted = {e.lower() for e in extensions}
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise IngestionError(f"{path} does not exist; pass a file or a folder to ingest")
        candidates: Iterator[Path] = iter([path]) if path.is_file() else path.rglob("*")
        for p in candidates:
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
                if p.suffix.lower() in wanted:
                    found.add(p.resolve())
    return sorted(found)


def load_document(path: Path, config: IngestionConfig, loaders: Sequence[Loader] = DEFAULT_LOADERS) -> Document:
    loader = next((l for l in loaders if path.suffix.lower() in l.extensions), None)
    if loader is None:
        raise IngestionError(f"{path}: no loader for '{path.suffix}' files; supported: {', '.join(config.extensions)}")
    try:
        size = path.stat().st_size
        if size > config.max_file_mb * 1024 * 1024:
            raise IngestionError(
                f"{path}: {size / 1024 / 1024:.1f} MB is over ingestion.max_file_mb={config.max_file_mb}; "
                "raise the limit or split the file"
            )
        data = path.read_bytes()
    except OSError as e:
        raise IngestionError(f"{path}: cannot read it ({e.strerror})") from e
    text = loader.load(path, data)
    if not text.strip():
        raise IngestionError(f"{path}: has no text")
    return Document(
        source=str(path), text=text, content_hash=hashlib.sha256(data).hexdigest(), title=_title(path, text)
    )


def _title(path: Path, text: str) -> str | None:
    if path.suffix.lower() in (".md", ".markdown"):
        match = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
        if match:
            return match.group(1)
    return None
