"""The text of an uploaded file, by its kind: what a vector store chunks and searches.

Kinds are told by the file's name and checked against its bytes:
- plain text, Markdown, code, JSON, CSV... (`TEXT_SUFFIXES`): decoded as UTF-8
  (a byte order mark or UTF-16 too); bytes that are not text are refused;
- HTML: the text outside `<script>`/`<style>`, with block elements as line
  breaks (the standard library's parser);
- PDF: each page's text (pypdf), pages apart by a blank line;
- DOCX: paragraphs and table cells (python-docx).

What it must not do: store anything, or guess a kind from bytes alone (a
`.bin` is refused by name, as OpenAI's file_search refuses it). A file that
yields no text (an empty file, a scanned PDF without a text layer) is a 400
naming it.
"""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import PurePosixPath

from impetus.web import bad_request

TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".yaml", ".yml", ".toml",
    ".ini", ".log", ".tex", ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".c", ".h", ".cpp", ".hpp", ".cc",
    ".cs", ".go", ".rs", ".rb", ".php", ".sh", ".swift", ".kt", ".scala", ".sql", ".css", ".lua", ".pl", ".r",
}
HTML_SUFFIXES = {".html", ".htm"}
KINDS = sorted(TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"})
BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
          "table", "ul", "ol", "blockquote", "header", "footer"}


def kind_of(filename: str) -> str:
    """".pdf", ".md"...: the suffix this module reads, or a 400 naming the file."""
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix not in TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}:
        raise bad_request(f"Files with extension [{suffix or 'none'}] are not supported for retrieval: "
                          f"'{filename}'. Supported: {', '.join(KINDS)}.", param="file", code="unsupported_file")
    return suffix


def extract(filename: str, data: bytes) -> str:
    """The file's text (a 400 naming it when it has none or is not what its name says)."""
    suffix = kind_of(filename)
    if not data:
        raise bad_request(f"The file '{filename}' is empty.", param="file", code="empty_file")
    try:
        if suffix == ".pdf":
            text = _pdf(data)
        elif suffix == ".docx":
            text = _docx(data)
        else:
            text = _decode(data, filename)
            if suffix in HTML_SUFFIXES:
                text = _html(text)
    except ValueError as error:
        raise bad_request(f"The file '{filename}' could not be read as {suffix}: {error}", param="file",
                          code="invalid_file") from None
    text = text.replace("\x00", "").strip()
    if not text:
        raise bad_request(f"The file '{filename}' has no text to search (a scan without a text layer?).",
                          param="file", code="empty_file")
    return text


def _decode(data: bytes, filename: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"it is not UTF-8 text (byte {error.start})") from None
    if "\x00" in text[:4096]:
        raise ValueError("it holds binary data")
    return text


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, OSError, KeyError, TypeError) as error:
        raise ValueError(f"not a readable PDF ({error})") from None


def _docx(data: bytes) -> str:
    import zipfile

    from docx import Document

    try:
        document = Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ValueError(f"not a readable DOCX ({error})") from None
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append("\t".join(cell.text for cell in row.cells))
    return "\n".join(parts)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript", "template"):
            self.skipping += 1
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript", "template"):
            self.skipping = max(0, self.skipping - 1)
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def _html(text: str) -> str:
    parser = _Text()
    parser.feed(text)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
