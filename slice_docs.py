#!/usr/bin/env python3
"""Documents (Markdown, plain text, DOCX, PDF, HTML; files or folders, recursive) -> knowledge slices JSONL
`{"id", "content", "metadata"}`, the input of `gen_SFT_data.py --slices` and `scripts/run_pipeline.py`.

    python slice_docs.py --in docs/ handbook.pdf --out data/slices/slices.jsonl --max-chars 1000

Splitting follows the structure: headings first (a heading always opens a slice, its path is
metadata.headings), then blocks (paragraphs, lists, tables, code, formulas), then Chinese and ASCII sentence
ends with their closing quotes and brackets; only a sentence longer than the limit is cut inside, and each such
cut is counted. Tables, code and formulas stay whole; a table longer than the limit is split by rows with its
header repeated. Every non-blank character of the extracted text lands in a slice (the coverage is measured and
reported). Slice ids are stable: the same file and content give the same id, so generation resumes from its
journal and pays only for new slices after documents are added.

A file that cannot be read (corrupt, encrypted, undecodable) is reported as `file: reason`, skipped and counted.
The output is written atomically; the stats JSON (OUT with .stats.json) sits beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from sftkit.docs.readers import FORMATS
from sftkit.docs.stage import Limits, SliceStats, discover, make_measure, run
from sftkit.io.cli import ScriptParser, UsageError, run_script
from sftkit.io.jsonl import atomic_write, write_json

log = logging.getLogger("slice")


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, resumable=False)
    a = ap.add_argument
    a("--in", dest="inputs", nargs="+", required=True, metavar="PATH",
      help="files or folders (walked recursively; hidden files and Office ~$ lock files passed over)")
    a("--out", help="slices JSONL (written atomically; required unless --dry-run)")
    a("--max-chars", type=int, default=None, help="longest slice in characters (default 1000 unless --max-tokens)")
    a("--max-tokens", type=int, default=None, help="longest slice in tokens of --tokenizer instead of characters")
    a("--tokenizer", help="tokenizer.json file or Hugging Face tokenizer folder, for --max-tokens")
    a("--min-chars", type=int, default=20,
      help="a slice with fewer non-blank characters joins a neighbour or takes whole sentences from the previous "
           "slice; one that still cannot is dropped and counted (default %(default)s; 0 keeps every slice)")
    a("--overlap", type=int, default=0,
      help="repeat up to N characters of whole trailing sentences of a slice at the start of the next one in the "
           "same section (default 0)")
    a("--formats", default=",".join(FORMATS), help=f"formats to read (default all: {','.join(FORMATS)})")
    a("--limit", type=int, default=0, help="only the first N documents (0 = all)")
    a("--dry-run", action="store_true", help="read and split, print the counts, write nothing")
    a("--workers", type=int, default=1,
      help="processes that read and split files (default 1); the output is the same for any number")
    a("--stats", help="stats JSON path (default: OUT with .stats.json instead of .jsonl)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--log", default="INFO", help="log level (default INFO)")
    return ap


def check_args(args: argparse.Namespace) -> tuple[tuple[str, ...], Limits]:
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UsageError(f"--formats: unknown {','.join(unknown) or '(none given)'} (choose from {','.join(FORMATS)})")
    if not args.out and not args.dry_run:
        raise UsageError("--out is required (or --dry-run)")
    if args.max_chars is not None and args.max_tokens is not None:
        raise UsageError("give --max-chars or --max-tokens, not both")
    if args.max_tokens is not None and not args.tokenizer:
        raise UsageError("--max-tokens needs --tokenizer (a tokenizer.json file or a tokenizer folder)")
    if args.tokenizer and not Path(args.tokenizer).exists():
        raise UsageError(f"--tokenizer {args.tokenizer}: no such file or folder")
    max_len = args.max_tokens if args.max_tokens is not None else (args.max_chars or 1000)
    if max_len < 1 or args.min_chars < 0 or args.overlap < 0 or args.limit < 0 or args.workers < 1:
        raise UsageError("--max-chars/--max-tokens and --workers must be >= 1; --min-chars, --overlap, --limit >= 0")
    if args.overlap >= max_len and args.max_tokens is None:
        raise UsageError("--overlap must be smaller than --max-chars")
    measure = make_measure(args.tokenizer) if args.max_tokens is not None else len
    return formats, Limits(max_len, args.min_chars, args.overlap, measure)


def print_summary(d: dict, out: str | None, stats_path: Path | None) -> None:
    f, c, s, p = d["files"], d["chars"], d["slices"], d["pages"]
    by_fmt = ", ".join(f"{k} {v}" for k, v in sorted(f["by_format"].items())) or "none"
    print(f"files: {f['seen']} seen, {f['sliced']} sliced ({by_fmt}), {f['bad']} bad, "
          f"{sum(f['passed_over'].values())} passed over")
    for reason, n in sorted(d["bad_files"]["by_reason"].items()):
        print(f"  bad: {n} x {reason}")
    if p["total"]:
        print(f"pdf pages: {p['total']} ({p['empty']} empty, {p['scanned']} scanned without text); removed "
              f"lines: {d['removed']['lines'] or 'none'}")
    print(f"characters: {c['nonblank_extracted']} non-blank extracted, {c['nonblank_in_slices']} in slices "
          f"(coverage {c['coverage']:.4%}); dropped under --min-chars: {d['dropped']['below_min_chars']}")
    print(f"slices: {s['count']} (chars min {s['min_chars']}, mean {s['mean_chars']}, max {s['max_chars']}; "
          f"{s['cut_inside_sentence']} cut inside a sentence, {s['tables_split_by_rows']} tables split by rows)")
    t = d["throughput"]
    print(f"elapsed {d['elapsed_s']} s; text {t['text_mb_per_s']} MB/s; pdf {t['pdf_pages_per_s']} pages/s")
    print(f"out: {out or '(dry run: nothing written)'}" + (f"; stats: {stats_path}" if stats_path else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log.upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        formats, limits = check_args(args)
    except UsageError as e:
        print(f"slice_docs.py: {e}", file=sys.stderr)
        return 2
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"slice_docs.py: --in {missing[0]}: no such file or folder", file=sys.stderr)
        return 2
    files, passed = discover(args.inputs, formats)
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"slice_docs.py: no documents of formats {','.join(formats)} under {' '.join(args.inputs)}",
              file=sys.stderr)
        return 2
    stats = SliceStats(files_passed_over=dict(passed))
    bar = tqdm(total=len(files), unit="doc", desc="slicing", mininterval=1.0, disable=args.no_progress or None)

    def on_file(st: SliceStats) -> None:
        bar.update(1)
        bar.set_postfix(slices=st.slices, bad=st.files_bad, refresh=False)

    with_tokens = args.max_tokens is not None
    opts = {"with_tokens": with_tokens, "on_file": on_file, "workers": args.workers,
            "tokenizer": args.tokenizer if with_tokens else None}
    if args.dry_run:
        run(files, limits, None, stats, **opts)
    else:
        with atomic_write(args.out, "wb") as out:
            run(files, limits, out, stats, **opts)
    bar.close()
    d = stats.as_dict()
    d["options"] = {"inputs": args.inputs, "out": args.out, "max_chars": args.max_chars, "max_tokens": args.max_tokens,
                    "tokenizer": args.tokenizer, "min_chars": args.min_chars, "overlap": args.overlap,
                    "formats": list(formats), "limit": args.limit, "dry_run": args.dry_run, "workers": args.workers}
    stats_path = None
    if not args.dry_run:
        out_path = Path(args.out)
        stats_path = Path(args.stats) if args.stats else out_path.with_name(
            (out_path.name[:-6] if out_path.name.endswith(".jsonl") else out_path.name) + ".stats.json")
        write_json(stats_path, d)
    print_summary(d, args.out if not args.dry_run else None, stats_path)
    if stats.files_sliced == 0:
        print("slice_docs.py: no document could be read", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
