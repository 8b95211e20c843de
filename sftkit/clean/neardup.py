"""Near-duplicates, one implementation for prep and judge: MinHash LSH over character n-grams, each candidate pair
confirmed by the exact Jaccard similarity of the two n-gram sets.

- Keys: those of exact dedup (`sftkit.clean.dedup_keys.make_keys`): lower case, letters and digits only, full-width
  forms folded, so punctuation, spacing and width never matter.
- Features: the character n-grams of a key (n = 3 by default), hashed to 64 bits. A key shorter than n is one
  feature (itself); an empty key has none and is never anyone's near-duplicate (two empty keys are an exact
  duplicate, which exact dedup handles): short texts never share one "empty" signature.
- Signature: one-permutation MinHash (Li, Owen and Zhang, NIPS 2012) with optimal densification (Shrivastava,
  ICML 2017). Each feature hash picks one of `num_perm` bins and a 32-bit value; a bin keeps its smallest value;
  an empty bin takes the value of the first non-empty bin along a probe sequence fixed per bin (the same for every
  record), so two signatures agree in a bin with probability equal to the Jaccard similarity, as with `num_perm`
  independent permutations, for one hash per feature instead of `num_perm`. Computed for a whole batch in numpy.
- Candidates: LSH banding: `bands` groups of `rows` bins, each hashed to 64 bits; records sharing a band hash are
  candidates. Found for all records at once by sorting each band column. A pair of sets with Jaccard s becomes a
  candidate with probability 1 - (1 - s^rows)^bands (`candidate_probability`).
- Confirmation: the exact Jaccard similarity of the two sets of n-gram hashes (64-bit hashes: a collision between
  two different n-grams has probability about 2^-64 per pair), kept when >= `threshold`. So nothing is removed on
  the strength of an estimate: precision is that of the threshold, and LSH only decides what gets compared.
- Decision: records are listed in priority order; a record is dropped when it is a confirmed near-duplicate of
  an earlier record that was kept (of several, the most similar). That is what inserting records one by one into
  an index of the kept ones gives (tested against a brute-force reference loop).

Why these parameters (the defaults of prep and judge alike: 3-grams, 128 bins, 32 bands of 4, Jaccard >= 0.7) and
not SimHash: see bench/bench_prep.py (planted near-duplicates by edit kind, both methods, the same records) and
README.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sftkit.clean.dedup_keys import Keys, mix64
from sftkit.clean.simhash_index import NearDupResult

U64 = np.uint64
U32_MAX = np.uint32(0xFFFFFFFF)
_GOLD = U64(0x9E3779B97F4A7C15)
_SALT_GRAM, _SALT_SHORT, _SALT_PERM, _SALT_BAND = (U64(0xD6E8FEB86659FD93), U64(0xA0761D6478BD642F),
                                                   U64(0xE7037ED1A0B428DB), U64(0x8EBC6AF09C88C6E3))


@dataclass(frozen=True)
class MinHashParams:
    ngram: int = 3
    num_perm: int = 128
    bands: int = 32
    rows: int = 4
    threshold: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError("the n-gram size must be at least 1")
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) must be at most num_perm ({self.num_perm})")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("the Jaccard threshold must be in (0, 1]")


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Chance that two sets of Jaccard similarity s share at least one band."""
    return 1.0 - (1.0 - s ** rows) ** bands


# ---- features -------------------------------------------------------------------------------------------------


def ngram_features(keys: Keys, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every n-gram of every key, back to back; number of features of each key).

    A key of 1..n-1 characters has one feature, the hash of its whole text (salted by its length, so it never
    equals an n-gram hash of the same characters); an empty key has none."""
    lens = keys.lens
    cps = keys.cps
    total = len(cps)
    nkeys = len(lens)
    if total == 0:
        return np.zeros(0, U64), np.zeros(nkeys, np.int64)
    ends = np.cumsum(lens)
    starts = ends - lens
    padded = np.concatenate([cps, np.zeros(max(n - 1, 0), U64)])
    short = np.zeros(nkeys, U64)
    if n <= 3:  # code points have 21 bits: up to three pack into one integer exactly, then one mix
        g = cps.copy()
        for k in range(1, n + 1):
            if k < n:
                sel = lens == k
                if sel.any():  # keys of exactly k characters: their whole text is the k-gram at their start
                    short[sel] = mix64(g[starts[sel]] ^ _SALT_SHORT ^ U64(k))
                g = (g << U64(21)) | padded[k:k + total]
        g = mix64(g ^ _SALT_GRAM)
    else:
        g = mix64(cps ^ _SALT_GRAM)  # hash of the 1-gram starting at each position
        for k in range(1, n):
            sel = lens == k
            if sel.any():
                short[sel] = mix64(g[starts[sel]] ^ _SALT_SHORT ^ U64(k))
            g = mix64(g + padded[k:k + total] * _GOLD)  # now the (k+1)-gram starting at each position
    take = np.ones(total, dtype=bool)
    for k in range(1, n):  # the last n-1 positions of a key start no n-gram (all of a shorter key's positions)
        take[ends[lens >= k] - k] = False
    is_short = (lens > 0) & (lens < n)
    if is_short.any():
        g[starts[is_short]] = short[is_short]
        take[starts[is_short]] = True
    nfeat = np.where(lens >= n, lens - n + 1, np.where(lens > 0, 1, 0)).astype(np.int64)
    return g[take], nfeat


def word_features(words: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Features from token lists (for example jieba words): 64-bit BLAKE2b hash of each token."""
    h = [int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
         for ws in words for w in ws]
    return np.array(h, dtype=U64), np.array([len(ws) for ws in words], dtype=np.int64)


# ---- signatures ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _probe_table(num_perm: int, seed: int) -> np.ndarray:
    """Row j: the order in which an empty bin j looks for a non-empty bin (a permutation of the other bins)."""
    rng = np.random.default_rng([seed, num_perm, 0x5EED])
    table = np.empty((num_perm, max(num_perm - 1, 1)), dtype=np.int64)
    for j in range(num_perm):
        others = np.array([b for b in range(num_perm) if b != j] or [j], dtype=np.int64)
        table[j] = rng.permutation(others)
    return table


def minhash(h: np.ndarray, nfeat: np.ndarray, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(records, num_perm) uint32 one-permutation MinHash signatures with optimal densification. Records without
    features get all bins 0xFFFFFFFF (and must be kept out of candidate search: see band_hashes)."""
    n = len(nfeat)
    sig = np.full(n * num_perm, U32_MAX, dtype=np.uint32)
    if n == 0 or len(h) == 0:
        return sig.reshape(n, num_perm)
    # The feature hashes are uniform already; another seed remixes them (a different permutation).
    x = h if seed == 0 else mix64(h ^ _SALT_PERM ^ U64(seed))
    bins = (((x >> U64(32)) * U64(num_perm)) >> U64(32)).astype(np.int64)  # high half picks the bin
    vals = (x & U64(0xFFFFFFFF)).astype(np.uint32)  # low half is the value
    flat = np.repeat(np.arange(n, dtype=np.int64) * num_perm, nfeat) + bins
    np.minimum.at(sig, flat, vals)
    filled = np.zeros(n * num_perm, dtype=bool)
    filled[flat] = True
    sig = sig.reshape(n, num_perm)
    filled = filled.reshape(n, num_perm)
    rec, bin_ = np.nonzero(~filled & (nfeat > 0)[:, None])
    probe = _probe_table(num_perm, seed)
    step = 0
    while rec.size and step < probe.shape[1]:  # a record with a feature has a non-empty bin: ends in < num_perm
        src = probe[bin_, step]
        ok = filled[rec, src]
        sig[rec[ok], bin_[ok]] = sig[rec[ok], src[ok]]  # borrows only from bins filled by features
        rec, bin_ = rec[~ok], bin_[~ok]
        step += 1
    return sig


def band_hashes(sig: np.ndarray, nfeat: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(records, bands) uint64: each band's `rows` bins hashed together. 0 means "no band" (records without
    features): such records never become candidates."""
    n = sig.shape[0]
    if n == 0:
        return np.zeros((0, bands), U64)
    s = sig[:, :bands * rows].reshape(n, bands, rows).astype(U64)
    acc = np.broadcast_to(_SALT_BAND ^ np.arange(bands, dtype=U64), (n, bands)).copy()
    for c in range(rows):
        acc = mix64(acc ^ (s[:, :, c] << U64(8)) ^ U64(c + 1))
    acc[acc == 0] = 1  # 0 is reserved for "no band"
    acc[nfeat == 0] = 0
    return acc


def signatures(keys: Keys, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """(band hashes, features per key) of a batch of keys: what a prep worker computes for each block."""
    h, nfeat = ngram_features(keys, params.ngram)
    sig = minhash(h, nfeat, params.num_perm, params.seed)
    return band_hashes(sig, nfeat, params.bands, params.rows), nfeat


# ---- candidates, confirmation, decision -------------------------------------------------------------------------


def lsh_pairs(bands: np.ndarray, max_bucket: int = 1000) -> np.ndarray:
    """Pairs (i, j), i < j, sharing at least one band hash (0 excepted), as an (E, 2) int64 array sorted by (j, i).

    Each band column is sorted once with the record index packed into the low bits of its hash (np.sort of one
    uint64 array is several times faster than an argsort): equal hashes end up side by side, in index order. The
    bits the index takes leave the hash 64 - log2(n) bits, so two different hashes agree now and then (about
    n / 2^(64 - log2 n) times per band): such pairs are mere extra candidates, which the Jaccard confirmation
    throws out. In a bucket of more than `max_bucket` records, each record is paired with the `max_bucket` before
    it only (a guard against pathological inputs; buckets of real near-duplicate groups are far smaller)."""
    n = bands.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    low = U64((1 << max(1, (n - 1).bit_length())) - 1)
    index = np.arange(n, dtype=U64)
    found: list[np.ndarray] = []
    for col in range(bands.shape[1]):
        packed = np.sort((bands[:, col] & ~low) | index)
        key = packed & ~low
        ids = (packed & low).astype(np.int64)
        active = np.flatnonzero((key[:-1] == key[1:]) & (key[1:] != 0))
        d = 1
        while active.size and d <= max_bucket:
            found.append(ids[active] * n + ids[active + d])
            d += 1
            active = active[active + d < n]
            active = active[key[active] == key[active + d]]
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    pairs = np.stack([codes // n, codes % n], axis=1)
    return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]


def jaccard_of_pairs(pairs: np.ndarray, features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                     ) -> np.ndarray:
    """Exact Jaccard similarity of the feature sets of each pair. `features(ids)` returns the feature hashes of
    the records `ids` (sorted, unique) back to back and their counts, as ngram_features does."""
    if not len(pairs):
        return np.zeros(0)
    ids = np.unique(pairs)
    h, nfeat = features(ids)
    offsets = np.concatenate(([0], np.cumsum(nfeat)))
    # Sorted arrays of distinct hashes, not Python sets: a set of 64-bit ints costs ~60 bytes per element, which
    # for the tens of thousands of records in candidate pairs of a million-record run is hundreds of megabytes.
    sets = {int(r): np.unique(h[offsets[k]:offsets[k + 1]]) for k, r in enumerate(ids.tolist())}
    out = np.empty(len(pairs))
    for p, (i, j) in enumerate(pairs.tolist()):
        a, b = sets[i], sets[j]
        if len(a) < len(b):
            a, b = b, a
        inter = int(np.count_nonzero(a[np.minimum(np.searchsorted(a, b), len(a) - 1)] == b)) if len(b) else 0
        union = len(a) + len(b) - inter
        out[p] = inter / union if union else 0.0  # two empty sets are no evidence of anything
    return out


def greedy_keep(n: int, pairs: np.ndarray, sims: np.ndarray) -> NearDupResult:
    """Walk records in index order; drop one that is a confirmed near-duplicate of an earlier kept record (the
    most similar such record is its cause; ties go to the earlier). `pairs` sorted by (j, i), all confirmed."""
    dropped = np.zeros(n, dtype=bool)
    cause = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n)
    for (i, j), s in zip(pairs.tolist(), sims.tolist(), strict=True):
        if dropped[i] or (cause[j] >= 0 and similarity[j] >= s):
            continue
        dropped[j] = True  # i < j, and every pair of j comes after all pairs of i, so i's fate is settled
        cause[j] = i
        similarity[j] = s
    return NearDupResult(dropped, cause, len(pairs), similarity)


def decide(bands: np.ndarray, features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
           threshold: float, max_bucket: int = 1000) -> tuple[NearDupResult, int]:
    """Candidates from the band hashes, confirmed by exact Jaccard >= threshold, greedy decision.
    Returns the result and the number of candidate pairs compared."""
    cand = lsh_pairs(bands, max_bucket)
    sims = jaccard_of_pairs(cand, features)
    ok = sims >= threshold
    return greedy_keep(bands.shape[0], cand[ok], sims[ok]), len(cand)


def near_duplicates(keys: Keys, params: MinHashParams = MinHashParams()) -> NearDupResult:
    """Near-duplicates among keys listed in priority order (earlier wins), all in memory."""
    h, nfeat = ngram_features(keys, params.ngram)
    return near_duplicates_of_features(h, nfeat, params)[0]


def near_duplicates_of_features(h: np.ndarray, nfeat: np.ndarray, params: MinHashParams
                                ) -> tuple[NearDupResult, int]:
    """Near-duplicates of records given by their features (back to back): (result, candidate pairs compared)."""
    sig = minhash(h, nfeat, params.num_perm, params.seed)
    bands = band_hashes(sig, nfeat, params.bands, params.rows)
    return decide(bands, feature_lookup(h, nfeat), params.threshold)


def feature_lookup(h: np.ndarray, nfeat: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`features(ids)` for jaccard_of_pairs / decide, over features held in memory (back to back)."""
    offsets = np.concatenate(([0], np.cumsum(nfeat)))

    def features(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [h[offsets[i]:offsets[i + 1]] for i in ids.tolist()]
        return (np.concatenate(parts) if parts else np.zeros(0, U64)), nfeat[ids]

    return features
