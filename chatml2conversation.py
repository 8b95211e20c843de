#!/usr/bin/env python3
"""Convert SFT records (any SPEC form: canonical, seed ChatML text, <|im_start|> text, Alpaca, ShareGPT,
Firefly) to a training format: Firefly conversations (default), ShareGPT, Alpaca, ChatML text or canonical
messages.

    python chatml2conversation.py --in data/processed/mixed.jsonl --out data/processed/train_firefly.jsonl \
        --default-category Brainstorming --start-id 1

Kept: the system prompt (Firefly's top-level `system`), every turn of multi-turn conversations, the category
from meta when present (else --default-category), the source as `dataset` (Firefly) / `source` (others), and
the record's id and full meta, so converting back gives the same record. A record without an id gets a stable
one (a hash of its content); one without a source gets --source. What a format cannot express (the system prompt
with --no-system, a turn containing the ChatML end marker) is counted and reported, never dropped silently.
Beside a ShareGPT or Alpaca export, dataset_info.json gets an entry LLaMA-Factory reads as is (other entries
already in that file are kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from sftkit.io.blocks import InputError, detect_kind, element_lines, iter_blocks, parse_block
from sftkit.io.cli import ScriptParser, run_script
from sftkit.io.convert import CHATML_STYLES, FORMATS, LLAMAFACTORY_COLUMNS, dataset_info_entry, from_row, to_row
from sftkit.io.jsonl import BadLines, atomic_write, write_json
from sftkit.io.records import RecordError

log = logging.getLogger("convert")


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      resumable=False)
    ap.add_argument("--in", dest="inp", required=True,
                    help="input records: JSONL or one JSON array, .gz ok, any record form of SPEC")
    ap.add_argument("--out", required=True, help="output JSONL in the chosen format (written atomically)")
    ap.add_argument("--format", choices=FORMATS, default="firefly",
                    help="firefly: {conversation_id, category, system, conversation:[{human, assistant}], dataset}; "
                         "sharegpt: {id, conversations:[{from, value}]}; alpaca: {instruction, input, output, "
                         "system, history}; chatml: {text} (see --chatml-style); messages: canonical records "
                         "(default firefly)")
    ap.add_argument("--default-category", default="Brainstorming",
                    help="Firefly category for records whose meta has none (default Brainstorming)")
    ap.add_argument("--start-id", type=int, default=1, help="first Firefly conversation_id (default 1)")
    ap.add_argument("--source", help="source name for records that carry none (Firefly `dataset`, id prefix; "
                                     "default: the input file name without its extensions)")
    ap.add_argument("--dataset-name", help="with --format sharegpt or alpaca: the entry written to dataset_info.json "
                                           "beside OUT (default: OUT's file name without .jsonl)")
    ap.add_argument("--no-system", action="store_true",
                    help="leave system prompts out (for trainers without one); each one left out is counted")
    ap.add_argument("--chatml-style", choices=CHATML_STYLES, default="seed",
                    help="with --format chatml: 'seed' writes <|beginofutterance|>系统/用户/智能助手 turns as the "
                         "seed does, 'im' writes <|im_start|>role ... <|im_end|> (default seed)")
    ap.add_argument("--stats", help="stats JSON path (default: OUT with .stats.json instead of .jsonl)")
    ap.add_argument("--log", default="INFO", help="log level (default INFO)")
    return ap


def write_dataset_info(out: Path, fmt: str, name: str) -> Path:
    """Add (or replace) entry `name` for `out` in dataset_info.json beside it, atomically."""
    path = out.with_name("dataset_info.json")
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            log.warning("%s is not valid JSON; it is replaced", path)
        if not isinstance(info, dict):
            info = {}
    info[name] = dataset_info_entry(fmt, out.name)
    with atomic_write(path, "wb") as f:
        f.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(ns.log).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    inp, out = ns.inp, Path(ns.out)
    source = ns.source if ns.source is not None else Path(inp).name.split(".")[0]
    stats_path = Path(ns.stats) if ns.stats else out.with_name(
        (out.name[:-6] if out.name.endswith(".jsonl") else out.name) + ".stats.json")
    try:
        detect_kind(inp)
    except (InputError, OSError) as e:
        print(f"chatml2conversation.py: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bad = BadLines(log)
    lost: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    read = written = 0
    conv_id = ns.start_id
    categories: Counter[str] = Counter()
    with atomic_write(out, "wb") as f:
        bar = tqdm(unit="rec", desc="convert", disable=None, leave=False)
        base = 0  # array elements in earlier blocks
        for block in iter_blocks(inp):
            parsed = parse_block(block)
            for lineno, ordinal, reason in parsed.bad:
                bad.add(inp, lineno, (f"array element {base + ordinal}: " if ordinal is not None else "") + reason)
            read += len(parsed.items) + len(parsed.bad)
            rows: list[bytes] = []
            for ordinal, obj in parsed.items:
                try:
                    rec = from_row(obj, source=source)
                except (RecordError, TypeError, AttributeError) as e:
                    if block.kind == "jsonl":
                        bad.add(inp, ordinal, f"invalid record: {e}")
                    else:
                        where = element_lines(block).get(ordinal, block.first_line)
                        bad.add(inp, where, f"array element {base + ordinal}: invalid record: {e}")
                    continue
                where = ordinal if block.kind == "jsonl" else base + ordinal
                row, missing = to_row(rec, ns.format, conversation_id=conv_id,
                                      default_category=ns.default_category, no_system=ns.no_system,
                                      chatml_style=ns.chatml_style)
                for item in missing:
                    lost[item] += 1
                if row is None:
                    skipped["; ".join(missing)] += 1
                    log.warning("%s: %s %d: cannot be written as %s: %s", inp, "line" if block.kind == "jsonl"
                                else "array element", where, ns.format, "; ".join(missing))
                    continue
                if ns.format == "firefly":
                    categories[row["category"]] += 1
                rows.append(orjson.dumps(row))
                conv_id += 1
            base += parsed.elements
            if rows:
                f.write(b"\n".join(rows) + b"\n")
            written += len(rows)
            bar.update(len(parsed.items))
        bar.close()
    elapsed = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "input": inp, "output": str(out), "format": ns.format, "read": read, "written": written,
        "bad_lines": bad.as_dict(), "not_expressible": dict(lost), "skipped": dict(skipped),
        "categories": dict(categories.most_common(50)), "elapsed_s": round(elapsed, 3),
        "records_per_s": round(read / elapsed, 1) if elapsed > 0 else None,
    }
    if ns.format == "firefly":
        stats["conversation_ids"] = [ns.start_id, conv_id - 1] if written else []
    if ns.format in LLAMAFACTORY_COLUMNS and written:
        name = ns.dataset_name or (out.name[:-6] if out.name.endswith(".jsonl") else out.stem)
        stats["dataset_info"] = {"path": str(write_dataset_info(out, ns.format, name)), "name": name}
    write_json(stats_path, stats)
    print(f"convert: {read} read, {written} written as {ns.format} to {out}; {bad.count} bad lines; "
          f"{sum(skipped.values())} could not be written")
    for item, n in lost.most_common():
        print(f"  not expressible in {ns.format}: {item}: {n}")
    if "dataset_info" in stats:
        print(f"LLaMA-Factory: entry {stats['dataset_info']['name']!r} in {stats['dataset_info']['path']}")
    print(f"stats: {stats_path}")
    if read and not written:
        print("chatml2conversation.py: error: no record could be converted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
