"""gen_SFT_data.py end to end against the scripted local server (127.0.0.1 only)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import gen_SFT_data
from sftkit.io.jsonl import Journal
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-TEST-secret-4242"
TOPIC_MARK = "请为主题《"


def topic_of(body: dict) -> str:
    user = body["messages"][-1]["content"]
    start = user.index(TOPIC_MARK) + len(TOPIC_MARK)
    return user[start:user.index("》", start)]


def item(topic: str, j: int) -> dict:
    return {
        "instruction": f"你是一名熟悉{topic}的校园顾问，请为学生提供准确、具体、可执行的建议和说明。",
        "input": f"关于{topic}，我第{j + 1}次遇到这个问题，应该怎样一步一步处理才稳妥？",
        "output": f"关于{topic}，建议按以下步骤处理：第一，查阅学校发布的正式通知，明确时间节点和材料要求；"
                  "第二，与辅导员或负责老师确认细节，避免因为信息不全而反复奔波；第三，提前准备好证件和复印件；"
                  f"第四，办理完成后保存回执，便于后续查询。以上是第{j + 1}条建议。",
    }


def items_script(body: dict, attempt: int) -> Reply:
    topic = topic_of(body)
    return Reply.ok(orjson.dumps([item(topic, j) for j in range(2)]).decode(),
                    usage={"prompt_tokens": 100, "completion_tokens": 50, "prompt_cache_hit_tokens": 40})


def write_topics(path: Path, topics: list[str]) -> Path:
    path.write_text("\n".join(topics) + "\n", encoding="utf-8")
    return path


TOPICS = ["新生报到", "图书馆预约", "大创申报", "保研推免", "冬季御寒"]


def run_gen(args: list[str]) -> int:
    return gen_SFT_data.main(args)


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def base_args(srv: StubServer, topics: Path, out: Path, *extra: str) -> list[str]:
    return ["--base-url", srv.base_url, "--api-key", KEY, "--model", "m", "--topics-file", str(topics),
            "--n-per-topic", "2", "--max-concurrency", "4", "--out", str(out), "--log", "WARNING",
            "--retries", "3", "--timeout", "2", *extra]


def test_happy_path_exact_records(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:2])
    out = tmp_path / "out" / "gen.jsonl"
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == 2
        assert all(r["temperature"] == 0.8 for r in srv.requests)
        assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == ["hit-0000-0", "hit-0000-1", "hit-0001-0", "hit-0001-1"]
    first = item("新生报到", 0)
    assert recs[0]["messages"] == [
        {"role": "system", "content": first["instruction"]},
        {"role": "user", "content": first["input"]},
        {"role": "assistant", "content": first["output"]},
    ]
    assert recs[0]["source"] == "hit" and recs[0]["meta"]["topic"] == "新生报到"
    assert recs[0]["meta"]["model"] == "stub"
    stats = orjson.loads((tmp_path / "out" / "gen.stats.json").read_bytes())
    assert stats["requests"]["ok_this_run"] == 2 and stats["requests"]["missing"] == 0
    assert stats["items"] == {"seen": 4, "valid": 4, "rejected": 0, "rejected_by_reason": {}}
    assert stats["tokens_this_run"] == {"prompt_tokens": 200, "completion_tokens": 100, "cached_tokens": 80,
                                        "reasoning_tokens": 0}


def test_rerun_requests_nothing_new(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS)
    out = tmp_path / "gen.jsonl"
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        first = out.read_bytes()
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == len(TOPICS)
    assert out.read_bytes() == first


def flaky_script(body: dict, attempt: int) -> Reply:
    """Each topic meets a different fault on its first attempt, then succeeds."""
    faults = {
        "新生报到": lambda: Reply.error(429, retry_after="0.05"),
        "图书馆预约": lambda: Reply.error(503),
        "大创申报": lambda: Reply.reset(),
        "保研推免": lambda: Reply.raw(b"{truncated"),
        "冬季御寒": lambda: Reply.raw(b"   \n\n"),
    }
    topic = topic_of(body)
    if attempt == 1:
        return faults[topic]()
    reply = items_script(body, attempt)
    return reply.with_keepalive(3) if topic == "新生报到" else reply


def test_every_fault_is_retried(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS)
    out = tmp_path / "gen.jsonl"
    with StubServer(flaky_script) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == 10
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["requests"]["retries_by_reason"] == {
        "http_429": 1, "http_503": 1, "connection": 1, "bad_json": 1, "empty_body": 1}
    assert stats["items"]["valid"] == 10


def test_timeout_then_success(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])
    out = tmp_path / "gen.jsonl"

    def script(body: dict, attempt: int) -> Reply:
        return Reply.hang(3) if attempt == 1 else items_script(body, attempt)

    with StubServer(script) as srv:
        assert run_gen(base_args(srv, topics, out, "--timeout", "0.5")) == 0
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["requests"]["retries_by_reason"] == {"timeout": 1}


def test_persistent_failure_exits_1_and_rerun_only_asks_missing(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:3])
    out = tmp_path / "gen.jsonl"
    broken = {"on": True}

    def script(body: dict, attempt: int) -> Reply:
        if broken["on"] and topic_of(body) == "大创申报":
            return Reply.error(500)
        return items_script(body, attempt)

    with StubServer(script) as srv:
        assert run_gen(base_args(srv, topics, out, "--retries", "1")) == 1
        assert "1 request(s) still missing" in capsys.readouterr().err
        stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
        assert stats["requests"]["failed_by_reason"] == {"http_500": 1}
        assert len(read_jsonl(out)) == 4
        n_before = len(srv.requests)
        broken["on"] = False
        assert run_gen(base_args(srv, topics, out)) == 0
        assert [topic_of(b) for b in srv.requests[n_before:]] == ["大创申报"]
    assert [r["id"] for r in read_jsonl(out)] == [f"hit-000{i}-{j}" for i in range(3) for j in range(2)]


def test_auth_error_stops_run(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS)
    out = tmp_path / "gen.jsonl"
    with StubServer(lambda b, a: Reply.error(401)) as srv:
        assert run_gen(base_args(srv, topics, out, "--max-concurrency", "1")) == 1
        assert len(srv.requests) < len(TOPICS)  # the rest were cancelled, not each refused in turn
    assert "refused" in capsys.readouterr().err


def test_validation_rejects_with_reasons(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", ["新生报到"])
    out = tmp_path / "gen.jsonl"
    good = item("新生报到", 0)
    bad_items = [
        good,
        good,  # a verbatim duplicate
        {**good, "output": "太短了"},
        {**good, "output": "This answer is written entirely in English and therefore is not Chinese at all. " * 3},
        {**good, "output": good["output"] + "以上内容仅供参考。"},
        {k: v for k, v in good.items() if k != "input"},
        {**good, "instruction": 42},
        "not an object",
    ]
    content = "好的，下面是结果：\n```json\n" + orjson.dumps(bad_items).decode() + "\n```\n希望有帮助。"
    with StubServer(lambda b, a: Reply.ok(content)) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
    assert len(read_jsonl(out)) == 1
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["items"]["rejected_by_reason"] == {
        "duplicate": 1, "output_too_short": 1, "output_low_chinese_ratio": 1, "refusal_or_disclaimer": 1,
        "input_too_short": 1, "instruction_not_string": 1, "not_an_object": 1}
    rejects = read_jsonl(tmp_path / "gen.rejects.jsonl")
    assert len(rejects) == 7 and rejects[0]["raw"] == good and rejects[0]["reason"] == "duplicate"


def test_unparsable_reply_is_journaled_not_rebought(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", ["新生报到"])
    out = tmp_path / "gen.jsonl"
    with StubServer(lambda b, a: Reply.ok("抱歉，这次没有 JSON。", finish_reason="stop")) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == 1
        assert run_gen(base_args(srv, topics, out, "--retry-failed")) == 0
        assert len(srv.requests) == 2
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["items"]["rejected_by_reason"] == {"no_json": 1}


def test_object_instead_of_array(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", ["新生报到"])
    out = tmp_path / "gen.jsonl"
    content = orjson.dumps({"items": [item("新生报到", 0)]}).decode()
    with StubServer(lambda b, a: Reply.ok(content)) as srv:
        assert run_gen(base_args(srv, topics, out, "--json-mode")) == 0
        assert srv.requests[0]["response_format"] == {"type": "json_object"}
    assert len(read_jsonl(out)) == 1


def test_reasoner_mode_sends_no_sampling_and_keeps_reasoning(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", ["新生报到"])
    out = tmp_path / "gen.jsonl"

    def script(body: dict, attempt: int) -> Reply:
        return Reply.ok(orjson.dumps([item("新生报到", 0)]).decode(), reasoning="先想一想。",
                        usage={"prompt_tokens": 10, "completion_tokens": 30,
                               "completion_tokens_details": {"reasoning_tokens": 12}})

    with StubServer(script) as srv:
        assert run_gen(base_args(srv, topics, out, "--mode", "reasoner", "--top-p", "0.9")) == 0
        body = srv.requests[0]
        assert "temperature" not in body and "top_p" not in body and "seed" not in body
        assert all("reasoning_content" not in m for m in body["messages"])
    assert "reasoning_content" not in read_jsonl(out)[0]["meta"]
    assert run_gen(base_args(srv, topics, out, "--mode", "reasoner", "--keep-reasoning")) == 0
    assert read_jsonl(out)[0]["meta"]["reasoning_content"] == "先想一想。"
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["tokens_total"]["reasoning_tokens"] == 12


def slice_script(body: dict, attempt: int) -> Reply:
    user = body["messages"][0]["content"]
    idx = user.split("（第 ", 1)[1].split("/", 1)[0]
    sid = "A" if "甲材料" in user else "B"
    pair = {"instruction": f"根据材料{sid}，第{idx}个问题：奖学金评定看哪些条件？", "input": "",
            "output": f"材料{sid}指出，评定主要看学业成绩与综合表现，第{idx}条回答。"}
    return Reply.ok(orjson.dumps(pair).decode())


def test_slices_mode(tmp_path: Path, caplog) -> None:
    slices = tmp_path / "s.jsonl"
    slices.write_text(
        '{"id": "s1", "content": "甲材料：奖学金评定以学业成绩为主，兼顾综合表现。", "metadata": {"d": 1}}\n'
        '{"content": "乙材料：奖学金评定以学业成绩为主。"}\n'
        'not json\n'
        '{"id": "s1", "content": "重复编号"}\n'
        '{"id": "x", "content": ""}\n', encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    with StubServer(slice_script) as srv:
        rc = run_gen(["--base-url", srv.base_url, "--api-key", KEY, "--model", "m", "--slices", str(slices),
                      "--samples-per-slice", "3", "--out", str(out), "--log", "WARNING"])
        assert rc == 0 and len(srv.requests) == 6
    err = caplog.text
    assert f"{slices}:3: invalid JSON" in err and f"{slices}:4: duplicate id 's1'" in err
    assert f"{slices}:5: missing or empty content" in err
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == [f"slices-{s}-{j}-0" for s in ("s1", "slice_2") for j in range(3)]
    assert recs[0]["messages"] == [
        {"role": "user", "content": "根据材料A，第1个问题：奖学金评定看哪些条件？"},
        {"role": "assistant", "content": "材料A指出，评定主要看学业成绩与综合表现，第1条回答。"}]
    assert recs[0]["meta"]["slice_id"] == "s1" and recs[0]["meta"]["slice_metadata"] == {"d": 1}
    assert recs[0]["meta"]["slice_excerpt"].startswith("甲材料")
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["input_bad_lines"]["bad_lines"] == 3


def test_bad_topic_lines_reported(tmp_path: Path, caplog) -> None:
    topics = tmp_path / "t.txt"
    topics.write_bytes("新生报到\n\n# 注释\n新生报到\n".encode() + b"\xff\xfe bad\n" + ("长" * 501).encode() + b"\n")
    out = tmp_path / "gen.jsonl"
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == 1
    err = caplog.text
    assert f"{topics}:4: duplicate topic" in err
    assert f"{topics}:5: invalid UTF-8" in err
    assert f"{topics}:6: topic too long" in err


def test_torn_journal_line_is_dropped_and_rerequested(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:2])
    out = tmp_path / "gen.jsonl"
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, out)) == 0
        journal = tmp_path / "gen.journal.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # SIGKILL mid-write of the 2nd entry
        assert run_gen(base_args(srv, topics, out)) == 0
        assert len(srv.requests) == 3
    assert len(read_jsonl(out)) == 4
    assert len(read_jsonl(journal)) == 2


def test_usage_errors_exit_2_before_any_request(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])
    out = str(tmp_path / "gen.jsonl")
    assert run_gen(["--topics-file", str(topics), "--out", out, "--base-url", "https://api.example.com"]) == 2
    assert "no API key" in capsys.readouterr().err
    assert run_gen(["--out", out, "--api-key", KEY]) == 2
    assert run_gen(["--topics-file", str(tmp_path / "nope.txt"), "--out", out, "--api-key", KEY]) == 2
    cfg = tmp_path / "c.json"
    cfg.write_text('{"n_per_topc": 3}')
    assert run_gen(["--config", str(cfg), "--topics-file", str(topics), "--out", out, "--api-key", KEY]) == 2
    assert "unknown key(s) n_per_topc" in capsys.readouterr().err
    prompt = tmp_path / "p.txt"
    prompt.write_text("写 {n} 条", encoding="utf-8")
    assert run_gen(["--prompt-file", str(prompt), "--topics-file", str(topics), "--out", out, "--api-key", KEY]) == 2
    assert "{topic}" in capsys.readouterr().err
    assert not Path(out).exists()


def test_local_server_needs_no_key_and_config_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])
    out = tmp_path / "gen.jsonl"
    prompt = tmp_path / "p.txt"
    prompt.write_text("请为主题《{topic}》写 {n} 条。", encoding="utf-8")
    with StubServer(items_script) as srv:
        cfg = tmp_path / "c.json"
        cfg.write_text(orjson.dumps({"base_url": srv.base_url, "n_per_topic": 5, "temperature": 0.3,
                                     "prompt_file": str(prompt)}).decode())
        assert run_gen(["--config", str(cfg), "--topics-file", str(topics), "--out", str(out),
                        "--n-per-topic", "4"]) == 0
        body = srv.requests[0]
        assert "Authorization" not in srv.headers[0]
    assert body["temperature"] == 0.3
    assert body["messages"][1]["content"] == "请为主题《新生报到》写 4 条。"


def test_dry_run_sends_nothing(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS)
    out = tmp_path / "gen.jsonl"
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, out, "--dry-run", "--limit", "3")) == 0
        assert srv.requests == []
    text = capsys.readouterr().out
    assert "requests: 3 (0 already journaled, 3 to send)" in text
    assert "请为主题《新生报到》" in text and "no request sent" in text
    assert not out.exists()


def test_key_never_written(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:3])
    out = tmp_path / "gen.jsonl"

    def script(body: dict, attempt: int) -> Reply:
        return Reply.error(500) if topic_of(body) == "大创申报" else items_script(body, attempt)

    with StubServer(script) as srv:
        assert run_gen(base_args(srv, topics, out, "--retries", "0", "--log", "DEBUG")) == 1
        assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"
    captured = capsys.readouterr()
    assert KEY not in captured.out and KEY not in captured.err
    files = list(tmp_path.iterdir())
    assert len(files) >= 5
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "gen_SFT_data.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(24)])
    rng = random.Random(7)
    with StubServer(items_script, latency=0.05) as srv:
        ref = tmp_path / "ref" / "gen.jsonl"
        assert run_gen(base_args(srv, topics, ref)) == 0
        srv.requests.clear()
        out = tmp_path / "killed" / "gen.jsonl"
        journal = out.with_name("gen.journal.jsonl")
        proc = _spawn(base_args(srv, topics, out, "--max-concurrency", "3"))
        stop_at = rng.randint(3, 15)
        for _ in range(600):
            if journal.exists() and journal.read_bytes().count(b"\n") >= stop_at:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert not out.exists()
        paid = {orjson.loads(line)["key"] for line in journal.read_bytes().splitlines() if line.endswith(b"}")}
        assert 0 < len(paid) < 24
        sent_before = len(srv.requests)
        assert run_gen(base_args(srv, topics, out)) == 0
        from sftkit.distill.generation import request_key

        resent = {request_key("m", b["messages"]) for b in srv.requests[sent_before:]}
    assert not (resent & paid), "a completed request was paid for twice"
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("mode", ["topics"])
def test_help_lists_every_flag(mode: str, capsys) -> None:
    with pytest.raises(SystemExit):
        gen_SFT_data.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--api-key", "--base-url", "--model", "--mode", "--out", "--topics-file", "--n-per-topic",
                 "--max-concurrency", "--temperature", "--config", "--max-tokens", "--timeout", "--retries",
                 "--prompt-file", "--dry-run", "--limit", "--seed", "--slices", "--samples-per-slice",
                 "--keep-reasoning", "--rpm", "--tpm", "--breaker-failures", "--breaker-window", "--backoff-base",
                 "--backoff-max"):
        assert flag in text


def test_unexpected_error_traceback_masks_key(tmp_path: Path, monkeypatch, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])

    def boom(*a, **k):
        raise RuntimeError(f"unexpected failure while holding {KEY}")

    monkeypatch.setattr(gen_SFT_data.g, "build_records", boom)
    with StubServer(items_script) as srv:
        assert gen_SFT_data.cli(base_args(srv, topics, tmp_path / "gen.jsonl")) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: unexpected failure while holding ***" in err and KEY not in err


# ---- failing endpoints, concurrent runs, full disks -------------------------------------------------------

FAST_BREAKER = ("--breaker-window", "0.3", "--backoff-base", "0.02")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_dead_endpoint_ends_the_run_after_a_few_requests_and_rerun_sends_only_the_rest(tmp_path: Path,
                                                                                         capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(300)])
    out = tmp_path / "gen.jsonl"
    dead = {"on": True}
    with StubServer(lambda b, a: Reply.error(500) if dead["on"] else items_script(b, a)) as srv:
        assert run_gen(base_args(srv, topics, out, *FAST_BREAKER)) == 1
        assert len(srv.requests) <= 3 * 4  # the concurrency bounds it, not the 300 topics
        [line] = error_lines(capsys.readouterr().err)
        assert "is down" in line and "http_500" in line and srv.base_url in line and KEY not in line
        assert "300 request(s) still missing" in line
        stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
        assert stats["requests"]["failed_by_reason"] == {"endpoint_down": 300}
        assert "is down" in stats["endpoint"]["failure"] and stats["requests"]["attempts_sent"] == len(srv.requests)
        sent = len(srv.requests)
        dead["on"] = False
        assert run_gen(base_args(srv, topics, out, *FAST_BREAKER)) == 0
        assert len(srv.requests) - sent == 300
    assert len(read_jsonl(out)) == 600


def test_out_of_balance_stops_at_once(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(100)])
    body = b'{"error": {"message": "Insufficient Balance", "type": "unknown_error"}}'
    with StubServer(lambda b, a: Reply.error(402, body=body)) as srv:
        assert run_gen(base_args(srv, topics, tmp_path / "gen.jsonl")) == 1
        assert len(srv.requests) <= 4  # those already in flight, never retried
    [line] = error_lines(capsys.readouterr().err)
    assert "402" in line and "Insufficient Balance" in line and "top it up" in line


def test_429_burst_completes_with_the_same_output_as_a_clean_run(tmp_path: Path) -> None:
    from sftkit.testing.stub_server import outage

    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(60)])
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, tmp_path / "ref" / "gen.jsonl", "--max-concurrency", "8")) == 0
    with StubServer(outage(1.0, lambda: Reply.error(429, retry_after="0.2"), then=items_script)) as srv:
        out = tmp_path / "burst" / "gen.jsonl"
        assert run_gen(base_args(srv, topics, out, "--max-concurrency", "8", "--retries", "8")) == 0
        assert len(srv.requests) <= 60 + 3 * 8
    assert out.read_bytes() == (tmp_path / "ref" / "gen.jsonl").read_bytes()


def test_400_fails_that_request_only_with_the_reason_in_stats(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS)
    body = b'{"error": {"message": "This model\'s maximum context length is 65536 tokens"}}'

    def script(b: dict, attempt: int) -> Reply:
        return Reply.error(400, body=body) if topic_of(b) == "大创申报" else items_script(b, attempt)

    with StubServer(script) as srv:
        assert run_gen(base_args(srv, topics, tmp_path / "gen.jsonl")) == 1
        assert len(srv.requests) == len(TOPICS)
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert stats["requests"]["failed_by_reason"] == {"http_400": 1} and stats["endpoint"]["failure"] is None
    assert "maximum context length" in stats["requests"]["failure_details"]["http_400"]
    assert stats["requests"]["done"] == 4
    [line] = error_lines(capsys.readouterr().err)
    assert "1 request(s) still missing" in line


def _wait_for(cond, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)
    assert cond()


def test_second_run_on_the_same_out_is_refused_and_nothing_is_bought_twice(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(16)])
    out = tmp_path / "gen.jsonl"
    lock = tmp_path / "gen.journal.jsonl.lock"
    with StubServer(items_script, latency=0.2) as srv:
        first = _spawn(base_args(srv, topics, out, "--max-concurrency", "2"))
        try:
            _wait_for(lambda: len(srv.requests) >= 1)
            assert run_gen(base_args(srv, topics, out)) == 2
            [line] = error_lines(capsys.readouterr().err)
            assert f"pid {first.pid}" in line and "in use" in line
            assert run_gen(base_args(srv, topics, out, "--dry-run")) == 0  # a dry run needs no lock
            assert first.wait(60) == 0
        finally:
            first.kill()
            first.wait(10)
        assert len(srv.requests) == 16
    assert len(read_jsonl(out)) == 32 and not lock.exists()


def test_lock_left_by_a_killed_run_does_not_block(tmp_path: Path) -> None:
    topics = write_topics(tmp_path / "t.txt", [f"主题{i}" for i in range(12)])
    out = tmp_path / "gen.jsonl"
    lock = tmp_path / "gen.journal.jsonl.lock"
    journal = tmp_path / "gen.journal.jsonl"
    with StubServer(items_script, latency=0.1) as srv:
        proc = _spawn(base_args(srv, topics, out, "--max-concurrency", "1"))
        try:
            _wait_for(lambda: journal.exists() and journal.read_bytes().count(b"\n") >= 2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert lock.read_text().strip() == str(proc.pid)  # its file is still there, its flock is gone
        assert run_gen(base_args(srv, topics, out)) == 0
    assert len(read_jsonl(out)) == 24 and not lock.exists()


def test_full_disk_gives_one_line_and_keeps_the_journal_whole(tmp_path: Path) -> None:
    """Writes fail for real: the child may not grow any file past LIMIT bytes (RLIMIT_FSIZE), so the third
    journal append is cut short by the kernel and then refused, like a disk that fills up mid-line."""
    import resource

    topics = write_topics(tmp_path / "t.txt", TOPICS)
    with StubServer(items_script) as srv:
        ref = tmp_path / "ref" / "gen.jsonl"
        assert run_gen(base_args(srv, topics, ref, "--max-concurrency", "1")) == 0
        sizes = [len(line) + 1 for line in (tmp_path / "ref" / "gen.journal.jsonl").read_bytes().splitlines()]
        limit = sizes[0] + sizes[1] + sizes[2] // 2
        out = tmp_path / "full" / "gen.jsonl"
        journal = out.with_name("gen.journal.jsonl")
        srv.requests.clear()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "gen_SFT_data.py"), *base_args(srv, topics, out, "--max-concurrency", "1")],
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True,
            text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        assert proc.returncode == 1
        [line] = error_lines(proc.stderr)
        assert "File too large" in line and str(journal) in line and "journal keeps" in line
        assert "Traceback" not in proc.stderr
        assert len(srv.requests) == 3  # nothing more was bought once the answers could not be kept
        assert journal.read_bytes().count(b"\n") == 2 and journal.read_bytes().endswith(b"}\n")  # whole
        assert len(Journal.read(journal)) == 2 and not out.exists()
        assert run_gen(base_args(srv, topics, out)) == 0  # room again: the rerun sends only what is missing
        assert len(srv.requests) == 3 + 3
    assert out.read_bytes() == ref.read_bytes()


def test_unwritable_output_directory_gives_one_line(tmp_path: Path, capsys) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])
    (tmp_path / "afile").write_text("x")
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, tmp_path / "afile" / "gen.jsonl")) == 1
        assert srv.requests == []
    [line] = error_lines(capsys.readouterr().err)
    assert "cannot write the journal" in line and "File exists" in line


@pytest.mark.parametrize("flag,value", [("--rpm", "0"), ("--tpm", "-5"), ("--breaker-failures", "0"),
                                        ("--breaker-window", "-1"), ("--backoff-max", "0.001")])
def test_bad_policy_flags_exit_2_before_any_request(tmp_path: Path, capsys, flag: str, value: str) -> None:
    topics = write_topics(tmp_path / "t.txt", TOPICS[:1])
    with StubServer(items_script) as srv:
        assert run_gen(base_args(srv, topics, tmp_path / "gen.jsonl", flag, value)) == 2
        assert srv.requests == []
    [line] = error_lines(capsys.readouterr().err)
    assert flag in line
