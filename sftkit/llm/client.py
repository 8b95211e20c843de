"""Async OpenAI-compatible client on aiohttp: chat completions, and any other JSON endpoint of the same
API (`post_json`, used for /embeddings).

One client is one *endpoint*: a base URL, a key and, in practice, one model (providers throttle per model,
so two judges on one URL get two clients). Everything below is shared by every request of the client:

- **Admission.** At most `limit` attempts in flight (starts at max_concurrency), none while the endpoint is
  paused, and none beyond the optional `rpm` / `tpm` token buckets. Waiting requests go first in, first out;
  a retry goes before a request that was never sent.
- **One backoff per endpoint.** A retryable failure (429, 500, 502, 503, 504, connection error, timeout,
  empty or malformed body) of an attempt that started after the endpoint's last backoff pauses every new
  attempt for Retry-After (capped at backoff_max) or else an equal-jitter delay that doubles with each
  consecutive backoff (backoff_base, 2 x, 4 x ... up to backoff_max), and halves the limit (floor 1). Attempts
  that were already in flight when it backed off count once: a burst of failures is one event. Each success
  raises the limit by one, back up to max_concurrency, and resets the delay. A request gives up after
  `retries` retries.
- **Circuit breaker.** After `breaker_failures` consecutive failed attempts, with no success in between and
  spanning at least `breaker_window` seconds, the endpoint is *down*: nothing more is sent, every waiting and
  later request fails at once with `endpoint_down`, and `failure.line()` says why in one line.
- **Fatal answers** (401, 402, 403, 404, or a body saying the balance or quota is exhausted): the endpoint is
  refused at once, the same way. Other 4xx (400: a prompt too long, say) fail that request only.
- The key is never shown: `repr`, stats and every body excerpt mask it.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
import regex

from sftkit.io.text import han_count

T = TypeVar("T")
RETRY_STATUS = {429, 500, 502, 503, 504}
FATAL_STATUS = {401, 402, 403, 404}  # the whole endpoint is refused: no other request will do better
# Bodies that mean the money or the quota is gone, whatever the status (OpenAI sends 429 insufficient_quota,
# DeepSeek 402 Insufficient Balance, DashScope Arrearage, Moonshot exceeded_current_quota_error).
QUOTA_EXHAUSTED = regex.compile(
    r"insufficient[ _]?(?:quota|balance)|credit_balance_exhausted|spend_limit_exceeded|exceeded[ _]your[ _]current"
    r"[ _]quota|exceeded_current_quota|arrearage|free ?tier.{0,40}exhausted|freetieronly|余额不足|欠费|额度已用完",
    regex.IGNORECASE)
_KEYLIKE = regex.compile(r"\b(sk|ak)-[A-Za-z0-9_\-*]{4,}")
FATAL_HINT = {401: "check the API key", 403: "check the API key and the account's access to this model",
              402: "the account's balance is exhausted: top it up", 404: "check the model name and the base URL"}


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


def estimate_tokens(text: str) -> int:
    """Rough token count: about 0.6 token per Han character and 0.3 per other character (DeepSeek's guide)."""
    han = han_count(text)
    return int(han * 0.6 + (len(text) - han) * 0.3) + 1


@dataclass
class ChatResult:
    content: str
    reasoning_content: str | None
    finish_reason: str | None
    usage: Usage
    model: str | None
    attempts: int


class ChatError(Exception):
    """A request that failed for good. `reason` is a short key for stats (e.g. `http_500`, `timeout`,
    `endpoint_down`); `fatal`: the endpoint refused us (every other request would fail too); `sent`: False when
    the client refused it without sending anything (the endpoint was already down, refused or stopped)."""

    def __init__(self, reason: str, detail: str = "", attempts: int = 0, fatal: bool = False,
                 exhausted: bool = False, status: int | None = None, sent: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
        self.fatal = fatal
        self.exhausted = exhausted  # True: every retry was spent; False: an answer not worth retrying
        self.status = status
        self.sent = sent


class RetryableError(Exception):
    """Raised by an attempt (or by a `post_json` parser) for an answer worth asking again."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.status = status


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


# ---- policy ---------------------------------------------------------------------------------------------

# Every knob of the shared endpoint policy, with its default: flags in gen_SFT_data.py, per-judge keys in judge.py.
POLICY_DEFAULTS: dict[str, Any] = {"rpm": None, "tpm": None, "breaker_failures": 5, "breaker_window": 10.0,
                                   "backoff_base": 1.0, "backoff_max": 60.0}
POLICY_HELP = {
    "rpm": "at most this many requests per minute to the endpoint (token bucket, one second's worth of burst; "
           "default: no limit)",
    "tpm": "at most this many tokens (prompt estimate + expected completion, corrected by the reported usage) "
           "per minute to the endpoint (default: no limit)",
    "breaker_failures": "declare the endpoint down (send nothing more to it) after this many consecutive failed "
                        "attempts with no success in between, once they span --breaker-window (default: %(default)s)",
    "breaker_window": "seconds the consecutive failures must span before the endpoint is declared down "
                      "(default: %(default)s)",
    "backoff_base": "first endpoint-wide pause after a 429/5xx/timeout, doubled on each consecutive one "
                    "(seconds, default: %(default)s)",
    "backoff_max": "longest pause, Retry-After included (seconds, default: %(default)s)",
}


def add_policy_flags(ap: Any, *, defaults: bool = True, scope: str = "") -> None:
    """--rpm, --tpm, --breaker-failures, --breaker-window, --backoff-base, --backoff-max on an argparse parser.
    With defaults=False every flag defaults to None (the caller's config decides); `scope` prefixes each help."""
    for key, default in POLICY_DEFAULTS.items():
        kind = int if key == "breaker_failures" else float
        text = scope + POLICY_HELP[key]
        if not defaults:
            text = text.replace("%(default)s", f"config, else {default}")
        ap.add_argument(flag_name(key), type=kind, default=default if defaults else None, help=text)


def check_policy(p: dict[str, Any], name: Callable[[str], str] = str) -> str:
    """'' when the policy values make sense, else what is wrong (for an exit-2 line); `name` spells a key
    (as a flag, say)."""
    for key in ("rpm", "tpm"):
        if p.get(key) is not None and not float(p[key]) > 0:
            return f"{name(key)} must be > 0 (leave it out for no limit)"
    if int(p.get("breaker_failures", 1)) < 1:
        return f"{name('breaker_failures')} must be >= 1"
    for key in ("breaker_window", "backoff_base"):
        if float(p.get(key, 0)) < 0:
            return f"{name(key)} must be >= 0"
    if float(p.get("backoff_max", 0)) < float(p.get("backoff_base", 0)):
        return f"{name('backoff_max')} must be >= {name('backoff_base')}"
    return ""


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def policy_kwargs(p: Any) -> dict[str, Any]:
    """The policy keys of an argparse namespace or a dict, as AsyncChatClient keyword arguments."""
    get = p.get if isinstance(p, dict) else lambda k, d: getattr(p, k, d)
    return {k: get(k, d) for k, d in POLICY_DEFAULTS.items()}


class TokenBucket:
    """`per_minute` units a minute, refilled continuously, holding at most one second's worth (at least one
    unit). A cost larger than that waits for a full bucket and leaves it in debt, so the long-run rate holds."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self._t = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` may be taken (0: now)."""
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost

    def credit(self, amount: float) -> None:
        """Give back (or, negative, charge more than) an earlier estimate."""
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Ticket:
    """One admitted attempt: the backoff epoch it started in and the tokens charged for it."""

    epoch: int
    tokens: float


@dataclass
class EndpointFailure:
    """Why an endpoint takes no more requests. kind: down (circuit breaker), fatal (refused us), stopped (by
    the caller). `detail` is an excerpt of the last body with the key masked."""

    kind: str
    endpoint: str
    reason: str
    status: int | None = None
    detail: str = ""
    failures: int = 0
    span_s: float = 0.0

    def line(self) -> str:
        """One line for the user, naming the endpoint and why."""
        body = f": {self.detail[:160]}" if self.detail else ""
        if self.kind == "down":
            return (f"{self.endpoint} is down: {self.failures} consecutive failed attempts over {self.span_s:.1f} s "
                    f"with no success, last {self.reason}{body}")
        if self.kind == "fatal":
            hint = ("the account's balance or quota is exhausted: top it up" if self.reason == "quota_exhausted"
                    else FATAL_HINT.get(self.status or 0, "check the request"))
            status = f" (HTTP {self.status})" if self.status and self.reason == "quota_exhausted" else ""
            return f"{self.endpoint} refused the request, {self.reason}{status}{body}; {hint}"
        return f"{self.endpoint}: stopped ({self.reason}{body})"

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "span_s": round(self.span_s, 3), "line": self.line()}


@dataclass
class ClientStats:
    requests: int = 0
    ok: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    failure_details: dict[str, str] = field(default_factory=dict)  # reason -> first body excerpt
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0  # HTTP requests actually sent
    backoffs: int = 0  # endpoint-wide pauses
    paused_s: float = 0.0
    min_limit: int = 0
    failure: EndpointFailure | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok, "attempts_sent": self.attempts,
            "failed": sum(self.failed.values()), "failed_by_reason": dict(self.failed),
            "failure_details": dict(self.failure_details),
            "retries": sum(self.retries.values()), "retries_by_reason": dict(self.retries),
            "backoffs": self.backoffs, "paused_s": round(self.paused_s, 3), "min_concurrency": self.min_limit,
            "endpoint_failure": self.failure.as_dict() if self.failure else None,
            "usage": self.usage.as_dict(),
        }


class Endpoint:
    """Admission, backoff and circuit breaker shared by every request to one endpoint (see the module doc)."""

    def __init__(self, label: str, max_concurrency: int, *, backoff_base: float, backoff_max: float,
                 breaker_failures: int, breaker_window: float, rpm: float | None, tpm: float | None,
                 rng: random.Random, stats: ClientStats) -> None:
        self.label = label
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.breaker_failures, self.breaker_window = breaker_failures, breaker_window
        self.rpm = TokenBucket(rpm) if rpm else None
        self.tpm = TokenBucket(tpm) if tpm else None
        self.stats = stats
        stats.min_limit = max_concurrency
        self._rng = rng
        self.in_flight = 0
        self.epoch = 0  # bumped at each backoff: failures of attempts started before it are the same event
        self.level = 0  # consecutive backoffs: the next pause is backoff_base * 2 ** level
        self.paused_until = 0.0
        self.streak = 0  # consecutive failed attempts
        self.streak_start = 0.0
        self.failure: EndpointFailure | None = None
        self._retries: collections.deque[tuple[asyncio.Future[Ticket], float]] = collections.deque()
        self._fresh: collections.deque[tuple[asyncio.Future[Ticket], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Pause before attempt `attempt + 1`: Retry-After when given, else equal-jitter exponential."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return cap / 2 + self._rng.random() * cap / 2

    # -- admission ------------------------------------------------------------------------------------

    def _delay(self, cost: float, now: float) -> float | None:
        """0: may start now; > 0: seconds to wait (pause or rate bucket); None: wait for a free slot."""
        if self.in_flight >= self.limit:
            return None
        wait = self.paused_until - now
        if self.rpm is not None:
            wait = max(wait, self.rpm.wait(1, now))
        if self.tpm is not None and cost:
            wait = max(wait, self.tpm.wait(cost, now))
        return max(0.0, wait)

    def _take(self, cost: float, now: float) -> Ticket:
        self.in_flight += 1
        if self.rpm is not None:
            self.rpm.take(1, now)
        if self.tpm is not None and cost:
            self.tpm.take(cost, now)
        self.stats.attempts += 1
        return Ticket(self.epoch, cost)

    def refused(self) -> ChatError:
        f = self.failure
        assert f is not None
        reason = "endpoint_down" if f.kind == "down" else "stopped" if f.kind == "stopped" else "endpoint_refused"
        return ChatError(reason, f.line(), fatal=f.kind == "fatal", status=f.status, sent=False)

    async def acquire(self, cost: float = 0.0, retry: bool = False) -> Ticket:
        if self.failure is not None:
            raise self.refused()
        now = time.monotonic()
        if not self._retries and not self._fresh and self._delay(cost, now) == 0:
            return self._take(cost, now)
        fut: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        (self._retries if retry else self._fresh).append((fut, cost))
        self._wake()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            queue = self._retries if self._retries else self._fresh
            if not queue:
                return
            fut, cost = queue[0]
            if fut.done():  # cancelled while waiting
                queue.popleft()
                continue
            if self.failure is not None:
                queue.popleft()
                fut.set_exception(self.refused())
                continue
            now = time.monotonic()
            delay = self._delay(cost, now)
            if delay is None:
                return  # a release wakes us
            if delay > 0:
                self._timer = asyncio.get_running_loop().call_later(delay, self._wake)
                return
            queue.popleft()
            fut.set_result(self._take(cost, now))

    # -- outcomes -------------------------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The attempt ended without telling us anything about the endpoint (cancelled, or a 400)."""
        self.in_flight -= 1
        if self.tpm is not None and ticket.tokens:
            self.tpm.credit(ticket.tokens)
        self._wake()

    def succeeded(self, ticket: Ticket, tokens_used: int) -> None:
        self.in_flight -= 1
        self.streak = 0
        self.level = 0
        self.limit = min(self.max_concurrency, self.limit + 1)
        if self.tpm is not None and ticket.tokens:
            self.tpm.credit(ticket.tokens - tokens_used)
        self._wake()

    def failed(self, ticket: Ticket, err: RetryableError) -> None:
        """A retryable failure: back off as one endpoint, and count it for the breaker."""
        self.in_flight -= 1
        if self.tpm is not None and ticket.tokens:
            self.tpm.credit(ticket.tokens)  # a refused attempt used no tokens
        now = time.monotonic()
        if self.streak == 0:
            self.streak_start = now
        self.streak += 1
        if ticket.epoch == self.epoch:  # the first failure seen since the last backoff: one event
            pause = self.backoff(self.level, err.retry_after)
            decide_at = self.streak_start + self.breaker_window
            if err.retry_after is None and now < decide_at < now + pause:
                pause = decide_at - now  # probe when the window closes: a dead endpoint is known in ~window s
            self.epoch += 1
            self.level += 1
            self.limit = max(1, self.limit // 2)
            self.stats.backoffs += 1
            self.stats.min_limit = min(self.stats.min_limit, self.limit)
        else:  # an attempt already in flight: honour its Retry-After, but it is the same event
            pause = min(err.retry_after, self.backoff_max) if err.retry_after is not None else 0.0
        if now + pause > self.paused_until:
            self.stats.paused_s += now + pause - max(now, self.paused_until)
            self.paused_until = now + pause
        if (self.failure is None and self.streak >= self.breaker_failures
                and now - self.streak_start >= self.breaker_window):
            self.trip(EndpointFailure("down", self.label, err.reason, err.status, err.detail, self.streak,
                                      now - self.streak_start))
        self._wake()

    def refuse(self, ticket: Ticket, err: ChatError) -> None:
        """A fatal answer: nothing more is sent."""
        self.in_flight -= 1
        reason = "quota_exhausted" if err.reason == "quota_exhausted" else err.reason
        self.trip(EndpointFailure("fatal", self.label, reason, err.status, err.detail))
        self._wake()

    def trip(self, failure: EndpointFailure) -> None:
        if self.failure is None:
            self.failure = failure
            self.stats.failure = failure
        self._wake()


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
        breaker_failures: int = 5,
        breaker_window: float = 10.0,
        rpm: float | None = None,
        tpm: float | None = None,
        seed: int | None = None,
        name: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._expected_completion: float | None = None  # running mean, for the tpm pre-charge
        self.endpoint = Endpoint(name or self.base_url, max_concurrency, backoff_base=backoff_base,
                                 backoff_max=backoff_max, breaker_failures=breaker_failures,
                                 breaker_window=breaker_window, rpm=rpm, tpm=tpm, rng=self._rng, stats=self.stats)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AsyncChatClient(url={self.url!r}, max_concurrency={self.max_concurrency})"

    @property
    def failure(self) -> EndpointFailure | None:
        """Set once the endpoint takes no more requests (down, refused us, or stopped)."""
        return self.endpoint.failure

    async def __aenter__(self) -> AsyncChatClient:
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=self.max_concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stop(self, reason: str) -> None:
        """Send nothing more (attempts in flight finish); waiting and later requests fail with `stopped`."""
        self.endpoint.trip(EndpointFailure("stopped", self.endpoint.label, reason))

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds of the endpoint pause after the `attempt + 1`-th consecutive backoff."""
        return self.endpoint.backoff(attempt, retry_after)

    def mask(self, text: str) -> str:
        """`text` with this client's key, and anything shaped like a key, masked."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEYLIKE.sub(lambda m: m.group(1) + "-***", text)

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
        tokens = 0
        if self.endpoint.tpm is not None:
            expected = self._expected_completion if self._expected_completion is not None else (max_tokens or 1024)
            tokens = sum(estimate_tokens(m.get("content") or "") for m in messages) + int(expected)
        result, attempts = await self.post_json("/chat/completions", body, _parse_chat, tokens=tokens)
        result.attempts = attempts
        self.stats.usage.add(result.usage)
        if self.endpoint.tpm is not None:
            c = float(result.usage.completion_tokens)
            self._expected_completion = c if self._expected_completion is None else (
                0.9 * self._expected_completion + 0.1 * c)
        return result

    async def post_json(self, path: str, body: dict[str, Any], parse: Callable[[Any], T], *,
                        tokens: int = 0) -> tuple[T, int]:
        """POST `body` to base_url + path under the endpoint policy; `parse` turns the decoded JSON into the
        result and may raise RetryableError for an answer worth asking again. `tokens`: the estimate charged
        to the tpm bucket. Returns (result, attempts)."""
        assert self._session is not None, "use `async with AsyncChatClient(...)`"
        url = self.base_url + path
        payload = orjson.dumps(body)
        self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                ticket = await self.endpoint.acquire(tokens, retry=attempt > 1)
                if self.endpoint.failure is not None:  # admitted, then the endpoint went down before we ran
                    self.endpoint.release(ticket)
                    raise self.endpoint.refused()
            except ChatError as e:
                e.attempts = attempt - 1
                self.stats.failed[e.reason] += 1
                raise
            try:
                result = parse(await self._attempt(url, payload))
            except RetryableError as e:
                self.endpoint.failed(ticket, e)
                self.stats.failure_details.setdefault(e.reason, e.detail)
                if attempt > self.retries:
                    self.stats.failed[e.reason] += 1
                    raise ChatError(e.reason, e.detail, attempt, exhausted=True, status=e.status) from None
                self.stats.retries[e.reason] += 1
                continue
            except ChatError as e:
                if e.fatal:
                    self.endpoint.refuse(ticket, e)
                else:
                    self.endpoint.release(ticket)
                e.attempts = attempt
                self.stats.failed[e.reason] += 1
                self.stats.failure_details.setdefault(e.reason, e.detail)
                raise
            except BaseException:
                self.endpoint.release(ticket)
                raise
            self.endpoint.succeeded(ticket, _tokens_used(result))
            self.stats.ok += 1
            return result, attempt

    async def _attempt(self, url: str, payload: bytes) -> Any:
        """One request; the decoded JSON body of a 200 answer."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=payload) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise RetryableError("timeout", f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise RetryableError("connection", type(e).__name__) from None
        if status != 200:
            detail = self.mask(_short(raw))
            if QUOTA_EXHAUSTED.search(raw[:4000].decode("utf-8", "replace")):
                raise ChatError("quota_exhausted", detail, fatal=True, status=status)
            if status in RETRY_STATUS:
                raise RetryableError(f"http_{status}", detail, retry_after, status)
            raise ChatError(f"http_{status}", detail, fatal=status in FATAL_STATUS, status=status)
        # DeepSeek keeps slow connections alive with blank lines before the JSON body.
        text = raw.strip()
        if not text:
            raise RetryableError("empty_body")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise RetryableError("bad_json", self.mask(_short(raw))) from None


def _tokens_used(result: Any) -> int:
    usage = getattr(result, "usage", None)
    if isinstance(usage, Usage):
        return usage.prompt_tokens + usage.completion_tokens
    return 0


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
