"""Structure-aware splitting of a Document into slices.

Order of preference for a cut: between sections (a heading starts a slice and is never left at the end of
one), between blocks (paragraphs, lists, tables, code, formulas), between sentences (。！？；… and ASCII ends,
with their closing quotes and brackets), between list items or table rows; only a single sentence (or line of
code, or table row) longer than the limit is cut inside: at a line end, then at a clause mark, then anywhere.
Such cuts are counted. A table longer than the limit is split by rows, each piece starting with the header
rows again. Every non-blank character of the document's text lands in at least one slice, apart from slices
dropped for being shorter than `min_chars` (counted, with their characters).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import regex

from .document import Block, Document, strip_span

# A sentence ends after a run of end marks and any closing quotes or brackets that follow them.
CLOSERS = "”’」』）》〉】〕］｝)\\]}\"'"
SENTENCE_END = regex.compile(
    rf"(?:[。！？!?；;]+|…+|\.{{3,}}|(?<=[^\s\d.])\.(?=\s|$))[{CLOSERS}]*")
LINE_END = regex.compile(r"\n")
CLAUSE_END = regex.compile(rf"[，、：,:]+[{CLOSERS}]*|\s+")
INSIDE_TIERS = (LINE_END, CLAUSE_END)


@dataclass
class Limits:
    max_len: int  # in `measure` units: characters, or tokens with a tokenizer
    min_chars: int = 0
    overlap: int = 0  # characters of whole trailing sentences repeated at the start of the next slice of a section
    measure: Callable[[str], int] = len


@dataclass(eq=False)
class Unit:
    start: int
    end: int
    kind: str
    text: str | None = None  # content when it is not text[start:end] (a table piece with its header repeated)
    heading: bool = False
    cut_after: bool = False  # the unit ends inside a sentence (an over-long sentence was cut here)
    size: int = 0


@dataclass
class Slice:
    content: str
    start: int
    end: int
    headings: list[str]
    kinds: list[str]
    units: list[Unit] = field(repr=False, default_factory=list)
    cut_inside: bool = False
    overlap_chars: int = 0
    size: int = 0


@dataclass
class SplitCounts:
    cuts_inside_sentence: int = 0
    tables_split: int = 0
    blocks_split: Counter[str] = field(default_factory=Counter)  # lists, code, formulas over the limit, by kind
    dropped_short: int = 0
    dropped_short_chars: int = 0

    def add(self, other: SplitCounts) -> None:
        self.cuts_inside_sentence += other.cuts_inside_sentence
        self.tables_split += other.tables_split
        self.blocks_split.update(other.blocks_split)
        self.dropped_short += other.dropped_short
        self.dropped_short_chars += other.dropped_short_chars


def _pieces(text: str, s: int, e: int, pattern: regex.Pattern[str]) -> list[tuple[int, int]]:
    out, pos = [], s
    for m in pattern.finditer(text, s, e):
        if m.end() > pos:
            out.append(strip_span(text, pos, m.end()))
            pos = m.end()
    out.append(strip_span(text, pos, e))
    return [p for p in out if p[1] > p[0]]


def _hard_cut(text: str, s: int, e: int, budget: int, measure: Callable[[str], int]) -> list[tuple[int, int]]:
    """Longest prefixes that fit `budget` (binary search, so it works for token counts too)."""
    out = []
    while s < e:
        lo, hi = s + 1, e
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if measure(text[s:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append((s, lo))
        s = lo
    return out


def sentence_units(text: str, s: int, e: int, budget: int, kind: str, measure: Callable[[str], int],
                   tier: int = -1) -> list[Unit]:
    """Units of [s, e): sentences (tier -1), then, for a sentence over `budget`, pieces cut inside it."""
    if measure(text[s:e]) <= budget:
        return [Unit(s, e, kind)]
    if tier >= len(INSIDE_TIERS):
        spans = _hard_cut(text, s, e, budget, measure)
    else:
        spans = _pieces(text, s, e, SENTENCE_END if tier < 0 else INSIDE_TIERS[tier])
        if len(spans) <= 1:
            return sentence_units(text, s, e, budget, kind, measure, tier + 1)
    out: list[Unit] = []
    for ps, pe in spans:
        if tier >= len(INSIDE_TIERS):
            out.append(Unit(ps, pe, kind))
        else:
            out.extend(sentence_units(text, ps, pe, budget, kind, measure, tier + 1))
    if tier >= 0:  # pieces of one sentence: every end but the last is inside it
        for u in out[:-1]:
            u.cut_after = True
    return out


def block_units(doc: Document, b: Block, budget: int, limits: Limits) -> list[Unit]:
    text, measure = doc.text, limits.measure
    if b.kind == "heading":
        return [Unit(b.start, b.end, "heading", heading=True)]
    if measure(text[b.start:b.end]) <= budget:
        return [Unit(b.start, b.end, b.kind)]
    if b.kind == "table" and len(b.parts) > b.header:
        return table_units(doc, b, budget, limits)
    if b.kind in ("list", "code") and b.parts:
        units = []
        for ps, pe in b.parts:
            units.extend(sentence_units(text, ps, pe, budget, b.kind, measure))
        # the text between parts (markers, blank lines) belongs to the part that follows
        prev_end = b.start
        for ps, pe in b.parts:
            for u in units:
                if u.start == ps:
                    u.start = strip_span(text, prev_end, ps)[0] if prev_end < ps else ps
                    break
            prev_end = pe
        return units
    return sentence_units(text, b.start, b.end, budget, b.kind, measure)


def table_units(doc: Document, b: Block, budget: int, limits: Limits) -> list[Unit]:
    """Rows packed into pieces under `budget`; every piece after the first repeats the header rows."""
    text, measure = doc.text, limits.measure
    head_end = b.parts[b.header - 1][1] if b.header else b.start
    header = text[b.start:head_end] if b.header else ""
    rows = b.parts[b.header:]
    units: list[Unit] = []
    first, group = True, []

    def close() -> None:
        nonlocal first
        if not group:
            return
        s, e = (b.start if first else group[0][0]), group[-1][1]
        body = text[s:e]
        units.append(Unit(s, e, "table", text=None if first else f"{header}\n{body}"))
        first = False
        group.clear()

    for rs, re_ in rows:
        candidate = text[(b.start if first else (group[0][0] if group else rs)):re_]
        size = measure(candidate if first else f"{header}\n{candidate}")
        if size <= budget:
            group.append((rs, re_))
            continue
        close()
        if measure(f"{header}\n{text[rs:re_]}") <= budget:
            group.append((rs, re_))
        else:  # one row longer than the limit on its own: its cells, cut like sentences, without the header
            if first:
                units.extend(sentence_units(text, b.start, head_end, budget, "table", measure))
                first = False
            units.extend(sentence_units(text, rs, re_, budget, "table", measure))
    close()
    return units


def render(text: str, units: list[Unit]) -> str:
    parts: list[str] = []
    end = -1
    for u in units:
        if end >= 0:
            gap = text[end:u.start]
            parts.append(gap if not gap or gap.isspace() else "\n")
        parts.append(u.text if u.text is not None else text[u.start:u.end])
        end = u.end
    return "".join(parts)


def _sections(doc: Document) -> list[tuple[list[str], list[Block]]]:
    """(heading path at the section's first body block, blocks) per section; headings with no body text in
    between (a chapter title right before its first section) join the section that follows."""
    sections: list[tuple[list[str], list[Block]]] = []
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []
    path: list[str] | None = None
    for b in doc.blocks:
        if b.kind == "heading":
            if path is not None:
                sections.append((path, blocks))
                blocks, path = [], None
            while stack and stack[-1][0] >= b.level:
                stack.pop()
            stack.append((b.level, b.title or doc.text[b.start:b.end].strip()))
        elif path is None:
            path = [t for _, t in stack]
        blocks.append(b)
    if blocks:
        sections.append((path if path is not None else [t for _, t in stack], blocks))
    return sections


def _kinds(units: list[Unit]) -> list[str]:
    return sorted({u.kind for u in units if not u.heading} or {"heading"})


def split_document(doc: Document, limits: Limits, counts: SplitCounts) -> list[Slice]:
    slices: list[Slice] = []
    for path, blocks in _sections(doc):
        slices.extend(_Packer(doc, path, limits).pack(_section_units(doc, blocks, limits, counts)))
    out = _merge_short(doc, slices, limits, counts)
    counts.cuts_inside_sentence += sum(s.cut_inside for s in out)
    return out


def _section_units(doc: Document, blocks: list[Block], limits: Limits, counts: SplitCounts) -> list[Unit]:
    text, measure, max_len = doc.text, limits.measure, limits.max_len
    units: list[Unit] = []
    for b in blocks:
        new = _sized(text, block_units(doc, b, max_len, limits), measure)
        if b.kind != "heading" and units and all(u.heading for u in units):
            # the headings that open the section go into one slice with the first body text: when its first unit
            # does not fit beside them, the block is cut to the room they leave (a heading never ends a slice)
            lead = measure(render(text, [*units, new[0]])) - new[0].size
            if lead + new[0].size > max_len and lead < max_len:
                if b.kind == "table":  # pieces a little smaller, each with its header
                    new = _sized(text, block_units(doc, b, max_len - lead, limits), measure)
                else:  # only the first unit: its sentences, one cut if a sentence is longer than the room
                    first = new.pop(0)
                    head = sentence_units(text, first.start, first.end, max_len - lead, first.kind, measure)
                    if head[-1].end == first.end:
                        head[-1].cut_after = first.cut_after
                    new = _sized(text, head, measure) + new
        if len(new) > 1 and b.kind == "table":
            counts.tables_split += 1
        elif len(new) > 1 and b.kind not in ("paragraph", "heading"):
            counts.blocks_split[b.kind] += 1
        units.extend(new)
    return units


def _sized(text: str, units: list[Unit], measure: Callable[[str], int]) -> list[Unit]:
    for u in units:
        u.size = measure(u.text if u.text is not None else text[u.start:u.end])
    return units


class _Packer:
    """Greedy packing of one section's units into slices of at most `max_len`."""

    def __init__(self, doc: Document, path: list[str], limits: Limits) -> None:
        self.text, self.path, self.limits = doc.text, path, limits
        self._sep_cache: dict[str, int] = {}

    def sep(self, a: Unit, b: Unit) -> int:
        gap = self.text[a.end:b.start]
        gap = gap if not gap or gap.isspace() else "\n"
        if self.limits.measure is len:
            return len(gap)
        if gap not in self._sep_cache:
            self._sep_cache[gap] = self.limits.measure(gap)
        return self._sep_cache[gap]

    def pack(self, units: list[Unit]) -> list[Slice]:
        max_len = self.limits.max_len
        out: list[Slice] = []
        pending = deque(units)
        cur: list[Unit] = []
        size = 0
        carried = 0  # units at the start of `cur` that repeat the end of the previous slice (overlap)
        while pending:
            u = pending.popleft()
            if cur and not all(x.heading for x in cur) and size + self.sep(cur[-1], u) + u.size > max_len:
                if len(cur) > carried:
                    back = self.emit(out, cur, carried)
                    if back:  # the exact count was over the limit: those units start the next slice
                        pending.extendleft(reversed([*back, u]))
                        cur, size, carried = [], 0, 0
                        continue
                    cur = _overlap_tail(self.text, out[-1].units, self.limits)
                    carried = len(cur)
                    size = sum(x.size for x in cur) + sum(self.sep(a, b) for a, b in pairwise(cur))
                while carried and size + self.sep(cur[-1], u) + u.size > max_len:
                    size -= cur[0].size + (self.sep(cur[0], cur[1]) if len(cur) > 1 else 0)
                    cur.pop(0)
                    carried -= 1
            size += (self.sep(cur[-1], u) if cur else 0) + u.size
            cur.append(u)
        if len(cur) > carried:
            self.emit(out, cur, carried)
        return out

    def emit(self, out: list[Slice], units: list[Unit], carried: int) -> list[Unit]:
        """Append the slice of `units`; returns trailing units taken back when the exact size is over the limit
        (token counts are not exactly additive)."""
        units = list(units)
        back: list[Unit] = []
        content = render(self.text, units)
        size = self.limits.measure(content)
        while size > self.limits.max_len and len(units) > carried + 1 and not units[-2].heading:
            back.insert(0, units.pop())
            content = render(self.text, units)
            size = self.limits.measure(content)
        overlap = len(render(self.text, units[:carried])) if carried else 0
        out.append(Slice(content, units[0].start, max(u.end for u in units), list(self.path), _kinds(units),
                         units, units[-1].cut_after, overlap, size))
        return back


def _overlap_tail(text: str, units: list[Unit], limits: Limits) -> list[Unit]:
    """Whole trailing body units of the previous slice, up to `limits.overlap` characters."""
    if limits.overlap <= 0:
        return []
    tail: list[Unit] = []
    total = 0
    for i in range(len(units) - 1, 0, -1):  # never the whole previous slice
        u = units[i]
        n = u.end - u.start
        # only whole sentences or blocks: not a heading, a table piece, or a piece of a cut sentence
        if u.heading or u.text is not None or u.cut_after or units[i - 1].cut_after or total + n > limits.overlap:
            break
        tail.insert(0, u)
        total += n
    return tail


def _merge_short(doc: Document, slices: list[Slice], limits: Limits, counts: SplitCounts) -> list[Slice]:
    """A slice under `min_chars` non-blank characters joins the next slice (or else the previous one) when the two
    fit the limit, or else takes whole sentences from the end of the previous slice of its section; one that
    still cannot reach `min_chars` is dropped and counted (a stray "目录" or a lone page of nothing)."""
    if limits.min_chars <= 0:
        return slices
    out: list[Slice] = []
    i = 0
    while i < len(slices):
        s = slices[i]
        if _nonblank(s.content) >= limits.min_chars:
            out.append(s)
            i += 1
            continue
        i += 1
        nxt = slices[i] if i < len(slices) else None
        merged = _join(doc, s, nxt, limits) if nxt is not None else None
        if merged is not None:
            slices[i] = merged
            continue
        merged = _join(doc, out[-1], s, limits) if out else None
        if merged is not None:
            out[-1] = merged
            continue
        pair = _rebalance(doc, out[-1], s, limits) if out else None
        if pair is not None:
            out[-1] = pair[0]
            out.append(pair[1])
            continue
        counts.dropped_short += 1
        counts.dropped_short_chars += _nonblank(s.content)
    return out


def _make(doc: Document, units: list[Unit], headings: list[str], limits: Limits, overlap: int = 0) -> Slice:
    content = render(doc.text, units)
    return Slice(content, units[0].start, max(u.end for u in units), headings, _kinds(units), units,
                 units[-1].cut_after, overlap, limits.measure(content))


def _join(doc: Document, a: Slice, b: Slice, limits: Limits) -> Slice | None:
    seen = {(u.start, u.end) for u in a.units}
    units = a.units + [u for u in b.units if (u.start, u.end) not in seen]
    if limits.measure(render(doc.text, units)) > limits.max_len:
        return None
    headings = a.headings if any(not u.heading for u in a.units) else b.headings
    return _make(doc, units, headings, limits, a.overlap_chars)


def _rebalance(doc: Document, prev: Slice, s: Slice, limits: Limits) -> tuple[Slice, Slice] | None:
    """Move the fewest whole trailing units of `prev` (same section) to the front of `s` so that `s` reaches
    `min_chars` while `prev` keeps at least `min_chars` and does not end inside a sentence."""
    if s.units[0].heading or prev.headings != s.headings:
        return None
    shared = {(u.start, u.end) for u in s.units}
    own = [u for u in prev.units if (u.start, u.end) not in shared]  # the overlap s repeats goes with s
    for k in range(1, len(own)):
        moved, kept = own[-k:], own[:-k]
        if moved[0].heading or kept[-1].heading:
            break
        if kept[-1].cut_after:
            continue
        new_s = _make(doc, moved + s.units, s.headings, limits)
        if new_s.size > limits.max_len:
            return None
        new_prev = _make(doc, kept, prev.headings, limits, prev.overlap_chars)
        if _nonblank(new_prev.content) < limits.min_chars:
            return None
        if _nonblank(new_s.content) >= limits.min_chars:
            return new_prev, new_s
    return None


def coverage(doc: Document, slices: list[Slice]) -> tuple[int, int]:
    """(non-blank characters of doc.text, how many of them lie inside some slice's units)."""
    spans = sorted((u.start, u.end) for s in slices for u in s.units)
    total = _nonblank(doc.text)
    uncovered, pos = 0, 0
    for s, e in spans:
        if s > pos:
            uncovered += _nonblank(doc.text[pos:s])
        pos = max(pos, e)
    uncovered += _nonblank(doc.text[pos:])
    return total, total - uncovered


_WS = regex.compile(r"\s+")


def _nonblank(s: str) -> int:
    return len(s) - sum(len(m) for m in _WS.findall(s))


def slice_id(source: str, content: str, seen: set[str]) -> str:
    """Stable id from the source path and the content (same input, same ids; a slice that did not change keeps
    its id when others are added); a repeat of the same content in the same file gets the next id."""
    n = 0
    while True:
        sid = hashlib.sha1(f"{source}\x00{content}\x00{n}".encode()).hexdigest()[:16]
        if sid not in seen:
            seen.add(sid)
            return sid
        n += 1
