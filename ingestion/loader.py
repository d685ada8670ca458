"""Loader stage: a file on disk -> Document. One loader per family of extensions.

``load`` checks what can be checked before parsing -- a regular file, not empty, under the size
limit, readable, its bytes not plainly another format than its extension says -- then hands the
bytes to the loader for the extension. A loader turns bytes into ``LoadedText`` (text, title,
page offsets, headings, warnings) and raises IngestionError naming the file, what it expected,
what it found and what to do. Users may pass their own loaders: anything with ``extensions``,
``mime_types`` and ``load`` fits the ``Loader`` protocol.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import logging
import os
import re
import stat
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rag.config import IngestionConfig
from rag.errors import IngestionError
from rag.types import Document, LoadedText

log = logging.getLogger(__name__)

MB = 1024 * 1024
_LETTER = re.compile(r"[^\W\d_]")


@runtime_checkable
class Loader(Protocol):
    extensions: tuple[str, ...]  # lower case, with the dot: (".txt",)
    mime_types: tuple[str, ...]

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        """The text of ``data`` (the bytes of ``path``).

        Raises IngestionError naming ``path`` when ``data`` is not readable as this format.
        """
        ...


class _DebugRelay(logging.Handler):
    """Passes a library's records on to this module's logger at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s: %s", record.name, record.getMessage())


# pypdf warns about every repaired cross-reference table and trafilatura about every page it
# finds too short; a damaged file is reported once, as an IngestionError or a load warning.
for _library in ("pypdf", "trafilatura"):
    logging.getLogger(_library).addHandler(_DebugRelay())
    logging.getLogger(_library).propagate = False


# --- text decoding ----------------------------------------------------------------------------

_BOMS = (  # UTF-32 LE first: its BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 controls but tab, LF, VT, FF, CR and ESC (ANSI colours in logs), plus DEL.
_CONTROL_BYTES = bytes(sorted(set(range(32)) - {9, 10, 11, 12, 13, 27})) + b"\x7f"
_BINARY_SAMPLE = 64 * 1024
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that did not decode, under errors="surrogateescape"


def decode_text(path: Path, data: bytes, declared: str | None = None) -> tuple[str, tuple[str, ...]]:
    """``data`` as text, and warnings about how it was decoded.

    A UTF-16/32 byte order mark wins, then UTF-16 recognised without one, then ``declared`` (an
    HTML meta charset), then UTF-8, then UTF-8 with a few invalid bytes replaced, then
    charset-normalizer's guess. Binary data and bytes that fit no encoding raise IngestionError.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), ()
            except UnicodeDecodeError as e:
                raise IngestionError(
                    f"{path}: starts with a {encoding.upper()} byte order mark but is not valid {encoding.upper()} "
                    f"({e.reason} at byte {e.start}); re-save it as UTF-8"
                ) from e
    if b"\x00" in data and (utf16 := _utf16_without_bom(data)):
        text, encoding = utf16
        return text, (f"no byte order mark; decoded as {encoding.upper()} (detected)",)
    _refuse_binary(path, data)
    warnings: list[str] = []
    has_bom = data.startswith(codecs.BOM_UTF8)
    declared = None if has_bom else _whatwg_codec(declared)
    if declared and declared != "utf-8":
        try:
            return data.decode(declared), ()
        except UnicodeDecodeError:
            warnings.append(f"not valid {declared} as declared; decoding by detection instead")
    body = data[len(codecs.BOM_UTF8) :] if has_bom else data
    text = body.decode("utf-8", errors="surrogateescape")
    invalid = len(_ESCAPED.findall(text))
    if not invalid:
        return text, tuple(warnings)
    # Bytes of valid multi-byte sequences; a legacy 8-bit file (Latin-1, cp1251) has next to none,
    # so its few high bytes are not mistaken for damaged UTF-8.
    multibyte = len(body.translate(None, bytes(range(128)))) - invalid
    if has_bom or (invalid * 100 < len(body) and multibyte > invalid):
        noun = "byte" if invalid == 1 else "bytes"
        return _ESCAPED.sub("\ufffd", text), (*warnings, f"{invalid} invalid UTF-8 {noun} replaced")
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise IngestionError(
            f"{path}: is not UTF-8 ({invalid} invalid bytes) and no other text encoding fits; "
            "convert it to UTF-8 (e.g. iconv -f ENCODING -t UTF-8)"
        )
    return str(best), (*warnings, f"not UTF-8; decoded as {best.encoding} (detected)")


# Characters no text has: controls but whitespace and ESC, unassigned, private use, lone surrogates.
_NOT_TEXT = frozenset(("Cc", "Cn", "Co", "Cs"))


def _utf16_without_bom(data: bytes) -> tuple[str, str] | None:
    """(text, codec) when ``data`` is UTF-16 without a byte order mark, else None.

    Text in any script has ASCII characters (newlines, spaces, digits), whose high byte is NUL;
    the side of the byte pairs most NULs are on gives the likely byte order first (a CJK
    character such as 一, U+4E00, puts a NUL on the other side). The byte order that decodes to
    text wins: read the wrong way round a newline is U+0A00, unassigned, and binary data decodes
    to controls, unassigned or private code points, which no text has. As many NULs on both
    sides is binary: b"\x00\x01\x02binary\x00" would decode to a Latin letter, CJK and "y"."""
    if len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if even == odd:
        return None
    codecs_ = ("utf-16-be", "utf-16-le") if even > odd else ("utf-16-le", "utf-16-be")
    for codec in codecs_:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        sample = text[: _BINARY_SAMPLE // 2]
        if not any(unicodedata.category(ch) in _NOT_TEXT and ch not in "\t\n\v\f\r\x1b" for ch in sample):
            return text, codec
    return None


def _refuse_binary(path: Path, data: bytes) -> None:
    if b"\x00" in data:
        raise IngestionError(
            f"{path}: looks binary (NUL bytes), not text; if it is UTF-16 text without a byte order mark "
            "re-save it as UTF-8, else remove it or give it its real extension"
        )
    sample = data[:_BINARY_SAMPLE]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if controls * 20 > len(sample):
        raise IngestionError(
            f"{path}: looks binary ({controls} control bytes in the first {len(sample)}), not text; "
            "remove it or give it its real extension"
        )


def _whatwg_codec(label: str | None) -> str | None:
    """Python's codec for an HTML charset label, read the way browsers read it."""
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    # Pages labelled Latin-1 or ASCII are cp1252 in practice (and in the WHATWG encoding spec);
    # a UTF-16 label on a page without a BOM is wrong, and browsers read UTF-8.
    if name in ("latin-1", "iso8859-1", "ascii"):
        return "cp1252"
    return "utf-8" if name.startswith("utf-16") else name


# --- loaders ----------------------------------------------------------------------------------


class TextLoader:
    """Plain text in any encoding charset-normalizer can tell apart."""

    extensions = (".txt",)
    mime_types = ("text/plain",)

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        text, warnings = decode_text(path, data)
        return LoadedText(text=text, warnings=warnings)


class MarkdownLoader:
    """Markdown kept verbatim, so chunk spans point into the file's text; ATX headings mark sections."""

    extensions = (".md", ".markdown")
    mime_types = ("text/markdown",)

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        text, warnings = decode_text(path, data)
        headings = markdown_headings(text)
        title = next((heading for _, level, heading in headings if level == 1), None)
        return LoadedText(text=text, title=title, headings=tuple((o, h) for o, _, h in headings), warnings=warnings)


_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*\r?")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(offset of the line, level, heading) of each ATX heading outside fenced code blocks."""
    headings = []
    fence = ""  # the open fence's marker, e.g. "```"
    for line in re.finditer(r"^.*$", text, re.MULTILINE):
        if m := _FENCE.match(line.group()):
            marker = m.group(1)
            if not fence:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence) and not line.group()[m.end() :].strip():
                fence = ""
        elif not fence and (m := _ATX.fullmatch(line.group())) and m.group(2).strip("# \t"):
            headings.append((line.start(), len(m.group(1)), m.group(2)))
    return headings


class HTMLLoader:
    """The page's main content (trafilatura) as Markdown, without navigation, scripts or styles."""

    extensions = (".html", ".htm")
    mime_types = ("text/html", "application/xhtml+xml")

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        import trafilatura

        html, warnings = decode_text(path, data, declared=_meta_charset(data))
        # lxml refuses a str that declares an encoding; the bytes are decoded already.
        html = re.sub(r"^\s*<\?xml[^>]*\?>", "", html, count=1)
        _check_depth(path, _parse_html(html), config)
        extracted = trafilatura.bare_extraction(
            html, include_comments=False, include_tables=True, include_formatting=True, with_metadata=True
        )
        if extracted is None or not (extracted.text or "").strip():
            text = _all_text(html)
            title = _title_element(html)
            return LoadedText(
                text=text,
                title=title,
                warnings=(*warnings, "no main content found; took all of the page's text"),
            )
        text = extracted.text.strip()
        return LoadedText(
            text=text,
            title=extracted.title or _title_element(html),
            headings=_matched_headings(text, [_squeeze("".join(h.itertext())) for h in extracted.body.iter("head")]),
            warnings=warnings,
        )


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _meta_charset(data: bytes) -> str | None:
    m = _META_CHARSET.search(data[:4096])
    return m.group(1).decode("ascii") if m else None


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _matched_headings(markdown: str, heads: list[str]) -> tuple[tuple[int, str], ...]:
    """(offset, plain text) of the page's headings, ``heads``, in trafilatura's Markdown.

    Only "#" lines that match the next of ``heads`` count: the Markdown may mark up a heading
    ("## Fees **2024**"), and a "# comment" line of a <pre> block must not count, however
    trafilatura renders it.
    """

    def key(s: str) -> str:
        return re.sub(r"[\W_]+", "", s).casefold()

    found, pending = [], [(key(h), h) for h in heads]
    for offset, _, line in markdown_headings(markdown):
        line_key = key(line)
        for i, (head_key, head) in enumerate(pending):
            if head_key == line_key:
                found.append((offset, head))
                del pending[: i + 1]
                break
    return tuple(found)


def _parse_html(html: str) -> Any:
    """The page's lxml tree; None for a page with no elements at all (blank, or only a comment)."""
    import lxml.etree
    import lxml.html

    try:
        return lxml.html.document_fromstring(html)
    except lxml.etree.ParserError:
        return None


# libxml2 builds no element deeper than this (XML_PARSE_HUGE would lift it; trafilatura does not
# set it): the text of deeper elements is dropped without an error.
PARSER_DEPTH = 256


def _check_depth(path: Path, root: Any, config: IngestionConfig) -> None:
    """Refuse a page nested deeper than ingestion.max_html_depth: its deep text would be lost."""
    if root is None:
        return
    depths = {root: 1}
    deepest = 1
    for element in root.iter():
        parent = element.getparent()
        if parent is not None:
            depths[element] = depth = depths[parent] + 1
            deepest = max(deepest, depth)
    if deepest <= config.max_html_depth:
        return
    if deepest >= PARSER_DEPTH:
        found, fix = f"at least {PARSER_DEPTH}", "the parser drops what lies deeper, so its text would be lost"
    else:
        found, fix = str(deepest), f"raise the limit (at most {PARSER_DEPTH - 1}), or"
    raise IngestionError(
        f"{path}: its elements nest {found} levels deep, over ingestion.max_html_depth={config.max_html_depth}; "
        f"{fix}; flatten the page (save it again from a browser) or remove it"
    )


def _title_element(html: str) -> str | None:
    root = _parse_html(html)
    title = root.findtext(".//title") if root is not None else None
    return _squeeze(title or "") or None


_BLOCK_TAGS = ("p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table")


def _all_text(html: str) -> str:
    """Every visible text of the page, one block a line: the fallback when trafilatura finds no main content."""
    root = _parse_html(html)
    if root is None:
        return ""
    for element in root.xpath("//script | //style | //noscript | //template | //head"):
        element.drop_tree()
    for element in root.iter(*_BLOCK_TAGS):
        element.tail = "\n" + (element.tail or "")
    lines = (_squeeze(line) for line in root.text_content().splitlines())
    return "\n".join(line for line in lines if line)


class PDFLoader:
    """The text layer of a PDF, pages joined by a blank line; ``pages`` holds where each begins."""

    extensions = (".pdf",)
    mime_types = ("application/pdf",)

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        import pypdf

        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise IngestionError(
                    f"{path}: is encrypted with a password; decrypt it first "
                    "(e.g. qpdf --password=PASSWORD --decrypt in.pdf out.pdf)"
                )
            count = len(reader.pages)
        except IngestionError:
            raise
        except pypdf.errors.DependencyError as e:
            raise IngestionError(f"{path}: cannot be decrypted ({e}); pip install cryptography") from e
        except Exception as e:  # pypdf raises a zoo of types on damaged files: PdfReadError, KeyError, ...
            raise _unreadable_pdf(path, e) from e
        if count > config.max_pages:
            raise IngestionError(
                f"{path}: has {count} pages, over ingestion.max_pages={config.max_pages}; "
                "raise the limit or split the file"
            )
        texts, warnings, errors = [], [], []
        characters = 0
        for number in range(1, count + 1):
            try:
                texts.append(reader.pages[number - 1].extract_text().strip())
            except Exception as e:  # noqa: BLE001 -- as above; one damaged page must not lose the others
                texts.append("")
                errors.append(e)
                warnings.append(f"page {number}: text not extractable ({type(e).__name__}: {e})")
            characters += len(texts[-1])
            if characters > config.max_characters:  # stop reading: the rest would be refused anyway
                raise _too_much_text(path, f"over {characters:,}", config, f" in its first {number} of {count} pages")
        if len(errors) == count:
            raise _unreadable_pdf(path, errors[0])
        if not any(_LETTER.search(t) for t in texts):
            raise IngestionError(
                f"{path}: has no text layer (a scan?); OCR it first (e.g. ocrmypdf in.pdf out.pdf) "
                "and ingest the result"
            )
        starts, offset = [], 0
        for t in texts:
            starts.append(offset)
            offset += len(t) + 2
        return LoadedText(
            text="\n\n".join(texts), title=_pdf_title(reader), pages=tuple(starts), warnings=tuple(warnings)
        )


def _unreadable_pdf(path: Path, e: Exception) -> IngestionError:
    return IngestionError(
        f"{path}: not a readable PDF ({type(e).__name__}: {e}); re-export it, or repair it with qpdf in.pdf out.pdf"
    )


def _pdf_title(reader: Any) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # noqa: BLE001 -- a damaged info dictionary costs the title, not the document
        return None
    return _squeeze(str(title or "")) or None


# A member smaller than this cannot unpack to much, however well it compresses.
_RATIO_FLOOR = 1 * MB


class DocxLoader:
    """Word documents: paragraphs and table rows, a blank line apart; Heading/Title styles mark sections."""

    extensions = (".docx",)
    mime_types = ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",)

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        check_zip(path, data, config)
        import docx

        try:
            document = docx.Document(io.BytesIO(data))
            blocks = list(_docx_blocks(document))
            core_title = document.core_properties.title
        except Exception as e:  # python-docx and lxml raise many types on a damaged package
            raise IngestionError(
                f"{path}: not a readable .docx ({type(e).__name__}: {e}); "
                "open it in Word or LibreOffice and save it again"
            ) from e
        parts: list[str] = []
        headings: list[tuple[int, str]] = []
        title, offset = _squeeze(core_title or "") or None, 0
        for text, style in blocks:
            text = text.strip()
            if not text:
                continue
            if style and (style.lower().startswith("heading") or style == "Title"):
                headings.append((offset, _squeeze(text)))
                if style == "Title" and title is None:
                    title = _squeeze(text)
            parts.append(text)
            offset += len(text) + 2
        return LoadedText(text="\n\n".join(parts), title=title, headings=tuple(headings))


def check_zip(path: Path, data: bytes, config: IngestionConfig) -> None:
    """Refuse a zip container that is no zip, or unpacks too large (a zip bomb), from its directory alone.

    The sizes checked are the ones the archive declares; zipfile stops reading a member at its
    declared size (and fails its CRC check), so a lying directory cannot unpack more either.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as e:
        raise IngestionError(
            f"{path}: not a {path.suffix or 'zip'} (zip) file ({e}); open it in its application and save it again"
        ) from e
    unpacked = sum(m.file_size for m in members)
    if unpacked > config.max_unpacked_mb * MB:
        raise IngestionError(
            f"{path}: looks like a zip bomb: unpacks to {unpacked / MB:.0f} MB, over "
            f"ingestion.max_unpacked_mb={config.max_unpacked_mb:g}; raise the limit only if you trust the file"
        )
    for m in members:
        if m.file_size > _RATIO_FLOOR and m.file_size > config.max_compression_ratio * max(m.compress_size, 1):
            raise IngestionError(
                f"{path}: looks like a zip bomb: {m.filename} compresses "
                f"{m.file_size / max(m.compress_size, 1):.0f}:1, over ingestion.max_compression_ratio="
                f"{config.max_compression_ratio:g}; raise the limit only if you trust the file"
            )


def _docx_blocks(container: Any) -> Iterator[tuple[str, str | None]]:
    """(text, paragraph style name) of each paragraph, and (text, None) of each table, in order."""
    from docx.table import Table

    for block in container.iter_inner_content():
        if isinstance(block, Table):
            rows = []
            for row in block.rows:
                cells: list[Any] = []
                for cell in row.cells:
                    if not cells or cell is not cells[-1]:  # a merged cell comes once per column it spans
                        cells.append(cell)
                texts = [" ".join(t.strip() for t, _ in _docx_blocks(cell) if t.strip()) for cell in cells]
                if any(texts):
                    rows.append(" | ".join(texts))
            yield "\n".join(rows), None
        else:
            yield block.text, block.style.name if block.style is not None else None


DEFAULT_LOADERS: tuple[Loader, ...] = (TextLoader(), MarkdownLoader(), HTMLLoader(), PDFLoader(), DocxLoader())


# --- dispatch ---------------------------------------------------------------------------------

_ZIP_FAMILY = (".docx", ".docm", ".xlsx", ".pptx", ".odt", ".ods", ".odp", ".epub", ".zip")


def _sniff(path: Path, data: bytes) -> tuple[str, tuple[str, ...], str] | None:
    """(what the bytes are, extensions that fit them, how to fix the name) for formats whose
    first bytes say so beyond doubt; None for the rest (text, HTML, unknown)."""
    if data.startswith(b"%PDF-"):
        return "a PDF", (".pdf",), f"rename it to {path.stem}.pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                word = "word/document.xml" in archive.namelist()
        except zipfile.BadZipFile:
            word = False
        if word:
            return "a Word (.docx)", _ZIP_FAMILY, f"rename it to {path.stem}.docx"
        return "a zip", _ZIP_FAMILY, "rename it to its real extension, or unzip it and ingest the files inside"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return (
            "an old binary Office (.doc/.xls/.ppt)",
            (".doc", ".xls", ".ppt", ".msg"),
            "open it in Word or LibreOffice and save it as .docx",
        )
    return None


def loader_for(path: Path, data: bytes, loaders: Sequence[Loader] = DEFAULT_LOADERS) -> Loader:
    """The first of ``loaders`` that takes ``path``'s extension.

    Raises IngestionError when none does, or when ``data`` is plainly another format than the
    extension says (a PDF named .txt).
    """
    suffix = path.suffix.lower()
    loader = next((candidate for candidate in loaders if suffix in candidate.extensions), None)
    if loader is None:
        raise IngestionError(f"{path}: {_unsupported(suffix, [e for c in loaders for e in c.extensions])}")
    sniffed = _sniff(path, data)
    if sniffed and not set(sniffed[1]) & set(loader.extensions):
        what, _, fix = sniffed
        raise IngestionError(f"{path}: is {what} file with a '{path.suffix}' extension; {fix}")
    return loader


def _unsupported(suffix: str, supported: Iterable[str]) -> str:
    found = f"unsupported extension '{suffix}'" if suffix else "no extension"
    return f"{found}; supported: {', '.join(sorted(set(supported)))}"


def load(
    path: Path, config: IngestionConfig, loaders: Sequence[Loader] = DEFAULT_LOADERS
) -> tuple[Document, tuple[str, ...]]:
    """The document at ``path``, and its loader's warnings (bytes replaced, an encoding guessed).

    Raises IngestionError naming ``path`` when it cannot be ingested: not a regular file, empty,
    too large, unreadable, of an unsupported or mismatched format, or without text.
    """
    path = Path(path)
    data = _read(path, config)
    loaded = loader_for(path, data, loaders).load(path, data, config)
    if len(loaded.text) > config.max_characters:
        raise _too_much_text(path, f"{len(loaded.text):,}", config)
    if not _LETTER.search(loaded.text):
        raise IngestionError(f"{path}: has no text (no letters after extraction); nothing to ingest, remove it")
    document = Document(
        source=str(path.resolve()),
        text=loaded.text,
        content_hash=hashlib.sha256(data).hexdigest(),
        title=loaded.title,
        pages=loaded.pages,
        headings=loaded.headings,
    )
    return document, loaded.warnings


def load_document(path: Path, config: IngestionConfig, loaders: Sequence[Loader] = DEFAULT_LOADERS) -> Document:
    """``load`` without the warnings."""
    return load(path, config, loaders)[0]


def _read(path: Path, config: IngestionConfig) -> bytes:
    try:
        info = os.stat(path)
    except OSError as e:
        raise IngestionError(f"{path}: {_os_problem(path, e)}") from e
    if not stat.S_ISREG(info.st_mode):  # checked before opening: opening a FIFO blocks
        raise IngestionError(f"{path}: is a {_file_kind(info.st_mode)}, not a regular file; pass files or folders")
    limit = int(config.max_file_mb * MB)
    if info.st_size > limit:
        raise _too_large(path, info.st_size, config)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise IngestionError(f"{path}: {_os_problem(path, e)}") from e
    if len(data) > limit:  # it grew since stat
        raise _too_large(path, len(data), config)
    if not data:
        raise IngestionError(f"{path}: is empty (0 bytes); nothing to ingest, remove it or give it content")
    return data


def _too_much_text(path: Path, found: str, config: IngestionConfig, where: str = "") -> IngestionError:
    return IngestionError(
        f"{path}: has {found} characters of text{where}, over ingestion.max_characters={config.max_characters:,}; "
        "split the file or raise the limit"
    )


def _too_large(path: Path, size: int, config: IngestionConfig) -> IngestionError:
    return IngestionError(
        f"{path}: {size / MB:.1f} MB is over ingestion.max_file_mb={config.max_file_mb:g}; "
        "raise the limit or split the file"
    )


def _os_problem(path: Path, e: OSError) -> str:
    """What an OSError on ``path`` means, and what to do about it."""
    if e.errno == errno.ELOOP:
        return "is a symlink loop; fix or remove the link"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"is a broken symlink (to {os.readlink(path)}); fix or remove the link"
    if e.errno == errno.ENOENT:
        return "does not exist; pass a file or a folder to ingest"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read it ({e.strerror}); fix its permissions (e.g. chmod a+r) or run as a user who may read it"
    return f"cannot read it ({e.strerror}); check the disk and the file"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


# --- discovery --------------------------------------------------------------------------------


def discover(
    paths: Iterable[str | Path], extensions: Sequence[str], *, roots: Sequence[Path] = ()
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to ingest under ``paths``, and (path, reason) for each thing found but skipped.

    Files come resolved, sorted and without duplicates; folders are walked without following
    folder symlinks (so a symlink loop cannot trap the walk), hidden files and folders skipped.
    Skipped with a reason: symlink loops and broken symlinks, folder symlinks leading out of the
    tree, folders that cannot be listed, FIFOs and devices (never opened), and files named
    explicitly whose extension is not in ``extensions``. With ``roots`` (a server's
    ``server.ingest_roots``), a file whose real path lies outside all of them — a symlink out of
    a root — is skipped without being opened. A path that does not exist raises IngestionError.
    """
    wanted = {e.lower() for e in extensions}
    found: set[Path] = set()
    skipped: dict[str, str] = {}
    confined = [r.resolve() for r in roots]
    for raw in paths:
        path = Path(raw).expanduser()
        if os.path.isdir(path):
            _walk(path, wanted, found, skipped, confined)
            continue
        try:
            info = os.stat(path)
        except OSError as e:
            raise IngestionError(f"{path}: {_os_problem(path, e)}") from e
        if path.suffix.lower() not in wanted:
            skipped[str(path)] = _unsupported(path.suffix.lower(), wanted)
        else:
            _add_file(path, info, found, skipped, confined)
    return sorted(found), sorted(skipped.items())


def _walk(root: Path, wanted: set[str], found: set[Path], skipped: dict[str, str], roots: list[Path]) -> None:
    def unlistable(e: OSError) -> None:
        skipped[e.filename] = f"cannot list this folder ({e.strerror}); fix its permissions"

    real_root = root.resolve()
    for folder, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=False):
        here = Path(folder)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames:
            if (here / name).is_symlink() and (reason := _folder_link_problem(here / name, real_root)):
                skipped[str(here / name)] = reason
        for name in filenames:
            if name.startswith("."):
                continue
            path = here / name
            try:
                info = os.stat(path)
            except OSError as e:  # a symlink loop or a broken symlink, whatever its name
                skipped[str(path)] = _os_problem(path, e)
                continue
            if path.suffix.lower() in wanted:
                _add_file(path, info, found, skipped, roots)


def _add_file(path: Path, info: os.stat_result, found: set[Path], skipped: dict[str, str], roots: list[Path]) -> None:
    if not stat.S_ISREG(info.st_mode):
        skipped[str(path)] = f"is a {_file_kind(info.st_mode)}, not a regular file; skipped without opening it"
        return
    real = path.resolve()
    if roots and not any(real.is_relative_to(r) for r in roots):
        skipped[str(path)] = (
            f"links to {real}, outside the folders this server ingests from ({', '.join(map(str, roots))}); "
            "not read: copy the file into one of them or add its folder to server.ingest_roots"
        )
        return
    found.add(real)


def _folder_link_problem(link: Path, real_root: Path) -> str | None:
    """Why the files behind a folder symlink are not ingested; None when the walk finds them anyway."""
    target = link.resolve()
    if target == link.parent.resolve() or target in link.parent.resolve().parents:
        return f"symlink loop: links to its own parent folder {target}; not followed"
    if target.is_relative_to(real_root):
        return None
    return f"symlink to the folder {target} outside {real_root}; not followed, pass {target} itself to ingest it"
