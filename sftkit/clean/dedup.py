"""Deduplication of pooled records across sources, earlier records (the higher-priority source) winning.

- `ExactDedup`: as blocks arrive, a record whose dedup-key hash an earlier record has is not kept; each removal is
  counted within its source or across sources, and remembered (removed, first) for the report when asked.
- `near_dedup`: over the whole pool at once, MinHash LSH with every candidate confirmed by exact Jaccard
  (`sftkit.clean.neardup`) or the seed's SimHash within k bits (`sftkit.clean.simhash_index`).
- `within_across`: near removals per source, within it or across sources.
- `write_dedup_report`: one JSON line per removed record, naming the record it duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sftkit.clean import neardup
from sftkit.clean.dedup_keys import key_text, make_keys
from sftkit.clean.pool import RecordPool
from sftkit.clean.simhash_index import NearDupResult, near_duplicates
from sftkit.io.jsonl import atomic_write


class ExactDedup:
    """The first record of every exact-dedup hash, by pool sequence number and source number."""

    def __init__(self, report: bool = False) -> None:
        self.seen: dict[int, int] = {}  # hash -> (seq << 10) | source number of the first record with it
        self.report = report
        self.drops: list[tuple[int, int]] = []  # (seq of the removed record, seq of the one it duplicates)

    def mark(self, hashes: np.ndarray, seq0: int, src_no: int, keep: np.ndarray) -> tuple[int, int]:
        """Clear `keep` for the records of one block (pool seq `seq0` on, source `src_no`) that an earlier
        record duplicates; returns how many were removed (within this source, across sources)."""
        seen, report = self.seen, self.report
        within = across = 0
        for k, h in enumerate(hashes.tolist()):
            first = seen.get(h)
            if first is None:
                seen[h] = ((seq0 + k) << 10) | src_no
            else:
                keep[k] = False
                if first & 1023 == src_no:
                    within += 1
                else:
                    across += 1
                if report:
                    self.drops.append((seq0 + k, first >> 10))
        return within, across


def near_dedup(method: str, threshold: int, params: neardup.MinHashParams, pool: RecordPool,
               arrays: dict[str, np.ndarray]) -> tuple[NearDupResult, int]:
    """Near-duplicates of the pool in priority order: (result, candidate pairs compared). `threshold` is the
    SimHash radius in bits (simhash); the minhash method confirms at `params.threshold` instead."""
    if method == "simhash":
        result = near_duplicates(arrays["near"], threshold)
        return result, result.pairs_checked
    offsets = arrays["offset"]

    def features(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The candidates' n-gram sets for the exact Jaccard, from the records as they were pooled (normalised).
        texts = [key_text(pool.record_at(int(offsets[i]))["messages"]) for i in ids.tolist()]
        return neardup.ngram_features(make_keys(texts), params.ngram)

    return neardup.decide(arrays["near"], features, params.threshold)


def within_across(dropped: np.ndarray, cause: np.ndarray, source: np.ndarray, n_sources: int
                  ) -> list[tuple[int, int]]:
    """Per source number: (records dropped as a duplicate of the same source, of another source)."""
    cause_src = np.where(dropped, source[np.maximum(cause, 0)], -1)
    out = []
    for i in range(n_sources):
        mine = dropped & (source == i)
        out.append((int((mine & (cause_src == i)).sum()), int((mine & (cause_src != i)).sum())))
    return out


def write_dedup_report(path: Path, pool: RecordPool, arrays: dict[str, np.ndarray],
                       exact_drops: list[tuple[int, int]], near: NearDupResult | None) -> int:
    """One JSON line per record removed as a duplicate: its id and source, the id and source of the record it
    duplicates, exact or near, and the Jaccard similarity (minhash) or Hamming distance (simhash)."""
    every = np.concatenate(pool.every_offset) if pool.every_offset else np.zeros(0, np.int64)

    def who(offset: int) -> tuple[str, str]:
        rec = pool.record_at(offset)
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
