#!/usr/bin/env python
"""Generation throughput against a local OpenAI-compatible server (a separate process on 127.0.0.1).

Rows:
  1. our AsyncChatClient, 50 ms server latency, 5,000 requests at concurrency 64 (ideal: 64 / 0.05 = 1,280 req/s)
  2. gen_SFT_data.py end to end under the same conditions (journal, validation, output included)
  3. our client vs the openai SDK's AsyncOpenAI behind the same semaphore, zero latency, concurrency 256,
     measured in the same run; client CPU time per request (the server runs in another process).
  4. with --baseline DIR: our client against DIR's sftkit/llm/client.py (another checkout, e.g. main), interleaved
     run by run against the same servers, median of --repeats, so a change to the client is measured under the
     same load as what it replaces; likewise gen_SFT_data.py end to end. CPU ms/req of gen_SFT_data.py rows is
     the CPU time of its whole process (start-up, validation and writes included) per request.
Usage: python bench/bench_gen.py [--requests 5000] [--quick] [--baseline DIR --repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.llm.client import AsyncChatClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "sftkit.testing.stub_server", "--port", str(self.port),
                                      "--latency", str(latency)], cwd=ROOT)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"请为主题《测试{i}》生成 3 条样本"}]


async def ours(url: str, n: int, conc: int, client_cls: type = AsyncChatClient) -> tuple[float, float]:
    async with client_cls(url, "bench-key", max_concurrency=conc, timeout=60, retries=2) as c:
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(c.chat(msgs(i), model="m", temperature=0.8) for i in range(n)))
        return time.perf_counter() - t0, time.process_time() - c0


async def openai_sdk(url: str, n: int, conc: int) -> tuple[float, float]:
    from openai import AsyncOpenAI

    # the SDK's own HTTP client and pool (up to 1,000 connections), as seed 004 used it
    client = AsyncOpenAI(api_key="bench-key", base_url=url, max_retries=2)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            r = await client.chat.completions.create(model="m", messages=msgs(i), temperature=0.8)
            assert r.choices[0].message.content

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    await client.close()
    return dt, dc


async def raw_aiohttp(url: str, n: int, conc: int) -> tuple[float, float]:
    """Bare aiohttp with a semaphore and no parsing or retries: what the local server and loopback allow."""
    import aiohttp

    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def one(i: int) -> None:
            async with sem, s.post(url + "/chat/completions", json={"model": "m", "messages": msgs(i)}) as r:
                await r.read()

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0, time.process_time() - c0


def gen_end_to_end(url: str, n: int, conc: int, root: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the gen_SFT_data.py process) for n topics."""
    with tempfile.TemporaryDirectory() as d:
        topics = Path(d) / "topics.txt"
        topics.write_text("\n".join(f"基准测试主题{i}" for i in range(n)) + "\n", encoding="utf-8")
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run([sys.executable, str(root / "gen_SFT_data.py"), "--base-url", url, "--api-key", "k",
                        "--model", "m", "--topics-file", str(topics), "--n-per-topic", "3",
                        "--max-concurrency", str(conc), "--out", str(Path(d) / "out.jsonl"), "--log", "WARNING"],
                       check=True, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(root)})
        return time.perf_counter() - t0, _children_cpu() - c0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(n: int, m: int) -> list[tuple]:
    rows = []
    srv = Server(0.05)
    try:
        asyncio.run(ours(srv.url, 200, 64))  # warm up
        dt, cpu = asyncio.run(ours(srv.url, n, 64))
        ideal = 64 / 0.05
        rows.append(("AsyncChatClient, 50 ms, c=64", n, n / dt, f"{n / dt / ideal:.1%} of ideal {ideal:.0f}",
                     cpu / n * 1e3))
        dt_raw, cpu_raw = asyncio.run(raw_aiohttp(srv.url, n, 64))
        rows.append(("bare aiohttp (reference), 50 ms, c=64", n, n / dt_raw, f"{n / dt_raw / ideal:.1%} of ideal",
                     cpu_raw / n * 1e3))
        dt1, _ = asyncio.run(ours(srv.url, 40, 1))
        rows.append(("AsyncChatClient, 50 ms, c=1 (server floor)", 40, 40 / dt1,
                     f"{dt1 / 40 * 1e3:.1f} ms per request", None))
        dt, cpu_gen = gen_end_to_end(srv.url, n, 64)
        rows.append(("gen_SFT_data.py end to end, 50 ms, c=64", n, n / dt, f"{n / dt / ideal:.1%} of ideal",
                     cpu_gen / n * 1e3))
    finally:
        srv.stop()

    srv = Server(0.0)
    try:
        asyncio.run(ours(srv.url, 200, 256))
        asyncio.run(openai_sdk(srv.url, 200, 256))
        dt_o, cpu_o = asyncio.run(ours(srv.url, m, 256))
        dt_s, cpu_s = asyncio.run(openai_sdk(srv.url, m, 256))
        rows.append(("AsyncChatClient, 0 ms, c=256", m, m / dt_o, f"{dt_s / dt_o:.2f}x the openai SDK",
                     cpu_o / m * 1e3))
        rows.append(("openai AsyncOpenAI + semaphore, 0 ms, c=256", m, m / dt_s, "1.00x", cpu_s / m * 1e3))
    finally:
        srv.stop()
    return rows


def load_client(checkout: str) -> type:
    """AsyncChatClient from another checkout's sftkit/llm/client.py, loaded under its own module name."""
    spec = importlib.util.spec_from_file_location("baseline_client", Path(checkout) / "sftkit" / "client.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baseline_client"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod.AsyncChatClient


def interleaved(repeats: int, ours_run: Callable[[], tuple[float, float]],
                baseline_run: Callable[[], tuple[float, float]]) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) of each run, ours and the baseline taking turns at going first."""
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "baseline": []}
    for r in range(repeats):
        order = [("ours", ours_run), ("baseline", baseline_run)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            runs[name].append(fn())
    return runs


def median_rows(what: str, baseline: str, tag: str, n: int, runs: dict[str, list[tuple[float, float]]]) -> list[tuple]:
    rps = {k: statistics.median(n / dt for dt, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c / n * 1e3 for _, c in v) for k, v in runs.items()}
    return [(f"{what} (this checkout), {tag}", n, rps["ours"], f"{rps['ours'] / rps['baseline']:.3f}x the baseline",
             cpu["ours"]),
            (f"{what} ({baseline}), {tag}", n, rps["baseline"], "1.000x", cpu["baseline"])]


def compare(baseline: str, n: int, repeats: int) -> list[tuple]:
    """Ours vs the baseline client and gen_SFT_data.py, interleaved, median req/s and CPU ms per request."""
    other = load_client(baseline)
    rows = []
    for latency, conc in ((0.05, 64), (0.0, 256)):
        srv = Server(latency)
        try:
            asyncio.run(ours(srv.url, 200, conc))
            url = srv.url
            runs = interleaved(repeats, lambda url=url, conc=conc: asyncio.run(ours(url, n, conc)),
                               lambda url=url, conc=conc: asyncio.run(ours(url, n, conc, other)))
        finally:
            srv.stop()
        rows += median_rows("AsyncChatClient", baseline, f"{latency * 1e3:.0f} ms, c={conc}, median of {repeats}",
                            n, runs)
    srv = Server(0.05)
    try:
        runs = interleaved(repeats, lambda: gen_end_to_end(srv.url, n, 64),
                           lambda: gen_end_to_end(srv.url, n, 64, Path(baseline)))
    finally:
        srv.stop()
    return rows + median_rows("gen_SFT_data.py", baseline, f"50 ms, c=64, median of {repeats}", n, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--sdk-requests", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="1,000 requests each (smoke run)")
    ap.add_argument("--baseline", help="another checkout whose sftkit/llm/client.py to compare with (rows 4)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs per client with --baseline")
    ap.add_argument("--only-compare", action="store_true", help="with --baseline: only the comparison rows")
    args = ap.parse_args()
    n = 1000 if args.quick else args.requests
    m = 1000 if args.quick else args.sdk_requests
    rows = []

    if not args.only_compare:
        rows += measure(n, m)
    if args.baseline:
        rows += compare(args.baseline, n, args.repeats)

    w = max(46, *(len(r[0]) for r in rows))
    print(f"\n{'case':<{w}} {'requests':>8} {'req/s':>8}  {'vs':<26} {'client CPU ms/req':>17}")
    for name, k, rps, vs, cpu_ms in rows:
        cpu_txt = f"{cpu_ms:.3f}" if cpu_ms is not None else "-"
        print(f"{name:<{w}} {k:>8} {rps:>8.0f}  {vs:<26} {cpu_txt:>17}")


if __name__ == "__main__":
    main()
