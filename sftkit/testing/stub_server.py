"""A scripted OpenAI-compatible server on 127.0.0.1, for tests and benchmarks.

A script maps (request body, how many times this exact body was seen) to a `Reply`: a normal
completion, an HTTP error with Retry-After, a connection reset, a hang past the client's timeout,
a malformed or empty body, or a body preceded by blank keep-alive lines as DeepSeek sends.
`outage()` fails every request for the first N seconds and then recovers (429 bursts, 5xx storms);
`by_model()` gives each model its own script (one dead judge among live ones). The server records every
request body, its headers, its arrival time and how many requests were in flight at once.

In-process:  `with StubServer(script) as srv: ... srv.base_url ...` (runs in a thread).
Standalone:  `python -m sftkit.testing.stub_server --port 8000 --latency 0.05 [--status 500]` (for bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "respond"  # respond | reset | keepalive
    keepalive_lines: int = 0

    @classmethod
    def ok(cls, content: str, *, reasoning: str | None = None, finish_reason: str = "stop",
           usage: dict[str, Any] | None = None, model: str = "stub", **kw: Any) -> Reply:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
        body = {
            "id": "chatcmpl-stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason}],
            "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 20,
                                                      "total_tokens": 30},
        }
        return cls(body=orjson.dumps(body), headers={"Content-Type": "application/json"}, **kw)

    @classmethod
    def error(cls, status: int, retry_after: str | None = None, body: bytes = b'{"error": "stub"}') -> Reply:
        headers = {"Content-Type": "application/json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def raw(cls, body: bytes, status: int = 200) -> Reply:
        return cls(status=status, body=body, headers={"Content-Type": "application/json"})

    @classmethod
    def reset(cls) -> Reply:
        return cls(action="reset")

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        return cls.ok("late", delay=seconds)

    def with_keepalive(self, lines: int) -> Reply:
        self.action, self.keepalive_lines = "keepalive", lines
        return self


Script = Callable[[dict[str, Any], int], Reply]


def echo_items_script(body: dict[str, Any], attempt: int) -> Reply:
    """Default script: a JSON array of three valid Chinese items derived from the request."""
    h = hashlib.sha1(orjson.dumps(body.get("messages"))).hexdigest()[:8]
    items = [
        {"instruction": f"你是一名熟悉校园事务的中文助手，编号{h}，请根据学生的问题给出准确、具体、可执行的建议。",
         "input": f"我想了解第{i + 1}个方面的具体安排和注意事项，应该如何准备，编号{h}？",
         "output": "建议从以下几个方面着手：第一，提前查阅学院发布的通知和培养方案，明确时间节点；"
                   "第二，主动与辅导员和任课老师沟通，了解具体要求；第三，制定学习计划并按周复盘，"
                   f"及时调整节奏；第四，注意保存相关材料，便于后续办理手续。编号{h}-{i}。"}
        for i in range(3)
    ]
    return Reply.ok(orjson.dumps(items).decode())


def by_model(scripts: dict[str, Script], default: Script = echo_items_script) -> Script:
    """Each model its own script (`body["model"]` picks it); other models get `default`."""
    def script(body: dict[str, Any], attempt: int) -> Reply:
        return scripts.get(body.get("model", ""), default)(body, attempt)
    return script


def outage(seconds: float, failure: Callable[[], Reply], then: Script = echo_items_script) -> Script:
    """`failure()` for every request arriving within `seconds` of the first one, then `then`."""
    start: list[float] = []
    lock = threading.Lock()

    def script(body: dict[str, Any], attempt: int) -> Reply:
        now = time.monotonic()
        with lock:
            if not start:
                start.append(now)
        return failure() if now - start[0] < seconds else then(body, attempt)
    return script


class StubServer:
    def __init__(self, script: Script = echo_items_script, *, latency: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = script
        self.latency = latency
        self.host, self.port = host, port
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.seen: Counter[str] = Counter()
        self.arrivals: list[float] = []  # time.monotonic() of each request, in order
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="bad json")
        key = hashlib.sha1(raw).hexdigest()
        with self._lock:
            self.seen[key] += 1
            attempt = self.seen[key]
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._reply(request, self.script(body, attempt))
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _reply(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.action == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on a dead connection
        if reply.action == "keepalive":
            resp = web.StreamResponse(status=reply.status, headers=reply.headers)
            await resp.prepare(request)
            for _ in range(reply.keepalive_lines):
                await resp.write(b"\n")
                await asyncio.sleep(0.01)
            await resp.write(reply.body)
            await resp.write_eof()
            return resp
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> StubServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("stub server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description="Scripted OpenAI-compatible server for benchmarks (loopback only).")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    ap.add_argument("--status", type=int, default=200, help="answer every request with this HTTP status "
                                                            "(e.g. 500: a dead endpoint; default: 200, items)")
    ap.add_argument("--retry-after", help="Retry-After header sent with --status")
    args = ap.parse_args()
    script = echo_items_script if args.status == 200 else (
        lambda body, attempt: Reply.error(args.status, retry_after=args.retry_after))
    srv = StubServer(script, latency=args.latency, port=args.port)
    web.run_app(srv.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
