"""Loaders on real files in eight scripts, good and bad. No models; the file runs in seconds."""

from __future__ import annotations

import codecs
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

import ingestion.loader as loader_module
from ingestion.loader import (
    DEFAULT_LOADERS,
    Loader,
    discover,
    load,
    load_document,
    loader_for,
)
from rag.config import IngestionConfig
from rag.errors import IngestionError
from rag.types import LoadedText
from tests.helpers_files import (
    BOILERPLATE_WORDS,
    write_docx,
    write_encrypted_pdf,
    write_html,
    write_pdf,
    write_scanned_pdf,
    write_truncated,
    write_zip_bomb,
)
from tests.helpers_hostile import write_deep_html, write_many_pages_pdf, write_million_lines

ROOT = Path(__file__).resolve().parents[2]
CONFIG = IngestionConfig()

TEXTS = {
    "en": "Employees receive twenty-five days of paid leave per year. Requests must be submitted two weeks in advance.",
    "de": "Alle Mitarbeiter haben Anspruch auf dreißig Tage Urlaub. Der Antrag muss zwei Wochen vorher gestellt "
    "werden; ein Übertrag ins nächste Jahr ist möglich, Ärger vermeiden wir gern.",
    "ru": "Сотрудники получают двадцать восемь дней оплачиваемого отпуска в год. Заявление на отпуск нужно подать "
    "за две недели.",
    "ar": "يحصل الموظفون على ثلاثين يوما من الإجازة السنوية المدفوعة. يجب تقديم طلب الإجازة قبل أسبوعين.",
    "hi": "कर्मचारियों को हर साल बीस दिन की सवेतन छुट्टी मिलती है। छुट्टी का आवेदन दो सप्ताह पहले देना होगा।",
    "th": "พนักงานได้รับวันลาพักร้อนปีละสิบห้าวัน กรุณายื่นคำขอลาล่วงหน้าสองสัปดาห์",
    "zh": "员工每年享有二十天带薪年假。请至少提前两周提交休假申请。",
    "ja": "従業員は年間二十日の有給休暇を取得できます。休暇の申請は二週間前までに行ってください。",
}
TITLES = {
    "en": "Leave policy", "de": "Urlaubsregelung", "ru": "Политика отпусков", "ar": "سياسة الإجازات",
    "hi": "अवकाश नीति", "th": "นโยบายการลา", "zh": "休假政策", "ja": "休暇規程",
}  # fmt: skip
HEADINGS = {
    "en": "How to apply", "de": "Antrag stellen", "ru": "Как подать заявление", "ar": "كيفية التقديم",
    "hi": "आवेदन कैसे करें", "th": "วิธีการยื่นคำขอ", "zh": "申请流程", "ja": "申請方法",
}  # fmt: skip


def refused(path: Path, *phrases: str, config: IngestionConfig = CONFIG, loaders=DEFAULT_LOADERS) -> str:
    """The IngestionError message for ``path``, checked to name the file and hold ``phrases``."""
    with pytest.raises(IngestionError) as caught:
        load(path, config, loaders)
    message = str(caught.value)
    assert path.name in message
    for phrase in phrases:
        assert phrase in message
    return message


def squeeze(text: str) -> str:
    return " ".join(text.split())


# --- plain text and encodings ---------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(TEXTS))
def test_utf8_text_round_trips_in_eight_scripts(tmp_path, lang):
    path = tmp_path / f"{lang}.txt"
    path.write_text(TEXTS[lang], encoding="utf-8")
    document, warnings = load(path, CONFIG)
    assert document.text == TEXTS[lang]
    assert document.source == str(path.resolve())
    assert document.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (document.title, document.pages, document.headings, warnings) == (None, (), (), ())


@pytest.mark.parametrize(
    "lang, encoding",
    [("ru", "cp1251"), ("ja", "shift_jis"), ("zh", "gb18030"), ("ar", "cp1256"), ("de", "latin-1")],
)
def test_legacy_encodings_are_detected(tmp_path, lang, encoding):
    path = tmp_path / f"{lang}-{encoding}.txt"
    path.write_bytes(TEXTS[lang].encode(encoding))
    document, warnings = load(path, CONFIG)
    assert document.text == TEXTS[lang]
    assert len(warnings) == 1 and "not UTF-8; decoded as" in warnings[0]


@pytest.mark.parametrize(
    "encoding, bom",
    [("utf-16", b""), ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-32", b""), ("utf-8-sig", b"")],
)
def test_byte_order_marks_decide_the_encoding(tmp_path, encoding, bom):
    text = f"{TEXTS['ru']} {TEXTS['ja']}"
    path = tmp_path / "bom.txt"
    path.write_bytes(bom + text.encode(encoding))  # "utf-16", "utf-32", "utf-8-sig" write their own BOM
    assert load(path, CONFIG) == (load_document(path, CONFIG), ())
    assert load_document(path, CONFIG).text == text


def test_a_few_invalid_utf8_bytes_are_replaced_with_a_warning(tmp_path):
    good = f"{TEXTS['de']} {TEXTS['ru']} {TEXTS['hi']}\n" * 3
    data = good.encode("utf-8").replace(b"Urlaub", b"Urla\xffb", 1).replace(b"Antrag", b"An\xc3trag", 1)
    path = tmp_path / "damaged.txt"
    path.write_bytes(data)
    document, warnings = load(path, CONFIG)
    assert warnings == ("2 invalid UTF-8 bytes replaced",)
    assert document.text == good.replace("Urlaub", "Urla\ufffdb", 1).replace("Antrag", "An\ufffdtrag", 1)


def test_latin1_with_rare_umlauts_is_not_taken_for_damaged_utf8(tmp_path):
    text = f"{TEXTS['en']} " * 10 + "Die Größe zählt."  # 3 of ~1100 bytes are not ASCII
    path = tmp_path / "mostly-ascii.txt"
    path.write_bytes(text.encode("latin-1"))
    document, warnings = load(path, CONFIG)
    assert document.text == text
    assert "invalid UTF-8" not in " ".join(warnings)


def test_bytes_that_fit_no_encoding_are_refused(tmp_path):
    noise = random.Random(1)
    path = tmp_path / "noise.txt"
    path.write_bytes(bytes(noise.randrange(0x80, 0x100) for _ in range(3000)))
    refused(path, "no other text encoding fits", "convert it to UTF-8")


@pytest.mark.parametrize("lang", sorted(TEXTS))
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_byte_order_mark_is_decoded(tmp_path, lang, codec):
    text = f"{TEXTS[lang]}\n{TITLES[lang]}\n"
    path = tmp_path / f"{lang}.txt"
    path.write_bytes(text.encode(codec))  # as some exporters write it: no BOM
    document, warnings = load(path, CONFIG)
    assert document.text == text
    assert warnings == (f"no byte order mark; decoded as {codec.upper()} (detected)",)


@pytest.mark.parametrize(
    "name, data, found",
    [
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, "NUL bytes"),
        ("controls.md", bytes(range(1, 9)) * 500 + b"text", "control bytes"),
        # int16 samples, little-endian: NULs on one side, like UTF-16, but they decode to controls
        ("samples.txt", b"".join(n.to_bytes(2, "little") for n in range(1, 32)) * 100, "NUL bytes"),
        # as many NULs on both sides: read as UTF-16 it would be "Ā" + three CJK characters + "y"
        ("short.txt", b"\x00\x01\x02binary\x00", "NUL bytes"),
    ],
)
def test_binary_content_with_a_text_extension_is_refused(tmp_path, name, data, found):
    path = tmp_path / name
    path.write_bytes(data)
    refused(path, "looks binary", found, "real extension")


@pytest.mark.parametrize(
    "name, content",
    [
        ("numbers.txt", "12345 67890\n3.14, 2.72\n"),
        ("blank.md", " \n\t\n"),
        ("blank.html", "   \n"),
        ("comment.html", "<!-- nothing else -->"),
        ("script.html", "<html><body><script>var tracker = 'x';</script></body></html>"),
    ],
)
def test_content_without_letters_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    refused(path, "has no text", "remove it")


def test_html_nested_deeper_than_the_parser_reads_is_refused_not_cut(tmp_path):
    # libxml2 drops elements below 255 levels without an error: the page would lose its deep text
    for depth in (300, 100_000):
        refused(write_deep_html(tmp_path / f"deep{depth}.html", depth), "nest at least 256 levels deep",
                "max_html_depth=255", "flatten the page")  # fmt: skip
    document = load_document(write_deep_html(tmp_path / "deep250.html", 250), CONFIG)
    assert "Tief unten steht noch ein Satz." in document.text
    shallow = IngestionConfig(max_html_depth=30)
    refused(write_deep_html(tmp_path / "deep40.html", 40), "nest 42 levels deep", "max_html_depth=30",
            "raise the limit", config=shallow)  # fmt: skip


# --- Markdown -------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", sorted(TEXTS))
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_markdown_is_kept_verbatim_with_title_and_heading_offsets(tmp_path, lang, newline):
    source = newline.join([
        f"# {TITLES[lang]}", "", TEXTS[lang], "",
        "```bash", "# a shell comment, not a heading", "```", "",
        f"## {HEADINGS[lang]} ##", "", TEXTS[lang], "",
        "#hashtag, not a heading", "    # indented code, not a heading", "",
    ])  # fmt: skip
    path = tmp_path / f"{lang}.md"
    path.write_bytes(source.encode("utf-8"))
    document = load_document(path, CONFIG)
    assert document.text == source
    assert document.title == TITLES[lang]
    assert [h for _, h in document.headings] == [TITLES[lang], HEADINGS[lang]]
    for offset, heading in document.headings:
        assert document.text[offset:].lstrip("# ").startswith(heading)
    assert document.heading_at(document.text.rindex(TEXTS[lang])) == HEADINGS[lang]


# --- HTML -----------------------------------------------------------------------------------


def html_body(lang: str) -> str:
    return (
        f"<h1>{TITLES[lang]}</h1><p>{TEXTS[lang]}</p><h2>{HEADINGS[lang]}</h2><p>{TEXTS[lang]} {TEXTS['en']}</p>"
        "<pre># not a heading\nls -l</pre>"
        "<table><tr><th>Item</th><th>Days</th></tr><tr><td>Leave</td><td>25</td></tr></table>"
    )


@pytest.mark.parametrize("lang", ["en", "de", "ar", "hi", "th", "zh"])
def test_html_main_content_without_boilerplate(tmp_path, lang):
    path = write_html(tmp_path / f"{lang}.html", f"{TITLES[lang]} – Example Corp", html_body(lang))
    document, warnings = load(path, CONFIG)
    assert warnings == ()
    for junk in BOILERPLATE_WORDS:
        assert junk not in document.text
    assert TEXTS[lang] in squeeze(document.text)
    assert "Leave" in document.text and "25" in document.text  # tables are kept
    assert document.title and TITLES[lang] in document.title
    assert [h for _, h in document.headings][-1] == HEADINGS[lang]
    assert "not a heading" not in [h for _, h in document.headings]
    for offset, heading in document.headings:
        assert document.text[offset:].lstrip("# ").startswith(heading)


@pytest.mark.parametrize(
    "lang, charset", [("ru", "windows-1251"), ("ja", "shift_jis"), ("zh", "gb18030"), ("ar", "windows-1256")]
)
def test_html_is_decoded_by_its_meta_charset(tmp_path, lang, charset):
    path = write_html(tmp_path / f"{lang}.html", TITLES[lang], html_body(lang), charset=charset)
    document, warnings = load(path, CONFIG)
    assert warnings == ()
    assert TEXTS[lang] in squeeze(document.text)


def test_html_fragment_falls_back_to_all_visible_text(tmp_path):
    path = tmp_path / "fragment.htm"
    # A lone block is too little page for trafilatura; its script must still not leak.
    path.write_text(f"<p>{TEXTS['de']}<script>var x = 'SCRIPTJUNK';</script></p>", encoding="utf-8")
    document, warnings = load(path, CONFIG)
    assert document.text == TEXTS["de"]
    assert warnings == ("no main content found; took all of the page's text",)


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_pages_in_three_languages_start_at_their_offsets(tmp_path):
    pages = [TEXTS["ru"], TEXTS["de"], TEXTS["en"]]
    path = write_pdf(tmp_path / "handbook.pdf", pages, title="Руководство")
    document = load_document(path, CONFIG)
    assert document.title == "Руководство"
    assert len(document.pages) == 3 and document.pages[0] == 0
    for number, (start, text) in enumerate(zip(document.pages, pages, strict=True), 1):
        end = document.pages[number] if number < 3 else len(document.text)
        assert squeeze(document.text[start:end]) == text
        assert document.page_at(start) == number


def test_pdf_over_max_pages_is_refused(tmp_path):
    path = write_pdf(tmp_path / "long.pdf", ["one", "two", "three"])
    refused(path, "has 3 pages", "max_pages=2", "split the file", config=IngestionConfig(max_pages=2))
    refused(write_many_pages_pdf(tmp_path / "many.pdf", 2001), "has 2001 pages", "max_pages=2000")


def test_text_over_max_characters_is_refused_and_a_pdf_is_not_read_to_its_end(tmp_path):
    lines = write_million_lines(tmp_path / "lines.txt")  # 34 MB: under max_file_mb=50
    refused(lines, "has 33,888,890 characters of text", "max_characters=5,000,000", "split the file")
    pdf = write_many_pages_pdf(tmp_path / "pages.pdf", 3)  # 24 characters a page
    limit = IngestionConfig(max_characters=30)
    refused(pdf, "has over 48 characters of text in its first 2 of 3 pages", "max_characters=30", config=limit)
    assert load(pdf, IngestionConfig(max_characters=100))[0].text.count("Seite um Seite") == 3


def test_truncated_pdf_is_refused(tmp_path):
    whole = write_pdf(tmp_path / "whole.pdf", [TEXTS["en"]] * 3)
    refused(write_truncated(tmp_path / "cut.pdf", whole), "not a readable PDF", "repair it")


def test_pdf_without_text_layer_asks_for_ocr(tmp_path):
    refused(write_scanned_pdf(tmp_path / "scan.pdf"), "has no text layer", "OCR it first")


def test_password_protected_pdf_is_refused(tmp_path):
    refused(write_encrypted_pdf(tmp_path / "secret.pdf", TEXTS["en"], "hunter2"), "encrypted", "decrypt it first")


# --- docx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["zh", "ja", "ar", "hi", "th"])
def test_docx_paragraphs_tables_title_and_headings(tmp_path, lang):
    path = write_docx(
        tmp_path / f"{lang}.docx",
        TITLES[lang],
        [(HEADINGS[lang], [TEXTS[lang], TEXTS["en"]]), ("Appendix", ["See the table."])],
        table=[["Item", "Days"], [HEADINGS[lang], "20"]],
    )
    document = load_document(path, CONFIG)
    assert document.title == TITLES[lang]
    assert [h for _, h in document.headings] == [TITLES[lang], HEADINGS[lang], "Appendix"]
    for offset, heading in document.headings:
        assert document.text.startswith(heading, offset)
    assert f"{TEXTS[lang]}\n\n{TEXTS['en']}" in document.text
    assert f"Item | Days\n{HEADINGS[lang]} | 20" in document.text
    assert document.heading_at(document.text.index(TEXTS[lang])) == HEADINGS[lang]


def test_docx_core_title_wins_over_the_title_paragraph(tmp_path):
    path = write_docx(tmp_path / "t.docx", "Shown title", [("Part", [TEXTS["en"]])], core_title="Core title")
    assert load_document(path, CONFIG).title == "Core title"


def test_zip_bomb_disguised_as_docx_is_refused_by_unpacked_size(tmp_path):
    path = write_zip_bomb(tmp_path / "bomb.docx", unpacked_mb=300)
    assert path.stat().st_size < 2 * 1024 * 1024
    refused(path, "looks like a zip bomb", "unpacks to 300 MB", "max_unpacked_mb=200", "only if you trust")


def test_zip_bomb_is_refused_by_compression_ratio(tmp_path):
    path = write_zip_bomb(tmp_path / "dense.docx", unpacked_mb=20)
    refused(path, "looks like a zip bomb", "word/document.xml compresses", "max_compression_ratio=100", "only if you")


def test_real_docx_over_a_low_unpacked_limit_is_refused(tmp_path):
    path = write_docx(tmp_path / "small.docx", "T", [("H", [TEXTS["en"]])])
    assert load_document(path, IngestionConfig(max_unpacked_mb=5)).title == "T"
    refused(path, "looks like a zip bomb", "max_unpacked_mb=0.1", config=IngestionConfig(max_unpacked_mb=0.1))


def test_docx_that_is_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "report.docx"
    path.write_text("just some text\n")
    refused(path, "not a .docx (zip) file", "save it again")


# --- content that contradicts its extension -------------------------------------------------


def test_pdf_renamed_txt_is_refused_with_the_right_name(tmp_path):
    path = write_pdf(tmp_path / "report.txt", [TEXTS["en"]])
    refused(path, "is a PDF file with a '.txt' extension", "rename it to report.pdf")


def test_docx_renamed_md_is_refused_with_the_right_name(tmp_path):
    path = write_docx(tmp_path / "notes.md", "T", [("H", [TEXTS["en"]])])
    refused(path, "is a Word (.docx) file with a '.md' extension", "rename it to notes.docx")


def test_zip_renamed_txt_is_refused(tmp_path):
    path = tmp_path / "archive.txt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", TEXTS["en"])
    refused(path, "is a zip file with a '.txt' extension", "unzip it")


def test_old_binary_doc_renamed_docx_is_refused(tmp_path):
    path = tmp_path / "old.docx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    refused(path, "old binary Office", "save it as .docx")


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "sheet.xyz"
    path.write_text(TEXTS["en"])
    refused(path, "unsupported extension '.xyz'", "supported: .docx, .htm, .html, .markdown, .md, .pdf, .txt")


# --- files that cannot be read --------------------------------------------------------------


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.md"
    path.touch()
    refused(path, "is empty (0 bytes)", "remove it")


def test_file_over_max_file_mb_is_refused(tmp_path):
    path = tmp_path / "large.txt"
    path.write_text(TEXTS["en"] * 200)  # ~22 KB
    refused(path, "over ingestion.max_file_mb=0.01", "raise the limit", config=IngestionConfig(max_file_mb=0.01))
    assert load_document(path, IngestionConfig(max_file_mb=0.1)).text.startswith(TEXTS["en"])


def test_huge_file_is_refused_by_its_size_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.truncate(100 * 2**20)  # sparse: takes no disk space

    def must_not_open(*args, **kwargs):
        raise AssertionError("the loader opened a file it should refuse by size")

    monkeypatch.setattr(loader_module, "open", must_not_open, raising=False)
    refused(path, "100.0 MB is over ingestion.max_file_mb=50", "split the file")


def test_folder_is_refused(tmp_path):
    folder = tmp_path / "docs.txt"
    folder.mkdir()
    refused(folder, "is a folder, not a regular file", "pass files or folders")


@pytest.mark.timeout(20)
def test_fifo_is_reported_and_never_opened(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    refused(fifo, "is a FIFO (named pipe), not a regular file", "pass files or folders")
    files, skipped = discover([tmp_path], CONFIG.extensions)
    assert files == []
    assert skipped == [(str(fifo), "is a FIFO (named pipe), not a regular file; skipped without opening it")]


UNREADABLE_CHECK = """
import os, sys
sys.path.insert(0, sys.argv[1])
import rag  # imported while still privileged: the interpreter may live where nobody may read
from pathlib import Path
from ingestion.loader import discover, load_document
from rag.config import IngestionConfig
from rag.errors import IngestionError
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    load_document(Path(sys.argv[2]), IngestionConfig())
except IngestionError as e:
    print(e)
print(discover([sys.argv[3]], [".txt"]))
"""


@pytest.mark.integration  # a process that drops root
def test_unreadable_file_and_folder_are_reported_with_a_fix():
    # Root reads anything, so the check runs as nobody (uid 65534), in a folder nobody may enter:
    # under /tmp with mode 755, as pytest's tmp_path is private to its owner.
    base = Path(tempfile.mkdtemp(prefix="babelrag-permissions-", dir="/tmp"))
    try:
        base.chmod(0o755)
        secret = base / "secret.txt"
        secret.write_text(TEXTS["en"])
        secret.chmod(0o000)
        locked = base / "locked"
        locked.mkdir()
        (locked / "inside.txt").write_text(TEXTS["en"])
        locked.chmod(0o000)
        result = subprocess.run(
            [sys.executable, "-c", UNREADABLE_CHECK, str(ROOT), str(secret), str(locked)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        error, found = result.stdout.splitlines()
        assert error == (
            f"{secret}: cannot read it (Permission denied); fix its permissions (e.g. chmod a+r) "
            "or run as a user who may read it"
        )
        assert found == repr(([], [(str(locked), "cannot list this folder (Permission denied); fix its permissions")]))
    finally:
        locked.chmod(0o755)
        shutil.rmtree(base)


# --- discovery ------------------------------------------------------------------------------


def test_discover_survives_symlink_loops_and_reports_them(tmp_path):
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden")
    (root / ".secret.md").write_text("hidden")
    (root / "doc.txt").write_text(TEXTS["en"])
    (root / "sub" / "deep.md").write_text(TEXTS["de"])
    (root / "notes.xyz").write_text("ignored: not an ingested extension")
    (root / "link.txt").symlink_to(root / "doc.txt")  # the same file twice
    (root / "a.txt").symlink_to(root / "b.txt")
    (root / "b.txt").symlink_to(root / "a.txt")
    (root / "gone.md").symlink_to(root / "missing.md")
    (root / "sub" / "up").symlink_to(root)
    (root / "sub" / "self").symlink_to(".")
    (root / "sibling").symlink_to(root / "sub")  # inside the tree: walked anyway, not reported
    (tmp_path / "elsewhere").mkdir()
    (root / "outside").symlink_to(tmp_path / "elsewhere")

    files, skipped = discover([root], CONFIG.extensions)

    assert files == [(root / "doc.txt").resolve(), (root / "sub" / "deep.md").resolve()]
    reasons = dict(skipped)
    assert set(reasons) == {str(root / n) for n in ("a.txt", "b.txt", "gone.md", "sub/up", "sub/self", "outside")}
    assert reasons[str(root / "a.txt")] == "is a symlink loop; fix or remove the link"
    assert reasons[str(root / "gone.md")] == f"is a broken symlink (to {root / 'missing.md'}); fix or remove the link"
    assert reasons[str(root / "sub" / "up")].startswith("symlink loop: links to its own parent folder")
    assert reasons[str(root / "sub" / "self")].startswith("symlink loop")
    assert "not followed, pass" in reasons[str(root / "outside")]


def test_discover_explicit_paths(tmp_path):
    (tmp_path / "a.md").write_text(TEXTS["en"])
    (tmp_path / "b.xyz").write_text(TEXTS["en"])
    (tmp_path / ".hidden.txt").write_text(TEXTS["en"])
    files, skipped = discover([tmp_path / "a.md", tmp_path / ".hidden.txt", tmp_path / "b.xyz"], [".md", ".txt"])
    assert files == [(tmp_path / ".hidden.txt").resolve(), (tmp_path / "a.md").resolve()]  # named: not skipped
    assert skipped == [(str(tmp_path / "b.xyz"), "unsupported extension '.xyz'; supported: .md, .txt")]
    with pytest.raises(IngestionError, match="missing.md: does not exist; pass a file or a folder"):
        discover([tmp_path / "missing.md"], [".md"])
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    with pytest.raises(IngestionError, match="dangling.md: is a broken symlink"):
        discover([tmp_path / "dangling.md"], [".md"])


# --- the loader protocol --------------------------------------------------------------------


class CsvLoader:
    extensions = (".csv",)
    mime_types = ("text/csv",)

    def load(self, path: Path, data: bytes, config: IngestionConfig) -> LoadedText:
        return LoadedText(text=data.decode().replace(",", " | "), title=path.stem)


def test_default_loaders_fit_the_protocol_and_cover_the_default_extensions():
    assert all(isinstance(loader, Loader) for loader in DEFAULT_LOADERS)
    assert {e for loader in DEFAULT_LOADERS for e in loader.extensions} == set(CONFIG.extensions)
    assert all(loader.mime_types for loader in DEFAULT_LOADERS)


def test_own_loaders_plug_in(tmp_path):
    assert isinstance(CsvLoader(), Loader)
    path = tmp_path / "days.csv"
    path.write_text("Leave,25\nSick,10\n")
    loaders = (CsvLoader(), *DEFAULT_LOADERS)
    assert loader_for(path, path.read_bytes(), loaders).__class__ is CsvLoader
    document = load_document(path, CONFIG, loaders)
    assert (document.text, document.title) == ("Leave | 25\nSick | 10\n", "days")
    refused(path, "unsupported extension '.csv'")
