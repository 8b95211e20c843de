#!/usr/bin/env python
"""What failing endpoints and concurrent runs cost: requests sent and wall time, gen_SFT_data.py and judge.py
run as a user runs them (separate processes, default flags) against scripted servers on 127.0.0.1.

Rows:
  1. dead generator: TOPICS topics at --max-concurrency 4, the endpoint answers 500 to everything
  2. dead judge: 3 judges, one always 500, 20 records (10 good, 10 bad); result must be 10/10 good kept, 0/10 bad
  3. out of balance: TOPICS topics at --max-concurrency 4, the endpoint answers 402 (DeepSeek's "Insufficient Balance")
  4. two runs on one --out: 80 topics, 0.25 s per request, the second started once the first has sent a request
  5. 429 burst: 200 topics at --max-concurrency 16; 429 with Retry-After: 1 for the first 3 s, then answers
Usage: python bench/bench_faults.py [--topics 400] [--only dead_gen,dead_judge,...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.testing.stub_server import Reply, StubServer, echo_items_script  # noqa: E402

DIMS = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY"):
    ENV.pop(name, None)


def topics_file(d: Path, n: int) -> Path:
    p = d / "topics.txt"
    p.write_text("".join(f"故障测试主题{i}\n" for i in range(n)), encoding="utf-8")
    return p


def gen_cmd(url: str, topics: Path, out: Path, conc: int) -> list[str]:
    return [sys.executable, str(ROOT / "gen_SFT_data.py"), "--base-url", url, "--api-key", "sk-bench-0000",
            "--model", "m", "--topics-file", str(topics), "--n-per-topic", "3", "--max-concurrency", str(conc),
            "--out", str(out), "--log", "WARNING"]


def run(cmd: list[str], cwd: Path) -> tuple[int, float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    err = [ln for ln in p.stderr.splitlines() if ln.strip() and "%|" not in ln]  # not the progress bar
    return p.returncode, time.perf_counter() - t, (err[-1] if err else "")[:160]


def dead_gen(n: int) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as d, StubServer(lambda b, a: Reply.error(500)) as srv:
        rc, dt, last = run(gen_cmd(srv.base_url, topics_file(Path(d), n), Path(d) / "out.jsonl", 4), Path(d))
        return (f"dead generator (always 500), {n} topics, c=4",
                f"{len(srv.requests)} requests, {dt:.1f} s, exit {rc}; last line: {last}")


def out_of_balance(n: int) -> tuple[str, str]:
    body = b'{"error": {"message": "Insufficient Balance", "type": "unknown_error"}}'
    with tempfile.TemporaryDirectory() as d, StubServer(lambda b, a: Reply.error(402, body=body)) as srv:
        rc, dt, last = run(gen_cmd(srv.base_url, topics_file(Path(d), n), Path(d) / "out.jsonl", 4), Path(d))
        return (f"out of balance (always 402), {n} topics, c=4",
                f"{len(srv.requests)} requests, {dt:.1f} s, exit {rc}; last line: {last}")


ANSWER = "第一，到学院办公室领取申请表；第二，交辅导员签字；第三，到教务处办理。"


def dead_judge() -> tuple[str, str]:
    recs = []
    for i in range(20):
        quality = "good" if i < 10 else "bad"
        recs.append({"id": f"{quality}{i:02d}", "source": "bench", "messages": [
            {"role": "user", "content": f"请说明补办学生证的流程。编号[{quality}{i:02d}]"},
            {"role": "assistant", "content": ANSWER}]})

    def script(body: dict, attempt: int) -> Reply:
        if body["model"] == "m-dead":
            return Reply.error(500)
        score = 9 if "编号[good" in body["messages"][1]["content"] else 3
        return Reply.ok(orjson.dumps({"reasons": dict.fromkeys(DIMS, "简述"),
                                      "scores": dict.fromkeys(DIMS, score)}).decode())

    with tempfile.TemporaryDirectory() as d, StubServer(script) as srv:
        dp = Path(d)
        (dp / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
        (dp / "cfg.json").write_bytes(orjson.dumps({
            "judges": [{"name": n, "model": m, "base_url": srv.base_url}
                       for n, m in (("A", "m-a"), ("B", "m-b"), ("C", "m-dead"))],
            "enable_dedup": False}))
        rc, dt, last = run([sys.executable, str(ROOT / "judge.py"), "--input", str(dp / "in.jsonl"),
                            "--output-dir", str(dp / "out"), "--config", str(dp / "cfg.json"),
                            "--api-key", "sk-bench-0000"], dp)
        kept = Counter()
        scored = dp / "out" / "scored.jsonl"
        if scored.exists():
            for line in scored.read_bytes().splitlines():
                r = orjson.loads(line)
                kept[r["id"][:-2]] += bool(r["passed_filter"])
        per_model = Counter(b["model"] for b in srv.requests)
        return ("dead judge (1 of 3 always 500), 20 records",
                f"{len(srv.requests)} requests ({per_model['m-dead']} to the dead one), {dt:.1f} s, exit {rc}, "
                f"kept good {kept['good']}/10, bad {kept['bad']}/10; last line: {last}")


def two_runs() -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as d, StubServer(echo_items_script, latency=0.25) as srv:
        dp = Path(d)
        cmd = gen_cmd(srv.base_url, topics_file(dp, 80), dp / "out.jsonl", 4)
        t = time.perf_counter()
        first = subprocess.Popen(cmd, cwd=dp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not srv.requests and time.monotonic() < deadline:  # the first run is under way
            time.sleep(0.01)
        rc2, dt2, last = run(cmd, dp)
        rc1 = first.wait()
        dt = time.perf_counter() - t
        return ("two runs on one --out, 80 topics, 0.25 s/request, c=4",
                f"{len(srv.requests)} requests bought (80 needed), exits {rc1} and {rc2}, second ran {dt2:.1f} s, "
                f"both {dt:.1f} s; second's last line: {last}")


def burst_429() -> tuple[str, str]:
    start: list[float] = []
    lock = threading.Lock()

    def script(body: dict, attempt: int) -> Reply:
        with lock:
            if not start:
                start.append(time.monotonic())
        if time.monotonic() - start[0] < 3.0:
            return Reply.error(429, retry_after="1")
        return echo_items_script(body, attempt)

    with tempfile.TemporaryDirectory() as d, StubServer(script) as srv:
        dp = Path(d)
        rc, dt, last = run(gen_cmd(srv.base_url, topics_file(dp, 200), dp / "out.jsonl", 16), dp)
        n429 = len(srv.requests) - 200
        return ("429 burst (3 s, Retry-After: 1), 200 topics, c=16",
                f"{len(srv.requests)} requests ({n429} beyond the 200 needed), {dt:.1f} s, exit {rc}; "
                f"last line: {last}")


CASES = {"dead_gen": dead_gen, "dead_judge": dead_judge, "balance": out_of_balance, "two_runs": two_runs,
         "burst_429": burst_429}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=400, help="topics for the dead generator and 402 rows")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    args = ap.parse_args()
    rows = []
    for name in args.only.split(","):
        fn = CASES[name.strip()]
        row = fn(args.topics) if name.strip() in ("dead_gen", "balance") else fn()
        print(f"{row[0]}: {row[1]}", flush=True)
        rows.append(row)
    width = max(len(r[0]) for r in rows)
    print()
    for name, result in rows:
        print(f"{name:<{width}}  {result}")


if __name__ == "__main__":
    main()
