"""The slicing stage: find documents, read and split them one at a time, stream slices out, count everything.

Memory is bounded by the largest single document: slices are written as each document is done, and the stats
keep counters and capped lists only.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..io.jsonl import dumps
from .document import Document
from .readers import FORMATS, LEGACY, DocError, format_of, read_document
from .split import Limits, Slice, SplitCounts, coverage, slice_id, split_document

log = logging.getLogger("slice")

MAX_LISTED = 1000  # bad files / page lists kept in the stats JSON (all are counted)
HIST_EDGES = (100, 200, 400, 800, 1600, 3200, 6400)


@dataclass
class DocFile:
    path: Path
    source: str  # as written into slices: the input path as given, plus the path inside an input folder
    fmt: str | None
    skip_reason: str = ""


def discover(inputs: list[str], formats: tuple[str, ...]) -> tuple[list[DocFile], Counter[str]]:
    """Files to read, in a stable order (inputs as given, folders walked in sorted order), and counts of the
    files that were passed over (other extensions, hidden files, Office lock files) by reason."""
    files: list[DocFile] = []
    passed: Counter[str] = Counter()
    seen: set[Path] = set()

    def add(path: Path, source: str, explicit: bool) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        fmt = format_of(path)
        suffix = path.suffix.lower()
        if path.name.startswith("~$"):
            passed["office lock file (~$)"] += 1
        elif fmt is None and suffix in LEGACY:
            files.append(DocFile(path, source, None, LEGACY[suffix]))
        elif fmt is None:
            if explicit:
                files.append(DocFile(path, source, None, f"unsupported format {suffix or '(no extension)'}"))
            else:
                passed[f"other extension {suffix or '(none)'}"] += 1
        elif fmt not in formats:
            passed[f"format {fmt} not in --formats"] += 1
        else:
            files.append(DocFile(path, source, fmt))

    for inp in inputs:
        root = Path(inp)
        base = Path(os.path.normpath(inp)).as_posix()
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(root)
                for name in sorted(filenames):
                    if name.startswith("."):
                        passed["hidden file"] += 1
                        continue
                    add(Path(dirpath) / name, (Path(base) / rel / name).as_posix(), explicit=False)
        elif root.exists():
            add(root, base, explicit=True)
        else:
            files.append(DocFile(root, base, None, "no such file or folder"))
    return files, passed


@dataclass
class SliceStats:
    files_seen: int = 0
    files_sliced: int = 0
    files_bad: int = 0
    files_without_slices: int = 0
    files_passed_over: dict[str, int] = field(default_factory=dict)
    by_format: Counter[str] = field(default_factory=Counter)
    bytes_by_format: Counter[str] = field(default_factory=Counter)
    bad_by_reason: Counter[str] = field(default_factory=Counter)
    bad_files: list[dict[str, str]] = field(default_factory=list)
    encodings: Counter[str] = field(default_factory=Counter)
    pages: int = 0
    pdf_seconds: float = 0.0
    empty_pages: int = 0
    scanned_pages: int = 0
    pages_listed: list[dict[str, Any]] = field(default_factory=list)
    chars_extracted: int = 0  # every character of the extracted text
    nonblank_extracted: int = 0
    nonblank_in_slices: int = 0
    chars_out: int = 0  # total length of the slices (overlap counts again)
    removed_lines: Counter[str] = field(default_factory=Counter)
    removed_chars: Counter[str] = field(default_factory=Counter)
    slices: int = 0
    split: SplitCounts = field(default_factory=SplitCounts)
    hist: Counter[str] = field(default_factory=Counter)
    min_len: int = 0
    max_len: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def bad(self, f: DocFile, reason: str) -> None:
        self.files_bad += 1
        self.bad_by_reason[reason.split(":", 1)[0]] += 1
        if len(self.bad_files) < MAX_LISTED:
            self.bad_files.append({"file": f.source, "reason": reason})
        log.warning("%s: %s", f.source, reason)

    def as_dict(self) -> dict[str, Any]:
        text_bytes = sum(v for k, v in self.bytes_by_format.items() if k != "pdf")
        non_pdf_s = max(self.elapsed_s - self.pdf_seconds, 1e-9)
        return {
            "files": {"seen": self.files_seen, "sliced": self.files_sliced, "bad": self.files_bad,
                      "without_slices": self.files_without_slices, "by_format": dict(self.by_format),
                      "bytes_by_format": dict(self.bytes_by_format), "passed_over": self.files_passed_over,
                      "encodings": dict(self.encodings)},
            "bad_files": {"count": self.files_bad, "by_reason": dict(self.bad_by_reason), "listed": self.bad_files},
            "pages": {"total": self.pages, "empty": self.empty_pages, "scanned": self.scanned_pages,
                      "listed": self.pages_listed},
            "chars": {"extracted": self.chars_extracted, "nonblank_extracted": self.nonblank_extracted,
                      "nonblank_in_slices": self.nonblank_in_slices,
                      "coverage": round(self.nonblank_in_slices / self.nonblank_extracted, 6)
                      if self.nonblank_extracted else 1.0,
                      "in_slices_total": self.chars_out},
            "removed": {"lines": dict(self.removed_lines), "chars": dict(self.removed_chars)},
            "dropped": {"below_min_chars": {"slices": self.split.dropped_short,
                                            "nonblank_chars": self.split.dropped_short_chars}},
            "slices": {"count": self.slices, "cut_inside_sentence": self.split.cuts_inside_sentence,
                       "tables_split_by_rows": self.split.tables_split,
                       "other_blocks_split": dict(self.split.blocks_split), "min_chars": self.min_len,
                       "max_chars": self.max_len, "mean_chars": round(self.chars_out / self.slices, 1)
                       if self.slices else 0, "length_histogram": dict(self.hist), "block_kinds": dict(self.kinds)},
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput": {"text_mb_per_s": round(text_bytes / 1e6 / non_pdf_s, 3) if text_bytes else None,
                           "pdf_pages_per_s": round(self.pages / self.pdf_seconds, 1) if self.pdf_seconds else None},
        }


def _bucket(n: int) -> str:
    lo = 0
    for edge in HIST_EDGES:
        if n < edge:
            return f"{lo}-{edge - 1}"
        lo = edge
    return f"{lo}+"


def slice_rows(doc: Document, slices: list[Slice], with_tokens: bool) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for i, s in enumerate(slices):
        meta: dict[str, Any] = {"source": doc.source, "format": doc.fmt, "headings": s.headings, "index": i,
                                "char_start": s.start, "char_end": s.end, "chars": len(s.content),
                                "kinds": s.kinds}
        if doc.page_starts:
            first, last = doc.page_at(s.start), doc.page_at(max(s.start, s.end - 1))
            meta["pages"] = list(range(first, last + 1))
        if with_tokens:
            meta["tokens"] = s.size
        if s.overlap_chars:
            meta["overlap_chars"] = s.overlap_chars
        if s.cut_inside:
            meta["cut_inside_sentence"] = True
        yield {"id": slice_id(doc.source, s.content, seen), "content": s.content, "metadata": meta}


@dataclass
class DocResult:
    """What one file gave: its slices as JSON lines (unless they were written as they came) and the counts the
    stats add up. Plain data, so a worker process can send it back."""

    fmt: str
    error: str = ""
    size: int = 0
    encoding: str = ""
    pages: int = 0
    empty_pages: list[int] = field(default_factory=list)
    scanned_pages: list[int] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)
    removed_chars: Counter[str] = field(default_factory=Counter)
    chars: int = 0
    nonblank: int = 0
    covered: int = 0
    split: SplitCounts = field(default_factory=SplitCounts)
    lines: list[bytes] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def process_file(f: DocFile, limits: Limits, with_tokens: bool,
                 sink: Callable[[bytes], Any] | None = None) -> DocResult:
    """Read and split one file. Rows go to `sink` in blocks as they are made (a 70 MB document is not held twice),
    or into DocResult.lines when there is no sink."""
    t = time.perf_counter()
    r = DocResult(f.fmt or "")
    if f.skip_reason or f.fmt is None:
        r.error = f.skip_reason or "unsupported format"
        return r
    try:
        r.size = f.path.stat().st_size
        doc = read_document(f.path, f.source, f.fmt)
        slices = split_document(doc, limits, r.split)
    except DocError as e:
        r.error = str(e)
        return r
    except Exception as e:  # a file that breaks a library in an unforeseen way must not end a run of 10,000
        log.debug("%s", f.source, exc_info=True)
        r.error = f"cannot read: {type(e).__name__}: {e}"
        return r
    r.encoding, r.pages, r.empty_pages, r.scanned_pages = doc.encoding, doc.pages, doc.empty_pages, doc.scanned_pages
    r.removed, r.removed_chars = doc.removed, doc.removed_chars
    r.chars = len(doc.text)
    r.nonblank, r.covered = coverage(doc, slices)
    for row in slice_rows(doc, slices, with_tokens):
        r.lengths.append(row["metadata"]["chars"])
        r.kinds.update(row["metadata"]["kinds"])
        r.lines.append(dumps(row))
        if sink is not None and len(r.lines) >= 4096:
            sink(b"\n".join(r.lines) + b"\n")
            r.lines.clear()
    if sink is not None and r.lines:
        sink(b"\n".join(r.lines) + b"\n")
        r.lines.clear()
    r.seconds = time.perf_counter() - t
    return r


def add_result(stats: SliceStats, f: DocFile, r: DocResult) -> None:
    stats.files_seen += 1
    if r.error:
        stats.bad(f, r.error)
        return
    if r.fmt == "pdf":
        stats.pdf_seconds += r.seconds
    stats.files_sliced += 1
    stats.by_format[r.fmt] += 1
    stats.bytes_by_format[r.fmt] += r.size
    if r.encoding:
        stats.encodings[r.encoding] += 1
    stats.pages += r.pages
    stats.empty_pages += len(r.empty_pages)
    stats.scanned_pages += len(r.scanned_pages)
    if r.scanned_pages:
        log.warning("%s: %d scanned (image-only) page(s) without text, OCR needed: %s", f.source,
                    len(r.scanned_pages), _ranges(r.scanned_pages))
    if r.empty_pages:
        log.info("%s: %d empty page(s): %s", f.source, len(r.empty_pages), _ranges(r.empty_pages))
    if (r.scanned_pages or r.empty_pages) and len(stats.pages_listed) < MAX_LISTED:
        stats.pages_listed.append({"file": f.source, "scanned": r.scanned_pages, "empty": r.empty_pages})
    stats.removed_lines.update(r.removed)
    stats.removed_chars.update(r.removed_chars)
    stats.chars_extracted += r.chars
    stats.nonblank_extracted += r.nonblank
    stats.nonblank_in_slices += r.covered
    stats.split.add(r.split)
    if not r.lengths:
        stats.files_without_slices += 1
        log.warning("%s: no slices (%s)", f.source, "no text" if not r.nonblank else "all text under --min-chars")
    for n in r.lengths:
        stats.min_len = n if stats.slices == 0 else min(stats.min_len, n)
        stats.slices += 1
        stats.chars_out += n
        stats.max_len = max(stats.max_len, n)
        stats.hist[_bucket(n)] += 1
    stats.kinds.update(r.kinds)


_WORKER: tuple[Limits, bool] | None = None


def _init_worker(max_len: int, min_chars: int, overlap: int, tokenizer: str | None, with_tokens: bool) -> None:
    global _WORKER
    measure = make_measure(tokenizer) if tokenizer else len
    _WORKER = (Limits(max_len, min_chars, overlap, measure), with_tokens)


def _work(f: DocFile) -> DocResult:
    assert _WORKER is not None
    return process_file(f, *_WORKER)


def run(files: list[DocFile], limits: Limits, out: IO[bytes] | None, stats: SliceStats,
        with_tokens: bool = False, on_file: Callable[[SliceStats], None] | None = None, workers: int = 1,
        tokenizer: str | None = None) -> SliceStats:
    """Read, split and write every file, in order (nothing is written when `out` is None: --dry-run). With
    `workers` > 1, files are read and split in that many processes (`tokenizer` is loaded in each); the output is
    the same, byte for byte."""
    t0 = time.perf_counter()

    def done(f: DocFile, r: DocResult) -> None:
        add_result(stats, f, r)
        stats.elapsed_s = time.perf_counter() - t0
        if on_file:
            on_file(stats)

    if workers <= 1:
        sink = out.write if out is not None else (lambda b: None)
        for f in files:
            done(f, process_file(f, limits, with_tokens, sink))
        return stats
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold tokenizer threads
    init = (limits.max_len, limits.min_chars, limits.overlap, tokenizer, with_tokens)
    with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        for f, r in zip(files, pool.imap(_work, files, chunksize=1), strict=True):
            if out is not None and r.lines:
                out.write(b"\n".join(r.lines) + b"\n")
            r.lines = []
            done(f, r)
    return stats


def _ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, i = [], 0
    while i < len(pages):
        j = i
        while j + 1 < len(pages) and pages[j + 1] == pages[j] + 1:
            j += 1
        out.append(str(pages[i]) if i == j else f"{pages[i]}-{pages[j]}")
        i = j + 1
    return ", ".join(out)


def make_measure(tokenizer: str) -> Callable[[str], int]:
    """Token counter from a tokenizer.json file or a Hugging Face tokenizer folder (no special tokens)."""
    if Path(tokenizer).is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
        return lambda s: len(tok.encode(s, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        return lambda s: len(backend.encode(s, add_special_tokens=False).ids)
    return lambda s: len(hf.encode(s, add_special_tokens=False))


__all__ = ["FORMATS", "DocFile", "DocResult", "Limits", "SliceStats", "discover", "make_measure", "process_file", "run"]
