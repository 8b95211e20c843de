#!/usr/bin/env python
"""judge.py and its dedup on real generated records, against scripted judges on 127.0.0.1.

Rows:
  1. judge.py --stage all: 2 judges (one returns garbage now and then), concurrency 50, LATENCY per request
  2. judge.py --stage filter: filtering, dedup and split again from the journal (must send no request)
  3. near-duplicate recall on 300 planted copies (1-8 characters changed): character 3-gram MinHash,
     jieba words, and seed 000's whitespace Jaccard
  4. blocked cosine dedup of N random 384-d vectors: time and peak RSS growth (vs an n x n matrix)
Usage: python bench/bench_judge.py [--records FILE] [--latency 0.2] [--vectors 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import judge  # noqa: E402
from sftkit.distill import judging as jg  # noqa: E402
from sftkit.distill import semdedup as sd  # noqa: E402
from sftkit.io.jsonl import iter_jsonl  # noqa: E402
from sftkit.io.records import to_record  # noqa: E402
from sftkit.testing.stub_server import Reply, StubServer  # noqa: E402

DIMS = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]


def judge_script(body: dict, attempt: int) -> Reply:
    """Scores derived from the judged text; judge `m-b` answers without JSON for 1 record in 50."""
    h = int(hashlib.sha1(body["messages"][-1]["content"].encode()).hexdigest(), 16)
    if body["model"] == "m-b" and h % 50 == 0:
        return Reply.ok("抱歉，我无法评分。")
    base = 5 + h % 5
    scores = {d: min(10, base + ((h >> (i * 3)) % 2)) for i, d in enumerate(DIMS)}
    return Reply.ok(orjson.dumps({"reasons": {d: "简述" for d in DIMS}, "scores": scores}).decode(),
                    usage={"prompt_tokens": 900, "completion_tokens": 120})


def bench_judge(records: str, latency: float) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as d, StubServer(judge_script, latency=latency) as srv:
        cfg = Path(d) / "cfg.json"
        cfg.write_bytes(orjson.dumps({
            "judges": [{"name": "A", "model": "deepseek-chat", "base_url": srv.base_url, "max_concurrency": 50},
                       {"name": "B", "model": "m-b", "base_url": srv.base_url, "max_concurrency": 50}],
            "dedup": {"method": "ngram"}}))
        args = ["--input", records, "--output-dir", str(Path(d) / "out"), "--config", str(cfg)]
        t = time.perf_counter()
        rc = judge.main(args)
        dt = time.perf_counter() - t
        n = len(srv.requests)
        meta = orjson.loads((Path(d) / "out" / "metadata.json").read_bytes())
        rows.append((f"judge.py --stage all, 2 judges, c=50, {latency * 1e3:.0f} ms (rc {rc})",
                     f"{n} requests (invalid verdicts re-asked) in {dt:.2f} s = {n / dt:.0f}/s; "
                     f"counts {meta.get('counts')}"))
        t = time.perf_counter()
        rc = judge.main([*args, "--stage", "filter"])
        rows.append((f"judge.py --stage filter (rc {rc})",
                     f"{time.perf_counter() - t:.2f} s, {len(srv.requests) - n} requests"))
    return rows


def bench_near_dups(records: str) -> list[tuple[str, str]]:
    recs = [to_record(o, rid=str(i)) for i, o in iter_jsonl(records)]
    texts = [jg.dedup_text(r, "all") for r in recs]
    rng = random.Random(0)
    planted = []
    for i in rng.sample(range(len(texts)), 300):
        t = list(texts[i])
        for _ in range(rng.randint(1, 8)):
            t[rng.randrange(len(t))] = rng.choice("的一是在不了有和人这中大为上个")
        planted.append("".join(t))
    allt, n0 = texts + planted, len(texts)

    def found(keep: list[bool]) -> str:
        return (f"planted found {sum(not k for k in keep[n0:]) / len(planted):.0%}, "
                f"originals dropped {sum(not k for k in keep[:n0])}")

    rows = []
    for name, kw in (("char 3-gram MinHash, Jaccard >= 0.7", {}),
                     ("jieba words, Jaccard >= 0.7", {"tokenizer": "jieba", "n": 1})):
        t = time.perf_counter()
        r = sd.ngram_dedup(allt, threshold=0.7, **kw)
        rows.append((name, f"{found(r.keep)}, {time.perf_counter() - t:.2f} s for {len(allt)} texts"))
    toks = [set(x.split()) for x in allt]
    kept: list[int] = []
    keep = []
    t = time.perf_counter()
    for i, a in enumerate(toks):  # seed 000's rule: Jaccard over whitespace tokens against every kept text
        dup = any(len(a & toks[j]) / max(1, len(a | toks[j])) >= 0.7 for j in kept)
        keep.append(not dup)
        if not dup:
            kept.append(i)
    rows.append(("seed 000 whitespace Jaccard >= 0.7", f"{found(keep)}, {time.perf_counter() - t:.2f} s"))
    return rows


def bench_cosine(n: int, dim: int = 384) -> list[tuple[str, str]]:
    vecs = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)

    class Fixed:
        name = "random"

        def encode(self, texts: list[str]) -> np.ndarray:
            return vecs[[int(x) for x in texts]]

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    sd.cosine_dedup([str(i) for i in range(n)], Fixed(), 0.9, block_size=1024)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return [(f"cosine dedup, {n} x {dim} vectors, blocks of 1024",
             f"{time.perf_counter() - t:.1f} s, peak RSS +{grew:.0f} MiB (n x n float32: {n * n * 4 / 2**30:.1f} GiB)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default=str(ROOT.parent / "shared/data/hit/generated_data.jsonl"),
                    help="records to judge (any SPEC form; default: the real generated set beside the checkout)")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per judge request (default 0.2)")
    ap.add_argument("--vectors", type=int, default=20000, help="vectors for the cosine row (default 20000)")
    args = ap.parse_args()
    rows = bench_near_dups(args.records) + bench_cosine(args.vectors) + bench_judge(args.records, args.latency)
    width = max(len(name) for name, _ in rows)
    print()
    for name, result in rows:
        print(f"{name:<{width}}  {result}")


if __name__ == "__main__":
    main()
