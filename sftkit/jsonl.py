"""JSON Lines I/O: tolerant reading, atomic writing, and a kill-safe append-only journal."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)


class BadLines:
    """Collects bad input lines: each is logged as `file:line: reason` and counted by reason."""

    def __init__(self, logger: logging.Logger | None = None, max_logged: int = 1000) -> None:
        self.logger = logger or log
        self.max_logged = max_logged
        self.count = 0
        self.by_reason: Counter[str] = Counter()

    def add(self, path: str | os.PathLike[str], lineno: int, reason: str) -> None:
        self.count += 1
        self.by_reason[reason.split(":", 1)[0]] += 1
        if self.count <= self.max_logged:
            self.logger.warning("%s:%d: %s", path, lineno, reason)
        elif self.count == self.max_logged + 1:
            self.logger.warning("more bad lines; only counting from now on")

    def as_dict(self) -> dict[str, Any]:
        return {"bad_lines": self.count, "by_reason": dict(self.by_reason)}


def iter_jsonl(path: str | os.PathLike[str], bad: BadLines | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for every good line; bad lines go to `bad` and are skipped."""
    bad = bad if bad is not None else BadLines()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                yield lineno, orjson.loads(line)
            except orjson.JSONDecodeError as e:
                bad.add(path, lineno, f"invalid JSON: {e}")


def dumps(obj: Any) -> bytes:
    """One JSON line (UTF-8, non-ASCII kept as is, no trailing newline)."""
    return orjson.dumps(obj)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write rows as JSON Lines atomically; returns the number written."""
    n = 0
    with atomic_write(path, "wb") as f:
        buf = []
        for row in rows:
            buf.append(orjson.dumps(row))
            n += 1
            if len(buf) >= 4096:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return n


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one pretty JSON document atomically."""
    with atomic_write(path, "wb") as f:
        f.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


class Journal:
    """Append-only JSONL log that survives SIGKILL at any point.

    Each entry is one `write()` of a full line on an O_APPEND descriptor, so a kill can leave at most
    one torn line, and only at the end. Opening the journal detects that line, drops it (truncating the
    file back to the last complete entry) and reports it in `torn`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[Any] = []
        self.torn = 0
        self.bad = BadLines()
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            lineno += 1
            if nl == -1:  # no newline: the write was cut short
                self.torn += 1
                log.warning("%s:%d: torn last line dropped (%d bytes)", self.path, lineno, len(data) - pos)
                break
            line = data[pos:nl]
            pos = nl + 1
            if line.strip():
                try:
                    self.entries.append(orjson.loads(line))
                except orjson.JSONDecodeError as e:
                    if pos >= len(data):
                        self.torn += 1
                        log.warning("%s:%d: torn last line dropped", self.path, lineno)
                        break
                    self.bad.add(self.path, lineno, f"invalid JSON: {e}")
            good_end = pos
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def append(self, entry: Any) -> None:
        os.write(self._fd, orjson.dumps(entry) + b"\n")
        self.entries.append(entry)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
