"""Benchmark prep_sft_firefly_hit.py: wall time, peak memory, records/s per stage, SimHash precision/recall.

    python bench/bench_prep.py --n 1000000 [--original /tmp/orig/prep_sft_firefly_hit.py]

1. Generates (once, cached in --work-dir) N firefly-like Alpaca records as one JSON array with planted exact and
   near-duplicates, PII, decoys and English rows (bench/make_firefly_like.py), plus a 2,000-record hit file in
   the seed's ChatML text form.
2. Runs this project's prep with the seed's command ("seed": --total 300000 --hit-ratio 0.4 --max-firefly
   250000 ...) and the same without --max-firefly ("full": every record read), measuring wall time and the peak
   RSS of the whole process tree (psutil, sampled every 50 ms), with the load average before and after.
3. With --original PATH (a local copy of ArrebolBlack/HIT_NLP_lab2-SFT data/SFT/prep_sft_firefly_hit.py; not part
   of this repository), runs it on the same input with the same flags, right after, for the speed-up.
4. SimHash quality on the planted pairs of the first --pr-sample records: signatures exactly as prep computes
   them; recall = planted near pairs (different dedup keys) found within the threshold; precision = found pairs
   (different keys) that belong to the same planted group.

Results: a table on stdout and JSON in --out (default bench/results/prep_<N>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftkit.blocks import iter_blocks, parse_block  # noqa: E402
from sftkit.convert import fast_record  # noqa: E402
from sftkit.filters import chinese_ratios, normalize_many  # noqa: E402
from sftkit.simhash_index import candidate_pairs, exact_hashes, key_text, make_keys, simhashes  # noqa: E402

SEED_FLAGS = ["--total", "300000", "--hit-ratio", "0.4", "--max-firefly", "250000", "--min-chinese-ratio", "0.65",
              "--near-dup-threshold", "3", "--drop-pii", "--log", "INFO"]


def tree_rss(proc: Any) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # a child may exit between listing and reading
            pass
    return total


def timed_run(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run cmd; wall seconds, peak RSS of the process tree, load average before and after."""
    import psutil

    load_before = os.getloadavg()
    peak = 0
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                try:
                    peak = max(peak, tree_rss(ps))
                except psutil.NoSuchProcess:
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    return {"cmd": cmd, "rc": rc, "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "log": str(log_path)}


def ensure_inputs(n: int, work: Path, seed: int) -> tuple[Path, Path]:
    gen = ROOT / "bench" / "make_firefly_like.py"
    firefly = work / f"firefly_like_{n}.json"
    if not firefly.exists() or not Path(str(firefly) + ".truth.json").exists():
        subprocess.run([sys.executable, str(gen), "--n", str(n), "--out", str(firefly), "--seed", str(seed)],
                       check=True)
    hit = work / "hit_like_2000.jsonl"
    if not hit.exists():
        subprocess.run([sys.executable, str(gen), "--n", "2000", "--seed-chatml", "--out", str(hit), "--seed",
                        str(seed + 1)], check=True)
    return firefly, hit


def simhash_quality(firefly: Path, sample: int, k: int) -> dict[str, Any]:
    truth = json.loads(Path(str(firefly) + ".truth.json").read_text())
    texts: list[str] = []
    for block in iter_blocks(str(firefly)):
        for _, obj in parse_block(block).items:
            rec = fast_record(obj, "firefly")
            texts.append(key_text(rec["messages"]))
            if len(texts) >= sample:
                break
        if len(texts) >= sample:
            break
    n = len(texts)
    t0 = time.perf_counter()
    normed = normalize_many(texts)
    sigs, exact = [], []
    for i in range(0, n, 4000):
        keys = make_keys(normed[i:i + 4000])
        sigs.append(simhashes(keys))
        exact.append(exact_hashes(keys))
    sig = np.concatenate(sigs)
    key = np.concatenate(exact)
    sig_seconds = time.perf_counter() - t0
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, *_ in truth["near_pairs"] + truth["exact_pairs"]:
        if a < n and b < n:
            parent[find(a)] = find(b)
    found = candidate_pairs(sig, k)
    distinct = key[found[:, 0]] != key[found[:, 1]] if len(found) else np.zeros(0, bool)
    pairs = found[distinct]
    true_found = sum(1 for a, b in pairs.tolist() if find(a) == find(b))
    # What prep's dedup actually sees: rows that pass a 0.65 Chinese ratio (English rows are filtered first).
    chinese = chinese_ratios(normed) >= 0.65
    zh_pairs = [(a, b) for a, b in pairs.tolist() if chinese[a] and chinese[b]]
    zh_true = sum(1 for a, b in zh_pairs if find(a) == find(b))
    by_kind: dict[str, Counter[str]] = {}
    for a, b, kind in truth["near_pairs"]:
        if a >= n or b >= n or key[a] == key[b]:
            continue
        c = by_kind.setdefault(kind, Counter())
        c["planted"] += 1
        c["found"] += int(int(np.bitwise_count(sig[a] ^ sig[b])) <= k)
    planted = sum(c["planted"] for c in by_kind.values())
    hits = sum(c["found"] for c in by_kind.values())
    return {"sample": n, "threshold": k, "planted_near_pairs": planted, "found_planted": hits,
            "recall": round(hits / planted, 4) if planted else None,
            "pairs_flagged_distinct_keys": len(pairs), "flagged_in_planted_groups": true_found,
            "precision": round(true_found / len(pairs), 4) if len(pairs) else None,
            "precision_chinese_rows": round(zh_true / len(zh_pairs), 4) if zh_pairs else None,
            "flagged_chinese_rows": len(zh_pairs),
            "recall_by_kind": {kd: round(c["found"] / c["planted"], 4) for kd, c in by_kind.items()},
            "signature_seconds": round(sig_seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="firefly-like records (default 1000000)")
    ap.add_argument("--work-dir", default="/tmp/bench_prep", help="inputs and outputs (default /tmp/bench_prep)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--scenarios", default="seed,full", help="seed (the seed's command), full (no --max-firefly)")
    ap.add_argument("--workers", type=int, default=0, help="--workers for this project's prep (0 = all cores)")
    ap.add_argument("--original", help="path of a local copy of the original script to compare against")
    ap.add_argument("--original-scenarios", default="seed,full", help="scenarios to run the original on")
    ap.add_argument("--pr-sample", type=int, default=200_000, help="records for SimHash precision/recall")
    ap.add_argument("--out", help="results JSON (default bench/results/prep_<N>.json)")
    args = ap.parse_args(argv)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    firefly, hit = ensure_inputs(args.n, work, args.seed)
    results: dict[str, Any] = {"n": args.n, "cpus": os.cpu_count(), "input": str(firefly),
                               "input_mb": round(firefly.stat().st_size / 2**20, 1), "runs": {}}
    scenarios = [s for s in args.scenarios.split(",") if s]
    for sc in scenarios:
        flags = [f for f in SEED_FLAGS]
        if sc == "full":
            i = flags.index("--max-firefly")
            del flags[i:i + 2]
        out = work / f"ours_{sc}.jsonl"
        cmd = [sys.executable, str(ROOT / "prep_sft_firefly_hit.py"), "--firefly-json", str(firefly), "--hit-jsonl",
               str(hit), "--out", str(out), *flags, "--workers", str(args.workers)]
        run = timed_run(cmd, work / f"ours_{sc}.log")
        stats = json.loads((work / f"ours_{sc}.stats.json").read_text()) if run["rc"] == 0 else {}
        run["stats_timing"] = stats.get("timing")
        run["mix"] = stats.get("mix")
        run["sources"] = {k: {kk: v[kk] for kk in ("read", "passed_filters", "exact_dup_within", "exact_dup_across",
                                                   "near_dup_within", "near_dup_across", "usable")}
                          for k, v in stats.get("sources", {}).items()}
        results["runs"][f"ours_{sc}"] = run
        print(f"ours/{sc}: rc {run['rc']}, {run['wall_s']} s, peak {run['peak_rss_mb']} MB, load "
              f"{run['load_before'][0]} -> {run['load_after'][0]}", flush=True)
        if args.original and sc in args.original_scenarios.split(","):
            oout = work / f"original_{sc}.jsonl"
            for stale in (oout, work / f"original_{sc}_dataset_info.json"):
                stale.unlink(missing_ok=True)  # the original resumes from an existing output
            ocmd = [sys.executable, args.original, "--firefly-json", str(firefly), "--hit-jsonl", str(hit),
                    "--out", str(oout), *flags]
            orun = timed_run(ocmd, work / f"original_{sc}.log")
            info = work / f"original_{sc}_dataset_info.json"
            orun["dataset_info"] = json.loads(info.read_text()) if info.exists() else None
            results["runs"][f"original_{sc}"] = orun
            orun["speedup"] = round(orun["wall_s"] / run["wall_s"], 2) if run["wall_s"] else None
            print(f"original/{sc}: rc {orun['rc']}, {orun['wall_s']} s, peak {orun['peak_rss_mb']} MB -> "
                  f"speed-up {orun['speedup']}x", flush=True)
    if args.pr_sample > 0:
        results["simhash"] = simhash_quality(firefly, min(args.pr_sample, args.n), 3)
        print("simhash:", json.dumps(results["simhash"]), flush=True)
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"prep_{args.n}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
