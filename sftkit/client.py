"""Async OpenAI-compatible client on aiohttp: chat completions, and any other JSON endpoint of the same
API (`post_json`, used for /embeddings).

One session, a connection pool sized to the concurrency, a semaphore around each attempt,
per-request timeout, retries with exponential backoff and jitter that honour Retry-After.
Retried: 429, 500, 502, 503, 504, connection errors, timeouts, empty or non-JSON bodies.
Not retried: other 4xx (a bad request or a bad key will not get better by asking again).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson

T = TypeVar("T")
RETRY_STATUS = {429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403}  # the whole run should stop: no other request will do better


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # DeepSeek prompt_cache_hit_tokens or OpenAI prompt_tokens_details.cached_tokens
    reasoning_tokens: int = 0

    @classmethod
    def from_api(cls, u: dict[str, Any] | None) -> Usage:
        u = u or {}
        details = u.get("prompt_tokens_details") or {}
        cdetails = u.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(u.get("completion_tokens") or 0),
            cached_tokens=int(u.get("prompt_cache_hit_tokens") or details.get("cached_tokens") or 0),
            reasoning_tokens=int(cdetails.get("reasoning_tokens") or u.get("reasoning_tokens") or 0),
        )

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ChatResult:
    content: str
    reasoning_content: str | None
    finish_reason: str | None
    usage: Usage
    model: str | None
    attempts: int


class ChatError(Exception):
    """A request that failed for good. `reason` is a short key for stats (e.g. `http_500`, `timeout`)."""

    def __init__(self, reason: str, detail: str = "", attempts: int = 0, fatal: bool = False,
                 exhausted: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
        self.fatal = fatal
        self.exhausted = exhausted  # True: every retry was spent; False: an answer not worth retrying


class RetryableError(Exception):
    """Raised by an attempt (or by a `post_json` parser) for an answer worth asking again."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class ClientStats:
    requests: int = 0
    ok: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok,
            "failed": sum(self.failed.values()), "failed_by_reason": dict(self.failed),
            "retries": sum(self.retries.values()), "retries_by_reason": dict(self.retries),
            "usage": self.usage.as_dict(),
        }


class AsyncChatClient:
    """`async with AsyncChatClient(...) as c: r = await c.chat(messages, model=...)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        max_concurrency: int = 50,
        timeout: float = 120.0,
        retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AsyncChatClient(url={self.url!r}, max_concurrency={self.max_concurrency})"

    async def __aenter__(self) -> AsyncChatClient:
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=self.max_concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        self._sem = asyncio.Semaphore(self.max_concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`: Retry-After when given, else equal-jitter exponential."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return cap / 2 + self._rng.random() * cap / 2

    async def chat(
        self,
        messages: list[dict[str, str]],
        model: str,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> ChatResult:
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
        if temperature is not None:
            body["temperature"] = temperature
        if top_p is not None:
            body["top_p"] = top_p
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        if extra:
            body.update(extra)
        result, attempts = await self.post_json("/chat/completions", body, _parse_chat)
        result.attempts = attempts
        self.stats.usage.add(result.usage)
        return result

    async def post_json(self, path: str, body: dict[str, Any], parse: Callable[[Any], T]) -> tuple[T, int]:
        """POST `body` to base_url + path with the retry policy; `parse` turns the decoded JSON into the result
        and may raise RetryableError for an answer worth asking again. Returns (result, attempts)."""
        url = self.base_url + path
        payload = orjson.dumps(body)
        self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                result = parse(await self._attempt(url, payload))
            except RetryableError as e:
                if attempt > self.retries:
                    self.stats.failed[e.reason] += 1
                    raise ChatError(e.reason, e.detail, attempt, exhausted=True) from None
                self.stats.retries[e.reason] += 1
                await asyncio.sleep(self.backoff(attempt - 1, e.retry_after))
                continue
            except ChatError as e:
                e.attempts = attempt
                self.stats.failed[e.reason] += 1
                raise
            self.stats.ok += 1
            return result, attempt

    async def _attempt(self, url: str, payload: bytes) -> Any:
        """One request; the decoded JSON body of a 200 answer."""
        assert self._session is not None and self._sem is not None, "use `async with AsyncChatClient(...)`"
        async with self._sem:
            try:
                async with self._session.post(url, data=payload) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                raise RetryableError("timeout", f"no answer within {self.timeout:g}s") from None
            except aiohttp.ClientError as e:
                raise RetryableError("connection", type(e).__name__) from None
        if status in RETRY_STATUS:
            raise RetryableError(f"http_{status}", _short(raw), retry_after)
        if status != 200:
            raise ChatError(f"http_{status}", _short(raw), fatal=status in FATAL_STATUS)
        # DeepSeek keeps slow connections alive with blank lines before the JSON body.
        text = raw.strip()
        if not text:
            raise RetryableError("empty_body")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise RetryableError("bad_json", _short(raw)) from None


def _parse_chat(data: Any) -> ChatResult:
    try:
        choice = data["choices"][0]
        msg = choice.get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RetryableError("bad_response", _short(orjson.dumps(data))) from None
    content = msg.get("content")
    if not isinstance(content, str):
        content = ""
    reasoning = msg.get("reasoning_content")
    if not content.strip() and not reasoning:
        raise RetryableError("empty_content")
    return ChatResult(
        content=content,
        reasoning_content=reasoning if isinstance(reasoning, str) else None,
        finish_reason=choice.get("finish_reason"),
        usage=Usage.from_api(data.get("usage")),
        model=data.get("model"),
        attempts=0,
    )


def _short(raw: bytes, n: int = 200) -> str:
    return raw[:n].decode("utf-8", "replace").strip()
