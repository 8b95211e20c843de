"""The shared package: JSONL I/O and journal, record codecs, JSON extraction, the async client."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
from pathlib import Path

import orjson
import pytest

from sftkit.io import records as R
from sftkit.io.jsonl import BadLines, Journal, atomic_write, iter_jsonl, write_jsonl
from sftkit.io.text import chinese_ratio, find_refusal
from sftkit.llm.client import AsyncChatClient, ChatError, parse_retry_after
from sftkit.llm.config import RedactFilter, deep_merge
from sftkit.llm.jsonextract import extract_json, extract_json_list
from sftkit.testing.stub_server import Reply, StubServer

# ---- JSONL ---------------------------------------------------------------------------------------


def test_iter_jsonl_reports_bad_lines_and_keeps_going(tmp_path: Path, caplog) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{bad\n[1, 2]\n{"b": "\xe4\xb8\xad"}\n{"c":')
    bad = BadLines()
    rows = list(iter_jsonl(p, bad))
    assert rows == [(1, {"a": 1}), (4, [1, 2]), (5, {"b": "中"})]
    assert bad.count == 2 and bad.by_reason == {"invalid JSON": 2}
    assert f"{p}:3: invalid JSON" in caplog.text and f"{p}:6: invalid JSON" in caplog.text


def test_iter_jsonl_gzip(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(b'{"x": 1}\n{"x": 2}\n')
    assert [v for _, v in iter_jsonl(p)] == [{"x": 1}, {"x": 2}]


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_write(p) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert p.read_bytes() == b'{"a":1}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]


def test_journal_drops_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"k": 1}\n{"k": 2}\n{"k": 3, "v": "cut')
    j = Journal(p)
    assert j.entries == [{"k": 1}, {"k": 2}] and j.torn == 1
    j.append({"k": 4})
    j.close()
    assert p.read_bytes() == b'{"k": 1}\n{"k": 2}\n{"k":4}\n'
    assert Journal(p).entries == [{"k": 1}, {"k": 2}, {"k": 4}]


def test_journal_torn_line_with_newline_but_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"k": 1}\n{"k": \n')
    j = Journal(p)
    assert j.entries == [{"k": 1}] and j.torn == 1
    j.close()
    assert p.read_bytes() == b'{"k": 1}\n'


# ---- records -------------------------------------------------------------------------------------

CONV = [
    {"role": "system", "content": "你是助手。\n第二行"},
    {"role": "user", "content": "问题一"},
    {"role": "assistant", "content": "回答一\n\n带空行"},
    {"role": "user", "content": "问题二"},
    {"role": "assistant", "content": "回答二"},
]


def test_seed_chatml_text_exact_form_and_roundtrip() -> None:
    text = R.to_seed_chatml_text(CONV[:3])
    assert text == ("<|beginofutterance|>系统\n你是助手。\n第二行\n<|endofutterance|>\n"
                    "<|beginofutterance|>用户\n问题一\n<|endofutterance|>\n"
                    "<|beginofutterance|>智能助手\n回答一\n\n带空行\n<|endofutterance|>")
    assert R.to_record({"text": text})["messages"] == CONV[:3]
    assert R.to_record({"text": R.to_seed_chatml_text(CONV)})["messages"] == CONV


def test_seed_role_aliases() -> None:
    text = "<|beginofutterance|>用户\n你好\n<|endofutterance|>\n<|beginofutterance|>助手\n您好\n<|endofutterance|>"
    assert R.to_record({"text": text})["messages"] == [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"}]


def test_every_form_reads_to_the_same_messages() -> None:
    forms = [
        {"messages": CONV},
        {"text": R.to_im_text(CONV)},
        {"text": R.to_seed_chatml_text(CONV)},
        {"conversations": R.to_sharegpt(CONV)},
        R.to_firefly(CONV),
        R.to_alpaca(CONV)[0],
    ]
    for f in forms:
        assert R.to_record(f)["messages"] == CONV, f


def test_alpaca_input_joins_instruction() -> None:
    rec = R.to_record({"instruction": "翻译", "input": "hello", "output": "你好"})
    assert rec["messages"] == [{"role": "user", "content": "翻译\n\nhello"}, {"role": "assistant", "content": "你好"}]
    row, lost = R.to_alpaca(CONV, with_system=False)
    assert lost == ["system"] and "system" not in row


def test_firefly_keeps_category_and_id() -> None:
    rec = R.to_record({"conversation_id": 7, "category": "Brainstorming", "dataset": "firefly",
                       "conversation": [{"human": "a", "assistant": "b"}]})
    assert rec["id"] == "7" and rec["source"] == "firefly" and rec["meta"]["category"] == "Brainstorming"


@pytest.mark.parametrize(("obj", "reason"), [
    ([1], "not a JSON object"),
    ({"foo": 1}, "unknown record form"),
    ({"messages": []}, "no messages"),
    ({"messages": [{"role": "user", "content": "q"}]}, "last turn is not an assistant answer"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "turn 0 should be user"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "not a string"),
    ({"text": "plain"}, "neither"),
    ({"text": "<|im_start|>pirate\nx<|im_end|>"}, "unknown role"),
    ({"conversation": [{"assistant": "x"}]}, "no human turn"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history entry"),
])
def test_bad_records_give_reasons(obj, reason: str) -> None:
    with pytest.raises(R.RecordError, match=reason):
        R.to_record(obj)


def test_prompt_only_record_allowed_when_asked() -> None:
    rec = R.to_record({"messages": CONV[:4]}, need_answer=False)
    assert rec["messages"][-1] == {"role": "user", "content": "问题二"}


# ---- text ----------------------------------------------------------------------------------------


def test_chinese_ratio_definition() -> None:
    assert chinese_ratio("中文abc") == pytest.approx(2 / 5)
    assert chinese_ratio("中文，。！ 123") == pytest.approx(2 / 5)
    assert chinese_ratio("……") == 0.0
    assert chinese_ratio("⺀") == 1.0  # a Han radical is a symbol (So), not a letter, yet Han
    assert chinese_ratio("") == 0.0


def test_refusals() -> None:
    assert find_refusal("以上内容仅供参考") == "仅供参考"
    assert find_refusal("作为一个AI，我不能") is not None
    assert find_refusal("As an AI language model, I cannot") is not None
    assert find_refusal("建议先查阅学院通知，再与辅导员确认。") is None


# ---- config --------------------------------------------------------------------------------------


def test_deep_merge_keeps_unset_fields() -> None:
    base = {"judges": [{"name": "a", "model": "m1", "base_url": "u1"}], "x": {"y": 1, "z": 2}}
    merged = deep_merge(base, {"judges": [{"name": "a", "api_key": "k"}], "x": {"z": 3}})
    assert merged == {"judges": [{"name": "a", "model": "m1", "base_url": "u1", "api_key": "k"}],
                      "x": {"y": 1, "z": 3}}
    assert base["x"]["z"] == 2


def test_redact_filter_hides_key_in_messages_and_tracebacks(caplog) -> None:
    logger = logging.getLogger("redact-test")
    caplog.handler.addFilter(RedactFilter(["sk-abc"]))
    try:
        raise ValueError("bad key sk-abc")
    except ValueError:
        logger.exception("key was %s", "sk-abc")
    assert "sk-abc" not in caplog.text and "***" in caplog.text


# ---- JSON extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ('[{"a": 1}]', [{"a": 1}]),
    ('好的：\n```json\n[{"a": "x]y"}]\n```\n以上。', [{"a": "x]y"}]),
    ('结果如下 [{"a": 1}, {"a": 2}] 完毕', [{"a": 1}, {"a": 2}]),
    ('{"items": [{"a": 1}]}', [{"a": 1}]),
    ('{"instruction": "q", "output": "a"}', [{"instruction": "q", "output": "a"}]),
    ('注[1]见下：{"data": [{"a": 1}]}', [1]),
])
def test_extract_json_list(text: str, want) -> None:
    assert extract_json_list(text) == want


@pytest.mark.parametrize("text", ["", "   ", "没有 JSON", '[{"a": 1}', "```json\n{bad}\n```"])
def test_extract_json_fails_cleanly(text: str) -> None:
    with pytest.raises(ValueError):
        extract_json(text)


# ---- client --------------------------------------------------------------------------------------


def _chat(url: str, content: str, **kw) -> tuple:
    async def go():
        async with AsyncChatClient(url, "k", max_concurrency=2, backoff_base=0.01, **kw) as c:
            try:
                r = await c.chat([{"role": "user", "content": content}], model="m")
                return r, c.stats
            except ChatError as e:
                return e, c.stats
    return asyncio.run(go())


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_backoff_honours_retry_after_and_grows() -> None:
    c = AsyncChatClient("http://127.0.0.1:1/v1", backoff_base=1.0, backoff_max=30.0, seed=1)
    assert c.backoff(0, 7.0) == 7.0
    assert c.backoff(0, 100.0) == 30.0
    waits = [c.backoff(i, None) for i in range(6)]
    for i, w in enumerate(waits):
        cap = min(30.0, 2 ** i)
        assert cap / 2 <= w <= cap


def test_retries_exhausted_reports_reason() -> None:
    with StubServer(lambda b, a: Reply.error(502)) as srv:
        err, stats = _chat(srv.base_url, "x", retries=2)
        assert len(srv.requests) == 3
    assert isinstance(err, ChatError) and err.reason == "http_502" and err.attempts == 3 and err.exhausted
    assert stats.retries == {"http_502": 2} and stats.failed == {"http_502": 1}


def test_400_is_not_retried() -> None:
    with StubServer(lambda b, a: Reply.error(400, body=b'{"error": "bad model"}')) as srv:
        err, _ = _chat(srv.base_url, "x", retries=3)
        assert len(srv.requests) == 1
    assert err.reason == "http_400" and "bad model" in err.detail and not err.fatal and not err.exhausted


def test_429_retry_after_is_used() -> None:
    with StubServer(lambda b, a: Reply.error(429, retry_after="0.2") if a == 1 else Reply.ok("ok")) as srv:
        r, stats = _chat(srv.base_url, "x")
    assert r.content == "ok" and r.attempts == 2 and stats.retries == {"http_429": 1}


def test_keepalive_blank_lines_before_body() -> None:
    with StubServer(lambda b, a: Reply.ok("slow answer").with_keepalive(5)) as srv:
        r, _ = _chat(srv.base_url, "x")
    assert r.content == "slow answer" and r.attempts == 1


def test_reasoning_and_usage_fields() -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 22, "prompt_tokens_details": {"cached_tokens": 5},
             "completion_tokens_details": {"reasoning_tokens": 9}}
    with StubServer(lambda b, a: Reply.ok("ans", reasoning="think", finish_reason="length", usage=usage)) as srv:
        r, _ = _chat(srv.base_url, "x")
    assert (r.reasoning_content, r.finish_reason) == ("think", "length")
    assert r.usage.as_dict() == {"prompt_tokens": 11, "completion_tokens": 22, "cached_tokens": 5,
                                 "reasoning_tokens": 9}


def test_empty_content_and_bad_shape_are_retried() -> None:
    replies = {1: Reply.ok(""), 2: Reply.raw(b'{"choices": []}'), 3: Reply.ok("fine")}
    with StubServer(lambda b, a: replies[a]) as srv:
        r, stats = _chat(srv.base_url, "x")
    assert r.content == "fine" and stats.retries == {"empty_content": 1, "bad_response": 1}


def test_connection_refused_is_retried_then_fails() -> None:
    err, stats = _chat("http://127.0.0.1:9/v1", "x", retries=1)
    assert err.reason == "connection" and stats.retries == {"connection": 1}


def test_concurrency_never_exceeds_the_semaphore() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    class Counting(StubServer):
        async def _handle(self, request):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            try:
                await asyncio.sleep(0.02)
                return await super()._handle(request)
            finally:
                with lock:
                    state["now"] -= 1

    async def go(url: str) -> None:
        async with AsyncChatClient(url, max_concurrency=3) as c:
            await asyncio.gather(*(c.chat([{"role": "user", "content": str(i)}], model="m") for i in range(20)))

    with Counting(lambda b, a: Reply.ok("x")) as srv:
        asyncio.run(go(srv.base_url))
        assert len(srv.requests) == 20
    assert state["max"] == 3


def test_client_repr_hides_key() -> None:
    c = AsyncChatClient("http://127.0.0.1:1/v1", "sk-hidden")
    assert "sk-hidden" not in repr(c)
    assert orjson.dumps(c.stats.as_dict()).find(b"sk-hidden") == -1
