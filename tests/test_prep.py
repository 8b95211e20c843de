"""prep_sft_firefly_hit.py end to end on small hand-made inputs, and the streaming block reader."""

from __future__ import annotations

import gzip
import json
import random
import shlex
import subprocess
from contextlib import closing
from pathlib import Path

import numpy as np
import orjson
import pytest

import prep_sft_firefly_hit as prep
from sftkit.clean import neardup
from sftkit.clean.dedup import ExactDedup, within_across
from sftkit.clean.filters import DEFAULT_LENGTHS, FilterConfig
from sftkit.clean.pool import RecordPool, write_records
from sftkit.clean.stage import SourceSpec, check_inputs, in_priority_order
from sftkit.clean.workers import BlockWorkers
from sftkit.io.blocks import InputError, detect_kind, iter_blocks, parse_block
from sftkit.io.records import to_record

VOCAB = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
         "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由")


def zh(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(VOCAB) for _ in range(n))


def alpaca(rng: random.Random, answer_len: int = 120) -> dict:
    return {"instruction": "请详细介绍一下" + zh(rng, 20), "input": "",
            "output": zh(rng, answer_len // 2) + "\n\n" + zh(rng, answer_len // 2)}


def seed_text(system: str, user: str, answer: str) -> dict:
    return {"text": f"<|beginofutterance|>系统\n{system}\n<|endofutterance|>\n<|beginofutterance|>用户\n{user}\n"
                    f"<|endofutterance|>\n<|beginofutterance|>智能助手\n{answer}\n<|endofutterance|>"}


def write_array(path: Path, rows: list, pretty: bool = True) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=4 if pretty else None), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def run(tmp_path: Path, *args: str, out: str = "mixed.jsonl") -> tuple[int, list[dict], dict]:
    out_path = tmp_path / out
    flags = [a for a in args if a != "--two-workers"]
    rc = prep.main([*flags, "--out", str(out_path), "--workers", args_workers(args), "--block-mb", "0.002",
                    "--log", "INFO"])
    rows = [json.loads(x) for x in out_path.read_text(encoding="utf-8").splitlines()] if out_path.exists() else []
    stats_path = out_path.with_name(out_path.name.replace(".jsonl", ".stats.json"))
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return rc, rows, stats


def args_workers(args: tuple[str, ...]) -> str:
    return "2" if "--two-workers" in args else "1"


@pytest.fixture
def data(tmp_path: Path) -> dict:
    rng = random.Random(0)
    firefly = [alpaca(rng) for _ in range(60)]
    hit = [seed_text("你是哈工大的校园助手，回答要准确" + zh(rng, 4), "请问" + zh(rng, 25) + "？",
                     zh(rng, 60) + "\n" + zh(rng, 60)) for _ in range(20)]
    return {"firefly": firefly, "hit": hit, "rng": rng}


def test_seed_command_mixes_at_the_exact_ratio(tmp_path: Path, data: dict) -> None:
    ff = write_array(tmp_path / "firefly.json", data["firefly"])
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"])
    rc, rows, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--total", "50",
                          "--hit-ratio", "0.4", "--max-firefly", "250000", "--min-chinese-ratio", "0.65",
                          "--drop-pii")  # (the seed's --near-dup-threshold 3 is SimHash's: refused under MinHash)
    assert rc == 0
    assert len(rows) == 50 and sum(r["source"] == "hit" for r in rows) == 20
    assert stats["mix"]["policy"] == "exact" and stats["mix"]["achieved_shares"] == {"hit": 0.4, "firefly": 0.6}
    assert stats["sources"]["firefly"]["read"] == 60 and stats["sources"]["hit"]["usable"] == 20
    hit_row = next(r for r in rows if r["source"] == "hit")
    assert [m["role"] for m in hit_row["messages"]] == ["system", "user", "assistant"]
    assert "\n" in hit_row["messages"][2]["content"]  # newlines inside content survive
    assert hit_row["id"].startswith("hit-") and len({r["id"] for r in rows}) == 50
    ff_row = next(r for r in rows if r["source"] == "firefly")
    assert [m["role"] for m in ff_row["messages"]] == ["user", "assistant"]  # instruction is the user's turn
    assert "\n\n" in ff_row["messages"][1]["content"]
    assert stats["timing"]["records_per_s"] > 0 and "near_dedup" in stats["timing"]["stages"]
    # only the output and its stats are left beside the inputs (the record pool is an unlinked temp file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["firefly.json", "hit.jsonl", "mixed.jsonl",
                                                          "mixed.stats.json"]


def test_duplicates_across_sources_are_won_by_hit(tmp_path: Path, data: dict) -> None:
    rng = data["rng"]
    hit_src = [seed_text("你是哈工大的校园助手" + zh(rng, 4), "请问" + zh(rng, 25) + "？",
                         zh(rng, 500) + "\n" + zh(rng, 500)) for _ in range(5)]
    hit_rows = [to_record(h) for h in hit_src]
    # firefly holds an exact copy of hit 0 (different punctuation and spacing), a one-character edit of hit 1,
    # and a copy of its own first row
    copy0 = {"instruction": hit_rows[0]["messages"][1]["content"].replace("？", " ?"), "input": "",
             "output": hit_rows[0]["messages"][2]["content"] + "。"}
    answer1 = hit_rows[1]["messages"][2]["content"]
    near1 = {"instruction": hit_rows[1]["messages"][1]["content"], "input": "",
             "output": answer1[:50] + "变" + answer1[51:]}
    firefly = [copy0, near1, *data["firefly"][:10], dict(data["firefly"][0])]
    ff = write_jsonl(tmp_path / "ff.jsonl", firefly)
    hit = write_jsonl(tmp_path / "hit.jsonl", hit_src)
    long_answers = ("--length", "assistant=80:2000")
    rc, rows, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), *long_answers)
    assert rc == 0
    fs, hs = stats["sources"]["firefly"], stats["sources"]["hit"]
    assert (fs["exact_dup_across"], fs["exact_dup_within"], fs["near_dup_across"]) == (1, 1, 1)
    assert hs["usable"] == 5 and fs["usable"] == 10
    assert stats["dedup"]["near_pairs_confirmed"] >= 1 and stats["dedup"]["near_method"] == "minhash"
    assert len(rows) == 15  # no total: every usable record


def test_dedup_report_names_every_removed_record_and_its_cause(tmp_path: Path, data: dict) -> None:
    rng = data["rng"]
    hit_src = [seed_text("你是哈工大的校园助手", "请问" + zh(rng, 25) + "？", zh(rng, 150)) for _ in range(3)]
    hit_rows = [to_record(h, source="hit") for h in hit_src]
    answer = hit_rows[0]["messages"][2]["content"]
    question = hit_rows[0]["messages"][1]["content"]
    firefly = [{"instruction": question, "input": "", "output": answer[:70] + "增" + answer[70:]},  # insert: across
               *data["firefly"][:4],
               {"instruction": data["firefly"][1]["instruction"], "input": "",  # delete two characters: within
                "output": data["firefly"][1]["output"][:30] + data["firefly"][1]["output"][32:]},
               {**data["firefly"][2], "output": data["firefly"][2]["output"] + "。"}]  # same key: exact, within
    ff = write_jsonl(tmp_path / "ff.jsonl", firefly)
    hit = write_jsonl(tmp_path / "hit.jsonl", hit_src)
    report = tmp_path / "removed.jsonl"
    rc, rows, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--dedup-report",
                          str(report))
    assert rc == 0 and len(rows) == 3 + 4
    removed = [json.loads(x) for x in report.read_text(encoding="utf-8").splitlines()]
    ids = {r["id"]: r for r in rows}
    ff_id = {i: to_record(firefly[i], source="firefly")["id"] for i in range(len(firefly))}
    by_id = {r["id"]: r for r in removed}
    assert set(by_id) == {ff_id[0], ff_id[5], ff_id[6]} and not set(by_id) & set(ids)
    assert by_id[ff_id[0]] | {"jaccard": None} == {"id": ff_id[0], "source": "firefly", "how": "near",
                                                   "duplicate_of": hit_rows[0]["id"], "duplicate_source": "hit",
                                                   "jaccard": None}
    assert 0.9 < by_id[ff_id[0]]["jaccard"] < 1
    assert by_id[ff_id[5]]["duplicate_of"] == ff_id[2] and by_id[ff_id[5]]["how"] == "near"
    assert by_id[ff_id[6]] == {"id": ff_id[6], "source": "firefly", "duplicate_of": ff_id[3],
                               "duplicate_source": "firefly", "how": "exact"}
    d = stats["dedup"]
    assert (d["exact_within"], d["exact_across"], d["near_within"], d["near_across"]) == (1, 0, 1, 1)
    assert stats["output"]["dedup_report"]["records"] == 3
    # The seed's SimHash stays available: it finds the cross-source insertion here too, by Hamming distance.
    rc, rows, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--dedup-report",
                          str(report), "--near-dup-method", "simhash", "--near-dup-threshold", "3", out="simhash.jsonl")
    assert rc == 0 and stats["dedup"]["near_method"] == "simhash" and stats["dedup"]["near_dup_threshold"] == 3
    _, _, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--near-dup-method", "simhash",
                      out="simhash_default.jsonl")
    assert stats["dedup"]["near_dup_threshold"] == 3  # SimHash's default radius, the seed's
    _, _, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), out="minhash.jsonl")
    assert stats["dedup"]["near_dup_threshold"] is None and stats["dedup"]["minhash"]["threshold"] == 0.7
    assert all("hamming" in json.loads(x) for x in report.read_text().splitlines() if '"near"' in x)
    _, _, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--near-dup-threshold", "-1",
                      out="exact_only.jsonl")
    assert stats["dedup"]["near_method"] is None and stats["dedup"]["near_within"] == 0


def test_records_take_the_source_name_and_a_content_id(tmp_path: Path, data: dict) -> None:
    row = {"conversation_id": 9, "dataset": "moss", "conversation": [
        {"human": data["firefly"][0]["instruction"], "assistant": data["firefly"][0]["output"]}]}
    ff = write_jsonl(tmp_path / "ff.jsonl", [row, data["firefly"][1]])
    _, out, _ = run(tmp_path, "--firefly-json", str(ff))
    assert [r["source"] for r in out] == ["firefly", "firefly"]  # the mix counts by source: so do the records
    moss = next(r for r in out if r["id"] == "9")
    assert moss["meta"]["dataset"] == "moss"  # the row's own name is kept
    plain = next(r for r in out if r["id"] != "9")
    assert plain["id"] == to_record(data["firefly"][1], source="firefly")["id"]
    assert plain["id"].startswith("firefly-") and len(plain["id"]) == len("firefly-") + 16
    # the same content gets the same id in another run, whatever its position
    ff2 = write_jsonl(tmp_path / "ff2.jsonl", [data["firefly"][3], data["firefly"][1]])
    _, out2, _ = run(tmp_path, "--firefly-json", str(ff2), out="again.jsonl")
    assert plain["id"] in {r["id"] for r in out2}


def test_default_normalisation_keeps_chinese_punctuation(tmp_path: Path, data: dict) -> None:
    rng = data["rng"]
    answer = "第一，" + zh(rng, 60) + "：（见《手册》）" + zh(rng, 30) + "…… ＡＢ１２" + zh(rng, 20) + "！"
    ff = write_jsonl(tmp_path / "ff.jsonl", [{"instruction": "请详细介绍一下" + zh(rng, 20) + "？", "input": "",
                                              "output": answer}])
    _, out, _ = run(tmp_path, "--firefly-json", str(ff))
    assert out[0]["messages"][1]["content"] == answer.replace("ＡＢ１２", "AB12")
    _, out, _ = run(tmp_path, "--firefly-json", str(ff), "--unicode", "nfkc", out="nfkc.jsonl")
    assert "，" not in out[0]["messages"][1]["content"] and "(见《手册》)" in out[0]["messages"][1]["content"]
    _, out, _ = run(tmp_path, "--firefly-json", str(ff), "--no-nfkc", out="none.jsonl")
    assert out[0]["messages"][1]["content"] == answer


def test_filters_and_their_counts(tmp_path: Path, data: dict) -> None:
    rng = data["rng"]
    rows = [*data["firefly"][:10],
            {"instruction": "Please describe the history of Harbin in detail", "input": "",
             "output": "Harbin is a city in the north east of China. " * 4},
            {"instruction": "请详细介绍一下" + zh(rng, 20), "input": "", "output": "太短了"},
            {"instruction": "请详细介绍一下" + zh(rng, 20), "input": "",
             "output": "作为一个AI语言模型，我无法回答。" + zh(rng, 100)},
            {"instruction": "请详细介绍一下" + zh(rng, 20), "input": "",
             "output": "请联系13812345678获取" + zh(rng, 100)}]
    ff = write_jsonl(tmp_path / "ff.jsonl", rows)
    rc, out, stats = run(tmp_path, "--firefly-json", str(ff), "--drop-pii")
    assert rc == 0 and len(out) == 10
    f = stats["sources"]["firefly"]["filters"]
    assert f["chinese_ratio"]["dropped"] == 1
    assert f["length"]["drop:assistant shorter than 80"] == 1
    assert f["patterns"]["dropped"] == 1
    assert f["pii"]["drop:contains phone"] == 1
    rc, out, stats = run(tmp_path, "--firefly-json", str(ff), "--redact-pii")
    assert any("请联系<PHONE>获取" in r["messages"][1]["content"] for r in out)
    rc, out, stats = run(tmp_path, "--firefly-json", str(ff), "--no-filter")
    assert len(out) == 14  # nothing dropped but empty messages
    assert "pii" not in stats["sources"]["firefly"]["filters"]


def test_no_dedup_keeps_copies(tmp_path: Path, data: dict) -> None:
    ff = write_jsonl(tmp_path / "ff.jsonl", data["firefly"][:5] * 2)
    _, out, stats = run(tmp_path, "--firefly-json", str(ff))
    assert len(out) == 5 and stats["sources"]["firefly"]["exact_dup_within"] == 5
    _, out, stats = run(tmp_path, "--firefly-json", str(ff), "--no-dedup")
    assert len(out) == 10 and stats["dedup"]["enabled"] is False


def test_max_firefly_stops_reading(tmp_path: Path, data: dict) -> None:
    ff = write_array(tmp_path / "ff.json", data["firefly"])
    _, out, stats = run(tmp_path, "--firefly-json", str(ff), "--max-firefly", "7")
    s = stats["sources"]["firefly"]
    assert len(out) == 7 and s["stopped_at_cap"] and s["read"] < 60


def test_policies_when_hit_is_too_small(tmp_path: Path, data: dict, caplog: pytest.LogCaptureFixture) -> None:
    ff = write_array(tmp_path / "ff.json", data["firefly"])
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"][:4])
    common = ("--firefly-json", str(ff), "--hit-jsonl", str(hit), "--total", "40", "--hit-ratio", "0.5")
    _, out, stats = run(tmp_path, *common)
    assert len(out) == 40 and sum(r["source"] == "hit" for r in out) == 4
    assert stats["mix"]["policy"] == "keep-total" and "impossible" in stats["mix"]["warnings"][0]
    assert "MIX: hit needs 20 but has 4" in caplog.text
    _, out, stats = run(tmp_path, *common, "--upsample", "--max-repeat", "5")
    hits = [r for r in out if r["source"] == "hit"]
    assert len(out) == 40 and len(hits) == 20 and len({r["id"] for r in out}) == 40
    assert sum(r["id"].endswith("-r5") for r in hits) == 4  # each hit record 5 times, the copies marked
    _, out, stats = run(tmp_path, *common, "--shrink")
    assert len(out) == 8 and sum(r["source"] == "hit" for r in out) == 4 and stats["mix"]["policy"] == "shrink"


def test_validation_hold_out_and_domain_set(tmp_path: Path, data: dict) -> None:
    ff = write_array(tmp_path / "ff.json", data["firefly"])
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"])
    val, dom = tmp_path / "val.jsonl", tmp_path / "domain.jsonl"
    args = ("--firefly-json", str(ff), "--hit-jsonl", str(hit), "--total", "30", "--hit-ratio", "0.5",
            "--val-size", "5", "--val-out", str(val), "--domain-out", str(dom))
    rc, out, stats = run(tmp_path, *args, "--upsample")
    assert rc == 0
    val_ids = [json.loads(x)["id"] for x in val.read_text().splitlines()]
    dom_ids = [json.loads(x)["id"] for x in dom.read_text().splitlines()]
    assert len(val_ids) == 5 and len(dom_ids) == 15 and not set(val_ids) & set(dom_ids)
    assert not set(val_ids) & {r["id"].split("-r")[0] for r in out}  # held-out records never reach training
    assert sum(r["source"] == "hit" for r in out) == 15 and stats["output"]["val"]["records"] == 5
    run(tmp_path, *args, "--shrink", out="other.jsonl")
    assert [json.loads(x)["id"] for x in val.read_text().splitlines()] == val_ids  # same split whatever the mix
    _, _, stats = run(tmp_path, "--hit-jsonl", str(hit), "--val-size", "0.1", "--val-out", str(val))
    assert stats["output"]["val"]["records"] == 2 and stats["output"]["records"] == 18  # 10% of 20


@pytest.mark.parametrize("n_hit,val_size,asked,val,train", [
    (1, "0.05", 1, 0, 1),  # one usable record at make's default VAL_SIZE: it stays for training (it went to val)
    (1, "1", 1, 0, 1),  # --val-size N with N records
    (2, "0.05", 1, 1, 1), (2, "1", 1, 1, 1), (2, "2", 2, 1, 1),
    (20, "0.05", 1, 1, 19), (20, "0.1", 2, 2, 18), (20, "0.11", 3, 3, 17),  # a share is rounded up
    (20, "5", 5, 5, 15), (20, "20", 20, 19, 1), (20, "30", 30, 19, 1),
])
def test_the_validation_split_keeps_a_training_record(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture,
                                                       n_hit: int, val_size: str, asked: int, val: int,
                                                       train: int) -> None:
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"][:n_hit])
    val_path, dom = tmp_path / "val.jsonl", tmp_path / "domain.jsonl"
    rc, out, stats = run(tmp_path, "--hit-jsonl", str(hit), "--val-size", val_size, "--val-out", str(val_path),
                         "--domain-out", str(dom))
    assert rc == 0 and stats["sources"]["hit"]["usable"] == n_hit
    assert len(val_path.read_text().splitlines()) == val and len(dom.read_text().splitlines()) == train
    assert len(out) == train and stats["output"]["val"]["records"] == val
    assert stats["output"]["val"]["asked"] == asked and stats["output"]["domain"]["records"] == train
    printed = capsys.readouterr().out
    if asked > val:
        warning = stats["output"]["val"]["warning"]
        assert f"{val} held out for validation instead of the {asked} asked" in warning
        assert f"WARNING: {warning}" in printed.splitlines()
    else:
        assert "warning" not in stats["output"]["val"] and "WARNING" not in printed


def test_extra_sources_weights_gz_and_chatml_text(tmp_path: Path, data: dict) -> None:
    ff = write_jsonl(tmp_path / "ff.jsonl.gz", data["firefly"][:40])
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"conversation": [{"human": r["instruction"], "assistant":
                                                                      r["output"]}]} for r in data["firefly"][40:]])
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"])
    rc, out, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit), "--source",
                         f"extra={extra}:3", "--total", "20", "--hit-ratio", "0.5", "--chatml-text")
    assert rc == 0 and stats["mix"]["take"] == {"hit": 10, "extra": 8, "firefly": 2}  # rest split 3:1
    assert all(set(r) == {"text"} and r["text"].startswith("<|beginofutterance|>") for r in out)
    assert all(to_record(r)["messages"][-1]["role"] == "assistant" for r in out)


def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, data: dict,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    text = json.dumps(data["firefly"][:3], ensure_ascii=False, indent=4)
    text = text.replace('"input": ""', '"input": ,', 1)  # element 1 (opening on line 2) becomes invalid JSON
    ff = tmp_path / "ff.json"
    ff.write_text(text, encoding="utf-8")
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"][:2], extra_lines=(
        "{oops", json.dumps({"messages": [{"role": "assistant", "content": "只有回答"}]}), ""))
    rc, _, stats = run(tmp_path, "--firefly-json", str(ff), "--hit-jsonl", str(hit))
    assert rc == 0
    assert "hit.jsonl:3: invalid JSON" in caplog.text
    assert "hit.jsonl:4: invalid record: turn 0 should be user" in caplog.text
    assert "ff.json:2: array element 1: invalid JSON" in caplog.text
    assert stats["sources"]["hit"]["bad_lines"] == 2 and stats["sources"]["firefly"]["bad_lines"] == 1
    assert stats["sources"]["firefly"]["read"] == 3 and stats["bad_lines"]["bad_lines"] == 3


def test_bad_elements_in_a_large_array_are_numbered_across_blocks(tmp_path: Path, data: dict,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    rows = [*data["firefly"], {"messages": [{"role": "assistant", "content": "先答后问"}]}, data["firefly"][0]]
    text = json.dumps(rows, ensure_ascii=False, indent=4).replace('"input": ""', '"input": ?')
    text = text.replace('"input": ?', '"input": ""', 59)  # only the 60th element stays broken
    ff = tmp_path / "ff.json"
    ff.write_text(text, encoding="utf-8")
    rc, _, stats = run(tmp_path, "--firefly-json", str(ff), "--no-dedup")
    assert rc == 0 and stats["sources"]["firefly"]["read"] == 62
    lines = text.splitlines()
    starts = [i + 1 for i, ln in enumerate(lines) if ln == "    {"]
    assert f"ff.json:{starts[59]}: array element 60: invalid JSON" in caplog.text
    assert f"ff.json:{starts[60]}: array element 61: invalid record: turn 0 should be user" in caplog.text


def test_two_workers_give_the_same_output(tmp_path: Path, data: dict) -> None:
    ff = write_array(tmp_path / "ff.json", data["firefly"], pretty=False)
    hit = write_jsonl(tmp_path / "hit.jsonl", data["hit"])
    args = ("--firefly-json", str(ff), "--hit-jsonl", str(hit), "--total", "40", "--hit-ratio", "0.25")
    _, one, _ = run(tmp_path, *args, out="one.jsonl")
    _, two, stats = run(tmp_path, *args, "--two-workers", out="two.jsonl")
    assert one == two and len(one) == 40 and stats["timing"]["workers"] == 2


@pytest.mark.parametrize("args,message", [
    ((), "no input"),
    (("--firefly-json", "/nonexistent.json"), "no such file"),
    (("--firefly-json", "{ff}", "--hit-ratio", "1.5"), "--hit-ratio"),
    (("--firefly-json", "{ff}", "--total", "0"), "--total"),
    (("--firefly-json", "{ff}", "--length", "user=a:b"), "integers"),
    (("--firefly-json", "{ff}", "--length", "tool=1:2"), "ROLE=MIN:MAX"),
    (("--firefly-json", "{ff}", "--drop-pattern", "(unclosed"), "bad drop pattern"),
    (("--source", "noequals"), "NAME=PATH"),
    (("--firefly-json", "{empty}"), "empty file"),
    (("--firefly-json", "{ff}", "--pii-kinds", "phone,ssn"), "--pii-kinds"),
    (("--firefly-json", "{ff}", "--val-size", "3"), "need a hit source"),
    (("--firefly-json", "{ff}", "--val-size", "2.5"), "whole number"),
    (("--firefly-json", "{ff}", "--minhash-perm", "100"), "multiple of --minhash-bands"),
    (("--firefly-json", "{ff}", "--near-dup-jaccard", "1.5"), "Jaccard threshold"),
    # a flag that does nothing under the chosen method is refused, naming the flag that applies (issue 25 item 9)
    (("--firefly-json", "{ff}", "--near-dup-threshold", "3"), "its threshold is --near-dup-jaccard"),
    (("--firefly-json", "{ff}", "--near-dup-method", "minhash", "--near-dup-threshold", "0"), "--near-dup-jaccard"),
    (("--firefly-json", "{ff}", "--near-dup-method", "simhash", "--near-dup-jaccard", "0.8"),
     "its threshold is --near-dup-threshold BITS"),
    (("--firefly-json", "{ff}", "--near-dup-method", "simhash", "--minhash-bands", "16"), "--minhash-bands is a"),
    (("--firefly-json", "{ff}", "--near-dup-threshold", "-1", "--ngram", "5"), "--ngram does nothing with"),
    (("--firefly-json", "{ff}", "--no-dedup", "--near-dup-method", "simhash"), "does nothing with --no-dedup"),
    (("--firefly-json", "{ff}", "--no-dedup", "--dedup-report", "r.jsonl"), "--dedup-report does nothing"),
    (("--firefly-json", "{ff}", "--near-dup-method", "simhash", "--near-dup-threshold", "33"), "between -1 and 32"),
])
def test_bad_usage_exits_2_with_one_line(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture,
                                         args: tuple[str, ...], message: str) -> None:
    ff = write_jsonl(tmp_path / "ff.jsonl", data["firefly"][:2])
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    args = tuple(a.format(ff=ff, empty=empty) for a in args)
    assert prep.main([*args, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_conflicting_flags_are_usage_errors(tmp_path: Path) -> None:
    for flags in (["--upsample", "--shrink"], ["--drop-pii", "--redact-pii"]):
        with pytest.raises(SystemExit) as e:
            prep.main(["--firefly-json", "x", "--out", str(tmp_path / "o"), *flags])
        assert e.value.code == 2


# ---- the stage's parts, one at a time ------------------------------------------------------------------------


def test_exact_dedup_keeps_the_first_and_counts_within_and_across() -> None:
    exact = ExactDedup(report=True)
    keep = np.ones(3, dtype=bool)
    assert exact.mark(np.array([7, 8, 7], np.uint64), 0, 0, keep) == (1, 0)
    assert keep.tolist() == [True, True, False]
    keep = np.ones(3, dtype=bool)
    assert exact.mark(np.array([8, 9, 9], np.uint64), 3, 1, keep) == (1, 1)  # 8: source 0's; second 9: its own
    assert keep.tolist() == [False, True, False]
    assert exact.drops == [(2, 0), (3, 1), (5, 4)]  # (removed seq, first seq)
    quiet = ExactDedup()
    quiet.mark(np.array([1, 1], np.uint64), 0, 0, np.ones(2, dtype=bool))
    assert quiet.drops == []


def test_within_across_counts_near_removals_by_cause_source() -> None:
    dropped = np.array([False, True, False, True, True])
    cause = np.array([-1, 0, -1, 2, 0])
    source = np.array([0, 0, 1, 1, 1], np.int16)
    assert within_across(dropped, cause, source, 3) == [(1, 0), (1, 1), (0, 0)]


def test_record_pool_writes_the_chosen_records_with_repeat_ids(tmp_path: Path) -> None:
    recs = [{"id": f"r{i}", "source": "hit", "messages": [{"role": "user", "content": f"问{i}"},
                                                          {"role": "assistant", "content": f"答{i}"}]}
            for i in range(4)]
    lines = [orjson.dumps(r) for r in recs]
    out = tmp_path / "o" / "out.jsonl"
    with closing(RecordPool(out, every_offset=True)) as pool:
        lens = np.array([len(x) + 1 for x in lines], np.int64)
        pool.add(b"\n".join(lines) + b"\n", lens, np.array([True, False, True, True]), 0, np.zeros((4, 0), np.uint64))
        arrays = pool.arrays()
        assert arrays["offset"].tolist() == [0, int(lens[0] + lens[1]), int(lens[:3].sum())] and pool.seq == 4
        assert pool.record_at(int(arrays["offset"][1])) == recs[2]
        assert write_records(out, pool, arrays, np.array([2, 0, 2, 2])) == 4
        assert [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()] == \
            ["r3", "r0", "r3-r2", "r3-r3"]
        assert write_records(tmp_path / "t.jsonl", pool, arrays, np.array([1]), chatml_text=True) == 1
        assert json.loads((tmp_path / "t.jsonl").read_text(encoding="utf-8")) == {
            "text": "<|beginofutterance|>用户\n问2\n<|endofutterance|>\n<|beginofutterance|>智能助手\n答2\n"
                    "<|endofutterance|>"}
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # the pool file is gone


def test_block_workers_give_the_same_results_in_order(tmp_path: Path, data: dict) -> None:
    path = str(write_array(tmp_path / "ff.json", data["firefly"], pretty=False))
    config = FilterConfig(no_filter=False, form="keep-cjk", min_chinese_ratio=0.65, lengths=dict(DEFAULT_LENGTHS),
                          patterns=[], max_urls=5, pattern_roles=["assistant"], pii_mode=None, pii_kinds=[])
    results = []
    for n in (1, 2):
        with closing(BlockWorkers(config, True, "minhash", neardup.MinHashParams(), n)) as workers:
            results.append(list(workers.map("firefly", iter_blocks(path, 2048))))
    one, two = results
    assert len(one) > 3 and sum(r.read for r in one) == 60
    assert [r.blob for r in one] == [r.blob for r in two] and [r.raw_pos for r in one] == [r.raw_pos for r in two]
    assert all((a.exact == b.exact).all() and (a.near == b.near).all() for a, b in zip(one, two, strict=True))
    assert all(len(r.exact) == len(r.lens) == r.near.shape[0] and r.near.shape[1] == 32 for r in one)
    assert all(json.loads(x)["source"] == "firefly" for r in one for x in r.blob.splitlines())


def test_sources_in_priority_order_and_checked(tmp_path: Path) -> None:
    specs = {n: SourceSpec(n, [str(tmp_path / f"{n}.jsonl")]) for n in ("firefly", "hit", "b", "a")}
    assert [s.name for s in in_priority_order(specs, ["b", "firefly", "a"])] == ["hit", "b", "a", "firefly"]
    with pytest.raises(InputError, match="hit: no such file"):
        check_inputs([specs["hit"]])
    (tmp_path / "hit.jsonl").write_text("")
    with pytest.raises(InputError, match="empty file"):
        check_inputs([specs["hit"]])
    (tmp_path / "hit.jsonl").write_text('{"text": "x"}\n')
    check_inputs([specs["hit"]])


# ---- the block reader ----------------------------------------------------------------------------------------

TRICKY_ROWS = [
    {"instruction": 'a "},{"instruction": "x" }, { "instruction"', "input": "", "output": "b"},
    {"instruction": "嵌套", "output": "o", "history": [["q", "a"], ["}, {", "]"]]},
    {"conversation_id": 3, "conversation": [{"human": "h1", "assistant": "a1"}, {"human": "h2", "assistant": "a2"}]},
    {"instruction": "反斜杠 \\\\\" 结尾\\", "output": "\n\t}\n,{"},
] * 5


@pytest.mark.parametrize("pretty", [True, False])
@pytest.mark.parametrize("block_size", [16, 64, 1 << 20])
def test_array_blocks_parse_to_the_same_values(tmp_path: Path, pretty: bool, block_size: int) -> None:
    path = write_array(tmp_path / "a.json", TRICKY_ROWS, pretty)
    assert detect_kind(str(path)) == "array"
    values, bad = [], []
    for block in iter_blocks(str(path), block_size):
        parsed = parse_block(block)
        values += [v for _, v in parsed.items]
        bad += parsed.bad
    assert bad == [] and values == TRICKY_ROWS


def test_jsonl_blocks_keep_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl.gz", [{"i": i} for i in range(50)], extra_lines=("", "{bad", '{"i": 99}'))
    assert detect_kind(str(path)) == "jsonl"
    items, bad = [], []
    for block in iter_blocks(str(path), 40):
        parsed = parse_block(block)
        items += parsed.items
        bad += parsed.bad
    assert [v["i"] for _, v in items] == [*range(50), 99]
    assert items[10][0] == 11 and items[-1][0] == 53
    assert len(bad) == 1 and bad[0][:2] == (52, None) and bad[0][2].startswith("invalid JSON")


def test_unclosed_array_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}', encoding="utf-8")
    parsed = [parse_block(b) for b in iter_blocks(str(path))]
    assert [v for p in parsed for _, v in p.items] == [{"instruction": "a", "output": "b"},
                                                        {"instruction": "c", "output": "d"}]
    assert any("not closed" in reason for p in parsed for _, _, reason in p.bad)
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(InputError):
        detect_kind(str(empty))
    (tmp_path / "e.json").write_text("[]")
    assert [parse_block(b).items for b in iter_blocks(str(tmp_path / "e.json"))] in ([], [[]])


@pytest.mark.parametrize("make_vars", [[], ["FIREFLY_JSON=ff.json"]])
def test_the_makefile_gives_prep_no_flag_without_effect(make_vars: list[str]) -> None:
    """make prep's recipe (make -n: printed, not run) parses, and none of its flags is one that does nothing; the
    SimHash radius the default PREP_FLAGS carried before is refused under the MinHash default."""
    root = Path(prep.__file__).resolve().parent
    printed = subprocess.run(["make", "-n", "-C", str(root), "prep", *make_vars], capture_output=True, text=True,
                             check=True).stdout.replace("\\\n", " ")
    [line] = [ln for ln in printed.splitlines() if "prep_sft_firefly_hit.py" in ln]
    flags = shlex.split(line.split("prep_sft_firefly_hit.py", 1)[1])
    assert "--near-dup-threshold" not in flags and "--drop-pii" in flags
    assert prep.flag_without_effect(prep.build_parser().parse_args(flags)) is None
    old = prep.flag_without_effect(prep.build_parser().parse_args([*flags, "--near-dup-threshold", "3"]))
    assert old is not None and "--near-dup-jaccard" in old
