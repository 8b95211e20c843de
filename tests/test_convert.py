"""Conversions: lossless round trips through every format (hypothesis), loss reporting, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chatml2conversation
from sftkit.io.convert import FORMATS, fast_record, from_row, to_row
from sftkit.io.records import RecordError, content_id, to_record

TEXT = st.text(max_size=40) | st.sampled_from(["", "\n", "多行\n文本\n\n", "<|im_start|>", "  缩进"])
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=10),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                 max_size=3), max_leaves=6)


@st.composite
def records(draw: st.DrawFn) -> dict:
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(TEXT)})
        messages.append({"role": "assistant", "content": draw(TEXT)})
    meta = draw(st.dictionaries(st.sampled_from(["category", "topic", "model", "usage", "dataset", "x"]), JSONISH,
                                max_size=4))
    return {"id": draw(st.text(min_size=1, max_size=12)), "source": draw(st.text(min_size=1, max_size=8)),
            "messages": messages, "meta": meta}


@settings(max_examples=300, deadline=None)
@given(records(), st.sampled_from(FORMATS), st.sampled_from(["seed", "im"]))
def test_every_format_round_trips_exactly(rec: dict, fmt: str, style: str) -> None:
    row, lost = to_row(rec, fmt, conversation_id=7, chatml_style=style)
    if row is None:  # only a text form whose own marker sits inside a turn
        assert fmt == "chatml" and lost and "contains" in lost[-1]
        return
    back = from_row(orjson.loads(orjson.dumps(row)))  # through JSON, as on disk
    if lost:
        assert lost == ["empty system prompt"] and fmt in ("firefly", "alpaca")
        assert back == {**rec, "messages": rec["messages"][1:]}
    else:
        assert back == rec
    # a second trip changes nothing
    again, _ = to_row(back, fmt, conversation_id=7, chatml_style=style)
    assert again == row or lost


def test_firefly_row_keeps_system_turns_category_and_dataset() -> None:
    rec = {"id": "hit-3", "source": "hit", "meta": {"category": "Campus"},
           "messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "问1"},
                        {"role": "assistant", "content": "答1\n第二行"}, {"role": "user", "content": "问2"},
                        {"role": "assistant", "content": "答2"}]}
    row, lost = to_row(rec, "firefly", conversation_id=5, default_category="Brainstorming")
    assert lost == []
    assert row == {"conversation_id": 5, "id": "hit-3", "category": "Campus", "system": "你是助手",
                   "conversation": [{"human": "问1", "assistant": "答1\n第二行"}, {"human": "问2", "assistant": "答2"}],
                   "dataset": "hit", "meta": {"category": "Campus"}}
    row, _ = to_row({**rec, "meta": {}}, "firefly", default_category="Brainstorming")
    assert row["category"] == "Brainstorming"


def test_no_system_is_reported_not_silent() -> None:
    rec = {"id": "1", "source": "s", "meta": {}, "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    row, lost = to_row(rec, "alpaca", no_system=True)
    assert row["system"] == "" and lost == ["system prompt (--no-system)"]
    row, lost = to_row(rec, "alpaca")
    assert row["system"] == "sys" and lost == []


@pytest.mark.parametrize("messages,system,history", [
    ([("user", "u"), ("assistant", "a")], "", []),
    ([("system", "sys"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")], "sys",
     [["u1", "a1"]]),
])
def test_alpaca_rows_always_carry_system_and_history(messages: list, system: str, history: list) -> None:
    rec = {"id": "1", "source": "s", "meta": {}, "messages": [{"role": r, "content": c} for r, c in messages]}
    row, _ = to_row(rec, "alpaca")
    assert (row["system"], row["history"], row["instruction"], row["input"]) == (system, history, messages[-2][1], "")


def test_seed_chatml_text_form() -> None:
    rec = {"id": "1", "source": "hit", "meta": {}, "messages": [
        {"role": "system", "content": "系统提示"}, {"role": "user", "content": "问题"},
        {"role": "assistant", "content": "回答\n两行"}]}
    row, _ = to_row(rec, "chatml")
    assert row["text"] == ("<|beginofutterance|>系统\n系统提示\n<|endofutterance|>\n<|beginofutterance|>用户\n问题\n"
                           "<|endofutterance|>\n<|beginofutterance|>智能助手\n回答\n两行\n<|endofutterance|>")
    row, _ = to_row(rec, "chatml", chatml_style="im")
    assert row["text"].startswith("<|im_start|>system\n系统提示<|im_end|>\n<|im_start|>user\n")
    turns = [{"role": "user", "content": "x<|endofutterance|>"}, {"role": "assistant", "content": "y"}]
    bad = {**rec, "messages": turns}
    assert to_row(bad, "chatml") == (None, ["a turn contains <|endofutterance|>"])


ALPACA_VALUE = st.text(max_size=20) | st.none() | st.integers()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["instruction", "input", "output", "system", "id", "history"]), ALPACA_VALUE,
                       max_size=5))
def test_fast_record_equals_to_record(obj: dict) -> None:
    try:
        expected = to_record(obj, source="firefly", own_source=True)
    except (RecordError, TypeError, AttributeError) as e:
        with pytest.raises(type(e)):
            fast_record(obj, "firefly")
        return
    assert fast_record(obj, "firefly") == expected


def run_cli(tmp_path: Path, lines: list[str], *args: str) -> tuple[int, list[dict], dict]:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    rc = chatml2conversation.main(["--in", str(src), "--out", str(out), *args])
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    stats = json.loads((tmp_path / "out.stats.json").read_text()) if (tmp_path / "out.stats.json").exists() else {}
    return rc, rows, stats


SEED_LINE = json.dumps({"text": "<|beginofutterance|>系统\n你是哈工大助手\n<|endofutterance|>\n"
                                "<|beginofutterance|>用户\n图书馆几点开门？\n<|endofutterance|>\n"
                                "<|beginofutterance|>智能助手\n早上8点。\n周末9点。\n<|endofutterance|>"},
                       ensure_ascii=False)


def test_cli_seed_text_to_firefly_with_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [SEED_LINE, "{not json", json.dumps({"messages": [{"role": "assistant", "content": "先答"}]}),
             json.dumps({"instruction": "写诗", "output": "春眠不觉晓", "category": "Poem"}, ensure_ascii=False)]
    rc, rows, stats = run_cli(tmp_path, lines, "--start-id", "10")
    assert rc == 0
    messages = to_record(json.loads(SEED_LINE))["messages"]
    assert rows[0] == {"conversation_id": 10, "id": content_id(messages, "in"), "category": "Brainstorming",
                       "system": "你是哈工大助手",
                       "conversation": [{"human": "图书馆几点开门？", "assistant": "早上8点。\n周末9点。"}],
                       "dataset": "in", "meta": {}}  # no id, no source: a content id, the file's name as source
    assert rows[0]["id"].startswith("in-") and len(rows[0]["id"]) == 3 + 16
    assert rows[1]["conversation_id"] == 11 and rows[1]["category"] == "Poem"
    assert stats["read"] == 4 and stats["written"] == 2 and stats["bad_lines"]["bad_lines"] == 2
    assert "in.jsonl:2: invalid JSON" in caplog.text and "in.jsonl:3: invalid record" in caplog.text


def test_cli_reports_what_the_format_cannot_express(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, rows, stats = run_cli(tmp_path, [SEED_LINE], "--format", "alpaca", "--no-system")
    assert rc == 0 and rows[0]["system"] == ""
    assert stats["not_expressible"] == {"system prompt (--no-system)": 1}
    assert "not expressible in alpaca: system prompt (--no-system): 1" in capsys.readouterr().out


def test_cli_every_format_reads_back(tmp_path: Path) -> None:
    for fmt in FORMATS:
        rc, rows, _ = run_cli(tmp_path, [SEED_LINE], "--format", fmt)
        assert rc == 0 and len(rows) == 1
        assert from_row(rows[0])["messages"][2]["content"] == "早上8点。\n周末9点。"


def test_cli_exit_codes(tmp_path: Path) -> None:
    assert chatml2conversation.main(["--in", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    rc, rows, _ = run_cli(tmp_path, ["{bad", "[1, 2]"])
    assert rc == 2 and rows == []
    with pytest.raises(SystemExit) as e:
        chatml2conversation.main(["--in", "x", "--out", "y", "--format", "csv"])
    assert e.value.code == 2
