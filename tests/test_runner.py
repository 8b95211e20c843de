"""The shared journaled-request runner (sftkit/llm/runner.py) against the scripted local server (127.0.0.1 only):
keys, resume after a torn journal line, a reader rejecting an answer, accounting by reason, a refused key
stopping every endpoint, the read-only view."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from sftkit.llm.client import ChatError, ChatResult
from sftkit.llm.runner import (
    Answer,
    Job,
    JournaledRun,
    Stage,
    Tally,
    Target,
    cost,
    entry_key,
    prompt_hash,
    request_key,
    usage_of,
)
from sftkit.testing.stub_server import Reply, StubServer, by_model

MSGS = [{"role": "user", "content": "你好"}]


class Echo(Stage):
    """Journals every answer as {"key", "content", "answers", "attempts"}."""

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        return Answer({"key": job.key, "content": result.content, "answers": tally.answers,
                       "attempts": tally.attempts})


def target(srv: StubServer, model: str = "m", **kw: Any) -> Target:
    return Target(srv.base_url, "sk-test", model, **{"max_concurrency": 1, "retries": 0, **kw})


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_keys_are_the_journals_keys() -> None:
    # Journals written before the runner existed must still resume: the keys are pinned byte for byte.
    assert request_key("deepseek-chat", MSGS) == hashlib.sha1(
        b'["deepseek-chat",[{"role":"user","content":"\xe4\xbd\xa0\xe5\xa5\xbd"}]]').hexdigest()[:20]
    assert prompt_hash("m", MSGS) == hashlib.sha256(
        b'{"messages":[{"content":"\xe4\xbd\xa0\xe5\xa5\xbd","role":"user"}],"model":"m"}').hexdigest()[:20]
    assert request_key("m", MSGS) != request_key("n", MSGS)
    assert entry_key({"key": "a", "x": 1}, ("key",)) == "a"
    assert entry_key({"rid": "r", "judge": "j", "ph": "p"}, ("rid", "judge", "ph")) == ("r", "j", "p")
    assert entry_key({"rid": "r", "judge": "j"}, ("rid", "judge", "ph")) is None
    assert entry_key(["key"], ("key",)) is None
    assert usage_of({"usage": {"prompt_tokens": "3", "completion_tokens": 4, "foreign": 9}}).as_dict() == {
        "prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0, "reasoning_tokens": 0}


def test_index_latest_wins_and_pending_with_redo(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"key": "a", "ok": false}\n{"key": "b", "ok": true}\n{"other": 1}\n{"key": "a", "ok": true}\n'
                     b'{"key": "c", "ok": false}\n')
    view = JournaledRun(path, ("key",), read_only=True)
    assert view.index() == {"a": {"key": "a", "ok": True}, "b": {"key": "b", "ok": True},
                            "c": {"key": "c", "ok": False}}
    jobs = [Job(k, MSGS) for k in ("a", "b", "c", "d")]
    assert [j.key for j in view.pending(jobs)] == ["d"]
    assert [j.key for j in view.pending(jobs, lambda e: not e["ok"])] == ["c", "d"]


def test_resume_after_a_torn_line_sends_only_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    kept = b'{"key":"k0","content":"old0"}\n{"key":"k1","content":"old1"}\n'
    path.write_bytes(kept + b'{"key":"k2","cont')  # a run killed in the middle of a write
    with StubServer(lambda body, n: Reply.ok("new " + body["messages"][0]["content"])) as srv:
        run = JournaledRun(path, ("key",))
        assert run.journal is not None and run.journal.torn == 1
        jobs = [Job(f"k{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(4)]
        todo = run.pending(jobs)
        assert [j.key for j in todo] == ["k2", "k3"]
        result = run.send(todo, {"": target(srv)}, Echo())
        run.close()
    assert [b["messages"][0]["content"] for b in srv.requests] == ["q2", "q3"]
    data = path.read_bytes()
    assert data.startswith(kept) and b"cont\n" not in data
    assert lines(path)[2:] == [{"key": "k2", "content": "new q2", "answers": 1, "attempts": 1},
                               {"key": "k3", "content": "new q3", "answers": 1, "attempts": 1}]
    t = result.targets[""]
    assert (t.jobs, t.journaled, dict(t.outcomes), dict(t.failed)) == (2, 2, {"ok": 2}, {})
    assert t.usage.as_dict() == {"prompt_tokens": 20, "completion_tokens": 40, "cached_tokens": 0,
                                 "reasoning_tokens": 0}
    assert result.fatal == "" and result.write_error == "" and result.down() == {}
    # A second run finds nothing to send.
    with JournaledRun(path, ("key",)) as again:
        assert again.pending(jobs) == []


class Strict(Stage):
    """Rejects the answer "bad": asks again with a note while tries are left, then journals it as invalid.
    A request that failed for good is journaled only for jobs whose data says so."""

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        entry = {"key": job.key, "content": result.content, "answers": tally.answers, "attempts": tally.attempts,
                 "usage": tally.usage.as_dict()}
        if result.content == "bad":
            return Answer(entry, outcome="invalid", ok=False,
                          retry=[*job.messages, {"role": "assistant", "content": "bad"},
                                 {"role": "user", "content": "again"}])
        return Answer(entry)

    def failed(self, job: Job, err: ChatError, tally: Tally) -> Answer | None:
        if job.data == "keep failures":
            return Answer({"key": job.key, "error": f"request:{err.reason}"}, outcome=f"request:{err.reason}",
                          ok=False)
        return None


def strict_script(body: dict[str, Any], n: int) -> Reply:
    last = body["messages"][-1]["content"]
    if last.startswith("400"):
        return Reply.error(400)
    return Reply.ok("good" if last == "again" else "bad")


def test_reader_rejecting_an_answer_and_failures_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    jobs = [Job("retried", [{"role": "user", "content": "q"}], tries=2),
            Job("given-up", [{"role": "user", "content": "q1"}], tries=1),
            Job("dropped", [{"role": "user", "content": "400 a"}], tries=3),
            Job("kept", [{"role": "user", "content": "400 b"}], data="keep failures")]
    with StubServer(strict_script) as srv, JournaledRun(path, ("key",)) as run:
        result = run.send(jobs, {"": target(srv)}, Strict())
    assert len(srv.requests) == 5  # 2 for "retried", 1 each for the others: a 400 is not asked again
    assert srv.requests[1]["messages"][-1] == {"role": "user", "content": "again"}
    by_key = {e["key"]: e for e in lines(path)}
    assert set(by_key) == {"retried", "given-up", "kept"}  # "dropped" left no entry: a rerun asks again
    assert by_key["retried"] == {"key": "retried", "content": "good", "answers": 2, "attempts": 2,
                                 "usage": {"prompt_tokens": 20, "completion_tokens": 40, "cached_tokens": 0,
                                           "reasoning_tokens": 0}}
    assert by_key["given-up"]["content"] == "bad" and by_key["given-up"]["answers"] == 1
    assert by_key["kept"] == {"key": "kept", "error": "request:http_400"}
    t = result.targets[""]
    assert (t.jobs, t.journaled) == (4, 3)
    assert dict(t.outcomes) == {"ok": 1, "invalid": 1, "request:http_400": 1}
    assert dict(t.failed) == {"http_400": 1} and t.not_journaled == 1
    assert t.usage.prompt_tokens == 30 and t.usage.completion_tokens == 60  # the journaled jobs' 3 answers
    assert t.client is not None and t.client.ok == 3 and dict(t.client.failed) == {"http_400": 2}
    assert cost("deepseek-chat", t.usage) == round((30 * 0.28 + 60 * 0.42) / 1e6, 6) == 3.4e-05
    assert cost("no-such-model", t.usage) is None
    assert cost("no-such-model", t.usage, {"input": 1.0, "output": 2.0}) == round((30 + 120) / 1e6, 6)


def test_options_reach_the_request_body(tmp_path: Path) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "items", "schema": {"type": "object"}}}
    job = Job("k", MSGS, {"temperature": 0.3, "max_tokens": 50, "response_format": schema,
                          "extra": {"seed": 7}})
    with StubServer(lambda body, n: Reply.ok("x")) as srv, JournaledRun(tmp_path / "j.jsonl", ("key",)) as run:
        run.send([job], {"": target(srv, model="teacher")}, Echo())
    body = srv.requests[0]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("teacher", 0.3, 50, 7)
    assert body["response_format"] == schema and body["messages"] == MSGS


def test_a_refused_key_stops_every_endpoint(tmp_path: Path) -> None:
    script = by_model({"dead": lambda body, n: Reply.error(401, body=b'{"error": "invalid api key"}'),
                       "slow": lambda body, n: Reply.ok("fine", delay=0.5)})
    path = tmp_path / "j.jsonl"
    jobs = [Job(f"d{i}", [{"role": "user", "content": f"d{i}"}], target="dead") for i in range(4)]
    jobs += [Job(f"s{i}", [{"role": "user", "content": f"s{i}"}], target="slow") for i in range(3)]
    with StubServer(script) as srv, JournaledRun(path, ("key",)) as run:
        result = run.send(jobs, {"dead": target(srv, "dead", label="judge 'dead'"),
                                 "slow": target(srv, "slow", label="judge 'slow'")}, Echo())
    models = [b["model"] for b in srv.requests]
    assert models.count("dead") == 1  # nothing more is sent once the key is refused
    assert models.count("slow") == 1  # the request already in flight finishes; the others are never sent
    dead, slow = result.targets["dead"], result.targets["slow"]
    assert dict(dead.failed) == {"http_401": 1, "endpoint_refused": 3} and dead.journaled == 0
    assert dict(slow.failed) == {"stopped": 2} and slow.journaled == 1
    assert [e["key"] for e in lines(path)] == ["s0"]
    assert result.fatal.startswith("judge 'dead' refused the request, http_401") and "check the API key" in result.fatal
    assert dead.failure is not None and dead.failure.kind == "fatal"
    assert slow.failure is not None
    assert slow.failure.line() == "judge 'slow': stopped (judge 'dead' refused the request)"
    assert result.down() == {}


def test_read_only_view_locks_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "j.jsonl"
    view = JournaledRun(path, ("key",), read_only=True)
    assert view.entries == [] and view.pending([Job("a", MSGS)]) == [Job("a", MSGS)]
    assert not (tmp_path / "sub").exists()
    with pytest.raises(RuntimeError, match="read-only"):
        view.send([Job("a", MSGS)], {"": Target("http://127.0.0.1:9", "", "m")}, Echo())
    with pytest.raises(KeyError, match="unknown target"):
        with JournaledRun(tmp_path / "j.jsonl", ("key",)) as run:
            run.send([Job("a", MSGS, target="nope")], {"": Target("http://127.0.0.1:9", "", "m")}, Echo())
