"""Dedup keys and their hashes: what exact dedup, MinHash (sftkit/clean/neardup.py) and SimHash
(sftkit/clean/simhash_index.py) all read.

Dedup key: the user and assistant turns joined by newlines (`key_text`), lower-cased, keeping only letters and
digits (\\p{L} and \\p{N}: Han characters, Latin letters, digits), full-width letters and digits read as ASCII
(`make_keys`). Two records whose keys are equal are exact duplicates: they differ at most in punctuation, spacing,
width and letter case; `exact_hashes` gives each key a 64-bit hash for that test. `mix64` (splitmix64's finaliser)
is the bit mixer every hash of the three methods is built from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sftkit.clean.filters import CLS_OTHER, char_classes

U64 = np.uint64
_M1, _M2, _GOLD = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB), U64(0x9E3779B97F4A7C15)
_SALT_EXACT = U64(0x165667B19E3779F9)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> U64(30))
    x = x * _M1
    x = x ^ (x >> U64(27))
    x = x * _M2
    return x ^ (x >> U64(31))


def key_text(messages: Sequence[dict[str, str]]) -> str:
    """The text a record is deduplicated on: its user and assistant turns (the system prompt is left out)."""
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


@dataclass
class Keys:
    """Dedup keys of a batch: code points of all keys back to back, and each key's length."""

    cps: np.ndarray  # uint64
    lens: np.ndarray  # int64

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lens)[:-1])).astype(np.int64)


_WIDE = re.compile("[\uff10-\uff5a]")


def make_keys(texts: Sequence[str]) -> Keys:
    """The dedup keys of a batch of key texts (see the module docstring)."""
    n = len(texts)
    if n == 0:
        return Keys(np.zeros(0, U64), np.zeros(0, np.int64))
    joined = "".join(texts)
    lowered = joined.lower()
    if len(lowered) == len(joined):
        lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    else:  # a few characters lower-case to two (e.g. U+0130): measure each text again
        parts = [t.lower() for t in texts]
        lowered = "".join(parts)
        lens = np.fromiter((len(t) for t in parts), dtype=np.int64, count=n)
    cps = np.frombuffer(lowered.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if _WIDE.search(lowered):  # full-width letters and digits count as their ASCII forms (ａ1 == a１)
        wide = (cps >= 0xFF10) & (cps <= 0xFF5A)
        cps = np.where(wide, cps - 0xFEE0, cps)
    keep = char_classes()[cps] != CLS_OTHER
    kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    ends = np.cumsum(lens)
    return Keys(cps[keep].astype(U64), kept_before[ends] - kept_before[ends - lens])


def exact_hashes(keys: Keys) -> np.ndarray:
    """64-bit hash of every key: sum of mix(code point, position) over the key, mixed with its length."""
    n = len(keys.lens)
    if n == 0:
        return np.zeros(0, U64)
    starts = keys.starts
    pos = np.arange(len(keys.cps), dtype=np.int64) - np.repeat(starts, keys.lens)
    h = mix64((keys.cps << U64(24)) ^ (pos.astype(U64) * _GOLD) ^ _SALT_EXACT)
    cs = np.concatenate(([U64(0)], np.cumsum(h, dtype=U64)))
    ends = starts + keys.lens
    sums = cs[ends] - cs[starts]  # wraps modulo 2**64, as wanted
    return mix64(sums ^ mix64(keys.lens.astype(U64) + _SALT_EXACT))
