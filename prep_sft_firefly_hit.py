#!/usr/bin/env python3
"""Clean, deduplicate and mix SFT sources (a domain set such as the HIT records + firefly) into one set.

    python prep_sft_firefly_hit.py --firefly-json firefly_no_belle.json --hit-jsonl data/raw/hit/generated.jsonl \
        --out data/processed/mixed.jsonl --total 300000 --hit-ratio 0.4 --max-firefly 250000 \
        --min-chinese-ratio 0.65 --near-dup-threshold 3 --drop-pii --log INFO

Steps, in order: read every source as a stream of blocks (JSONL, one JSON array, .gz) -> parse into canonical
records (any SPEC form) in worker processes -> filters (normalise, Chinese ratio, length per role, pattern
drops, PII) -> exact dedup on the normalised text -> near-dedup across all sources (MinHash LSH over character
3-grams confirmed by exact Jaccard, or the seed's SimHash; hit first, so it wins ties) -> mix at the requested
ratio with an explicit policy when the data cannot meet it -> write canonical records (or the seed's ChatML text)
atomically, plus a stats JSON beside the output.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import regex
from tqdm import tqdm

from sftkit.clean import neardup
from sftkit.clean import pii as pii_mod
from sftkit.clean.filters import (
    DEFAULT_DROP_PATTERNS,
    DEFAULT_FORM,
    DEFAULT_LENGTHS,
    UNICODE_FORMS,
    UNICODE_FORMS_HELP,
    Bounds,
    FilterChain,
    build_chain,
    parse_length,
    warm_tables,
)
from sftkit.clean.mixing import draw, plan_mix
from sftkit.clean.simhash_index import exact_hashes, key_text, make_keys, near_duplicates, simhashes
from sftkit.io.blocks import Block, InputError, detect_kind, element_lines, iter_blocks, parse_block
from sftkit.io.convert import fast_record
from sftkit.io.jsonl import BadLines, atomic_write, write_json
from sftkit.io.records import RecordError, content_id, to_seed_chatml_text
from sftkit.io.text import CHINESE_RATIO_HELP

log = logging.getLogger("prep")

HIT = "hit"
FIREFLY = "firefly"


class UsageError(Exception):
    """Bad flags or unreadable input: exit 2 with one clear line."""


# ---- arguments -------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    name: str
    paths: list[str]
    weight: float = 1.0
    cap: int | None = None  # keep at most this many records after filters and exact dedup


@dataclass
class FilterConfig:
    no_filter: bool
    form: str
    min_chinese_ratio: float
    lengths: dict[str, Bounds]
    patterns: list[str]
    max_urls: int
    pattern_roles: list[str]
    pii_mode: str | None
    pii_kinds: list[str]
    dedup: bool
    ratio_roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"])

    def chain(self) -> FilterChain:
        if self.no_filter:  # the original's --no-filter: no dropping filters; normalising (and redaction) stays
            return build_chain(form=self.form, min_chinese_ratio=None, lengths={}, patterns=[],
                               max_urls=-1, pii_mode="redact" if self.pii_mode == "redact" else None,
                               pii_kinds=self.pii_kinds)
        return build_chain(form=self.form, min_chinese_ratio=self.min_chinese_ratio,
                           ratio_roles=self.ratio_roles, lengths=self.lengths,
                           patterns=self.patterns, max_urls=self.max_urls, pattern_roles=self.pattern_roles,
                           pii_mode=self.pii_mode, pii_kinds=self.pii_kinds)


@dataclass
class Args:
    sources: list[SourceSpec]
    out: Path
    stats: Path
    total: int | None
    hit_ratio: float | None
    seed: int
    policy: str
    max_repeat: int
    near_dup_threshold: int
    near_method: str
    minhash: neardup.MinHashParams
    dedup_report: Path | None
    dedup: bool
    chatml_text: bool
    workers: int
    block_size: int
    filters: FilterConfig
    val_size: float = 0  # records, or a share of the usable hit records when below 1
    val_out: Path | None = None
    domain_out: Path | None = None
    log_level: str = "INFO"
    argv: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 done, 2 bad usage or unreadable input (one line, nothing written), 1 other errors.")
    src = ap.add_argument_group("sources (at least one)")
    src.add_argument("--firefly-json", metavar="PATH",
                     help="the general set: firefly_no_belle.json from Alpaca-CoT (one JSON array, read as a stream) "
                          "or JSONL, optionally .gz; any record form of SPEC")
    src.add_argument("--hit-jsonl", metavar="PATH", nargs="+", default=[],
                     help="one or more domain files (source 'hit'), any record form of SPEC: canonical messages, "
                          "the seed's ChatML text, <|im_start|> text, Alpaca, ShareGPT, Firefly; .gz ok")
    src.add_argument("--source", metavar="NAME=PATH[:WEIGHT]", action="append", default=[],
                     help="another source (repeat the flag; the same NAME again adds a file). WEIGHT (default 1) "
                          "sets its share of what --hit-ratio leaves; NAME 'hit' adds domain files")
    mix = ap.add_argument_group("mixing")
    mix.add_argument("--total", type=int, help="records in the output; default: every usable record (and with an "
                                               "explicit --hit-ratio, the most records that keep that ratio)")
    mix.add_argument("--hit-ratio", type=float,
                     help="share of hit records in the output, 0..1 (default 0.5 when hit and other sources are "
                          "mixed); the other sources share the rest by WEIGHT (firefly: 1)")
    mix.add_argument("--max-firefly", type=int, metavar="N",
                     help="stop reading firefly once N records have passed the filters and exact dedup "
                          "(near-dedup may leave fewer)")
    mix.add_argument("--seed", type=int, default=42, help="random seed for sampling and shuffling (default 42)")
    pol = mix.add_mutually_exclusive_group()
    pol.add_argument("--upsample", action="store_true",
                     help="when a source is too small for its share, repeat its records (at most --max-repeat "
                          "times each) instead of the default policy (keep --total, warn, report the ratio)")
    pol.add_argument("--shrink", action="store_true",
                     help="when a source is too small for its share, keep the ratio exactly and lower the total")
    mix.add_argument("--max-repeat", type=int, default=3, help="with --upsample: most copies of one record (3)")
    flt = ap.add_argument_group("filters")
    flt.add_argument("--min-chinese-ratio", type=float, default=0.65,
                     help="drop a record if any message's Chinese ratio is below this (default 0.65). "
                          + CHINESE_RATIO_HELP)
    flt.add_argument("--chinese-ratio-roles", default="system,user,assistant",
                     help="roles whose messages the Chinese ratio applies to (default system,user,assistant)")
    flt.add_argument("--length", metavar="ROLE=MIN:MAX", action="append", default=[],
                     help="character bounds for every message of ROLE after normalisation; defaults "
                          + ", ".join(f"{r}={b.lo}:{b.hi}" for r, b in DEFAULT_LENGTHS.items())
                          + " (the seed's instruction 20-200 + input 20-300 for the user turn, output 80-1200)")
    flt.add_argument("--drop-pattern", metavar="REGEX", action="append", default=[],
                     help="another pattern (Python `regex` syntax) that drops a record; repeat the flag")
    flt.add_argument("--patterns-file", metavar="FILE",
                     help="replace the built-in drop patterns (refusals, 'as an AI', ads) with this file's, "
                          "one regex per line (# comments and blank lines ignored)")
    flt.add_argument("--drop-max-urls", type=int, default=5,
                     help="drop a record with more than this many URLs in a checked message (default 5; -1 off)")
    flt.add_argument("--pattern-roles", default="assistant",
                     help="roles the drop patterns and URL count apply to (default assistant)")
    pii = flt.add_mutually_exclusive_group()
    pii.add_argument("--drop-pii", action="store_true",
                     help="drop records holding personal data: mainland mobile numbers, resident IDs (valid date, "
                          "check digit and county code), bank cards (Luhn + 62 prefix or a card word), e-mail, "
                          "IPv4/IPv6; full-width digits count (１３８...)")
    pii.add_argument("--redact-pii", action="store_true",
                     help="replace personal data with <PHONE>, <ID>, <CARD>, <EMAIL>, <IP> instead of dropping")
    flt.add_argument("--pii-kinds", default=",".join(pii_mod.DEFAULT_KINDS),
                     help=f"kinds of personal data looked for, among {','.join(pii_mod.KINDS)} (default "
                          f"{','.join(pii_mod.DEFAULT_KINDS)}). landline (fixed-line numbers with an area code: "
                          "0451-86412114, (0451)8641 2114) is off by default: campus and office numbers are useful "
                          "training data; add it to treat them as personal data")
    flt.add_argument("--unicode", choices=UNICODE_FORMS, default=DEFAULT_FORM,
                     help="what normalisation does to characters. " + UNICODE_FORMS_HELP.replace("%", "%%"))
    flt.add_argument("--no-nfkc", action="store_true",
                     help="the same as --unicode none (kept for older commands)")
    flt.add_argument("--no-filter", action="store_true",
                     help="no dropping filters at all (Chinese ratio, length, patterns, URLs, PII drop); text is "
                          "still normalised, and --redact-pii still redacts")
    ded = ap.add_argument_group("dedup")
    ded.add_argument("--near-dup-method", choices=("minhash", "simhash"), default="minhash",
                     help="minhash (default): MinHash LSH over character n-grams of the dedup key (user and "
                          "assistant turns, letters and digits only), every candidate pair confirmed by the exact "
                          "Jaccard similarity of the two n-gram sets (--near-dup-jaccard); simhash: the seed's "
                          "method, 64-bit SimHash over character bigrams within --near-dup-threshold bits, "
                          "unconfirmed (finds about 2 in 3 near-duplicates: see README)")
    ded.add_argument("--near-dup-threshold", type=int, default=3, metavar="BITS",
                     help="-1: no near-duplicate removal (exact dedup only), with either method. Otherwise the "
                          "SimHash distance in bits for --near-dup-method simhash (default 3, the seed's); "
                          "the minhash method does not use it (its threshold is --near-dup-jaccard)")
    ded.add_argument("--near-dup-jaccard", type=float, default=neardup.MinHashParams.threshold, metavar="J",
                     help="minhash: two records are near-duplicates when the Jaccard similarity of their "
                          "character n-gram sets is at least J (default %(default)s)")
    ded.add_argument("--ngram", type=int, default=neardup.MinHashParams.ngram,
                     help="minhash: characters per n-gram (default %(default)s)")
    ded.add_argument("--minhash-perm", type=int, default=neardup.MinHashParams.num_perm,
                     help="minhash: signature length (default %(default)s)")
    ded.add_argument("--minhash-bands", type=int, default=neardup.MinHashParams.bands,
                     help="minhash: LSH bands; rows per band = perm / bands (default %(default)s: a pair of "
                          "Jaccard 0.7 becomes a candidate with probability 0.9998, one of 0.1 with 0.003)")
    ded.add_argument("--dedup-report", metavar="PATH",
                     help="write one JSON line per record removed as a duplicate: its id and source, the id and "
                          "source of the record it duplicates, exact or near, and the Jaccard similarity "
                          "(minhash) or Hamming distance (simhash); an identical copy has the same content id "
                          "as the record it duplicates")
    ded.add_argument("--no-dedup", action="store_true", help="no deduplication at all (neither exact nor near)")
    out = ap.add_argument_group("output")
    out.add_argument("--out", required=True, help="output JSONL (canonical records, one per line)")
    out.add_argument("--chatml-text", action="store_true",
                     help="write the seed's {\"text\": \"<|beginofutterance|>...\"} lines instead of records")
    out.add_argument("--stats", help="stats JSON path (default: OUT with .stats.json instead of .jsonl)")
    out.add_argument("--val-size", type=float, default=0, metavar="N",
                     help="hold out N usable records of the hit source (after dedup; a seeded sample) as a "
                          "validation set, left out of every other output; a value below 1 is a share of them "
                          "(0.05 = 5%%, at least one) (default 0: none)")
    out.add_argument("--val-out", help="where the held-out records go (default: OUT with .val.jsonl)")
    out.add_argument("--domain-out", metavar="PATH",
                     help="also write every usable hit record that is not held out (a domain-only training set, "
                          "e.g. for a second stage), in the same format as OUT")
    run = ap.add_argument_group("run")
    run.add_argument("--workers", type=int, default=0,
                     help="processes parsing and filtering (default 0 = every CPU core; 1 = in this process)")
    run.add_argument("--block-mb", type=float, default=4.0, help="MiB of input per work item (default 4)")
    run.add_argument("--log", default="INFO", help="log level: DEBUG, INFO, WARNING, ERROR (default INFO)")
    return ap


def _parse_source(spec: str) -> tuple[str, str, float | None]:
    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        raise UsageError(f"--source {spec!r}: want NAME=PATH[:WEIGHT]")
    path, weight = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass
    if weight is not None and weight < 0:
        raise UsageError(f"--source {spec!r}: weight must be >= 0")
    return name, path, weight


def _read_patterns(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"--patterns-file {path}: {e.strerror}") from e
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def parse_args(argv: list[str] | None = None) -> Args:
    ns = build_parser().parse_args(argv)
    sources: dict[str, SourceSpec] = {}
    if ns.hit_jsonl:
        sources[HIT] = SourceSpec(HIT, list(ns.hit_jsonl))
    extra_order: list[str] = []
    for spec in ns.source:
        name, path, weight = _parse_source(spec)
        if name == FIREFLY and ns.firefly_json:
            raise UsageError("--source firefly=... and --firefly-json both given; use one")
        if name not in sources:
            sources[name] = SourceSpec(name, [])
            if name != HIT:
                extra_order.append(name)
        sources[name].paths.append(path)
        if weight is not None:
            sources[name].weight = weight
    if ns.firefly_json:
        sources[FIREFLY] = SourceSpec(FIREFLY, [ns.firefly_json], cap=ns.max_firefly)
    elif ns.max_firefly is not None and FIREFLY in sources:
        sources[FIREFLY].cap = ns.max_firefly
    if not sources:
        raise UsageError("no input: give --firefly-json, --hit-jsonl and/or --source NAME=PATH")
    # Priority (who wins a duplicate tie): hit, then --source order, firefly last.
    order = ([HIT] if HIT in sources else []) + [n for n in extra_order if n != FIREFLY] + \
        ([FIREFLY] if FIREFLY in sources else [])
    ordered = [sources[n] for n in order]
    for s in ordered:
        for p in s.paths:
            if not os.path.isfile(p):
                raise UsageError(f"{s.name}: no such file: {p}")
            try:
                detect_kind(p)
            except InputError as e:
                raise UsageError(str(e)) from e
    if ns.total is not None and ns.total <= 0:
        raise UsageError("--total must be positive")
    if ns.hit_ratio is not None and not 0.0 <= ns.hit_ratio <= 1.0:
        raise UsageError("--hit-ratio must be between 0 and 1")
    if ns.max_firefly is not None and ns.max_firefly <= 0:
        raise UsageError("--max-firefly must be positive")
    if ns.max_repeat < 1:
        raise UsageError("--max-repeat must be at least 1")
    if not -1 <= ns.near_dup_threshold <= 32:
        raise UsageError("--near-dup-threshold must be between -1 and 32")
    if ns.minhash_bands < 1 or ns.minhash_perm % ns.minhash_bands:
        raise UsageError("--minhash-perm must be a multiple of --minhash-bands")
    try:
        minhash = neardup.MinHashParams(ngram=ns.ngram, num_perm=ns.minhash_perm, bands=ns.minhash_bands,
                                        rows=ns.minhash_perm // ns.minhash_bands, threshold=ns.near_dup_jaccard)
    except ValueError as e:
        raise UsageError(f"near-dup settings: {e}") from e
    if not 0.0 <= ns.min_chinese_ratio <= 1.0:
        raise UsageError("--min-chinese-ratio must be between 0 and 1")
    if ns.val_size < 0 or (ns.val_size >= 1 and ns.val_size != int(ns.val_size)):
        raise UsageError("--val-size must be a whole number of records or a share below 1")
    if (ns.val_size or ns.domain_out) and HIT not in sources:
        raise UsageError("--val-size and --domain-out need a hit source (--hit-jsonl)")
    if ns.workers < 0 or ns.block_mb <= 0:
        raise UsageError("--workers must be >= 0 and --block-mb > 0")
    lengths = dict(DEFAULT_LENGTHS)
    for spec in ns.length:
        try:
            role, bounds = parse_length(spec)
        except ValueError as e:
            raise UsageError(str(e)) from e
        lengths[role] = bounds
    patterns = _read_patterns(ns.patterns_file) if ns.patterns_file else list(DEFAULT_DROP_PATTERNS)
    patterns += ns.drop_pattern
    for p in patterns:
        try:
            regex.compile(p)
        except regex.error as e:
            raise UsageError(f"bad drop pattern {p!r}: {e}") from e
    roles = {"system", "user", "assistant"}
    ratio_roles = [r for r in ns.chinese_ratio_roles.split(",") if r]
    pattern_roles = [r for r in ns.pattern_roles.split(",") if r]
    pii_kinds = [k for k in ns.pii_kinds.split(",") if k]
    if not set(ratio_roles + pattern_roles) <= roles:
        raise UsageError("roles must be among system,user,assistant")
    if not set(pii_kinds) <= set(pii_mod.KINDS):
        raise UsageError(f"--pii-kinds must be among {','.join(pii_mod.KINDS)}")
    pii_mode = "drop" if ns.drop_pii else ("redact" if ns.redact_pii else None)
    filters = FilterConfig(
        no_filter=ns.no_filter, form="none" if ns.no_nfkc else ns.unicode,
        min_chinese_ratio=ns.min_chinese_ratio if set(ratio_roles) else 0.0,
        lengths=lengths, patterns=patterns, max_urls=ns.drop_max_urls, pattern_roles=pattern_roles,
        pii_mode=pii_mode, pii_kinds=pii_kinds, dedup=not ns.no_dedup, ratio_roles=ratio_roles)
    out = Path(ns.out)
    stats = Path(ns.stats) if ns.stats else out.with_name((out.name[:-6] if out.name.endswith(".jsonl")
                                                           else out.name) + ".stats.json")
    args = Args(
        sources=ordered, out=out, stats=stats, total=ns.total, hit_ratio=ns.hit_ratio, seed=ns.seed,
        policy="upsample" if ns.upsample else ("shrink" if ns.shrink else "keep-total"), max_repeat=ns.max_repeat,
        near_dup_threshold=ns.near_dup_threshold, near_method=ns.near_dup_method, minhash=minhash,
        dedup_report=Path(ns.dedup_report) if ns.dedup_report else None,
        dedup=not ns.no_dedup, chatml_text=ns.chatml_text,
        workers=ns.workers or (os.cpu_count() or 1), block_size=int(ns.block_mb * (1 << 20)), filters=filters,
        val_size=ns.val_size, domain_out=Path(ns.domain_out) if ns.domain_out else None,
        val_out=(Path(ns.val_out) if ns.val_out else out.with_name(
            (out.name[:-6] if out.name.endswith(".jsonl") else out.name) + ".val.jsonl")) if ns.val_size else None,
        log_level=ns.log, argv=list(sys.argv[1:] if argv is None else argv))
    return args


def shares_of(args: Args) -> dict[str, float]:
    """Requested share of every source (see --hit-ratio and --source WEIGHT)."""
    names = [s.name for s in args.sources]
    weights = {s.name: s.weight for s in args.sources}
    if HIT in names and len(names) > 1:
        ratio = 0.5 if args.hit_ratio is None else args.hit_ratio
        others = {n: w for n, w in weights.items() if n != HIT}
        wsum = sum(others.values())
        shares = {HIT: ratio}
        for n, w in others.items():
            shares[n] = (1.0 - ratio) * (w / wsum if wsum > 0 else 1.0 / len(others))
        return shares
    wsum = sum(weights.values())
    return {n: (w / wsum if wsum > 0 else 1.0 / len(names)) for n, w in weights.items()}


# ---- worker side -----------------------------------------------------------------------------------------


@dataclass
class BlockResult:
    source: str
    path: str
    kind: str
    raw_pos: int
    elements: int  # array elements in the block (for numbering across blocks)
    read: int  # lines / elements seen (good and bad)
    bad: list[tuple[int, int | None, str]]  # (line, element ordinal in block or None, reason)
    counts: dict[str, Counter[str]]
    exact: np.ndarray
    near: np.ndarray  # per kept record: SimHash (n,) or MinHash band hashes (n, bands); empty without near dedup
    blob: bytes
    lens: np.ndarray
    seconds: dict[str, float]


_WORKER: dict[str, Any] = {}


def _init_worker(config: FilterConfig, near: str | None, minhash: neardup.MinHashParams) -> None:
    chain = config.chain()
    _WORKER.update(chain=chain, dedup=config.dedup, near=near, minhash=minhash)


def process_block(task: tuple[str, Block]) -> BlockResult:
    source, block = task
    chain: FilterChain = _WORKER["chain"]
    seconds: Counter[str] = Counter()
    t = time.perf_counter()
    parsed = parse_block(block)
    t2 = time.perf_counter()
    seconds["parse"] += t2 - t
    bad: list[tuple[int, int | None, str]] = list(parsed.bad)
    records = []
    rec_errors: list[tuple[int, str]] = []
    for ordinal, obj in parsed.items:
        try:
            rec = fast_record(obj, source, ids=False)  # the record's source is the prep source name
        except RecordError as e:
            rec_errors.append((ordinal, f"invalid record: {e}"))
            continue
        if not rec["id"]:  # a content id, from the text as read, for the records that pass the filters
            rec["_raw"] = [m["content"] for m in rec["messages"]]
        records.append(rec)
    if rec_errors:
        if block.kind == "jsonl":
            bad += [(o, None, r) for o, r in rec_errors]
        else:
            lines = element_lines(block)
            bad += [(lines.get(o, block.first_line), o, r) for o, r in rec_errors]
    t3 = time.perf_counter()
    seconds["to_record"] += t3 - t2
    for f in chain.filters:
        t = time.perf_counter()
        records = f.run(records) if records else records
        seconds["filter:" + f.name] += time.perf_counter() - t
    t = time.perf_counter()
    for rec in records:
        raw = rec.pop("_raw", None)
        if raw is not None:
            rec["id"] = content_id([{"role": m["role"], "content": c} for m, c in zip(rec["messages"], raw,
                                                                                   strict=True)], source)
    seconds["content_id"] += time.perf_counter() - t
    t = time.perf_counter()
    if _WORKER["dedup"]:
        keys = make_keys([key_text(r["messages"]) for r in records])
        exact = exact_hashes(keys)
        t4 = time.perf_counter()
        seconds["exact_hash"] += t4 - t
        near = near_signatures(keys, _WORKER["near"], _WORKER["minhash"])
        seconds["near_signature"] += time.perf_counter() - t4
    else:
        exact = np.zeros(len(records), np.uint64)
        near = np.zeros((len(records), 0), np.uint64)
    t = time.perf_counter()
    lines = [orjson.dumps(r) for r in records]
    blob = b"\n".join(lines) + b"\n" if lines else b""
    lens = np.fromiter((len(x) + 1 for x in lines), dtype=np.int64, count=len(lines))
    seconds["serialize"] += time.perf_counter() - t
    return BlockResult(source, block.path, block.kind, block.raw_pos, parsed.elements,
                       len(parsed.items) + len(parsed.bad), bad,
                       chain.take_counts(), exact, near, blob, lens, dict(seconds))


def near_signatures(keys: Any, method: str | None, minhash: neardup.MinHashParams) -> np.ndarray:
    """What the main process needs per record for near dedup: SimHash, or MinHash band hashes."""
    n = len(keys.lens)
    if method == "simhash":
        return simhashes(keys)
    if method == "minhash":
        return neardup.signatures(keys, minhash)[0]
    return np.zeros((n, 0), np.uint64)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], pool: Any, window: int) -> Iterator[Any]:
    """pool.imap with at most `window` items in flight, so a huge file is never queued whole in memory."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque[Any] = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# ---- main side -------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    files: list[str]
    read: int = 0
    bad_lines: int = 0
    passed_filters: int = 0
    exact_dup_within: int = 0
    exact_dup_across: int = 0
    near_dup_within: int = 0
    near_dup_across: int = 0
    usable: int = 0
    cap: int | None = None
    stopped_at_cap: bool = False
    filters: dict[str, Counter[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = {k: dict(v) for k, v in self.filters.items()}
        return d


class Pool:
    """Records that passed the filters, as serialized lines in an anonymous temp file beside the output, plus
    per-record arrays for the kept ones (not exact duplicates, not over a cap).

    The file is unlinked as soon as it is created and used through its descriptor only, so a killed run
    leaves nothing behind; only the records are on disk, which keeps memory flat however big the input.
    """

    def __init__(self, out: Path, every_offset: bool = False) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.pool-", dir=out.parent)
        os.unlink(name)
        self.file = os.fdopen(fd, "w+b")
        self.size = 0
        self.seq = 0  # records written so far, kept or not
        self.every_offset: list[np.ndarray] | None = [] if every_offset else None  # by seq (for the report)
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offset", "length", "source", "near")}

    def add(self, blob: bytes, lens: np.ndarray, keep: np.ndarray, source: int, near: np.ndarray) -> None:
        offsets = self.size + np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
        self.file.write(blob)
        self.size += len(blob)
        self.seq += len(lens)
        if self.every_offset is not None:
            self.every_offset.append(offsets)
        self.parts["offset"].append(offsets[keep])
        self.parts["length"].append(lens[keep])
        self.parts["source"].append(np.full(int(keep.sum()), source, dtype=np.int16))
        self.parts["near"].append(near[keep])

    def arrays(self) -> dict[str, np.ndarray]:
        self.file.flush()
        dtypes = {"offset": np.int64, "length": np.int64, "source": np.int16, "near": np.uint64}
        return {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])) for k, v in self.parts.items()}

    def record_at(self, offset: int) -> dict[str, Any]:
        """The record whose line starts at `offset` (a few reads: no mapping of the whole file stays around)."""
        self.file.flush()
        chunks = []
        while True:
            chunk = os.pread(self.file.fileno(), 1 << 16, offset)
            end = chunk.find(b"\n")
            if end >= 0 or not chunk:
                chunks.append(chunk[:end] if end >= 0 else chunk)
                return orjson.loads(b"".join(chunks))
            chunks.append(chunk)
            offset += len(chunk)

    def close(self) -> None:
        self.file.close()


def near_dedup(args: Args, store: Pool, arrays: dict[str, np.ndarray]) -> tuple[Any, int]:
    """Near-duplicates of the pool in priority order: (NearDupResult, candidate pairs compared)."""
    if args.near_method == "simhash":
        result = near_duplicates(arrays["near"], args.near_dup_threshold)
        return result, result.pairs_checked
    offsets = arrays["offset"]
    params = args.minhash

    def features(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The candidates' n-gram sets for the exact Jaccard, from the records as they were pooled (normalised).
        texts = [key_text(store.record_at(int(offsets[i]))["messages"]) for i in ids.tolist()]
        return neardup.ngram_features(make_keys(texts), params.ngram)

    return neardup.decide(arrays["near"], features, params.threshold)


def write_dedup_report(path: Path, store: Pool, arrays: dict[str, np.ndarray], names: list[str],
                       exact_drops: list[tuple[int, int]], near: Any) -> int:
    """One JSON line per record removed as a duplicate (see --dedup-report)."""
    every = np.concatenate(store.every_offset) if store.every_offset else np.zeros(0, np.int64)

    def who(offset: int) -> tuple[str, str]:
        rec = store.record_at(offset)
        return rec["id"], rec["source"]

    n = 0
    with atomic_write(path, "wb") as f:
        for dropped_seq, first_seq in exact_drops:
            (rid, src), (did, dsrc) = who(int(every[dropped_seq])), who(int(every[first_seq]))
            f.write(orjson.dumps({"id": rid, "source": src, "duplicate_of": did, "duplicate_source": dsrc,
                                  "how": "exact"}) + b"\n")
            n += 1
        if near is not None:
            offsets = arrays["offset"]
            for j in np.flatnonzero(near.dropped).tolist():
                i = int(near.cause[j])
                (rid, src), (did, dsrc) = who(int(offsets[j])), who(int(offsets[i]))
                row: dict[str, Any] = {"id": rid, "source": src, "duplicate_of": did, "duplicate_source": dsrc,
                                       "how": "near"}
                if near.similarity is not None:
                    row["jaccard"] = round(float(near.similarity[j]), 4)
                else:
                    row["hamming"] = int(arrays["near"][i] ^ arrays["near"][j]).bit_count()
                f.write(orjson.dumps(row) + b"\n")
                n += 1
    return n


def run(args: Args) -> dict[str, Any]:
    t_start = time.perf_counter()
    near = args.near_method if args.dedup and args.near_dup_threshold >= 0 else None
    # Build the lookup tables before forking, so every worker shares them instead of building its own.
    warm_tables(args.filters.form)
    if args.filters.pii_mode:
        pii_mod.warm()
    workers = max(1, args.workers)
    pool_ctx = None
    if workers > 1:
        import multiprocessing as mp

        pool_ctx = mp.get_context("fork").Pool(workers, initializer=_init_worker,
                                               initargs=(args.filters, near, args.minhash))
    else:
        _init_worker(args.filters, near, args.minhash)
    names = [s.name for s in args.sources]
    stats = {s.name: SourceStats(files=list(s.paths), cap=s.cap) for s in args.sources}
    bad = BadLines(log)
    seen: dict[int, int] = {}
    store = Pool(args.out, every_offset=args.dedup_report is not None)
    exact_drops: list[tuple[int, int]] = []  # (seq of the removed record, seq of the one it duplicates)
    seconds: Counter[str] = Counter()
    t_read = time.perf_counter()
    exact_time = 0.0
    try:
        for src_no, spec in enumerate(args.sources):
            st = stats[spec.name]
            kept_count = 0
            for path in spec.paths:
                if st.stopped_at_cap:
                    break
                base = 0  # array elements before this block
                size = os.path.getsize(path)
                bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"{spec.name}:{Path(path).name}",
                           disable=None, leave=False)
                blocks = ((spec.name, b) for b in iter_blocks(path, args.block_size))
                last_pos = 0
                for res in ordered_map(process_block, blocks, pool_ctx, 2 * workers + 1):
                    bar.update(res.raw_pos - last_pos)
                    last_pos = res.raw_pos
                    st.read += res.read
                    for line, ordinal, reason in res.bad:
                        st.bad_lines += 1
                        where = f"array element {base + ordinal}: " if ordinal is not None else ""
                        bad.add(path, line, where + reason)
                    for fname, c in res.counts.items():
                        st.filters.setdefault(fname, Counter()).update(c)
                    seconds.update(res.seconds)
                    st.passed_filters += len(res.lens)
                    base += res.elements
                    t = time.perf_counter()
                    keep = np.ones(len(res.lens), dtype=bool)
                    if args.dedup:
                        seq0 = store.seq
                        report = args.dedup_report is not None
                        for k, h in enumerate(res.exact.tolist()):
                            first = seen.get(h)  # (seq << 10) | source number of the first record with this key
                            if first is None:
                                seen[h] = ((seq0 + k) << 10) | src_no
                            else:
                                keep[k] = False
                                if first & 1023 == src_no:
                                    st.exact_dup_within += 1
                                else:
                                    st.exact_dup_across += 1
                                if report:
                                    exact_drops.append((seq0 + k, first >> 10))
                    if spec.cap is not None and kept_count + int(keep.sum()) >= spec.cap:
                        room = spec.cap - kept_count
                        idx = np.flatnonzero(keep)
                        keep[idx[room:]] = False
                        st.stopped_at_cap = True
                    kept_count += int(keep.sum())
                    store.add(res.blob, res.lens, keep, src_no, res.near)
                    exact_time += time.perf_counter() - t
                    if st.stopped_at_cap:
                        log.info("%s: --max-firefly %d reached; the rest of %s is not read", spec.name, spec.cap,
                                 path)
                        break
                bar.close()
        t_near = time.perf_counter()
        arrays = store.arrays()
        n_pool = len(arrays["offset"])
        read_seconds = t_near - t_read
        near_pairs = near_candidates = 0
        result = None
        if near and n_pool:
            result, near_candidates = near_dedup(args, store, arrays)
            near_pairs = result.pairs_checked
            dropped = result.dropped
            src = arrays["source"]
            cause_src = np.where(dropped, src[np.maximum(result.cause, 0)], -1)
            for i, name in enumerate(names):
                mine = dropped & (src == i)
                stats[name].near_dup_within += int((mine & (cause_src == i)).sum())
                stats[name].near_dup_across += int((mine & (cause_src != i)).sum())
            alive = ~dropped
        else:
            alive = np.ones(n_pool, dtype=bool)
        near_seconds = time.perf_counter() - t_near
        t_mix = time.perf_counter()
        by_source = {name: np.flatnonzero(alive & (arrays["source"] == i)) for i, name in enumerate(names)}
        for name in names:
            stats[name].usable = len(by_source[name])
        rng = np.random.default_rng(args.seed)
        held_out = np.zeros(0, dtype=np.int64)
        if args.val_size:  # drawn first, so the split does not depend on the mixing flags
            pool_hit = by_source[HIT]
            want = int(args.val_size) if args.val_size >= 1 else max(1, round(args.val_size * len(pool_hit)))
            pick = np.sort(rng.choice(len(pool_hit), size=min(want, len(pool_hit)), replace=False))
            held_out = pool_hit[pick]
            by_source[HIT] = np.delete(pool_hit, pick)
            if len(held_out) < want:
                log.warning("VAL: only %d usable hit records; all of them are held out", len(held_out))
        available = {name: len(v) for name, v in by_source.items()}
        shares = shares_of(args)
        total = args.total
        policy = args.policy
        if total is None and args.hit_ratio is not None and len(names) > 1:
            total, policy = sum(available.values()), "shrink"
        plan = plan_mix(available, shares, total, policy, args.max_repeat)
        for w in plan.warnings:
            log.warning("MIX: %s", w)
        chosen = np.concatenate([by_source[n][draw(available[n], plan.take[n], rng)] for n in names]) \
            if names else np.zeros(0, np.int64)
        chosen = chosen[rng.permutation(len(chosen))]
        mix_seconds = time.perf_counter() - t_mix
        t_write = time.perf_counter()
        written = write_output(args, args.out, store, arrays, chosen)
        extra_outputs = {}
        if args.val_out is not None:
            extra_outputs["val"] = {"path": str(args.val_out), "source": HIT,
                                    "records": write_output(args, args.val_out, store, arrays, held_out)}
        if args.domain_out is not None:
            extra_outputs["domain"] = {"path": str(args.domain_out), "source": HIT, "records": write_output(
                args, args.domain_out, store, arrays, by_source[HIT])}
        if args.dedup_report is not None:
            extra_outputs["dedup_report"] = {"path": str(args.dedup_report), "records": write_dedup_report(
                args.dedup_report, store, arrays, names, exact_drops, result)}
        write_seconds = time.perf_counter() - t_write
    finally:
        if pool_ctx is not None:
            pool_ctx.terminate()
            pool_ctx.join()
        store.close()
    elapsed = time.perf_counter() - t_start
    total_read = sum(s.read for s in stats.values())
    # Records entering each worker stage: all read for parsing, each filter's own "seen", the survivors after.
    passed = sum(s.passed_filters for s in stats.values())
    entering = {"parse": total_read, "to_record": total_read, "content_id": passed, "exact_hash": passed,
                "near_signature": passed, "serialize": passed}
    for s in stats.values():
        for fname, c in s.filters.items():
            entering["filter:" + fname] = entering.get("filter:" + fname, 0) + c.get("seen", 0)
    worker_stages = {k: {"cpu_seconds": round(v, 3), "records_in": entering.get(k, 0),
                         "records_per_cpu_s": rate(entering.get(k, 0), v)}
                     for k, v in sorted(seconds.items())}
    return {
        "argv": args.argv,
        "output": {"path": str(args.out), "records": written, "format": "chatml-text" if args.chatml_text
                   else "records", **extra_outputs},
        "sources": {n: s.as_dict() for n, s in stats.items()},
        "bad_lines": bad.as_dict(),
        "dedup": {"enabled": args.dedup, "near_method": near,
                  "near_dup_threshold": args.near_dup_threshold if near == "simhash" else None,
                  "minhash": asdict(args.minhash) if near == "minhash" else None,
                  "near_candidate_pairs": near_candidates,
                  "near_pairs_confirmed": near_pairs,
                  "exact_within": sum(s.exact_dup_within for s in stats.values()),
                  "exact_across": sum(s.exact_dup_across for s in stats.values()),
                  "near_within": sum(s.near_dup_within for s in stats.values()),
                  "near_across": sum(s.near_dup_across for s in stats.values())},
        "mix": plan.as_dict(),
        "timing": {
            "elapsed_s": round(elapsed, 3), "records_read": total_read,
            "records_per_s": rate(total_read, elapsed), "workers": workers,
            "stages": {
                "read_parse_filter_hash": {"seconds": round(read_seconds, 3),
                                           "records_per_s": rate(total_read, read_seconds)},
                "exact_dedup_and_pool": {"seconds": round(exact_time, 3), "records_per_s": rate(total_read,
                                                                                                exact_time)},
                "near_dedup": {"seconds": round(near_seconds, 3), "records_per_s": rate(n_pool, near_seconds)},
                "mix": {"seconds": round(mix_seconds, 3)},
                "write": {"seconds": round(write_seconds, 3), "records_per_s": rate(written, write_seconds)},
            },
            "worker_stages": worker_stages,
        },
    }


def rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 1) if seconds > 0 else None


def write_output(args: Args, path: Path, store: Pool, arrays: dict[str, np.ndarray], chosen: np.ndarray) -> int:
    """Write the chosen pool records in order; repeats (--upsample) get `-rN` ids."""
    offsets, lengths = arrays["offset"], arrays["length"]
    copies: Counter[int] = Counter()
    n = 0
    with atomic_write(path, "wb") as f:
        if store.size == 0:
            return 0
        store.file.flush()
        with mmap.mmap(store.file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf: list[bytes] = []
            for idx in chosen.tolist():
                line = mm[offsets[idx]:offsets[idx] + lengths[idx]]
                copies[idx] += 1
                rep = copies[idx]
                if rep > 1 or args.chatml_text:
                    rec = orjson.loads(line)
                    if rep > 1:
                        rec["id"] = f"{rec['id']}-r{rep}"
                    if args.chatml_text:
                        rec = {"text": to_seed_chatml_text(rec["messages"])}
                    line = orjson.dumps(rec) + b"\n"
                buf.append(line)
                n += 1
                if len(buf) >= 8192:
                    f.write(b"".join(buf))
                    buf.clear()
            f.write(b"".join(buf))
    return n


def summary(stats: dict[str, Any]) -> str:
    lines = [f"prep: wrote {stats['output']['records']} {stats['output']['format']} to {stats['output']['path']}"]
    lines.append(f"{'source':<12}{'read':>10}{'bad':>7}{'filtered':>10}{'exact dup':>11}{'near dup':>10}"
                 f"{'usable':>10}{'taken':>10}")
    for name, s in stats["sources"].items():
        filtered = s["read"] - s["bad_lines"] - s["passed_filters"]
        lines.append(f"{name:<12}{s['read']:>10}{s['bad_lines']:>7}{filtered:>10}"
                     f"{s['exact_dup_within'] + s['exact_dup_across']:>11}"
                     f"{s['near_dup_within'] + s['near_dup_across']:>10}{s['usable']:>10}"
                     f"{stats['mix']['take'].get(name, 0):>10}")
        drops = Counter()
        for fname, c in s["filters"].items():
            for k, v in c.items():
                if k.startswith("drop:"):
                    drops[f"{fname}: {k[5:]}"] += v
        if drops:
            lines.append("    dropped: " + "; ".join(f"{k} {v}" for k, v in drops.most_common(6)))
        if s["stopped_at_cap"]:
            lines.append(f"    stopped reading at the cap of {s['cap']}")
    for extra in ("val", "domain"):
        if extra in stats["output"]:
            e = stats["output"][extra]
            lines.append(f"{extra}: {e['records']} {e['source']} records to {e['path']}")
    mix = stats["mix"]
    ach = ", ".join(f"{n} {v:.4f} (asked {mix['requested_shares'][n]:.4f})" for n, v in mix["achieved_shares"].items())
    lines.append(f"mix: policy {mix['policy']}, total {mix['total']}; shares: {ach}")
    for w in mix["warnings"]:
        lines.append("WARNING: " + w)
    tm = stats["timing"]
    lines.append(f"time: {tm['elapsed_s']:.1f}s, {tm['records_per_s']} records/s read, {tm['workers']} workers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"prep_sft_firefly_hit.py: error: {e}", file=sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper(), None)
    logging.basicConfig(level=level if isinstance(level, int) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        stats = run(args)
    except InputError as e:
        print(f"prep_sft_firefly_hit.py: error: {e}", file=sys.stderr)
        return 2
    write_json(args.stats, stats)
    print(summary(stats))
    print(f"stats: {args.stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
