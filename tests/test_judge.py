"""judge.py end to end against the scripted local server (127.0.0.1 only): decisions, failing judges,
garbage verdicts, kill and resume, --stage filter, keys, metadata, formats, dedup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import regex

import judge
from sftkit.io.jsonl import Journal
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]
KEY = "sk-JUDGE-secret-7781"
_RID = regex.compile(r"编号\[([^\]]+)\]")


# ---- helpers ---------------------------------------------------------------------------------------------------


def record(rid: str, question: str = "", answer: str = "", **meta: Any) -> dict[str, Any]:
    question = question or f"请说明办理学生证补办的流程。编号[{rid}]"
    answer = answer or (f"补办学生证的流程如下：第一，到学院办公室领取申请表；第二，填写后交辅导员签字；"
                        f"第三，到教务处办理。编号[{rid}]")
    return {"id": rid, "source": "test", "messages": [{"role": "user", "content": question},
                                                       {"role": "assistant", "content": answer}], "meta": meta}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def verdict(scores: dict[str, Any] | float, **extra: Any) -> str:
    if not isinstance(scores, dict):
        scores = dict.fromkeys(DIMS, scores)
    return orjson.dumps({"reasons": {d: "理由简述" for d in scores}, "scores": scores, **extra}).decode()


def rid_of(body: dict[str, Any]) -> str:
    m = _RID.search(body["messages"][1]["content"])
    assert m, "no record id in the judge prompt"
    return m.group(1)


def is_retry(body: dict[str, Any]) -> bool:
    """A re-ask after an invalid verdict carries the bad reply and a correction turn."""
    return len(body["messages"]) > 2


USAGE = {"prompt_tokens": 1000, "completion_tokens": 100}


def table_script(table: dict[tuple[str, str], Any]) -> Callable[[dict[str, Any], int], Reply]:
    """(record id or "*", model) -> reply text, a Reply, or a callable(body) giving either."""
    def script(body: dict[str, Any], attempt: int) -> Reply:
        key = (rid_of(body), body["model"])
        value = table[key] if key in table else table[("*", body["model"])]
        if callable(value):
            value = value(body)
        return value if isinstance(value, Reply) else Reply.ok(value, usage=USAGE)
    return script


def write_config(path: Path, base_url: str, judges: list[dict[str, Any]], **over: Any) -> Path:
    cfg = {"judges": [{"base_url": base_url, "max_concurrency": 4, "retries": 0, **j} for j in judges],
           "enable_dedup": False, **over}
    path.write_bytes(orjson.dumps(cfg))
    return path


def model_counts(srv: StubServer, start: int = 0) -> Counter[str]:
    return Counter(b["model"] for b in srv.requests[start:])


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray keys or .env from the developer's shell; every test runs in its own directory."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY", "JUDGE_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


AB = [{"name": "A", "model": "m-a"}, {"name": "B", "model": "m-b"}]


# ---- decisions -----------------------------------------------------------------------------------------------


def decision_table() -> dict[tuple[str, str], Any]:
    return {
        ("r1", "m-a"): verdict(8), ("r1", "m-b"): verdict(9),  # 8.5: pass
        ("r2", "m-a"): verdict(7), ("r2", "m-b"): verdict(7),  # exactly the threshold: pass
        ("r3", "m-a"): verdict(6), ("r3", "m-b"): verdict(7.9),  # 6.95: below threshold
        # score 8.2 but safety mean 5 < floor 6
        ("r4", "m-a"): verdict({**dict.fromkeys(DIMS, 9), "safety": 4}),
        ("r4", "m-b"): verdict({**dict.fromkeys(DIMS, 9), "safety": 6}),
        # a judge's own "overall" is ignored: 6.5 from the dimensions
        ("r5", "m-a"): verdict(6, overall=10), ("r5", "m-b"): verdict(7, overall=10),
        # fences, prose around, numbers as strings, flat form, "9/10", Chinese aliases
        ("r6", "m-a"): "好的，评审如下：\n```json\n" + verdict(dict.fromkeys(DIMS, "8")) + "\n```\n以上。",
        ("r6", "m-b"): '结论：{"准确性": "9/10", "完整性": 9, "逻辑性": "9", "helpfulness": {"score": 9, '
                       '"reason": "实用"}, "Safety": 9.0} 完毕',
    }


def test_exact_pass_fail_decisions(tmp_path: Path) -> None:
    recs = [record(f"r{i}") for i in range(1, 7)]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    with StubServer(table_script(decision_table())) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB, floors={"safety": 6})
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)])
    assert rc == 0
    assert len(srv.requests) == 12
    scored = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
    assert {k: v["passed_filter"] for k, v in scored.items()} == {
        "r1": True, "r2": True, "r3": False, "r4": False, "r5": False, "r6": True}
    assert {k: v["fail_reasons"] for k, v in scored.items()} == {
        "r1": [], "r2": [], "r3": ["below_threshold"], "r4": ["floor:safety"], "r5": ["below_threshold"], "r6": []}
    assert {k: v["avg_score"] for k, v in scored.items()} == {
        "r1": 8.5, "r2": 7.0, "r3": 6.95, "r4": 8.2, "r5": 6.5, "r6": 8.5}
    assert scored["r4"]["dimension_means"]["safety"] == 5.0
    assert scored["r6"]["judges"]["B"]["scores"] == dict.fromkeys(DIMS, 9.0)
    assert scored["r6"]["judges"]["B"]["reasons"]["helpfulness"] == "实用"
    assert scored["r1"]["judges"]["A"]["reasons"]["accuracy"] == "理由简述"
    rows = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "val.jsonl")
    assert sorted(r["id"] for r in rows) == ["r1", "r2", "r6"]
    r1 = next(r for r in rows if r["id"] == "r1")
    assert r1 == {"id": "r1", "conversations": [{"from": "human", "value": recs[0]["messages"][0]["content"]},
                                                {"from": "gpt", "value": recs[0]["messages"][1]["content"]}],
                  "avg_score": 8.5, "dimension_scores": {"A": dict.fromkeys(DIMS, 8.0), "B": dict.fromkeys(DIMS, 9.0)}}
    meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
    assert meta["counts"]["passed_filter"] == 3
    assert meta["removed"] == {"below_threshold": 2, "floor:safety": 1, "duplicate": 0}
    assert read_jsonl(tmp_path / "out" / "generated_raw.jsonl") == recs


def test_judge_prompt_has_rubric_reasons_first_and_slice(tmp_path: Path) -> None:
    slice_text = "第一条 学生证遗失后应在七日内申请补办。" + "细则内容。" * 60
    recs = [record("s1", slice_id="sl-1", slice_excerpt=slice_text[:30]), record("s2", slice_id="sl-9",
                                                                                  slice_excerpt="只有摘录的材料")]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    slices = write_jsonl(tmp_path / "slices.jsonl", [{"id": "sl-1", "content": slice_text}])
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB[:1], min_votes=1)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg),
                         "--slices", str(slices)])
    assert rc == 0
    prompts = {rid_of(b): b["messages"][1]["content"] for b in srv.requests}
    assert slice_text in prompts["s1"]  # the full slice, looked up by id
    assert "只有摘录的材料" in prompts["s2"] and "摘录" in prompts["s2"]
    p = prompts["s1"]
    for d in DIMS:
        assert d in p
    assert p.index('"reasons"') < p.index('"scores"')  # short reasons asked before the scores
    assert srv.requests[0]["messages"][0]["role"] == "system"


# ---- failing and garbage judges ------------------------------------------------------------------------------


def test_failing_judge_is_no_vote_and_does_not_drag_scores_down(tmp_path: Path) -> None:
    recs = [record(f"r{i}") for i in range(4)]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    table = {("*", "m-a"): verdict(8), ("*", "m-b"): verdict(8),
             ("*", "m-c"): Reply.error(500, retry_after="0")}
    judges = [*AB, {"name": "C", "model": "m-c", "retries": 1}]
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, judges)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)])
        assert rc == 0
        assert model_counts(srv)["m-c"] == 8  # 4 records x (1 try + 1 client retry)
        scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
        assert all(r["passed_filter"] and r["votes"] == 2 and r["avg_score"] == 8.0 for r in scored)
        assert all(r["judges"]["C"]["status"] == "failed" and r["judges"]["C"]["error"] == "request:http_500"
                   for r in scored)
        meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
        c = next(j for j in meta["judges"] if j["name"] == "C")
        assert (c["votes"], c["failed"], c["failures_by_reason"]) == (0, 4, {"request:http_500": 4})
        # With three votes required, the failing judge makes every record fail for lack of votes, not by a 0.
        n = len(srv.requests)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg),
                         "--min-votes", "3"])
        assert rc == 0 and len(srv.requests) == n  # failures are journaled: no re-asking without --retry-failed
        scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
        assert all(r["fail_reasons"] == ["too_few_votes"] and r["avg_score"] == 8.0 for r in scored)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg),
                         "--retry-failed"])
        assert rc == 0 and model_counts(srv, n) == {"m-c": 8}


def test_garbage_and_out_of_range_verdicts(tmp_path: Path) -> None:
    recs = [record(f"g{i}") for i in range(5)]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    table = {
        # out of range first, fixed when re-asked
        ("g0", "m-a"): lambda b: verdict(8) if is_retry(b) else verdict({**dict.fromkeys(DIMS, 8), "safety": 11}),
        ("g1", "m-a"): "我觉得这个回答很好，给满分！",  # never JSON
        ("g2", "m-a"): verdict(0),  # below the scale, always
        ("g3", "m-a"): verdict({d: 8 for d in DIMS[:4]}),  # a dimension missing, always
        ("g4", "m-a"): verdict(dict.fromkeys(DIMS, "很好")),  # not numbers
        ("*", "m-b"): verdict(9),
    }
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB, min_votes=1)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)])
    assert rc == 0
    a_bodies = [b for b in srv.requests if b["model"] == "m-a"]
    assert Counter(rid_of(b) for b in a_bodies) == {"g0": 2, "g1": 3, "g2": 3, "g3": 3, "g4": 3}
    retry = next(b for b in a_bodies if rid_of(b) == "g0" and is_retry(b))
    assert "out_of_range" in retry["messages"][-1]["content"] and retry["messages"][-2]["role"] == "assistant"
    scored = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
    assert scored["g0"]["judges"]["A"]["status"] == "vote" and scored["g0"]["avg_score"] == 8.5
    assert {k: scored[k]["judges"]["A"].get("error") for k in ("g1", "g2", "g3", "g4")} == {
        "g1": "invalid:no_json", "g2": "invalid:out_of_range", "g3": "invalid:missing", "g4": "invalid:not_a_number"}
    # Invalid verdicts are no votes, never zeros: B's 9 alone decides.
    assert all(scored[k]["votes"] == 1 and scored[k]["avg_score"] == 9.0 and scored[k]["passed_filter"]
               for k in ("g1", "g2", "g3", "g4"))


def test_refused_key_stops_the_run_with_exit_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record(f"k{i}") for i in range(3)])
    with StubServer(table_script({("*", "m-a"): Reply.error(401), ("*", "m-b"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg),
                         "--api-key", KEY])
    assert rc == 1
    assert "judge 'A'" in caplog.text and "http_401" in caplog.text and KEY not in caplog.text
    assert not (tmp_path / "out" / "train.jsonl").exists()


# ---- journal: kill, resume, --stage filter -------------------------------------------------------------------


def test_kill_then_resume_does_not_rescore_and_filter_stage_calls_nothing(tmp_path: Path) -> None:
    recs = [record(f"k{i:02d}") for i in range(30)]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    out = tmp_path / "out"
    journal_path = out / "judge_journal.jsonl"
    table = {("*", "m-a"): lambda b: verdict(8 if int(rid_of(b)[1:]) % 3 else 5), ("*", "m-b"): verdict(8)}
    with StubServer(table_script(table), latency=0.1) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url,
                           [{**j, "max_concurrency": 2} for j in AB], min_votes=2)
        argv = ["--input", str(inp), "--output-dir", str(out), "--config", str(cfg)]
        proc = subprocess.Popen([sys.executable, str(ROOT / "judge.py"), *argv], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60  # bounded wait for some verdicts to land, then kill hard
            while time.monotonic() < deadline and proc.poll() is None:
                if journal_path.exists() and journal_path.read_bytes().count(b"\n") >= 12:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "train.jsonl").exists()
        with Journal(journal_path) as j:
            done = {(e["rid"], e["judge"]) for e in j.entries}
        assert 12 <= len(done) < 60
        before = len(srv.requests)
        assert judge.main(argv) == 0
        second = srv.requests[before:]
        asked = {(rid_of(b), {"m-a": "A", "m-b": "B"}[b["model"]]) for b in second}
        assert len(second) == 60 - len(done) and not (asked & done)  # only what was missing
        after = len(srv.requests)
        assert judge.main(argv) == 0 and len(srv.requests) == after  # all journaled: nothing asked
        train_all = (out / "train.jsonl").read_bytes()
        meta_all = orjson.loads((out / "metadata.json").read_bytes())
        assert judge.main([*argv, "--stage", "filter"]) == 0
        assert len(srv.requests) == after
    assert (out / "train.jsonl").read_bytes() == train_all
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["counts"] == meta_all["counts"] and meta["counts"]["passed_filter"] == 20
    assert meta["config_hash"] == meta_all["config_hash"]


def test_filter_stage_needs_no_key_and_changed_threshold_refilters(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("f1"), record("f2")])
    table = {("f1", "m-a"): verdict(8), ("f1", "m-b"): verdict(8), ("f2", "m-a"): verdict(7),
             ("f2", "m-b"): verdict(7)}
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB)
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
        n = len(srv.requests)
        # Same judges on a remote URL without any key: --stage filter still works (no API call is made).
        remote = write_config(tmp_path / "remote.json", "https://judge.example.invalid/v1", AB)
        journal = str(tmp_path / "out" / "judge_journal.jsonl")
        rc = judge.main(["--input", str(inp), "--output-dir", "out2", "--config", str(remote), "--journal", journal,
                         "--stage", "filter", "--min-score-threshold", "7.5"])
        assert rc == 0 and len(srv.requests) == n
    rows = read_jsonl(tmp_path / "out2" / "train.jsonl") + read_jsonl(tmp_path / "out2" / "val.jsonl")
    assert [r["id"] for r in rows] == ["f1"]


def test_score_stage_then_filter_stage(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("p1"), record("p2")])
    with StubServer(table_script({("*", "m-a"): verdict(8), ("*", "m-b"): verdict(6)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB)
        argv = ["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]
        assert judge.main([*argv, "--stage", "score"]) == 0
        assert len(srv.requests) == 4 and not (tmp_path / "out" / "train.jsonl").exists()
        stats = orjson.loads((tmp_path / "out" / "score_run.json").read_bytes())
        assert stats["verdicts_asked"] == 4 and [j["votes_this_run"] for j in stats["judges"]] == [2, 2]
        assert judge.main([*argv, "--stage", "filter"]) == 0 and len(srv.requests) == 4
    scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert [(r["avg_score"], r["passed_filter"]) for r in scored] == [(7.0, True), (7.0, True)]


def test_changed_model_or_rubric_rescores_only_what_changed(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("c1"), record("c2")])
    with StubServer(table_script({("*", "m-a"): verdict(8), ("*", "m-b"): verdict(8),
                                  ("*", "m-b2"): verdict(9)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB)
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
        assert model_counts(srv) == {"m-a": 2, "m-b": 2}
        # A new model for judge B changes B's prompt hash only: only B is asked again.
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0], {"name": "B", "model": "m-b2"}])
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
        assert model_counts(srv, 4) == {"m-b2": 2}
        assert read_jsonl(tmp_path / "out" / "scored.jsonl")[0]["avg_score"] == 8.5
        # The rubric is part of the prompt: a new rubric re-asks both judges.
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0], {"name": "B", "model": "m-b2"}],
                           dimensions=[{"name": "safety", "rubric": "新的安全细则"}])
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
        assert model_counts(srv, 6) == {"m-a": 2, "m-b2": 2}
        assert "新的安全细则" in srv.requests[-1]["messages"][1]["content"]


# ---- keys ----------------------------------------------------------------------------------------------------


def test_missing_key_for_remote_judge_exits_2_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("x1")])
    cfg = write_config(tmp_path / "cfg.json", "https://judge.example.invalid/v1",
                       [{"name": "A", "model": "m-a", "api_key_env": "JUDGE_TEST_KEY"}], min_votes=1)
    rc = judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)])
    err = capfd.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "judge 'A'" in err and "JUDGE_TEST_KEY" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["flag", "judge_flag", "env", "dotenv", "config"])
def test_key_sources_reach_the_server_and_never_any_output(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("y1"), record("y2")])
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        judges = [{"name": "A", "model": "m-a", "api_key_env": "JUDGE_TEST_KEY",
                   "api_key": KEY if how == "config" else "sk-config-loses"}]
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, judges, min_votes=1)
        argv = ["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]
        if how == "flag":
            argv += ["--api-key", KEY]
        elif how == "judge_flag":
            argv += ["--api-key", "sk-flag-loses", "--judge-key", f"A={KEY}"]
        elif how == "env":
            monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
            (tmp_path / ".env").write_text("JUDGE_TEST_KEY=sk-dotenv-loses\n")
        elif how == "dotenv":
            (tmp_path / ".env").write_text(f"JUDGE_TEST_KEY={KEY}\n")
        assert judge.main(argv) == 0
        assert {h.get("Authorization") for h in srv.headers} == {f"Bearer {KEY}"}
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err and KEY not in caplog.text
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"scored.jsonl", "train.jsonl", "val.jsonl", "metadata.json",
                                       "generated_raw.jsonl", "judge_journal.jsonl"}
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


# ---- metadata, formats, bad input, split -------------------------------------------------------------------


def test_metadata_fields(tmp_path: Path) -> None:
    recs = [record(f"m{i}") for i in range(6)]
    inp = write_jsonl(tmp_path / "in.jsonl", [*recs, b"{not json", {"id": "m9", "messages": []}])
    scores_a = [9, 8, 7, 6, 5, 9]
    scores_b = [8, 8, 6, 7, 4, 9]
    table = {(f"m{i}", "deepseek-chat"): verdict(scores_a[i]) for i in range(6)}
    table.update({(f"m{i}", "m-b"): verdict(scores_b[i]) for i in range(6)})
    table[("m5", "m-b")] = "garbage"
    with StubServer(table_script(table)) as srv:
        judges = [{**AB[0], "model": "deepseek-chat"}, {**AB[1], "price": {"input": 1.0, "output": 2.0}}]
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, judges, min_votes=1, seed=7,
                           floors={"safety": 3}, dimensions=[{"name": "accuracy", "weight": 3}, {"name": "safety"}])
        rc = judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg), "--api-key", KEY])
    assert rc == 0
    meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
    assert set(meta) >= {"created_at", "elapsed_s", "counts", "removed", "scores", "judges", "agreement",
                         "thresholds", "dimensions", "dedup", "split", "config_hash", "cost_usd_this_run"}
    assert meta["counts"] == {"input_records": 6, "bad_lines": 2, "verdicts_expected": 12, "votes": 11,
                              "failed_verdicts": 1, "missing_verdicts": 0, "endpoint_down_verdicts": 0,
                              "with_min_votes": 6, "passed_filter": 3,
                              "after_dedup": 3, "train": 2, "val": 1}
    assert meta["thresholds"] == {"min_score_threshold": 7.0, "min_votes": 1, "floors": {"safety": 3.0},
                                  "floor_rule": "mean", "scale": [1.0, 10.0]}
    assert meta["dimensions"] == [{"name": "accuracy", "weight": 3.0}, {"name": "safety", "weight": 1.0}]
    assert meta["split"] == {"train_val_split": 0.9, "seed": 7}
    assert [(j["name"], j["model"]) for j in meta["judges"]] == [("A", "deepseek-chat"), ("B", "m-b")]
    assert all("api_key" not in j for j in meta["judges"])
    a, b = meta["judges"]
    assert a["tokens_this_run"]["prompt_tokens"] == 6000 and a["votes"] == 6
    assert a["cost_usd_this_run"] == pytest.approx((6000 * 0.28 + 600 * 0.42) / 1e6)
    # B answered garbage three times for m5: those tokens count too
    assert b["tokens_this_run"]["prompt_tokens"] == 8000
    assert b["cost_usd_this_run"] == pytest.approx((8000 * 1.0 + 800 * 2.0) / 1e6)
    assert meta["cost_usd_this_run"] == pytest.approx(a["cost_usd_this_run"] + b["cost_usd_this_run"])
    [agr] = meta["agreement"]
    assert agr["judges"] == ["A", "B"] and agr["n"] == 5
    # ranks [5,4,3,2,1] vs [4.5,4.5,2,3,1]: rho = 8.5 / sqrt(10 * 9.5)
    assert agr["spearman"] == pytest.approx(8.5 / 95 ** 0.5, abs=1e-4)
    assert agr["cohen_kappa"] == pytest.approx(0.08 / 0.48, abs=1e-4)  # pass TTTFF vs TTFTF: po 0.6, pe 0.52
    assert meta["scores"]["kept"]["n"] == 3 and meta["scores"]["kept"]["mean"] == pytest.approx(
        (8.5 + 8.0 + 9.0) / 3, abs=1e-4)
    assert meta["scores"]["voted"]["dimension_means"]["accuracy"] == pytest.approx(
        (8.5 + 8 + 6.5 + 6.5 + 4.5 + 9) / 6, abs=1e-4)
    assert meta["config_hash"].startswith("sha256:") and KEY not in (tmp_path / "out" / "metadata.json").read_text()


def test_config_hash_ignores_keys(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("h1")])
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        hashes = []
        for key in ("sk-one", "sk-two"):
            cfg = write_config(tmp_path / "cfg.json", srv.base_url, [{**AB[0], "api_key": key}], min_votes=1)
            assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
            hashes.append(orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())["config_hash"])
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1, min_score_threshold=8)
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
        hashes.append(orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())["config_hash"])
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize("fmt", ["firefly", "alpaca", "chatml"])
def test_output_formats(tmp_path: Path, fmt: str) -> None:
    rec = record("o1", category="Brainstorming")
    rec["messages"].insert(0, {"role": "system", "content": "你是教务助手。\n请简洁。"})
    inp = write_jsonl(tmp_path / "in.jsonl", [rec])
    with StubServer(table_script({("*", "m-a"): verdict(9)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1)
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg), "--format", fmt]) == 0
    [row] = read_jsonl(tmp_path / "out" / "train.jsonl")
    q, a = rec["messages"][1]["content"], rec["messages"][2]["content"]
    expected = {
        "firefly": {"conversation_id": 1, "category": "Brainstorming", "system": "你是教务助手。\n请简洁。",
                    "conversation": [{"human": q, "assistant": a}]},
        "alpaca": {"system": "你是教务助手。\n请简洁。", "instruction": q, "input": "", "output": a, "history": []},
        "chatml": {"text": f"<|im_start|>system\n你是教务助手。\n请简洁。<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
                           f"<|im_start|>assistant\n{a}<|im_end|>\n"},
    }[fmt]
    assert row == expected


def test_bad_lines_are_reported_counted_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [record("b1"), b"{oops", {"id": "b2", "messages": [{"role": "user", "content": "只有问题"}]},
            record("b1"), {"instruction": "请介绍一下图书馆。编号[b3]", "output": "图书馆每天开放。编号[b3]",
                           "id": "b3"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1)
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
    assert f"{inp}:2: invalid JSON" in caplog.text
    assert f"{inp}:3: last turn is not an assistant answer" in caplog.text
    assert f"{inp}:4: duplicate id 'b1' (first at line 1)" in caplog.text
    meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
    assert meta["counts"]["input_records"] == 2 and meta["counts"]["bad_lines"] == 3


@pytest.mark.parametrize("case", ["no_input", "empty", "min_votes", "floor", "split", "bad_config", "encoder",
                                  "rpm", "breaker"])
def test_impossible_runs_exit_2_before_any_request(tmp_path: Path, case: str,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("z1")])
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]])  # min_votes 2 > 1 judge
        ok = write_config(tmp_path / "ok.json", srv.base_url, [AB[0]], min_votes=1)
        argv = {
            "no_input": ["--input", "missing.jsonl", "--config", str(ok)],
            "empty": ["--input", str(write_jsonl(tmp_path / "e.jsonl", [b"{bad"])), "--config", str(ok)],
            "min_votes": ["--input", str(inp), "--config", str(cfg)],
            "floor": ["--input", str(inp), "--config", str(ok), "--floor", "honesty=5"],
            "split": ["--input", str(inp), "--config", str(ok), "--train-val-split", "1.5"],
            "bad_config": ["--input", str(inp), "--config", str(write_jsonl(tmp_path / "b.json", [b"[1, 2"]))],
            "encoder": ["--input", str(inp), "--config", str(ok), "--dedup-method", "hf", "--encoder", "nowhere"],
            "rpm": ["--input", str(inp), "--config", str(write_config(tmp_path / "r.json", srv.base_url,
                                                                      [{**AB[0], "rpm": 0}], min_votes=1))],
            "breaker": ["--input", str(inp), "--config", str(ok), "--breaker-failures", "0"],
        }[case]
        rc = judge.main([*argv, "--output-dir", "out"])
    assert rc == 2 and not srv.requests
    err = capfd.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("judge.py: ")


def test_split_is_seeded_and_independent_of_input_order(tmp_path: Path) -> None:
    recs = [record(f"s{i:02d}") for i in range(20)]
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1)
        splits = []
        for name, rows, seed in (("a", recs, "1"), ("b", recs[::-1], "1"), ("c", recs, "2")):
            inp = write_jsonl(tmp_path / f"{name}.jsonl", rows)
            assert judge.main(["--input", str(inp), "--output-dir", name, "--config", str(cfg), "--seed", seed,
                               "--journal", "j.jsonl"]) == 0
            splits.append(sorted(r["id"] for r in read_jsonl(tmp_path / name / "val.jsonl")))
        assert len(srv.requests) == 20  # one journal shared: the reordered input was not re-scored
    assert len(splits[0]) == 2 and splits[0] == splits[1] != splits[2]


def test_dry_run_sends_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("d1")])
    cfg = write_config(tmp_path / "cfg.json", "https://judge.example.invalid/v1",
                       [{**AB[0], "model": "deepseek-chat"}], min_votes=1)
    assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg), "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "verdicts to ask: 1" in out and "编号[d1]" in out and "~$" in out
    assert not (tmp_path / "out").exists()


# ---- dedup through judge.py ----------------------------------------------------------------------------------


def test_ngram_dedup_keeps_the_higher_scored_chinese_near_duplicate(tmp_path: Path) -> None:
    answer = ("选课系统通常在每学期开学前两周开放，学生需要登录教务系统，"
              "按照培养方案选择必修课和选修课，并在规定时间内确认。")
    recs = [
        record("low", question="选课系统什么时候开放？怎么选课？编号[low]", answer=answer),
        record("high", question="选课系统什么时候开放?怎么选课? 编号[high]", answer=answer),
        record("other", question="图书馆周末几点闭馆？编号[other]", answer="图书馆周末晚上九点闭馆，节假日另行通知。"),
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    table = {("low", "m-a"): verdict(7.5), ("high", "m-a"): verdict(9), ("other", "m-a"): verdict(8)}
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1, enable_dedup=True,
                           dedup={"method": "ngram"})
        assert judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg)]) == 0
    scored = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
    assert scored["low"]["duplicate_of"] == "high" and scored["low"]["similarity"] >= 0.7
    assert scored["high"]["duplicate_of"] is None and scored["other"]["duplicate_of"] is None
    meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
    assert meta["counts"]["after_dedup"] == 2 and meta["removed"]["duplicate"] == 1
    assert meta["dedup"]["encoder"] == "ngram:char3"


def test_hf_encoder_dedup_through_judge(tmp_path: Path, tiny_encoder_dir: str) -> None:
    recs = [record("e1"), record("e2", question="请说明办理学生证补办的流程。编号[e1]",
                                  answer=record("e1")["messages"][1]["content"]),
            record("e3", question="食堂几点开门？编号[e3]", answer="食堂早上六点半开门。编号[e3]")]
    inp = write_jsonl(tmp_path / "in.jsonl", recs)
    table = {("e1", "m-a"): verdict(8), ("e3", "m-a"): verdict(8)}
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [AB[0]], min_votes=1, enable_dedup=True,
                           dedup={"method": "hf", "threshold": 0.999, "block_size": 2})
        rc = judge.main(["--input", str(inp), "--output-dir", "out", "--config", str(cfg),
                         "--encoder", tiny_encoder_dir])
    assert rc == 0
    scored = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
    # e1 and e2 have the same text (so the same prompt and verdict): at equal scores the earlier one is kept
    assert scored["e2"]["duplicate_of"] == "e1" and scored["e3"]["duplicate_of"] is None


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from sftkit.testing.tiny_encoder import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


# ---- scripts/run_pipeline.py: slices -> generation -> judging --------------------------------------------------

SLICES = [
    {"id": "sa", "content": "学生证遗失后，应在七个工作日内到学院办公室申请补办，补办需要一寸照片一张，工本费二十元。"},
    {"id": "sb", "content": "图书馆开放时间为每天早上八点至晚上十点，考试周延长至晚上十一点，节假日另行通知。"},
]
GEN_ITEMS = {
    ("sa", 1): ("学生证丢了应该在多长时间内申请补办？",
                "应在七个工作日内到学院办公室申请补办学生证，逾期可能影响正常使用。"),
    ("sa", 2): ("补办学生证需要准备哪些材料和费用？",
                "需要准备一寸照片一张，并缴纳二十元工本费，然后到学院办公室提交申请。"),
    ("sa", 3): ("请概述学生证补办的完整办理步骤。",
                "第一步确认遗失并及时申请；第二步准备照片和工本费；第三步到学院办公室办理。"),
    ("sb", 1): ("图书馆平时几点开门几点关门？", "图书馆平时每天早上八点开门，晚上十点关门，请合理安排学习时间。"),
    ("sb", 2): ("考试周图书馆的开放时间有什么变化？",
                "考试周期间图书馆延长开放，闭馆时间推迟到晚上十一点，方便同学复习。"),
    ("sb", 3): ("节假日去图书馆之前需要注意什么？", "节假日的开放时间另行通知，出发前请先查看图书馆发布的最新公告。"),
}


def pipeline_script(body: dict[str, Any], attempt: int) -> Reply:
    msgs = body["messages"]
    if msgs[0]["role"] == "system" and "评审员" in msgs[0]["content"]:  # a judge
        return Reply.ok(verdict(5 if "图书馆" in msgs[1]["content"] else 8), usage=USAGE)
    user = msgs[-1]["content"]  # the generator: one item per request, grounded in the slice
    sid = next(s["id"] for s in SLICES if s["content"] in user)
    index = int(regex.search(r"第 (\d+)/", user).group(1))
    q, a = GEN_ITEMS[(sid, index)]
    return Reply.ok(orjson.dumps({"instruction": q, "input": "", "output": a}).decode(), usage=USAGE)


def test_run_pipeline_slices_to_train_val(tmp_path: Path) -> None:
    slices = write_jsonl(tmp_path / "slices.jsonl", SLICES)
    with StubServer(pipeline_script) as srv:
        cfg = tmp_path / "cfg.json"
        cfg.write_bytes(orjson.dumps({
            "generator": {"api_base": srv.base_url, "model": "gen-m", "max_concurrent": 4, "rpm": 60000,
                          "breaker_window": 5},
            "judges": [{"name": "A", "model": "m-a", "base_url": srv.base_url, "retries": 0},
                       {"name": "B", "model": "m-b", "base_url": srv.base_url, "retries": 0}],
            "samples_per_slice": 3, "output_dir": str(tmp_path / "never-used")}))
        cmd = [sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--input", str(slices),
               "--output", str(tmp_path / "out"), "--config", str(cfg), "--api-key", KEY]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert model_counts(srv) == {"gen-m": 6, "m-a": 6, "m-b": 6}
        assert {h.get("Authorization") for h in srv.headers} == {f"Bearer {KEY}"}
        judge_prompts = [b["messages"][1]["content"] for b in srv.requests if b["model"] == "m-a"]
        assert all(any(s["content"] in p for s in SLICES) for p in judge_prompts)  # the slice is shown
        proc2 = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert proc2.returncode == 0 and len(srv.requests) == 18  # both stages resume from their journals
    out = tmp_path / "out"
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["counts"]["input_records"] == 6 and meta["counts"]["passed_filter"] == 3
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert sorted(r["conversations"][0]["value"] for r in rows) == sorted(GEN_ITEMS[("sa", i)][0] for i in (1, 2, 3))
    assert all(r["avg_score"] == 8.0 for r in rows)
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in proc.stdout + proc.stderr + proc2.stdout + proc2.stderr


def test_run_pipeline_passes_the_generators_sampling_and_bounds_to_gen(tmp_path: Path) -> None:
    slices = write_jsonl(tmp_path / "slices.jsonl", SLICES)
    with StubServer(pipeline_script) as srv:
        cfg = tmp_path / "cfg.json"
        cfg.write_bytes(orjson.dumps({
            "generator": {"api_base": srv.base_url, "model": "gen-m", "temperature": 0.1, "max_tokens": 333,
                          "lengths": "output=8:33", "min_chinese_ratio": 0.9},
            "samples_per_slice": 3}))
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--input", str(slices),
                               "--output", str(tmp_path / "out"), "--config", str(cfg), "--api-key", KEY,
                               "--stage", "generate"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert {(b["temperature"], b["max_tokens"]) for b in srv.requests} == {(0.1, 333)}
    kept = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert len(kept) == 4  # the answers of 31 and 33 characters; the 34 and 37 are over the bound
    assert sorted(r["messages"][-1]["content"] for r in kept) == sorted(
        a for _q, a in GEN_ITEMS.values() if len(a) <= 33)


def test_run_pipeline_checks_every_key_before_generating(tmp_path: Path) -> None:
    slices = write_jsonl(tmp_path / "slices.jsonl", SLICES)
    with StubServer(pipeline_script) as srv:
        cfg = tmp_path / "cfg.json"
        cfg.write_bytes(orjson.dumps({
            "generator": {"api_base": srv.base_url, "model": "gen-m"},
            "judges": [{"name": "A", "model": "m-a", "base_url": "https://judge.example.invalid/v1",
                        "api_key_env": "JUDGE_TEST_KEY"}], "min_votes": 1}))
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--input", str(slices),
                               "--output", "out", "--config", str(cfg)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 2 and not srv.requests
    assert "judge 'A'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- failing judges, concurrent runs, full disks ----------------------------------------------------------


def good_bad_records() -> list[dict[str, Any]]:
    return [record(f"good{i:02d}") for i in range(10)] + [record(f"bad{i:02d}") for i in range(10)]


def good_bad(body: dict[str, Any]) -> str:
    return verdict(9 if rid_of(body).startswith("good") else 3)


FAST = {"breaker_window": 0.3, "backoff_base": 0.02}


def test_dead_judge_among_live_ones_costs_a_few_requests_and_no_votes(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", good_bad_records())
    dead = {"on": True}

    def dead_or_alive(body: dict[str, Any]) -> Any:
        return Reply.error(500) if dead["on"] else verdict(9)

    table = {("*", "m-a"): good_bad, ("*", "m-b"): good_bad, ("*", "m-c"): dead_or_alive}
    judges = [{**j, "retries": 5, **FAST} for j in (*AB, {"name": "C", "model": "m-c"})]
    with StubServer(table_script(table)) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, judges)
        argv = ["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg), "--api-key", KEY]
        assert judge.main(argv) == 1
        counts = model_counts(srv)
        assert counts["m-a"] == counts["m-b"] == 20 and counts["m-c"] <= 3 * 4  # seed-era code: 120 to C
        [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert "judge 'C'" in line and "is down" in line and "http_500" in line and "20 verdict(s) not asked" in line
        assert KEY not in line
        scored = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
        assert all(r["judges"]["C"]["status"] == "endpoint_down" and r["votes"] == 2 for r in scored.values())
        kept = {r["id"] for r in scored.values() if r["passed_filter"]}
        assert kept == {f"good{i:02d}" for i in range(10)}  # the same result as with two live judges alone
        meta = orjson.loads((tmp_path / "out" / "metadata.json").read_bytes())
        assert meta["counts"]["endpoint_down_verdicts"] == 20
        assert "is down" in next(j for j in meta["judges"] if j["name"] == "C")["down"]
        # Reference: the two live judges alone decide the same records.
        ref = ["--input", str(inp), "--output-dir", str(tmp_path / "ref"), "--config", str(cfg), "--judges", "A,B"]
        assert judge.main(ref) == 0
        assert (tmp_path / "ref" / "train.jsonl").read_bytes() == (tmp_path / "out" / "train.jsonl").read_bytes()
        n = len(srv.requests)
        dead["on"] = False
        assert judge.main(argv) == 0  # the rerun asks only the missing verdicts
        assert model_counts(srv, n) == {"m-c": 20}
    scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert all(r["judges"]["C"]["status"] == "vote" and r["votes"] == 3 for r in scored)


def test_exhausted_balance_stops_every_judge_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", good_bad_records())
    body = b'{"error": {"message": "Insufficient Balance", "type": "unknown_error"}}'
    table = {("*", "m-a"): Reply.error(402, body=body), ("*", "m-b"): lambda b: good_bad(b)}
    with StubServer(table_script(table), latency=0.05) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [{**j, "max_concurrency": 2} for j in AB])
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)])
        counts = model_counts(srv)
    assert rc == 1
    assert counts["m-a"] <= 2 and counts["m-b"] <= 4  # what was in flight; then nothing more for anyone
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "judge 'A'" in line and "402" in line and "Insufficient Balance" in line
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_second_judge_run_on_the_same_output_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", good_bad_records())
    with StubServer(table_script({("*", "m-a"): good_bad, ("*", "m-b"): good_bad}), latency=0.1) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [{**j, "max_concurrency": 2} for j in AB])
        argv = ["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)]
        first = subprocess.Popen([sys.executable, str(ROOT / "judge.py"), *argv], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not srv.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            capfd.readouterr()
            assert judge.main(argv) == 2
            err = capfd.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"pid {first.pid}" in err[0]
            assert judge.main([*argv, "--dry-run"]) == 0  # a dry run needs no lock
            assert first.wait(60) == 0
        finally:
            first.kill()
            first.wait(10)
        assert len(srv.requests) == 40  # nothing asked twice
    assert not (tmp_path / "out" / "judge_journal.jsonl.lock").exists()


def test_full_disk_while_judging_gives_one_line_and_keeps_the_journal_whole(tmp_path: Path) -> None:
    """The child may not grow a file past LIMIT bytes (RLIMIT_FSIZE): a journal append fails half-way."""
    import resource

    inp = write_jsonl(tmp_path / "in.jsonl", good_bad_records())
    with StubServer(table_script({("*", "m-a"): good_bad})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, [{**AB[0], "max_concurrency": 1}], min_votes=1)
        argv = ["--input", str(inp), "--output-dir", str(tmp_path / "out"), "--config", str(cfg)]
        assert judge.main([*argv[:3], str(tmp_path / "ref"), *argv[4:]]) == 0
        sizes = [len(x) + 1 for x in (tmp_path / "ref" / "judge_journal.jsonl").read_bytes().splitlines()]
        limit = sum(sizes[:5]) + sizes[5] // 2
        n = len(srv.requests)
        proc = subprocess.run([sys.executable, str(ROOT / "judge.py"), *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        [line] = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
        assert "File too large" in line and "judge_journal.jsonl" in line and "journal keeps" in line
        journal = tmp_path / "out" / "judge_journal.jsonl"
        assert len(Journal.read(journal)) == 5 and journal.read_bytes().endswith(b"}\n")
        assert len(srv.requests) - n == 6  # nothing more asked once verdicts could not be kept
        assert judge.main(argv) == 0  # room again: only what is missing is asked
        assert len(srv.requests) - n == 6 + 15
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (tmp_path / "ref" / "train.jsonl").read_bytes()


def test_unwritable_output_directory_is_one_line_before_any_request(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [record("u1")])
    (tmp_path / "afile").write_text("x")
    with StubServer(table_script({("*", "m-a"): verdict(8)})) as srv:
        cfg = write_config(tmp_path / "cfg.json", srv.base_url, AB[:1], min_votes=1)
        rc = judge.main(["--input", str(inp), "--output-dir", str(tmp_path / "afile" / "out"), "--config", str(cfg)])
        assert rc == 1 and srv.requests == []
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot write the journal" in line and "\n" not in line
