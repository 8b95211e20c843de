"""Near-dedup against datasketch, the library the field uses: same texts, same shingles, same Jaccard threshold.

    python bench/bench_neardup.py [--n 20000]     # the datasketch row needs `pip install datasketch`

Texts: the user and assistant turns of N firefly-like records (bench/make_firefly_like.py, planted near-duplicates
by edit kind), normalised as prep does. Both sides get the character 3-grams of prep's dedup key (letters and
digits, lower case) and the same LSH shape (128 permutations, 32 bands of 4 rows), and both confirm candidates
with the exact Jaccard >= 0.7 before removing anything, greedily in input order:

- sftkit.clean.neardup: one-permutation MinHash with optimal densification, computed for the whole batch in numpy, the
  candidates found by sorting each band column;
- datasketch: MinHash(num_perm=128).update_batch per text, MinHashLSH(threshold=0.7, num_perm=128,
  params=(32, 4)) queried before each insert (the online loop datasketch's documentation shows).

Printed: seconds for signatures and for the whole dedup, records removed, recall on the planted pairs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftkit.clean import neardup  # noqa: E402
from sftkit.clean.dedup_keys import key_text, make_keys  # noqa: E402
from sftkit.clean.filters import normalize_many  # noqa: E402
from sftkit.io.convert import fast_record  # noqa: E402


def load(n: int, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ff.jsonl"
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_firefly_like.py"), "--n", str(n), "--jsonl",
                        "--out", str(path), "--seed", str(seed), "--english-rate", "0"], check=True,
                       stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        truth = json.loads(Path(str(path) + ".truth.json").read_text())
    texts = normalize_many([key_text(fast_record(r, "f")["messages"]) for r in rows])
    return texts, [(a, b) for a, b, _ in truth["near_pairs"]]


def ours(texts: list[str], params: neardup.MinHashParams) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    h, nfeat = neardup.ngram_features(make_keys(texts), params.ngram)
    sig = neardup.minhash(h, nfeat, params.num_perm, params.seed)
    t1 = time.perf_counter()
    bands = neardup.band_hashes(sig, nfeat, params.bands, params.rows)
    result, _ = neardup.decide(bands, neardup.feature_lookup(h, nfeat), params.threshold)
    return result.dropped, t1 - t0, time.perf_counter() - t0


def with_datasketch(texts: list[str], params: neardup.MinHashParams) -> tuple[np.ndarray, float, float]:
    from datasketch import MinHash, MinHashLSH

    keys = make_keys(texts)
    offsets = np.concatenate(([0], np.cumsum(keys.lens)))
    key_strings = ["".join(map(chr, keys.cps[offsets[i]:offsets[i + 1]].tolist())) for i in range(len(texts))]
    n = params.ngram
    grams = [{k[i:i + n] for i in range(len(k) - n + 1)} if len(k) >= n else ({k} if k else set())
             for k in key_strings]
    t0 = time.perf_counter()
    sigs = []
    for g in grams:
        m = MinHash(num_perm=params.num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in g])
        sigs.append(m)
    t1 = time.perf_counter()
    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=(params.bands, params.rows))
    dropped = np.zeros(len(texts), dtype=bool)
    for i, (g, m) in enumerate(zip(grams, sigs, strict=True)):
        if g and any(len(g & grams[j]) / len(g | grams[j]) >= params.threshold for j in lsh.query(m)):
            dropped[i] = True
            continue
        if g:
            lsh.insert(i, m)
    return dropped, t1 - t0, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="firefly-like records (default 20000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    texts, planted = load(args.n, args.seed)
    params = neardup.MinHashParams()
    rows = [("sftkit.clean.neardup", ours)]
    try:
        import datasketch  # noqa: F401

        rows.append(("datasketch 2.0 (MinHash + MinHashLSH)", with_datasketch))
    except ImportError:
        print("datasketch is not installed: its row is left out")
    print(f"{len(texts)} texts, {len(planted)} planted near-duplicate pairs; 3-grams, 128 perm, 32x4 bands, J >= 0.7")
    print(f"{'implementation':<40}{'signatures s':>14}{'dedup s':>10}{'removed':>9}{'recall':>9}")
    base = None
    for name, fn in rows:
        dropped, sig_s, total_s = fn(texts, params)
        recall = np.mean([dropped[b] for a, b in planted if texts[a] != texts[b]])
        base = base or total_s
        print(f"{name:<40}{sig_s:>14.2f}{total_s:>10.2f}{int(dropped.sum()):>9}{recall:>9.4f}"
              f"  ({total_s / base:.1f}x the time of sftkit.clean.neardup)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
