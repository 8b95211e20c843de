"""One reader per format, each returning a Document (text + blocks) or raising DocError(reason).

Libraries (chosen by measurement, see README "Slice"): markdown-it-py for Markdown structure, chardet for text
encodings, python-docx for DOCX, pypdf for PDF text, trafilatura for the
main text of HTML pages (its Markdown output goes through the Markdown reader).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import regex

from .document import Block, Document, HeadingGuesser, TextBuilder, fill_gaps, strip_span

EXTENSIONS = {".md": "md", ".markdown": "md", ".txt": "txt", ".text": "txt", ".docx": "docx", ".pdf": "pdf",
              ".html": "html", ".htm": "html", ".xhtml": "html"}
FORMATS = ("md", "txt", "docx", "pdf", "html")
LEGACY = {".doc": "legacy binary Word .doc is not supported: save it as .docx",
          ".wps": "WPS binary file is not supported: save it as .docx"}


class DocError(Exception):
    """A file that cannot be read; str(e) is the reason reported as `file: reason`."""


def format_of(path: str | os.PathLike[str]) -> str | None:
    return EXTENSIONS.get(Path(path).suffix.lower())


# ---- text decoding -------------------------------------------------------------------------------------------

# GB2312 and GBK are subsets of GB18030, Big5 of cp950: decoding with the superset never loses a character
# that a file written by a common Chinese editor may hold.
_SUPERSET = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "cp950", "ascii": "utf-8"}
# detection reads the first 4 KB (chardet costs ~1.5 ms per KB), then 64 KB, then all of it, until the whole
# file decodes strictly with what it found
_DETECT_SAMPLES = (1 << 12, 1 << 16)


def _detect(data: bytes) -> str | None:
    import codecs

    import chardet

    enc = chardet.detect(data)["encoding"]
    if not enc:
        return None
    try:
        name = codecs.lookup(enc).name
    except LookupError:
        return None
    return _SUPERSET.get(name, name)


def decode_text(data: bytes) -> tuple[str, str]:
    """(text with \\n line ends, encoding name). UTF-8 (with or without BOM) and UTF-16 with a BOM are taken at
    once; anything else is detected by chardet (GB18030/GBK/GB2312, Big5, ...) and decoded strictly."""
    if data.startswith(b"\xef\xbb\xbf"):
        text, enc = data[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, enc = data.decode("utf-16"), "utf-16"
    else:
        try:
            text, enc = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            if b"\x00" in data[:4096]:
                raise DocError("binary data (NUL bytes), not text") from None
            text = ""
            tried = []
            for sample in [data[:n] for n in _DETECT_SAMPLES if n < len(data)] + [data]:
                enc = _detect(sample) or ""
                if not enc or enc in tried:
                    continue
                tried.append(enc)
                try:
                    text = data.decode(enc)
                    break
                except UnicodeDecodeError:
                    continue
            else:
                raise DocError(f"undecodable text: no known encoding fits (tried {', '.join(tried) or 'none'})")
    if "\x00" in text:
        raise DocError("binary data (NUL characters), not text")
    return text.replace("\r\n", "\n").replace("\r", "\n"), enc


# ---- Markdown ------------------------------------------------------------------------------------------------

_MD: Any = None


def _markdown_parser() -> Any:
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark").enable("table")
        _MD.core.ruler.disable(["inline", "text_join"])  # only block structure is used: ~1.3x faster
    return _MD


def markdown_blocks(text: str) -> list[Block]:
    """Top-level Markdown blocks as spans of `text` (CommonMark + GFM tables, parsed by markdown-it-py)."""
    line_starts = [0] + [m.end() for m in regex.finditer("\n", text)]

    def off(line: int) -> int:
        return line_starts[line] if line < len(line_starts) else len(text)

    def span(m: list[int]) -> tuple[int, int]:
        return strip_span(text, off(m[0]), off(m[1]))

    tokens = _markdown_parser().parse(text)
    blocks: list[Block] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if t.level != 0 or t.nesting == -1 or t.map is None:
            continue
        s, e = span(t.map)
        if t.type == "heading_open":
            blocks.append(Block("heading", s, e, level=int(t.tag[1:]), title=tokens[i].content.strip()))
        elif t.type == "paragraph_open":
            content = tokens[i].content.strip()
            kind = "formula" if content.startswith("$$") and content.endswith("$$") and len(content) > 3 else \
                "paragraph"
            blocks.append(Block(kind, s, e))
        elif t.type in ("fence", "code_block"):
            blocks.append(Block("code", s, e, parts=_line_spans(text, s, e)))
        elif t.type == "table_open":
            rows, j = [], i
            body_start = None
            while tokens[j].type != "table_close":
                if tokens[j].type == "tbody_open" and tokens[j].map:
                    body_start = tokens[j].map[0]
                elif tokens[j].type == "tr_open" and tokens[j].map and body_start is not None:
                    rows.append(span(tokens[j].map))
                j += 1
            head = strip_span(text, s, off(body_start)) if body_start is not None else (s, e)
            blocks.append(Block("table", s, e, parts=[head, *rows], header=1))
        elif t.type in ("bullet_list_open", "ordered_list_open"):
            items, j, depth = [], i, 1
            while depth:
                tj = tokens[j]
                if tj.type == t.type:
                    depth += 1
                elif tj.type == t.type.replace("_open", "_close"):
                    depth -= 1
                elif tj.type == "list_item_open" and tj.level == 1 and tj.map:
                    items.append(span(tj.map))
                j += 1
            blocks.append(Block("list", s, e, parts=[p for p in items if p[1] > p[0]]))
        else:  # blockquote, html_block, hr: text like any paragraph
            blocks.append(Block("paragraph", s, e))
    return fill_gaps(text, blocks)


def _line_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans, pos = [], start
    for line in text[start:end].split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


def read_markdown(data: bytes, source: str) -> Document:
    text, enc = decode_text(data)
    return Document(source, "md", text, markdown_blocks(text), encoding=enc)


# ---- plain text ----------------------------------------------------------------------------------------------


def read_text(data: bytes, source: str) -> Document:
    """Paragraphs are runs of non-blank lines; a short standalone line in a Chinese heading style
    (第一章, 一、, （一）, 1.1 ...) is a heading."""
    text, enc = decode_text(data)
    guess = HeadingGuesser()
    blocks: list[Block] = []
    para_start = para_end = -1
    pos = 0
    for line in text.split("\n"):
        lstart, lend = pos, pos + len(line)
        pos = lend + 1
        level = guess.level(line) if line.strip() else 0
        if not line.strip() or level:
            if para_start >= 0:
                blocks.append(Block("paragraph", *strip_span(text, para_start, para_end)))
                para_start = -1
            if level:
                s, e = strip_span(text, lstart, lend)
                blocks.append(Block("heading", s, e, level=level, title=text[s:e]))
            continue
        if para_start < 0:
            para_start = lstart
        para_end = lend
    if para_start >= 0:
        blocks.append(Block("paragraph", *strip_span(text, para_start, para_end)))
    return Document(source, "txt", text, fill_gaps(text, blocks), encoding=enc)


# ---- DOCX ----------------------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def qn(tag: str) -> str:
    """"w:pPr" -> the Clark name lxml uses (python-docx's own qn, without importing docx at module load)."""
    return _W + tag.split(":", 1)[1]


_HEADING_STYLE = regex.compile(r"^(?:heading|标题)\s*(\d)$", regex.IGNORECASE)


def _outline_level(el: Any) -> int | None:
    """Outline level 1-9 of a paragraph or style element (w:pPr/w:outlineLvl), None when it has none."""
    ppr = el.find(qn("w:pPr")) if el is not None else None
    lvl = ppr.find(qn("w:outlineLvl")) if ppr is not None else None
    val = lvl.get(qn("w:val")) if lvl is not None else None
    return int(val) + 1 if val is not None and val.isdigit() and int(val) < 9 else None


def _has_numbering(el: Any) -> bool:
    ppr = el.find(qn("w:pPr")) if el is not None else None
    return ppr is not None and ppr.find(qn("w:numPr")) is not None


def _style_kind(style: Any) -> tuple[int, bool]:
    """(heading level: 1-9, -1 for Title which heads the path above Heading 1, 0 for body; is a list style),
    following the style's base styles."""
    level, is_list = 0, False
    while style is not None:
        name = (style.name or "").strip()
        if not level:
            m = _HEADING_STYLE.match(name)
            level = (-1 if name.lower() == "title" or name == "标题" else int(m.group(1)) if m else
                     _outline_level(style.element) or 0)
        is_list = is_list or _has_numbering(style.element) or name.lower().startswith("list")
        style = style.base_style
    return level, is_list


def _table_rows(table: Any) -> list[str]:
    rows = []
    for row in table.rows:
        cells, last = [], None
        for cell in row.cells:  # a horizontally merged cell comes back once per grid column
            if cell._tc is last:
                continue
            last = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def read_docx(data: bytes, source: str) -> Document:
    """Paragraphs in body order with tables between them; headings from styles or outline levels (Title, Heading
    N, 标题 N, custom styles with an outline level); list paragraphs (numbering) grouped into list blocks; tables
    as `| a | b |` rows with the first row as header."""
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise DocError("an OLE container, not a DOCX zip: an encrypted (password-protected) or legacy binary Word file")
    import io
    import zipfile

    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        d = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise DocError(f"not a valid DOCX file: {type(e).__name__}: {e}") from None
    except Exception as e:  # python-docx raises its own PackageNotFoundError and lxml errors
        raise DocError(f"not a valid DOCX file: {type(e).__name__}: {e}") from None
    b = TextBuilder()
    items: list[str] = []
    styles: dict[str | None, tuple[int, bool]] = {}  # python-docx resolves a style by scanning them all: once each

    def kind_of(p: Paragraph) -> tuple[int, bool]:
        sid = p._p.style
        if sid not in styles:
            styles[sid] = _style_kind(p.style)
        level, is_list = styles[sid]
        return _outline_level(p._p) or level, is_list or _has_numbering(p._p)

    def flush_list() -> None:
        if items:
            b.add("list", items.copy())
            items.clear()

    def walk(parent_el: Any) -> None:
        for el in parent_el.iterchildren():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "p":
                p = Paragraph(el, d._body)
                text = p.text
                if not text.strip():
                    continue
                level, is_list = kind_of(p)
                if level:
                    flush_list()
                    b.add("heading", [text.strip()], level=max(level, 0), title=" ".join(text.split()))
                elif is_list:
                    items.append(text)
                else:
                    flush_list()
                    b.add("paragraph", [text])
            elif tag == "tbl":
                flush_list()
                b.add("table", _table_rows(Table(el, d._body)), header=1)
            elif tag in ("sdt", "sdtContent", "customXml"):  # content controls: walk what they hold
                walk(el)
    walk(d.element.body)
    flush_list()
    text = b.text()
    return Document(source, "docx", text, b.blocks)


# ---- PDF -----------------------------------------------------------------------------------------------------

_PAGE_NUMBER = regex.compile(
    r"^[-–—\s]*(?:第\s*)?\d{1,4}\s*页?(?:\s*[/／]\s*(?:共\s*)?\d{1,4}\s*页?)?(?:\s*共\s*\d{1,4}\s*页)?[-–—\s]*$"
    r"|^(?i:page|p\.)\s*\d{1,4}(?:\s*(?i:of)\s*\d{1,4})?$|^(?i:[ivxlcdm]{1,7})$")
_SENTENCE_END = regex.compile(r"[。！？；!?;…][”’」』）》】〕)\]\"']*$")
_EDGE = 2  # lines at the top and bottom of a page that may be a running header, footer or page number


def _norm_edge(line: str) -> str:
    return regex.sub(r"\d+", "#", regex.sub(r"\s+", "", line))


def remove_page_furniture(pages: list[list[str]], doc: Document) -> list[list[str]]:
    """Drop page numbers and running headers/footers (a top or bottom line that, digits aside, repeats on at least
    3 pages and half the pages with text); each dropped line is counted in doc.removed/removed_chars."""
    with_text = [p for p in pages if p]
    counts: Counter[str] = Counter()
    for lines in with_text:
        edge = set(range(min(_EDGE, len(lines)))) | set(range(max(0, len(lines) - _EDGE), len(lines)))
        counts.update({_norm_edge(lines[i]) for i in edge})
    repeated = {k for k, c in counts.items() if k and c >= 3 and c >= 0.5 * len(with_text)}
    out = []
    for lines in pages:
        edge = set(range(min(_EDGE, len(lines)))) | set(range(max(0, len(lines) - _EDGE), len(lines)))
        kept = []
        for i, line in enumerate(lines):
            if i in edge:
                reason = "page_number" if _PAGE_NUMBER.match(line.strip()) else \
                    "header_footer" if _norm_edge(line) in repeated else ""
                if reason:
                    doc.removed[reason] += 1
                    doc.removed_chars[reason] += len(line.strip())
                    continue
            kept.append(line)
        out.append(kept)
    return out


def _join(a: str, b: str) -> str:
    """Join two wrapped lines of one paragraph: no space between CJK, one between Latin words."""
    if a and b and a[-1].isascii() and a[-1].isalnum() and b[0].isascii() and b[0].isalnum():
        return " "
    return ""


_CONTROL = regex.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _pdf_pages(data: bytes, doc: Document) -> list[list[str]]:
    """Text lines per page (pypdf); pages without text are recorded as scanned (they hold an image) or empty."""
    import io

    import pypdf
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns on every quirk it repairs
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an owner password alone does not stop reading
            raise DocError("encrypted PDF (a password is needed to open it)")
        n = len(reader.pages)
    except DocError:
        raise
    except PyPdfError as e:
        if "cryptography" in str(e) or "AES" in str(e):
            raise DocError(f"encrypted PDF that needs the cryptography package: {e}") from None
        raise DocError(f"corrupt or unreadable PDF: {e}") from None
    except Exception as e:  # pypdf raises plain KeyError/ValueError/... on some broken files
        raise DocError(f"corrupt or unreadable PDF: {type(e).__name__}: {e}") from None
    doc.pages = n
    pages: list[list[str]] = []
    for i in range(n):
        try:
            page = reader.pages[i]
            raw = _CONTROL.sub("", page.extract_text() or "")
        except Exception as e:
            raise DocError(f"corrupt PDF at page {i + 1}: {type(e).__name__}: {e}") from None
        lines = [ln.rstrip() for ln in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]
        if not lines:
            try:
                has_image = len(page.images) > 0
            except Exception:
                has_image = False
            (doc.scanned_pages if has_image else doc.empty_pages).append(i + 1)
        pages.append(lines)
    return pages


def read_pdf(data: bytes, source: str) -> Document:
    """Page text by pypdf; running headers/footers and page numbers removed; lines joined into paragraphs (a
    paragraph may run across a page break); empty and image-only (scanned) pages recorded."""
    doc = Document(source, "pdf", "", [])
    pages = _pdf_pages(data, doc)
    pages = remove_page_furniture(pages, doc)
    b = TextBuilder()
    guess = HeadingGuesser()
    first_offset: dict[int, int] = {}
    para: list[str] = []
    para_pages: list[tuple[int, int]] = []  # (offset within the paragraph, page) where each page's text begins

    def flush() -> None:
        if para:
            block = b.add("paragraph", ["".join(para)])
            if block:
                for rel, pg in para_pages:
                    first_offset.setdefault(pg, block.start + rel)
            para.clear()
            para_pages.clear()

    for pg, lines in enumerate(pages, 1):
        width = max((len(ln.strip()) for ln in lines), default=0)
        for line in lines:
            s = line.strip()
            level = guess.level(s)
            if level:
                flush()
                block = b.add("heading", [s], level=level, title=s)
                if block:
                    first_offset.setdefault(pg, block.start)
                continue
            rel = sum(map(len, para))
            sep = _join(para[-1], s) if para else ""
            if not para_pages or para_pages[-1][1] != pg:
                para_pages.append((rel + len(sep), pg))
            para.append(sep + s)
            if _SENTENCE_END.search(s) and len(s) < 0.9 * width:
                flush()  # a short line ending a sentence ends its paragraph
    flush()
    doc.text = b.text()
    doc.blocks = b.blocks
    nxt = len(doc.text)
    starts = [0] * doc.pages
    for pg in range(doc.pages, 0, -1):  # a page without text starts where the next one does
        nxt = first_offset.get(pg, nxt)
        starts[pg - 1] = nxt
    doc.page_starts = starts
    return doc


# ---- HTML ----------------------------------------------------------------------------------------------------

_TRAFILATURA_CONFIG: Any = None


def read_html(data: bytes, source: str) -> Document:
    """Main text (navigation, sidebars, footers, scripts dropped) by trafilatura as Markdown, then the Markdown
    reader: headings, lists and tables keep their structure."""
    global _TRAFILATURA_CONFIG
    import trafilatura
    from trafilatura.settings import use_config

    if _TRAFILATURA_CONFIG is None:
        cfg = use_config()
        # its defaults drop pages under 250 characters of main text, files over 20 MB, and use a signal timer
        cfg.set("DEFAULT", "MIN_EXTRACTED_SIZE", "1")
        cfg.set("DEFAULT", "MIN_OUTPUT_SIZE", "1")
        cfg.set("DEFAULT", "MAX_FILE_SIZE", str(2**31))
        cfg.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")
        _TRAFILATURA_CONFIG = cfg
    markdown = trafilatura.extract(data, output_format="markdown", include_tables=True, include_comments=False,
                                   include_links=False, include_images=False, config=_TRAFILATURA_CONFIG)
    if not markdown or not markdown.strip():
        raise DocError("no main text found in the HTML page")
    text = markdown.replace("\r\n", "\n")
    return Document(source, "html", text, markdown_blocks(text))


READERS = {"md": read_markdown, "txt": read_text, "docx": read_docx, "pdf": read_pdf, "html": read_html}


def read_document(path: Path, source: str, fmt: str) -> Document:
    """Read one file of format `fmt`; every failure is a DocError with a one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DocError(f"unreadable: {e.strerror or e}") from None
    if not data.strip():
        raise DocError("empty file")
    try:
        return READERS[fmt](data, source)
    except DocError:
        raise
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, OSError, RuntimeError) as e:
        raise DocError(f"cannot parse as {fmt}: {type(e).__name__}: {e}") from None
