"""The endpoint policy of sftkit/llm/client.py against the local fault server (127.0.0.1 only): one backoff per
endpoint, adaptive concurrency, rpm/tpm buckets, the circuit breaker, fatal answers, and the run lock and
write-failure handling of sftkit/io/jsonl.py's journal."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import orjson
import pytest

from sftkit.io.jsonl import Journal, JournalWriteError, LockedError, RunLock
from sftkit.llm.client import AsyncChatClient, ChatError, TokenBucket
from sftkit.testing.stub_server import Reply, StubServer, outage

KEY = "sk-RELIABLE-secret-9931"
FAST = {"backoff_base": 0.02, "backoff_max": 0.5}


def ask_all(url: str, n: int, **kw) -> tuple[list, AsyncChatClient]:
    """n distinct chat requests at once; each result or ChatError, and the client (for stats and failure)."""
    async def go():
        async with AsyncChatClient(url, KEY, **{"max_concurrency": 4, "retries": 5, **FAST, **kw}) as c:
            out = await asyncio.gather(*(c.chat([{"role": "user", "content": f"q{i}"}], model="m")
                                         for i in range(n)), return_exceptions=True)
            return out, c
    return asyncio.run(go())


# ---- the storm: one backoff per endpoint, a breaker that stops it ---------------------------------------


@pytest.mark.parametrize("n", [20, 300])
def test_storm_against_an_always_500_endpoint_stays_bounded(n: int) -> None:
    with StubServer(lambda b, a: Reply.error(500)) as srv:
        out, c = ask_all(srv.base_url, n, max_concurrency=4, breaker_window=0.3)
        sent = len(srv.requests)
    # Bounded by the concurrency, not by the number of requests (the old client sent n x 6 here).
    assert sent <= 3 * 4
    assert all(isinstance(r, ChatError) and r.reason == "endpoint_down" for r in out)
    assert c.failure is not None and c.failure.kind == "down" and c.failure.reason == "http_500"
    assert c.failure.failures >= 5 and c.failure.span_s >= 0.3  # K consecutive failures spanning the window
    assert c.stats.attempts == sent
    line = c.failure.line()
    assert "is down" in line and "http_500" in line and '"stub"' in line and "\n" not in line


def test_breaker_counts_k_consecutive_failures_and_a_success_resets_it() -> None:
    with StubServer(lambda b, a: Reply.error(503)) as srv:
        out, c = ask_all(srv.base_url, 5, max_concurrency=1, breaker_failures=3, breaker_window=0)
        assert len(srv.requests) == 3  # exactly K attempts, then nothing more is sent
    assert c.failure.kind == "down" and c.failure.failures == 3
    # Two failures, one success, two failures...: never K=3 in a row, so never down.
    calls = {"n": 0}

    def every_third_ok(body: dict, attempt: int) -> Reply:
        calls["n"] += 1
        return Reply.ok("好") if calls["n"] % 3 == 0 else Reply.error(500)

    with StubServer(every_third_ok) as srv:
        out, c = ask_all(srv.base_url, 6, max_concurrency=1, breaker_failures=3, breaker_window=0)
    assert c.failure is None and all(r.content == "好" for r in out)


def test_unreachable_endpoint_is_declared_down() -> None:
    out, c = ask_all("http://127.0.0.1:9/v1", 50, max_concurrency=8, breaker_window=0.2)
    assert all(isinstance(r, ChatError) and r.reason == "endpoint_down" for r in out)
    assert c.failure.reason == "connection" and c.stats.attempts <= 3 * 8


def test_a_throttle_pauses_the_whole_endpoint_for_retry_after() -> None:
    """One 429 with Retry-After: 0.4 on the first request; no other request may start inside that pause."""
    def script(body: dict, attempt: int) -> Reply:
        first = body["messages"][0]["content"] == "q0" and attempt == 1
        return Reply.error(429, retry_after="0.4") if first else Reply.ok("好", delay=0.05)

    with StubServer(script) as srv:
        out, c = ask_all(srv.base_url, 12, max_concurrency=1)
        t429 = srv.arrivals[0]
        later = srv.arrivals[1:]
    assert all(r.content == "好" for r in out)
    assert min(later) - t429 >= 0.39  # the others waited too: one backoff for the endpoint, not per request
    assert c.stats.backoffs == 1 and c.stats.retries == {"http_429": 1}


def test_concurrency_halves_on_throttling_and_grows_back() -> None:
    """8 in flight meet 429s; the first round after the pause sends at most 4, and success grows it back."""
    script = outage(0.2, lambda: Reply.error(429, retry_after="0.3"), then=lambda b, a: Reply.ok("好", delay=0.1))
    with StubServer(script) as srv:
        out, c = ask_all(srv.base_url, 60, max_concurrency=8)
        arrivals = srv.arrivals
        peak = srv.max_in_flight
    assert all(r.content == "好" for r in out)
    assert c.stats.min_limit <= 4 and c.endpoint.limit == 8 and peak == 8
    # The requests of the first round after the pause (within 50 ms of its first) are no more than the halved limit.
    first_after = next(t for t in arrivals if t - arrivals[0] >= 0.3)
    assert sum(1 for t in arrivals if first_after <= t < first_after + 0.05) <= 4


def test_429_burst_with_retry_after_completes_with_few_extra_requests() -> None:
    n, conc = 120, 8
    script = outage(1.0, lambda: Reply.error(429, retry_after="0.2"))
    with StubServer(script) as srv:
        out, c = ask_all(srv.base_url, n, max_concurrency=conc, retries=8)
        sent = len(srv.requests)
    assert all(not isinstance(r, Exception) for r in out)  # completes once the server recovers
    assert c.failure is None
    assert sent <= n + 3 * conc  # the old client sent every request about 5 times during the burst


def test_retry_after_is_capped_by_backoff_max() -> None:
    script = outage(0.1, lambda: Reply.error(503, retry_after="3600"))
    with StubServer(script) as srv:
        out, c = ask_all(srv.base_url, 3, backoff_max=0.3)
    assert all(r.content for r in out) and c.stats.paused_s < 1.0


# ---- fatal answers, 400s, key masking -------------------------------------------------------------------


@pytest.mark.parametrize("status,body,reason", [
    (402, b'{"error": {"message": "Insufficient Balance", "type": "unknown_error"}}', "quota_exhausted"),
    (429, b'{"error": {"message": "You exceeded your current quota, please check your plan and billing details.", '
          b'"type": "insufficient_quota", "code": "insufficient_quota"}}', "quota_exhausted"),
    (400, b'{"error": {"code": "Arrearage", "message": "Access denied, please make sure your account is in good '
          b'standing."}}', "quota_exhausted"),
    (401, b'{"error": {"message": "Incorrect API key provided: ' + KEY.encode() + b'"}}', "http_401"),
    (403, b'{"error": "key sk-other1234 may not use this model"}', "http_403"),
    (404, b'{"error": "The model `m` does not exist"}', "http_404"),
])
def test_fatal_answers_stop_the_endpoint_at_once(status: int, body: bytes, reason: str) -> None:
    with StubServer(lambda b, a: Reply.error(status, body=body)) as srv:
        out, c = ask_all(srv.base_url, 100, max_concurrency=4)
        sent = len(srv.requests)
    assert sent <= 4  # only what was already in flight; never retried
    assert c.failure.kind == "fatal" and c.failure.reason == reason and c.failure.status == status
    refused = [r for r in out if r.reason != reason]
    assert len(refused) >= 96 and all(r.reason == "endpoint_refused" and not r.sent for r in refused)
    line = c.failure.line()
    assert KEY not in line and "\n" not in line
    if status == 401:
        assert "provided: ***" in line and "check the API key" in line
    if status == 403:
        assert "key sk-*** may not" in line  # anything shaped like a key is masked too
    if reason == "quota_exhausted":
        assert "balance or quota is exhausted" in line


def test_400_fails_that_request_only_with_the_reason_in_stats() -> None:
    def script(body: dict, attempt: int) -> Reply:
        if body["messages"][0]["content"] == "q3":
            return Reply.error(400, body=b'{"error": {"message": "This model\'s maximum context length is 65536"}}')
        return Reply.ok("好")

    with StubServer(script) as srv:
        out, c = ask_all(srv.base_url, 10)
        assert len(srv.requests) == 10
    assert isinstance(out[3], ChatError) and out[3].reason == "http_400" and not out[3].fatal
    assert all(r.content == "好" for i, r in enumerate(out) if i != 3)
    assert c.failure is None and "maximum context length" in c.stats.as_dict()["failure_details"]["http_400"]


def test_stop_refuses_new_requests_and_lets_those_in_flight_finish() -> None:
    async def go(url: str):
        async with AsyncChatClient(url, max_concurrency=2) as c:
            tasks = [asyncio.create_task(c.chat([{"role": "user", "content": f"q{i}"}], model="m")) for i in range(6)]
            await asyncio.sleep(0.1)  # two are in flight at the server
            c.stop("test")
            return await asyncio.gather(*tasks, return_exceptions=True)

    with StubServer(lambda b, a: Reply.ok("好", delay=0.3)) as srv:
        out = asyncio.run(go(srv.base_url))
        assert len(srv.requests) == 2
    assert [getattr(r, "content", None) for r in out[:2]] == ["好", "好"]
    assert all(isinstance(r, ChatError) and r.reason == "stopped" and not r.sent for r in out[2:])


# ---- rpm / tpm token buckets ----------------------------------------------------------------------------


def test_rpm_spaces_requests_like_a_token_bucket() -> None:
    rpm = 1200  # 20 a second, one second's worth (20) of burst
    with StubServer(lambda b, a: Reply.ok("好")) as srv:
        out, _ = ask_all(srv.base_url, 50, max_concurrency=50, rpm=rpm)
        t = [x - srv.arrivals[0] for x in srv.arrivals]
    assert all(r.content == "好" for r in out)
    # Reference: the k-th request (0-based) of a full bucket of capacity C at rate r cannot start before (k+1-C)/r
    # (less 0.15 s for the server's own clock of the first arrival); without the bucket all 50 arrive at once.
    rate, cap = rpm / 60, 20
    assert all(t[k] >= (k + 1 - cap) / rate - 0.15 for k in range(len(t)))


def test_token_bucket_arithmetic() -> None:
    b = TokenBucket(600)  # 10 a second, capacity 10
    now = b._t
    assert b.wait(1, now) == 0
    b.take(10, now)
    assert b.wait(1, now) == pytest.approx(0.1)
    assert b.wait(50, now) == pytest.approx(1.0)  # a cost above capacity waits for a full bucket ...
    b.take(50, now + 1.0)
    assert b.level == pytest.approx(-40)  # ... and leaves it in debt, so the long-run rate holds
    b.credit(45)
    assert b.level == pytest.approx(5)
    b.credit(100)
    assert b.level == 10


def test_tpm_holds_tokens_per_second() -> None:
    usage = {"prompt_tokens": 60, "completion_tokens": 40}  # 100 tokens a request

    async def go(url: str):
        async with AsyncChatClient(url, max_concurrency=20, tpm=6000) as c:  # 100 tokens a second
            return await asyncio.gather(*(c.chat([{"role": "user", "content": f"q{i}"}], model="m", max_tokens=40)
                                          for i in range(5)))

    with StubServer(lambda b, a: Reply.ok("好", usage=usage)) as srv:
        out = asyncio.run(go(srv.base_url))
        span = srv.arrivals[-1] - srv.arrivals[0]
    assert len(out) == 5
    assert span >= 3.0  # 5 requests of ~100 tokens through a 100-token bucket: at least 4 refills of ~1 s each


# ---- run lock and write failures (jsonl) ----------------------------------------------------------------


def test_run_lock_refuses_a_second_holder_and_names_the_pid(tmp_path: Path) -> None:
    p = tmp_path / "j.jsonl"
    with Journal(p):
        with pytest.raises(LockedError) as e:
            Journal(p)
        assert e.value.pid == str(os.getpid()) and f"pid {os.getpid()}" in str(e.value)
        assert Journal.read(p) == []  # reading needs no lock
    with Journal(p) as j:  # released on close
        j.append({"a": 1})
    assert not (tmp_path / "j.jsonl.lock").exists()


def test_stale_lock_file_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    lock = tmp_path / "j.jsonl.lock"
    lock.write_text("999999\n")  # left behind by a killed run: no process holds a flock on it
    with Journal(tmp_path / "j.jsonl") as j:
        assert lock.read_text() == f"{os.getpid()}\n"
        j.append({"a": 1})


def test_run_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    lock = tmp_path / "x.lock"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from sftkit.io.jsonl import RunLock; "
            "l = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(Path(__file__).resolve().parents[1])],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as e:
            RunLock(lock).acquire()
        assert e.value.pid == str(proc.pid)
        proc.kill()
        proc.wait(10)
        with RunLock(lock):  # the kernel dropped the dead holder's lock
            pass
    finally:
        proc.kill()
        proc.wait(10)


def test_failed_append_leaves_the_journal_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "j.jsonl"
    j = Journal(p)
    j.append({"k": 1})
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if fd == j._fd:
            real_write(fd, data[: len(data) // 2])  # a disk that fills up mid-line
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("sftkit.io.jsonl.os.write", half_then_full)
    with pytest.raises(JournalWriteError) as e:
        j.append({"k": 2, "v": "一段较长的内容" * 20})
    assert e.value.errno == errno.ENOSPC and "No space left" in str(e.value)
    assert p.read_bytes() == b'{"k":1}\n'  # the half line is gone at once, not at the next open
    monkeypatch.setattr("sftkit.io.jsonl.os.write", real_write)
    j.append({"k": 3})
    j.close()
    assert Journal.read(p) == [{"k": 1}, {"k": 3}]


def test_journal_read_does_not_repair_a_file_another_run_is_writing(tmp_path: Path) -> None:
    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"k": 1}\n{"k": 2, "v": "half')
    assert Journal.read(p) == [{"k": 1}]
    assert p.read_bytes().endswith(b'"half')  # untouched: only the lock holder may cut it back
    assert orjson.loads(p.read_bytes().split(b"\n")[0]) == {"k": 1}
