"""JSON Lines I/O: tolerant reading, atomic writing, a kill-safe append-only journal and the run lock on it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
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


class LockedError(Exception):
    """Another live process holds the run lock."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"{path} is in use by another run (pid {pid or 'unknown'}); wait for it to finish or stop it")
        self.path = path
        self.pid = pid


class RunLock:
    """An exclusive lock on `path` (flock): one run per output at a time.

    The kernel drops a flock when its holder dies, so a lock left by a killed run never blocks: its file (with
    the dead pid in it) is simply taken over. The file holds the holder's pid for the refusal message and is
    removed on release.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1

    def acquire(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise LockedError(self.path, pid) from None
            try:  # the holder before us may have removed the file between our open and our flock: start again
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still holding it, so nobody can lock the file we remove
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class JournalWriteError(OSError):
    """An entry could not be appended (full disk, quota, unwritable file); the journal was cut back to its
    last complete entry, so it stays readable and a rerun resumes from it."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(err.errno, f"cannot append to {path}: {err.strerror or err}")
        self.path = path


class Journal:
    """Append-only JSONL log that survives SIGKILL at any point, under a run lock.

    Each entry is one `write()` of a full line on an O_APPEND descriptor, so a kill can leave at most
    one torn line, and only at the end. Opening the journal detects that line, drops it (truncating the
    file back to the last complete entry) and reports it in `torn`. A write that fails (full disk) or
    writes only part of the line is cut back the same way at once and raised as JournalWriteError.

    With `lock` (the default) the journal is opened under `RunLock(path + ".lock")`: a second process
    opening the same journal gets LockedError at once, before it reads or sends anything.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[Any] = []
        self.torn = 0
        self.bad = BadLines()
        self._fd = -1
        self._lock = RunLock(self.path.with_name(self.path.name + ".lock")).acquire() if lock else None
        try:
            self.entries, self.torn, good_end, size = _read_entries(self.path, self.bad)
            if good_end < size:
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = good_end
        except BaseException:
            self.close()
            raise

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[Any]:
        """The complete entries of a journal, without locking, creating or repairing anything (for --dry-run,
        which may look at a journal another run is writing)."""
        path = Path(path)
        if not path.exists():
            return []
        return _read_entries(path, None)[0]

    def append(self, entry: Any) -> None:
        line = orjson.dumps(entry) + b"\n"
        n = 0
        try:
            while n < len(line):  # a short write goes on with the rest: it completes, or the kernel says why not
                written = os.write(self._fd, line[n:])
                if written == 0:
                    raise OSError(errno.ENOSPC, "no byte written")
                n += written
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # drop the partial line: the journal stays whole
            raise JournalWriteError(self.path, e) from None
        self._size += n
        self.entries.append(entry)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_entries(path: Path, bad: BadLines | None) -> tuple[list[Any], int, int, int]:
    """(entries, torn lines, end of the last complete entry, file size) of a journal file; with `bad` None
    (a read-only look) nothing is logged."""
    if not path.exists():
        return [], 0, 0, 0
    data = path.read_bytes()
    entries: list[Any] = []
    torn = 0
    good_end = pos = lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl == -1:  # no newline: the write was cut short
            torn += 1
            if bad is not None:
                log.warning("%s:%d: torn last line dropped (%d bytes)", path, lineno, len(data) - pos)
            break
        line = data[pos:nl]
        pos = nl + 1
        if line.strip():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError as e:
                if pos >= len(data):
                    torn += 1
                    if bad is not None:
                        log.warning("%s:%d: torn last line dropped", path, lineno)
                    break
                if bad is not None:
                    bad.add(path, lineno, f"invalid JSON: {e}")
        good_end = pos
    return entries, torn, good_end, len(data)
