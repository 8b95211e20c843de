"""Benchmark prep_sft_firefly_hit.py: wall time, peak memory, records/s per stage, near-duplicate precision and
recall by edit kind, against the original script in the same run.

    python bench/bench_prep.py --n 1000000 [--original /tmp/orig/prep_sft_firefly_hit.py]

1. Generates (once, cached in --work-dir) a 2,000-record hit file in the seed's ChatML text form and N
   firefly-like Alpaca records as one JSON array with planted exact and near-duplicates (1-3 characters
   substituted, inserted or deleted, a phrase appended or removed, punctuation changed), near copies of hit
   records (cross-source), PII, decoys and English rows (bench/make_firefly_like.py).
2. Runs this project's prep with the seed's command ("seed": --total 300000 --hit-ratio 0.4 --max-firefly
   250000 ..., less the seed's --near-dup-threshold 3, which prep refuses under its MinHash default) and the
   same without --max-firefly ("full": every record read), measuring
   wall time and the peak RSS of the whole process tree (psutil, sampled every 50 ms), with the load average
   before and after.
3. With --original PATH (a local copy of ArrebolBlack/HIT_NLP_lab2-SFT data/SFT/prep_sft_firefly_hit.py; not part
   of this repository), runs it on the same input with the same flags, right after each of ours, for the speed-up.
4. Dedup quality through prep's CLI, per --quality method: every record read, no --total, --dedup-report. Each
   planted pair whose two records both reached dedup (passed the filters) is found when the copy (the firefly one
   for cross-source pairs: hit wins) was removed as a duplicate of a record of its planted group. Precision: near
   removals whose cause is in the removed record's planted group.
5. The alternative method on the same pooled records: SimHash within radius k (--radii), its index time and
   recall, with and without the same exact-Jaccard confirmation.

Results: tables on stdout and JSON in --out (default bench/results/prep_<N>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from sftkit.clean import neardup  # noqa: E402
from sftkit.clean.dedup_keys import exact_hashes, key_text, make_keys  # noqa: E402
from sftkit.clean.filters import FilterChain, Normalize  # noqa: E402
from sftkit.clean.simhash_index import candidate_pairs, simhashes, table_masks  # noqa: E402
from sftkit.io.blocks import iter_blocks, parse_block  # noqa: E402
from sftkit.io.convert import fast_record  # noqa: E402

SEED_FLAGS = ["--total", "300000", "--hit-ratio", "0.4", "--max-firefly", "250000", "--min-chinese-ratio", "0.65",
              "--near-dup-threshold", "3", "--drop-pii", "--log", "INFO"]


def without(flags: list[str], opt: str) -> list[str]:
    """flags less `opt` and its value (ours refuses the seed's SimHash radius under the MinHash default)."""
    i = flags.index(opt) if opt in flags else len(flags)
    return flags[:i] + flags[i + 2:]


def tree_rss(proc: Any) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # a child may exit between listing and reading
            pass
    return total


def timed_run(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run cmd; wall seconds, CPU seconds of the process tree (user + system: what the run cost whatever else the
    machine was doing), peak RSS of the process tree, load average before and after."""
    import psutil

    load_before = os.getloadavg()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its (waited-for) workers
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {"cmd": cmd, "rc": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(peak / 2**20, 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "log": str(log_path)}


GENERATOR_VERSION = 3  # truth files of older generators lack cross-source pairs, look-alikes and edit kinds


def ensure_inputs(n: int, work: Path, seed: int) -> tuple[Path, Path]:
    gen = ROOT / "bench" / "make_firefly_like.py"
    hit = work / "hit_like_2000.jsonl"
    if not hit.exists():
        subprocess.run([sys.executable, str(gen), "--n", "2000", "--seed-chatml", "--out", str(hit), "--seed",
                        str(seed + 1)], check=True)
    firefly = work / f"firefly_like_{n}.json"
    truth = Path(str(firefly) + ".truth.json")
    stale = not truth.exists() or json.loads(truth.read_text()).get("generator") != GENERATOR_VERSION
    if not firefly.exists() or stale:
        subprocess.run([sys.executable, str(gen), "--n", str(n), "--out", str(firefly), "--seed", str(seed),
                        "--cross-from", str(hit)], check=True)
        data = json.loads(truth.read_text())
        data["generator"] = GENERATOR_VERSION
        truth.write_text(json.dumps(data))
    return firefly, hit


def content_ids(firefly: Path, hit: Path) -> tuple[list[str], list[str]]:
    """The id prep gives every generated row (a content hash: rows carry no id), in file order."""
    ff = [fast_record(obj, "firefly")["id"] for block in iter_blocks(str(firefly))
          for _, obj in parse_block(block).items]
    hs = [fast_record(json.loads(line), "hit")["id"] for line in hit.read_text(encoding="utf-8").splitlines()]
    return ff, hs


class Groups:
    """Union-find over planted copies: generator rows 0..n-1 (firefly) and n.. (hit)."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    @classmethod
    def planted(cls, truth: dict[str, Any], n: int, n_hit: int) -> Groups:
        groups = cls(n + n_hit)
        for a, b, _ in truth["near_pairs"]:
            groups.union(a, b)
        for a, b in truth["exact_pairs"]:
            groups.union(a, b)
        for h, b, _ in truth["cross_pairs"]:
            groups.union(n + h, b)
        return groups

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def dedup_quality(firefly: Path, hit: Path, work: Path, method: str, ids: tuple[list[str], list[str]],
                  workers: int) -> dict[str, Any]:
    """Precision and recall of prep's dedup on the planted pairs, measured through its CLI: every record read, no
    --total (the output is every usable record), --dedup-report naming each removed record and its cause."""
    out = work / f"pr_{method}.jsonl"
    report = work / f"pr_{method}.removed.jsonl"
    flags = [f for f in SEED_FLAGS]
    for opt in ("--total", "--max-firefly", "--hit-ratio"):
        i = flags.index(opt)
        del flags[i:i + 2]
    if method != "simhash":
        flags = without(flags, "--near-dup-threshold")
    cmd = [sys.executable, str(ROOT / "prep_sft_firefly_hit.py"), "--firefly-json", str(firefly), "--hit-jsonl",
           str(hit), "--out", str(out), *flags, "--near-dup-method", method, "--dedup-report", str(report),
           "--workers", str(workers)]
    run = timed_run(cmd, work / f"pr_{method}.log")
    if run["rc"] != 0:
        return {"run": run}
    stats = json.loads((work / f"pr_{method}.stats.json").read_text())
    truth = json.loads(Path(str(firefly) + ".truth.json").read_text())
    ff_ids, hit_ids = ids
    n = len(ff_ids)
    index: dict[str, int] = {}
    for i, rid in enumerate(ff_ids + hit_ids):
        index.setdefault(rid, i)  # identical copies share a content id (and a planted group)
    groups = Groups.planted(truth, n, len(hit_ids))
    planted = [(a, b, kind) for a, b, kind in truth["near_pairs"]]
    planted += [(n + h, b, "cross-source: " + kind) for h, b, kind in truth["cross_pairs"]]
    copy_kind = {b: kind for _, b, kind in planted}
    kept = {json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()}
    removed = {}
    for line in report.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        removed[r["id"]] = r
    pooled = kept | set(removed)  # every record that reached dedup (passed the filters)
    all_ids = ff_ids + hit_ids
    by_kind: dict[str, Counter[str]] = {}
    for a, b, kind in planted:
        if all_ids[a] == all_ids[b] or all_ids[a] not in pooled or all_ids[b] not in pooled:
            continue  # identical content (not a near-duplicate question), or a filter took one of the two
        c = by_kind.setdefault(kind, Counter())
        c["pairs"] += 1
        rb, ra = removed.get(all_ids[b]), removed.get(all_ids[a])
        if rb is not None and groups.find(index[rb["duplicate_of"]]) == groups.find(a):
            c["found"] += 1
            c["found_" + rb["how"]] += 1
        elif ra is not None and groups.find(index[ra["duplicate_of"]]) == groups.find(b):
            c["found"] += 1
            c["original_removed_instead"] += 1
    removals: Counter[str] = Counter()
    false_examples = []
    for r in removed.values():
        if r["how"] != "near":
            continue
        i, j = index[r["id"]], index[r["duplicate_of"]]
        ok = groups.find(i) == groups.find(j)
        removals["near"] += 1
        removals["true"] += ok
        kind = copy_kind.get(i, "not a planted copy")
        removals[f"by_kind:{kind}:{'true' if ok else 'false'}"] += 1
        if not ok and len(false_examples) < 5:
            false_examples.append(r)
    rows = {}
    for kind, c in sorted(by_kind.items()):
        t, f = removals[f"by_kind:{kind}:true"], removals[f"by_kind:{kind}:false"]
        rows[kind] = {"pairs": c["pairs"], "found": c["found"], "recall": round(c["found"] / c["pairs"], 4),
                      "found_by_exact_dedup": c["found_exact"], "original_removed_instead":
                      c["original_removed_instead"], "near_removals": t + f,
                      "precision": round(t / (t + f), 4) if t + f else None}
    total = sum(c["pairs"] for c in by_kind.values())
    found = sum(c["found"] for c in by_kind.values())
    near_pairs = {k: v for k, v in rows.items() if k.split(": ")[-1] != "punctuation"}
    return {
        "method": method, "run": {k: run[k] for k in ("wall_s", "peak_rss_mb", "rc", "load_before", "load_after")},
        "near_dedup_seconds": stats["timing"]["stages"]["near_dedup"]["seconds"],
        "dedup": stats["dedup"], "by_kind": rows, "planted_pairs": total, "found": found,
        "recall": round(found / total, 4) if total else None,
        "recall_near_kinds": round(sum(v["found"] for v in near_pairs.values()) /
                                   max(1, sum(v["pairs"] for v in near_pairs.values())), 4),
        "near_removals": removals["near"], "near_removals_true": removals["true"],
        "precision": round(removals["true"] / removals["near"], 4) if removals["near"] else None,
        "false_removals_not_planted": removals["by_kind:not a planted copy:false"],
        "lookalikes_removed": sum(1 for _, b in truth.get("lookalike_pairs", []) if all_ids[b] in removed
                                  and removed[all_ids[b]]["how"] == "near"),
        "lookalikes_pooled": sum(1 for _, b in truth.get("lookalike_pairs", []) if all_ids[b] in pooled),
        "false_examples": false_examples,
    }


def simhash_radius(firefly: Path, hit: Path, work: Path, ids: tuple[list[str], list[str]],
                   radii: tuple[int, ...] = (3, 4, 6, 8)) -> dict[str, Any]:
    """The other candidate method, measured on the same pooled records: SimHash within a wider radius k, with
    and without the same exact-Jaccard confirmation. Recall on the planted pairs, pairs, and the index time."""
    truth = json.loads(Path(str(firefly) + ".truth.json").read_text())
    pooled = {json.loads(line)["id"] for line in (work / "pr_minhash.jsonl").read_text().splitlines()}
    pooled |= {json.loads(line)["id"] for line in (work / "pr_minhash.removed.jsonl").read_text().splitlines()}
    ff_ids, hit_ids = ids
    all_ids = ff_ids + hit_ids
    groups = Groups.planted(truth, len(ff_ids), len(hit_ids))
    first_row: dict[str, int] = {}
    for i, rid in enumerate(all_ids):
        first_row.setdefault(rid, i)
    texts, where = [], {}
    chain = FilterChain([Normalize()])
    for block in iter_blocks(str(hit)):
        for _, obj in parse_block(block).items:
            rec = fast_record(obj, "hit")
            if rec["id"] in pooled and rec["id"] not in where:
                where[rec["id"]] = len(texts)
                texts.append(key_text(chain.run([rec])[0]["messages"]))
    for block in iter_blocks(str(firefly)):
        for _, obj in parse_block(block).items:
            rec = fast_record(obj, "firefly")
            if rec["id"] in pooled and rec["id"] not in where:
                where[rec["id"]] = len(texts)
                texts.append(key_text(chain.run([rec])[0]["messages"]))
    keys = make_keys(texts)
    sigs = simhashes(keys)
    group_of = np.empty(len(texts), dtype=np.int64)
    for rid, pos in where.items():
        group_of[pos] = groups.find(first_row[rid])
    pairs = [(where[all_ids[a]], where[all_ids[b]], k) for a, b, k in truth["near_pairs"]
             if all_ids[a] in where and all_ids[b] in where and all_ids[a] != all_ids[b]]
    pairs += [(where[hit_ids[h]], where[ff_ids[b]], k) for h, b, k in truth["cross_pairs"]
              if hit_ids[h] in where and ff_ids[b] in where]
    exact = exact_hashes(keys)
    pairs = [(a, b, k) for a, b, k in pairs if exact[a] != exact[b]]  # punctuation-only copies: exact dedup's
    dist = np.array([int(np.bitwise_count(sigs[a] ^ sigs[b])) for a, b, _ in pairs])
    features = neardup.feature_lookup(*neardup.ngram_features(keys, 3))

    out: dict[str, Any] = {"records": len(texts), "planted_pairs": len(pairs), "by_radius": {}}
    kinds = sorted({p[2] for p in pairs})
    for k in radii:
        t = time.perf_counter()
        found = candidate_pairs(sigs, k)
        seconds = time.perf_counter() - t
        found = found[exact[found[:, 0]] != exact[found[:, 1]]] if len(found) else found
        sims = neardup.jaccard_of_pairs(found, features)
        confirmed = found[sims >= 0.7]
        same = group_of[found[:, 0]] == group_of[found[:, 1]] if len(found) else np.zeros(0, bool)
        confirmed_same = group_of[confirmed[:, 0]] == group_of[confirmed[:, 1]] if len(confirmed) else same[:0]
        out["by_radius"][str(k)] = {
            "tables": len(table_masks(k, len(texts))), "index_seconds": round(seconds, 2),
            "recall": round(float((dist <= k).mean()), 4),
            "recall_by_kind": {kind: round(float(np.mean([d <= k for d, p in zip(dist, pairs, strict=True)
                                                          if p[2] == kind])), 4) for kind in kinds},
            "pairs_within_k": len(found), "pairs_same_group": int(same.sum()),
            "precision": round(float(same.mean()), 4) if len(found) else None,
            "pairs_confirmed_jaccard_0.7": len(confirmed), "confirmed_same_group": int(confirmed_same.sum()),
            "precision_confirmed": round(float(confirmed_same.mean()), 4) if len(confirmed) else None}
    return out


def print_quality(q: dict[str, Any]) -> None:
    print(f"\n{q['method']}: near-dup step {q['near_dedup_seconds']} s, whole run {q['run']['wall_s']} s, "
          f"candidates {q['dedup'].get('near_candidate_pairs')}, confirmed {q['dedup'].get('near_pairs_confirmed')}")
    print(f"{'edit kind':<30}{'pairs':>7}{'found':>7}{'recall':>8}{'removals':>10}{'precision':>11}")
    for kind, r in q["by_kind"].items():
        p = "-" if r["precision"] is None else f"{r['precision']:.4f}"
        print(f"{kind:<30}{r['pairs']:>7}{r['found']:>7}{r['recall']:>8.4f}{r['near_removals']:>10}{p:>11}")
    p = "-" if q["precision"] is None else f"{q['precision']:.4f}"
    print(f"{'all':<30}{q['planted_pairs']:>7}{q['found']:>7}{q['recall']:>8.4f}{q['near_removals']:>10}{p:>11}")
    print(f"near removals that were no planted copy at all: {q['false_removals_not_planted']} (of them look-alikes "
          f"sharing half their answer: {q['lookalikes_removed']} of {q['lookalikes_pooled']} pooled)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="firefly-like records (default 1000000)")
    ap.add_argument("--work-dir", default="/tmp/bench_prep", help="inputs and outputs (default /tmp/bench_prep)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--scenarios", default="seed,full", help="seed (the seed's command), full (no --max-firefly)")
    ap.add_argument("--workers", type=int, default=0, help="--workers for this project's prep (0 = all cores)")
    ap.add_argument("--original", help="path of a local copy of the original script to compare against")
    ap.add_argument("--original-scenarios", default="seed,full", help="scenarios to run the original on")
    ap.add_argument("--quality", default="minhash,simhash",
                    help="near-dup methods whose precision/recall to measure through prep's CLI ('' for none)")
    ap.add_argument("--radii", default="3,4,6,8", help="SimHash radii for the method comparison ('' for none)")
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
               str(hit), "--out", str(out), *without(flags, "--near-dup-threshold"), "--workers", str(args.workers)]
        run = timed_run(cmd, work / f"ours_{sc}.log")
        stats = json.loads((work / f"ours_{sc}.stats.json").read_text()) if run["rc"] == 0 else {}
        run["stats_timing"] = stats.get("timing")
        run["mix"] = stats.get("mix")
        run["dedup"] = stats.get("dedup")
        run["sources"] = {k: {kk: v[kk] for kk in ("read", "passed_filters", "exact_dup_within", "exact_dup_across",
                                                   "near_dup_within", "near_dup_across", "usable")}
                          for k, v in stats.get("sources", {}).items()}
        results["runs"][f"ours_{sc}"] = run
        near_s = (stats.get("timing") or {}).get("stages", {}).get("near_dedup", {}).get("seconds")
        print(f"ours/{sc}: rc {run['rc']}, {run['wall_s']} s wall, {run['cpu_s']} s CPU (near-dup step {near_s} s), "
              f"peak {run['peak_rss_mb']} MB, load {run['load_before'][0]} -> {run['load_after'][0]}", flush=True)
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
            orun["speedup_cpu"] = round(orun["cpu_s"] / run["cpu_s"], 2) if run["cpu_s"] else None
            print(f"original/{sc}: rc {orun['rc']}, {orun['wall_s']} s wall, {orun['cpu_s']} s CPU, peak "
                  f"{orun['peak_rss_mb']} MB, load {orun['load_before'][0]} -> {orun['load_after'][0]} -> speed-up "
                  f"{orun['speedup']}x wall, {orun['speedup_cpu']}x CPU", flush=True)
    methods = [m for m in args.quality.split(",") if m]
    radii = tuple(int(k) for k in args.radii.split(",") if k)
    if methods:
        ids = content_ids(firefly, hit)
        results["quality"] = {}
        for method in methods:
            q = dedup_quality(firefly, hit, work, method, ids, args.workers)
            results["quality"][method] = q
            if "by_kind" in q:
                print_quality(q)
        if radii and "minhash" in methods:
            r = simhash_radius(firefly, hit, work, ids, radii)
            results["simhash_radius"] = r
            print(f"\nSimHash radius on the same {r['records']} pooled records, {r['planted_pairs']} planted pairs:")
            print(f"{'k':>3}{'tables':>8}{'index s':>9}{'recall':>8}{'pairs<=k':>10}{'precision':>11}"
                  f"{'J>=0.7':>8}{'precision':>11}")
            for k, v in r["by_radius"].items():
                print(f"{k:>3}{v['tables']:>8}{v['index_seconds']:>9}{v['recall']:>8.4f}{v['pairs_within_k']:>10}"
                      f"{v['precision']:>11}{v['pairs_confirmed_jaccard_0.7']:>8}{v['precision_confirmed']:>11}")
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"prep_{args.n}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"results: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
