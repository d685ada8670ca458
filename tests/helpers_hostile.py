"""Hostile uploads for tests: file names as a hostile client sends them, and files whose content
attacks the loaders, written in the test (nothing big is committed). Each hostile file has a
good twin of the same batch in mind: good files beside hostile ones must all be ingested."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

# (what it tries, the name as sent). A name that escaped would land in a "canary" folder beside
# the upload folder (tests run as root: never aim at /etc). Names that cannot be local file names
# (a "/" or a NUL, "..", over 255 bytes) only travel in a multipart body; LOCAL_NAMES are the
# others, for the web UI's handler (Gradio hands it files under their names).
HOSTILE_NAMES: list[tuple[str, str]] = [
    ("parent folders", "../../canary/ru_kantine.txt"),
    ("absolute path", "/babelrag-canary/passwd.md"),
    ("windows parent folders", "..\\..\\canary\\win.ini.txt"),
    ("windows drive", "C:\\Users\\admin\\de_bericht.txt"),
    ("control characters", "bell\x07\x1b[2J\x1b[31mrot\r\n.txt"),
    ("NUL byte", "nul\x00byte.txt"),
    ("right-to-left override", "rechnung\u202etxt.exe\u202c.md"),
    ("bidi isolates and marks", "\u2067\u200fتقرير\u2069\u200e.txt"),
    ("zero-width only", "\u200b\u2060.txt"),
    ("dots only", ".."),
    ("hidden file", ".bashrc.txt"),
    ("the previous version's hidden name", ".dup.txt.previous-upload"),
    ("a name ending like an internal file", "dup.txt.incoming"),
    ("long Thai name", "เอกสารภายใน" * 40 + ".txt"),
    ("long Hindi name", "दस्तावेज़" * 60 + ".txt"),
    ("long Chinese name", "员工手册" * 100 + ".md"),
    ("long Russian name", "инструкция" * 50 + ".txt"),
    ("long extension", "x." + "a" * 300),
    ("duplicate", "dup.txt"),
    ("duplicate, other case", "DUP.txt"),
    ("duplicate, trailing space", "dup.txt "),
    ("duplicate, decomposed accents", "cafe\u0301.txt"),
    ("duplicate, composed accents", "caf\u00e9.txt"),
]
LOCAL_NAMES = [
    (what, name)
    for what, name in HOSTILE_NAMES
    if "/" not in name and "\x00" not in name and name not in (".", "..") and len(name.encode()) <= 255
]

# One sentence per language, for good files and for the content behind hostile names.
SENTENCES = {
    "en": "The bicycle cellar behind building B opens at seven in the morning.",
    "de": "Der Fahrradkeller hinter Gebäude B öffnet um sieben Uhr morgens.",
    "ru": "Велосипедный подвал за зданием Б открывается в семь утра.",
    "ar": "يفتح قبو الدراجات خلف المبنى ب في السابعة صباحا.",
    "hi": "भवन बी के पीछे साइकिल तहखाना सुबह सात बजे खुलता है।",
    "th": "ห้องเก็บจักรยานหลังอาคารบีเปิดเวลาเจ็ดโมงเช้า",
    "zh": "B栋后面的自行车地下室早上七点开门。",
    "ja": "B棟の裏にある自転車置き場は朝七時に開きます。",
}
LANGUAGES = list(SENTENCES)
# What the scripted LLM answers every question about the bicycle cellar with (in German).
ANSWER = "Der Fahrradkeller öffnet um sieben Uhr morgens [1]."


def numbered(language: str, n: int) -> str:
    """A sentence in ``language`` that no other file of the batch has (its number says which file)."""
    return f"{SENTENCES[language]} ({n})"


def write_deep_html(path: Path, depth: int = 100_000) -> Path:
    """A page whose text lies ``depth`` elements deep."""
    path.write_text(
        "<html><body><p>Oben steht ein Satz.</p>" + "<div>" * depth + "Tief unten steht noch ein Satz."
        + "</div>" * depth + "</body></html>",
        encoding="utf-8",
    )  # fmt: skip
    return path


def write_million_lines(path: Path, lines: int = 1_000_000) -> Path:
    """``lines`` short German lines: 34 MB, within max_file_mb, far over max_characters."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(f"Zeile {i}: das ist eine Zeile.\n")
    return path


def write_many_pages_pdf(path: Path, pages: int = 10_000) -> Path:
    """A valid PDF of ``pages`` pages that share one content stream: written by hand in a
    fraction of a second (fpdf2 needs minutes for 10k pages), ~1 MB."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (5 + i) for i in range(pages)) + b"] /Count %d >>" % pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        _stream(b"BT /F1 12 Tf 72 720 Td (Seite um Seite um Seite.) Tj ET"),
    ]
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
        b"/Contents 4 0 R >>"
    )
    objects += [page] * pages
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    path.write_bytes(out.getvalue())
    return path


def _stream(data: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(data), data)


def write_docx_xml(path: Path, document_xml: str) -> Path:
    """A .docx whose word/document.xml is ``document_xml`` as given (entities, DTDs and all)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="word/document.xml"/></Relationships>',
        )
        z.writestr("word/document.xml", document_xml)
    return path


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def billion_laughs_xml() -> str:
    """Entities that expand a billion times (the "billion laughs" attack), used in a paragraph."""
    entities = '<!ENTITY lol0 "lol">' + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    return (
        f'<?xml version="1.0"?><!DOCTYPE w:document [{entities}]><w:document {_W}><w:body>'
        "<w:p><w:r><w:t>Lachen: &lol9;</w:t></w:r></w:p></w:body></w:document>"
    )


def external_entity_xml(target: Path) -> str:
    """An external entity (XXE) that would paste ``target``'s content into the paragraph."""
    return (
        f'<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY secret SYSTEM "file://{target}">]>'
        f"<w:document {_W}><w:body><w:p><w:r><w:t>Geheimnis: &secret;</w:t></w:r></w:p></w:body></w:document>"
    )
