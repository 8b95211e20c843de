"""Plain references for the dedup tests: SimHash of raw texts in one call, and near-duplicates by comparing every
record with every kept one (what sftkit.clean.simhash_index.near_duplicates must equal)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sftkit.clean.dedup_keys import make_keys
from sftkit.clean.simhash_index import NearDupResult, simhashes


def simhash_texts(texts: Sequence[str]) -> np.ndarray:
    """SimHash of raw texts (made into keys first)."""
    return simhashes(make_keys(texts))


def brute_force_near_duplicates(sigs: Iterable[int], k: int) -> NearDupResult:
    """The same result by comparing every record with every kept one (reference for tests)."""
    sigs = [int(s) for s in sigs]
    n = len(sigs)
    dropped = np.zeros(n, dtype=bool)
    cause = np.full(n, -1, dtype=np.int64)
    kept: list[int] = []
    pairs = 0
    for j, s in enumerate(sigs):
        for i in range(j):
            if (s ^ sigs[i]).bit_count() <= k:
                pairs += 1
        for i in kept:
            if (s ^ sigs[i]).bit_count() <= k:
                dropped[j] = True
                cause[j] = i
                break
        if not dropped[j]:
            kept.append(j)
    return NearDupResult(dropped, cause, pairs)
