#!/usr/bin/env python3
"""Clean, deduplicate and mix SFT sources (a domain set such as the HIT records + firefly) into one set.

    python prep_sft_firefly_hit.py --firefly-json firefly_no_belle.json --hit-jsonl data/raw/hit/generated.jsonl \
        --out data/processed/mixed.jsonl --total 300000 --hit-ratio 0.4 --max-firefly 250000 \
        --min-chinese-ratio 0.65 --drop-pii --log INFO

Steps, in order: read every source as a stream of blocks (JSONL, one JSON array, .gz) -> parse into canonical
records (any SPEC form) in worker processes -> filters (normalise, Chinese ratio, length per role, pattern
drops, PII) -> exact dedup on the normalised text -> near-dedup across all sources (MinHash LSH over character
3-grams confirmed by exact Jaccard, or the seed's SimHash; hit first, so it wins ties) -> mix at the requested
ratio with an explicit policy when the data cannot meet it -> write canonical records (or the seed's ChatML text)
atomically, plus a stats JSON beside the output.

This script: flags -> typed config (parse_args) -> the stage (sftkit.clean.stage.run, its steps in sftkit/clean:
workers, dedup, pool, mixing) -> the stats JSON and a summary on stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import regex

from sftkit.clean import neardup
from sftkit.clean import pii as pii_mod
from sftkit.clean.filters import (
    DEFAULT_DROP_PATTERNS,
    DEFAULT_FORM,
    DEFAULT_LENGTHS,
    UNICODE_FORMS,
    UNICODE_FORMS_HELP,
    FilterConfig,
    parse_length,
)
from sftkit.clean.stage import FIREFLY, HIT, PrepConfig, SourceSpec, check_inputs, in_priority_order, run, summary
from sftkit.io.blocks import InputError
from sftkit.io.cli import ScriptParser, UsageError, run_script
from sftkit.io.jsonl import write_json
from sftkit.io.text import CHINESE_RATIO_HELP
from sftkit.io.trainval import check_val_size

SIMHASH_BITS = 3  # --near-dup-threshold's default under --near-dup-method simhash (the seed's)


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      resumable=False)
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
                     help="drop records holding personal data: mainland mobile numbers, resident IDs (check "
                          "digit, a real birth date not in the future, a GB/T 2260 division code of any date), "
                          "bank cards (16-19 digits of their own passing Luhn, with a 62 prefix or a card word; "
                          "a number after the card is never glued to it), e-mail, IPv4/IPv6; full-width digits "
                          "count (１３８...)")
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
    ded.add_argument("--near-dup-method", choices=("minhash", "simhash"),
                     help="minhash (default): MinHash LSH over character n-grams of the dedup key (user and "
                          "assistant turns, letters and digits only), every candidate pair confirmed by the exact "
                          "Jaccard similarity of the two n-gram sets (--near-dup-jaccard); simhash: the seed's "
                          "method, 64-bit SimHash over character bigrams within --near-dup-threshold bits, "
                          "unconfirmed (finds about 2 in 3 near-duplicates: see README). A flag of the other "
                          "method does nothing and is refused (exit 2)")
    ded.add_argument("--near-dup-threshold", type=int, metavar="BITS",
                     help=f"simhash: the SimHash distance in bits (default {SIMHASH_BITS}, the seed's). -1: no "
                          "near-duplicate removal (exact dedup only), with either method. Under minhash any other "
                          "value does nothing and is refused (its threshold is --near-dup-jaccard)")
    ded.add_argument("--near-dup-jaccard", type=float, metavar="J",
                     help="minhash: two records are near-duplicates when the Jaccard similarity of their "
                          f"character n-gram sets is at least J (default {neardup.MinHashParams.threshold})")
    ded.add_argument("--ngram", type=int,
                     help=f"minhash: characters per n-gram (default {neardup.MinHashParams.ngram})")
    ded.add_argument("--minhash-perm", type=int,
                     help=f"minhash: signature length (default {neardup.MinHashParams.num_perm})")
    ded.add_argument("--minhash-bands", type=int,
                     help=f"minhash: LSH bands; rows per band = perm / bands (default {neardup.MinHashParams.bands}: "
                          "a pair of Jaccard 0.7 becomes a candidate with probability 0.9998, one of 0.1 with 0.003)")
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
                          "validation set, left out of every other output; a value below 1 is a share of them, "
                          "rounded up (0.05 of 30 records = 2). At least one record always stays for training: "
                          "when N would take them all, one fewer is held out and a warning says so (default 0: "
                          "none)")
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


def flag_without_effect(ns: argparse.Namespace) -> str | None:
    """The one line refusing a dedup flag that would do nothing under the chosen settings (and naming the flag that
    applies), or None. Flags left out have the value None, so a default never counts as given."""
    minhash_given = [flag for flag, value in (("--near-dup-jaccard", ns.near_dup_jaccard), ("--ngram", ns.ngram),
                                              ("--minhash-perm", ns.minhash_perm),
                                              ("--minhash-bands", ns.minhash_bands)) if value is not None]
    if ns.no_dedup:
        given = [flag for flag, value in (("--near-dup-method", ns.near_dup_method),
                                          ("--near-dup-threshold", ns.near_dup_threshold),
                                          ("--dedup-report", ns.dedup_report)) if value is not None] + minhash_given
        return f"{given[0]} does nothing with --no-dedup (no deduplication at all): drop one of the two" \
            if given else None
    if (ns.near_dup_method or "minhash") == "minhash":
        if ns.near_dup_threshold is not None and ns.near_dup_threshold != -1:
            return ("--near-dup-threshold is the SimHash distance in bits and does nothing under --near-dup-method "
                    "minhash (the default): its threshold is --near-dup-jaccard J (default "
                    f"{neardup.MinHashParams.threshold}); add --near-dup-method simhash for the seed's method, "
                    "or use --near-dup-threshold -1 for no near-dedup")
        if ns.near_dup_threshold == -1 and minhash_given:
            return f"{minhash_given[0]} does nothing with --near-dup-threshold -1 (no near-duplicate removal)"
        return None
    if minhash_given:
        return (f"{minhash_given[0]} is a MinHash setting and does nothing under --near-dup-method simhash: its "
                "threshold is --near-dup-threshold BITS")
    return None


def parse_args(argv: list[str] | None = None) -> PrepConfig:
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
    ordered = in_priority_order(sources, extra_order)
    try:
        check_inputs(ordered)
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
    useless = flag_without_effect(ns)
    if useless:
        raise UsageError(useless)
    method = ns.near_dup_method or "minhash"
    threshold = SIMHASH_BITS if ns.near_dup_threshold is None else ns.near_dup_threshold
    if not -1 <= threshold <= 32:
        raise UsageError("--near-dup-threshold must be between -1 and 32")
    defaults = neardup.MinHashParams()
    perm = defaults.num_perm if ns.minhash_perm is None else ns.minhash_perm
    bands = defaults.bands if ns.minhash_bands is None else ns.minhash_bands
    if bands < 1 or perm % bands:
        raise UsageError("--minhash-perm must be a multiple of --minhash-bands")
    try:
        minhash = neardup.MinHashParams(
            ngram=defaults.ngram if ns.ngram is None else ns.ngram, num_perm=perm, bands=bands, rows=perm // bands,
            threshold=defaults.threshold if ns.near_dup_jaccard is None else ns.near_dup_jaccard)
    except ValueError as e:
        raise UsageError(f"near-dup settings: {e}") from e
    if not 0.0 <= ns.min_chinese_ratio <= 1.0:
        raise UsageError("--min-chinese-ratio must be between 0 and 1")
    try:
        check_val_size(ns.val_size)
    except ValueError as e:
        raise UsageError(f"--val-size: {e}") from e
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
        pii_mode=pii_mode, pii_kinds=pii_kinds, ratio_roles=ratio_roles)
    out = Path(ns.out)
    stats = Path(ns.stats) if ns.stats else out.with_name((out.name[:-6] if out.name.endswith(".jsonl")
                                                           else out.name) + ".stats.json")
    args = PrepConfig(
        sources=ordered, out=out, stats=stats, total=ns.total, hit_ratio=ns.hit_ratio, seed=ns.seed,
        policy="upsample" if ns.upsample else ("shrink" if ns.shrink else "keep-total"), max_repeat=ns.max_repeat,
        near_dup_threshold=threshold, near_method=method, minhash=minhash,
        dedup_report=Path(ns.dedup_report) if ns.dedup_report else None,
        dedup=not ns.no_dedup, chatml_text=ns.chatml_text,
        workers=ns.workers or (os.cpu_count() or 1), block_size=int(ns.block_mb * (1 << 20)), filters=filters,
        val_size=ns.val_size, domain_out=Path(ns.domain_out) if ns.domain_out else None,
        val_out=(Path(ns.val_out) if ns.val_out else out.with_name(
            (out.name[:-6] if out.name.endswith(".jsonl") else out.name) + ".val.jsonl")) if ns.val_size else None,
        log_level=ns.log, argv=list(sys.argv[1:] if argv is None else argv))
    return args


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
    sys.exit(run_script(main, resumable=False))
