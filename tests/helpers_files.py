"""Writers of real files in each format the loaders read, good and bad, for tests.

Each writes ``path`` and returns it. PDFs need the DejaVu Sans font (for Cyrillic and accents).
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Sequence
from pathlib import Path

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def dejavu_font() -> Path:
    """DejaVuSans.ttf from the system fonts, else the copy matplotlib ships."""
    if DEJAVU.is_file():
        return DEJAVU
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if bundled.is_file():
            return bundled
    raise FileNotFoundError(
        f"DejaVuSans.ttf is neither at {DEJAVU} nor in matplotlib; apt-get install fonts-dejavu-core"
    )


def write_pdf(path: Path, pages: Sequence[str], title: str | None = None) -> Path:
    """A PDF with a text layer: one page per item of ``pages``, ``title`` in its metadata."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_font("DejaVu", fname=str(dejavu_font()))
    pdf.set_font("DejaVu", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    path.write_bytes(bytes(pdf.output()))
    return path


def write_scanned_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF without a text layer, like a scan: each page holds only a drawing."""
    from fpdf import FPDF

    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        pdf.rect(20, 20, 100, 60, style="F")
    path.write_bytes(bytes(pdf.output()))
    return path


def write_encrypted_pdf(path: Path, text: str, password: str) -> Path:
    """A one-page PDF that opens only with ``password``."""
    import io

    import pypdf

    write_pdf(path, [text])
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(path))
    writer.encrypt(user_password=password, algorithm="RC4-128")  # AES would need `cryptography`
    buffer = io.BytesIO()
    writer.write(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` share of ``source``'s bytes, like an interrupted download."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_docx(
    path: Path,
    title: str | None,
    sections: Sequence[tuple[str, Sequence[str]]],
    table: Sequence[Sequence[str]] = (),
    core_title: str | None = None,
) -> Path:
    """A Word document: ``title`` in the Title style, then per section a Heading 1 and its
    paragraphs, then ``table`` (rows of cell texts); ``core_title`` in the document properties."""
    import docx

    document = docx.Document()
    if core_title:
        document.core_properties.title = core_title
    if title:
        document.add_paragraph(title, style="Title")
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=max(map(len, table)))
        for row, cells in zip(grid.rows, table, strict=True):
            for cell, text in zip(row.cells, cells, strict=False):  # a row may have fewer cells
                cell.text = text
    document.save(str(path))
    return path


def write_zip_bomb(path: Path, unpacked_mb: int, member: str = "word/document.xml") -> Path:
    """A zip (named as you like, e.g. .docx) whose ``member`` unpacks to ``unpacked_mb`` MB of zeros.

    Written a megabyte at a time at the fastest compression level: a few MB on disk, ~0.2 s per
    100 MB, little memory. Zeros still compress over 200:1.
    """
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open(member, "w", force_zip64=True) as f:
            for _ in range(unpacked_mb):
                f.write(chunk)
    return path


BOILERPLATE_WORDS = ("STYLEJUNK", "SCRIPTJUNK", "NAVJUNK", "COOKIEJUNK", "FOOTERJUNK")


def write_html(path: Path, title: str, body: str, *, charset: str = "utf-8", boilerplate: bool = True) -> Path:
    """A web page with ``body`` (HTML) as its <article>, encoded in and declaring ``charset``.

    With ``boilerplate`` the page also has what extraction must drop, each part marked with one
    of BOILERPLATE_WORDS: a <style>, <script>s, a <nav>, a cookie banner and a <footer>.
    """
    head = body_start = inline_script = body_end = ""
    if boilerplate:
        head = "<style>body { font-family: STYLEJUNK; }</style><script>var tracker = 'SCRIPTJUNK';</script>"
        body_start = (
            "<nav><ul><li><a href='/'>Home NAVJUNK</a></li><li><a href='/about'>About NAVJUNK</a></li></ul></nav>"
            "<div class='cookie-banner'>We use cookies COOKIEJUNK. <button>Accept</button></div>"
        )
        inline_script = "<script>document.write('SCRIPTJUNK');</script>"
        body_end = "<footer><p>Copyright 2024 FOOTERJUNK. All rights reserved.</p></footer>"
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="{charset}"><title>{title}</title>{head}</head>\n'
        f"<body>{body_start}\n<main><article>\n{body}\n{inline_script}\n</article></main>\n{body_end}</body></html>\n"
    )
    path.write_bytes(page.encode(charset))
    return path
