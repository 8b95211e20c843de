"""Read big record files as blocks of raw bytes that worker processes can parse on their own.

Input forms: JSON Lines, or one JSON array of objects (possibly gigabytes, e.g. firefly_no_belle.json), either
optionally gzip-compressed. The form is told by the first non-blank byte (`[` = array).

Why not `json.load` or ijson: the first holds the whole file (several times its size) in memory; ijson builds
Python objects in the reading process, which then has to pickle them over to the workers, so one core does all
the parsing. Here the reader only finds cut points and ships bytes; each worker parses its block with orjson.

Cutting an array: a block ends right after a `}` that is followed by `,` and the `{"key"` opening the next
element, where key is the first key of the file's first element or a common record key. Inside a JSON string a
quote is always escaped, so `{"key"` with a bare quote cannot be string content: the cut is always between two
values. A worker first parses the whole block as `[block]` in one orjson call; if that fails (a malformed
element, or a cut that landed inside a nested list of objects), it falls back to splitting at every `},{` and
joining neighbouring pieces until each parses, reporting a piece that never parses as a bad element.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

BLOCK_SIZE = 4 << 20
MAX_BLOCK = 256 << 20
_COMMON_KEYS = (b"instruction", b"input", b"output", b"system", b"history", b"conversation_id", b"conversation",
                b"conversations", b"messages", b"id", b"text", b"category", b"source", b"meta", b"dataset")
_ANY_CUT = re.compile(rb"\}\s*,\s*\{")


class InputError(ValueError):
    """The file cannot be read as records at all (not JSON Lines, not a JSON array)."""


@dataclass
class Block:
    path: str
    kind: str  # "jsonl" | "array"
    data: bytes
    first_line: int  # line number of data[0] in the file (1-based)
    raw_pos: int = 0  # bytes of the (compressed) file consumed so far, for progress
    trailing: list[str] = field(default_factory=list)  # problems found at the end of the file


@dataclass
class Parsed:
    items: list[tuple[int, Any]]  # (ordinal, value): line number for JSONL, element number in block for arrays
    bad: list[tuple[int, int | None, str]]  # (line number, element ordinal in the block or None, reason)
    elements: int  # array elements in the block (good + bad), 0 for JSONL
    starts: list[int] | None = None  # byte offset of each item in the block (piecewise parsing only)


def _open(path: str) -> tuple[IO[bytes], IO[bytes]]:
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    return raw, raw


def detect_kind(path: str) -> str:
    """"array" when the first non-blank byte is `[`, else "jsonl"; InputError when the file is empty."""
    stream, raw = _open(path)
    try:
        head = stream.read(4096)
        while head and not head.lstrip(b"\xef\xbb\xbf \t\r\n"):
            more = stream.read(4096)
            if not more:
                break
            head += more
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read: {e}") from e
    finally:
        raw.close()
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError(f"{path}: empty file")
    return "array" if head[:1] == b"[" else "jsonl"


def _cut_regex(first_key: bytes | None) -> re.Pattern[bytes]:
    keys = set(_COMMON_KEYS) | ({first_key} if first_key else set())
    alt = b"|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(rb"\}\s*,\s*(\{\s*\"(?:" + alt + rb")\")")


def _last_cut(buf: bytes, pattern: re.Pattern[bytes]) -> tuple[int, int] | None:
    """(end of the block: just after `}`, start of the next element: its `{`) for the last cut in buf."""
    window = 1 << 16
    while True:
        lo = max(0, len(buf) - window)
        last = None
        for m in pattern.finditer(buf, lo):
            last = m
        if last is not None:
            return last.start() + 1, last.start(1)
        if lo == 0:
            return None
        window *= 4


def iter_blocks(path: str, block_size: int = BLOCK_SIZE) -> Iterator[Block]:
    """Blocks of whole records (JSONL lines or array elements) of `path`, in file order."""
    kind = detect_kind(path)
    stream, raw = _open(path)
    line = 1
    try:
        if kind == "jsonl":
            rest = b""
            while True:
                chunk = stream.read(block_size)
                buf = rest + chunk
                if not chunk:
                    if buf:
                        yield Block(path, kind, buf, line, raw.tell())
                    return
                cut = buf.rfind(b"\n")
                if cut < 0:
                    rest = buf
                    continue
                data, rest = buf[:cut + 1], buf[cut + 1:]
                yield Block(path, kind, data, line, raw.tell())
                line += data.count(b"\n")
            return
        # JSON array: drop the opening bracket, learn the first key, cut after whole elements.
        buf = stream.read(block_size)
        stripped = buf.lstrip(b"\xef\xbb\xbf \t\r\n")
        line += buf[:len(buf) - len(stripped)].count(b"\n")
        buf = stripped[1:]  # the "["
        m = re.match(rb"\s*\{\s*\"((?:[^\"\\]|\\.)*)\"", buf)
        pattern = _cut_regex(m.group(1) if m else None)
        eof = False
        while True:
            if not eof and len(buf) < block_size:
                chunk = stream.read(block_size)
                eof = not chunk
                buf += chunk
                continue
            if eof:
                trailing = []
                body = buf.rstrip(b" \t\r\n")
                if body.endswith(b"]"):
                    body = body[:-1].rstrip(b" \t\r\n")
                else:
                    trailing.append("the JSON array is not closed by ']' (file cut short?)")
                if body.strip():
                    yield Block(path, kind, body, line, raw.tell(), trailing)
                elif trailing:
                    yield Block(path, kind, b"", line, raw.tell(), trailing)
                return
            cut = _last_cut(buf, pattern)
            if cut is None and len(buf) >= MAX_BLOCK:
                every = list(_ANY_CUT.finditer(buf))
                cut = (every[-1].start() + 1, every[-1].end() - 1) if every else None
            if cut is None:
                if len(buf) >= MAX_BLOCK:
                    raise InputError(f"{path}:{line}: no element boundary in {MAX_BLOCK >> 20} MiB; not a JSON "
                                     "array of objects?")
                chunk = stream.read(block_size)
                eof = not chunk
                buf += chunk
                continue
            end, nxt = cut
            data = buf[:end]
            yield Block(path, kind, data, line, raw.tell())
            line += buf.count(b"\n", 0, nxt)
            buf = buf[nxt:]
    finally:
        raw.close()


def parse_block(block: Block) -> Parsed:
    """Parse a block's records; bad lines / elements are listed with their line number, never raised."""
    if block.kind == "jsonl":
        items: list[tuple[int, Any]] = []
        bad: list[tuple[int, int | None, str]] = []
        for i, ln in enumerate(block.data.split(b"\n")):
            if not ln.strip():
                continue
            try:
                items.append((block.first_line + i, orjson.loads(ln)))
            except orjson.JSONDecodeError as e:
                bad.append((block.first_line + i, None, f"invalid JSON: {e}"))
        return Parsed(items, bad, 0)
    bad = [(block.first_line, None, msg) for msg in block.trailing]
    if not block.data.strip():
        return Parsed([], bad, 0)
    try:
        values = orjson.loads(b"[" + block.data + b"]")
        return Parsed(list(enumerate(values, 1)), bad, len(values))
    except orjson.JSONDecodeError:
        pass
    return _parse_pieces(block, bad)


def _parse_pieces(block: Block, bad: list[tuple[int, int | None, str]], max_join: int = 64) -> Parsed:
    data = block.data
    cuts = [(m.start() + 1, m.end() - 1) for m in _ANY_CUT.finditer(data)]
    starts = [0] + [b for _, b in cuts]
    ends = [a for a, _ in cuts] + [len(data)]
    items: list[tuple[int, Any]] = []
    item_starts: list[int] = []
    ordinal = 0
    i = 0
    n = len(starts)
    while i < n:
        ordinal += 1
        parsed = False
        for j in range(i, min(n, i + max_join)):
            try:
                value = orjson.loads(data[starts[i]:ends[j]])
            except orjson.JSONDecodeError:
                continue
            items.append((ordinal, value))
            item_starts.append(starts[i])
            i = j + 1
            parsed = True
            break
        if not parsed:
            piece = data[starts[i]:ends[i]]
            lead = len(piece) - len(piece.lstrip())  # report the line where the element itself begins
            lineno = block.first_line + data.count(b"\n", 0, starts[i] + lead)
            try:
                orjson.loads(piece)
                reason = "invalid JSON"
            except orjson.JSONDecodeError as e:
                reason = f"invalid JSON: {e}"
            bad.append((lineno, ordinal, reason))
            i += 1
    return Parsed(items, bad, ordinal, item_starts)


def element_lines(block: Block) -> dict[int, int]:
    """Line number of every array element of a block, by ordinal (used only to report a bad record)."""
    parsed = _parse_pieces(block, [])
    assert parsed.starts is not None
    data = block.data
    lines = {}
    for (o, _), st in zip(parsed.items, parsed.starts, strict=True):
        while data[st:st + 1] in (b" ", b"\t", b"\r", b"\n"):
            st += 1
        lines[o] = block.first_line + data.count(b"\n", 0, st)
    return lines
