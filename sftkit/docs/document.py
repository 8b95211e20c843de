"""The extracted document every reader returns: one text plus typed blocks that are spans of it.

Offsets (`Block.start`/`end`, and the slices' `char_start`/`char_end`) index `Document.text`: for Markdown and
plain text that is the decoded file (line ends normalised to \\n); for DOCX, PDF and HTML it is the text the
reader extracted, blocks separated by a blank line.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import regex

BLOCK_KINDS = ("heading", "paragraph", "list", "table", "code", "formula")


@dataclass
class Block:
    """One structural unit. `parts` are the spans of list items or table rows (the first `header` of them
    are a table's header rows, repeated in every piece of a split table)."""

    kind: str
    start: int
    end: int
    level: int = 0
    title: str = ""
    parts: list[tuple[int, int]] = field(default_factory=list)
    header: int = 0


@dataclass
class Document:
    source: str  # path relative to the input root, as written into every slice
    fmt: str
    text: str
    blocks: list[Block]
    encoding: str = ""
    pages: int = 0
    page_starts: list[int] = field(default_factory=list)  # text offset where page i+1 starts
    empty_pages: list[int] = field(default_factory=list)
    scanned_pages: list[int] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)  # what the reader dropped on purpose, by reason
    removed_chars: Counter[str] = field(default_factory=Counter)

    def page_at(self, offset: int) -> int:
        """1-based page holding text offset `offset` (PDF only; 0 elsewhere)."""
        if not self.page_starts:
            return 0
        return max(1, bisect.bisect_right(self.page_starts, offset))


class TextBuilder:
    """Builds a Document's text block by block (blocks separated by a blank line, parts by a newline)."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.pos = 0
        self.blocks: list[Block] = []

    def _emit(self, s: str) -> None:
        self.chunks.append(s)
        self.pos += len(s)

    def add(self, kind: str, parts: list[str], level: int = 0, title: str = "", header: int = 0) -> Block | None:
        parts = [p for p in parts if p.strip()]
        if not parts:
            return None
        if self.blocks:
            self._emit("\n\n")
        start = self.pos
        spans = []
        for i, p in enumerate(parts):
            if i:
                self._emit("\n")
            s = self.pos
            self._emit(p)
            spans.append((s, self.pos))
        keep_parts = kind in ("list", "table", "code")
        block = Block(kind, start, self.pos, level, title, spans if keep_parts else [], header if keep_parts else 0)
        self.blocks.append(block)
        return block

    def text(self) -> str:
        return "".join(self.chunks)


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink [start, end) to exclude surrounding whitespace (an empty span stays empty)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def fill_gaps(text: str, blocks: list[Block]) -> list[Block]:
    """Blocks sorted by start, with every non-blank stretch of text that no block covers added as a paragraph:
    whatever a parser skips (link definitions, front matter, stray markup) still reaches a slice."""
    blocks = sorted(blocks, key=lambda b: b.start)
    out: list[Block] = []
    pos = 0
    for b in [*blocks, Block("paragraph", len(text), len(text))]:
        s, e = strip_span(text, pos, b.start)
        if e > s:
            out.append(Block("paragraph", s, e))
        if b.end > b.start:
            out.append(b)
        pos = max(pos, b.end)
    return out


# Chinese heading conventions for formats without styles (plain text, PDF). Each kind gets a level by the
# order in which kinds first appear in the document, the way a reader infers the outline.
_NUM = r"[一二三四五六七八九十百千零〇两\d]+"
HEADING_PATTERNS: list[tuple[str, regex.Pattern[str]]] = [
    ("part", regex.compile(rf"^第{_NUM}[编篇部]")),
    ("chapter", regex.compile(rf"^第{_NUM}章")),
    ("section", regex.compile(rf"^第{_NUM}节")),
    ("cn", regex.compile(r"^[一二三四五六七八九十]+[、．.]\s*\S")),
    ("cn_paren", regex.compile(r"^[（(][一二三四五六七八九十]+[）)]\s*\S")),
    ("dotted", regex.compile(r"^\d+(?:\.\d+)+\.?\s*[^\d.\s]")),
]
_DOTTED = regex.compile(r"\d+(?:\.\d+)+")
_NOT_HEADING_END = regex.compile(r"[。；;，,：:！!？?、…]$")
MAX_HEADING_CHARS = 40


class HeadingGuesser:
    """Decides whether a standalone line is a heading, and its level, for one document."""

    def __init__(self) -> None:
        self.levels: dict[str, int] = {}

    def level(self, line: str) -> int:
        """Heading level (1 = top) or 0 when the line is body text."""
        s = line.strip()
        if not s or len(s) > MAX_HEADING_CHARS or _NOT_HEADING_END.search(s):
            return 0
        for kind, pat in HEADING_PATTERNS:
            if pat.match(s):
                if kind == "dotted":  # 1.1 and 1.1.1 are different levels
                    kind = f"dotted{_DOTTED.match(s).group(0).count('.')}"  # type: ignore[union-attr]
                if kind not in self.levels:
                    self.levels[kind] = len(self.levels) + 1
                return self.levels[kind]
        return 0
