"""Parse, filter and hash blocks of input in worker processes (or in this one), in input order.

One job: a `Block` (a few MiB of one source file) in, a `BlockResult` out: the records that passed the filter
chain, serialized; per record the exact-dedup hash and the near-dedup signature; the bad lines; each filter's
counters; and the CPU seconds of every step (`seconds`, keyed "parse", "to_record", "filter:<name>",
"content_id", "exact_hash", "near_signature", "serialize"). `BlockWorkers.map` runs `process_block` over a
stream of blocks with a bounded number in flight, so a huge file is never queued whole in memory.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from sftkit.clean import neardup
from sftkit.clean import pii as pii_mod
from sftkit.clean.dedup_keys import exact_hashes, key_text, make_keys
from sftkit.clean.filters import FilterChain, FilterConfig, warm_tables
from sftkit.clean.simhash_index import simhashes
from sftkit.io.blocks import Block, element_lines, parse_block
from sftkit.io.convert import fast_record
from sftkit.io.records import RecordError, content_id


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


def init_worker(config: FilterConfig, dedup: bool, near: str | None, minhash: neardup.MinHashParams) -> None:
    """Build this process's chain once (every block of the run goes through it)."""
    _WORKER.update(chain=config.chain(), dedup=dedup, near=near, minhash=minhash)


def process_block(task: tuple[str, Block]) -> BlockResult:
    """Parse, convert, filter, id, hash and serialize one block of source `task[0]` (after `init_worker`)."""
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


class BlockWorkers:
    """`workers` forked processes, each with the chain built (1: everything in this process); `close()` ends them."""

    def __init__(self, config: FilterConfig, dedup: bool, near: str | None, minhash: neardup.MinHashParams,
                 workers: int) -> None:
        # Build the lookup tables before forking, so every worker shares them instead of building its own.
        warm_tables(config.form)
        if config.pii_mode:
            pii_mod.warm()
        self.workers = max(1, workers)
        self.pool: Any = None
        if self.workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(self.workers, initializer=init_worker,
                                                    initargs=(config, dedup, near, minhash))
        else:
            init_worker(config, dedup, near, minhash)

    def map(self, source: str, blocks: Iterable[Block]) -> Iterator[BlockResult]:
        """The results of `blocks` of `source`, in order."""
        return ordered_map(process_block, ((source, b) for b in blocks), self.pool, 2 * self.workers + 1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
