"""One command-line rule for every script (sftkit/io/cli.py): the exit status table in each --help, a two-line usage
error, 130 / 143 with the one interrupt line, a locked output exits 2 before anything is sent.

Every script runs as the user runs it (a subprocess, PYTHONPATH = this worktree); LLM stages talk to the scripted
server on 127.0.0.1; waits are bounded loops on what the run writes (journal lines), never fixed sleeps."""

from __future__ import annotations

import argparse
import ast
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from sftkit.io import cli
from sftkit.io.jsonl import RunLock
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")},
       "PYTHONPATH": str(ROOT)}

# Every user-facing script, the flags it cannot parse without (so that --bogus is the only fault), and whether a
# rerun resumes from a journal (True) or starts again (False).
SCRIPTS: dict[str, tuple[list[str], bool]] = {
    "gen_SFT_data.py": ([], True),
    "judge.py": ([], True),
    "eval.py": (["--base", "b", "--tuned", "t", "--input", "i", "--judges", "j"], True),
    "scripts/run_pipeline.py": (["--input", "i"], True),
    "slice_docs.py": (["--in", "d"], False),
    "prep_sft_firefly_hit.py": (["--out", "o"], False),
    "chatml2conversation.py": (["--in", "i", "--out", "o"], False),
    "report.py": ([], False),
    "train/train.py": (["--train_args_file", "a.json"], False),
    "train/merge_lora.py": (["--base", "b", "--adapter", "a", "--out", "o"], False),
    "train/convert_minicpm.py": (["--model", "m", "--out", "o"], False),
    "infer/infer.py": (["--model", "m", "--prompt", "p"], False),
    "scripts/eval_tiny_demo.py": ([], False),
}


def script_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def run_script(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(script_cmd(script, *args), env=ENV, cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def squash(text: str) -> str:
    return " ".join(text.split())


# ---- which scripts -----------------------------------------------------------------------------------------------


def user_scripts() -> set[str]:
    """Files in the repo root, train/, infer/ and scripts/ that run as a program (`if __name__ == "__main__"`)."""
    found = set()
    for folder in (ROOT, ROOT / "train", ROOT / "infer", ROOT / "scripts"):
        for path in folder.glob("*.py"):
            if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
                found.add(str(path.relative_to(ROOT)))
    return found


def test_the_table_names_every_script() -> None:
    assert user_scripts() == set(SCRIPTS)


def test_no_script_builds_a_plain_argparse_parser_and_there_is_one_usage_error() -> None:
    """Every script's parser is a ScriptParser; the only usage exception class is sftkit.io.cli.UsageError (an
    exception named `Usage` would be confused with sftkit.llm.client.Usage, the token counts)."""
    plain, own = [], []
    for path in [ROOT / s for s in SCRIPTS] + sorted((ROOT / "sftkit").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if name in SCRIPTS and isinstance(node, ast.Call) and ast.unparse(node.func) == "argparse.ArgumentParser":
                plain.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.ClassDef) and name != "sftkit/io/cli.py" and (
                    node.name == "UsageError" or any(isinstance(b, ast.Name) and b.id == "Exception"
                                                     and node.name == "Usage" for b in node.bases)):
                own.append(f"{name}:{node.name}")
    assert plain == [] and own == []


# ---- --help and usage errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_states_the_exit_status_rule(script: str) -> None:
    p = run_script(script, "--help")
    assert p.returncode == 0, p.stderr
    text = squash(p.stdout)
    resumable = SCRIPTS[script][1]
    assert squash(cli.exit_status_help(resumable)) in text
    assert text.lower().count("exit status") == 1  # no second, older statement of the rule
    line = cli.INTERRUPTED if resumable else cli.RESTART
    assert f'"{line}"' in text


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_unknown_flag_is_the_usage_line_and_one_error_line(script: str, tmp_path: Path) -> None:
    p = run_script(script, *SCRIPTS[script][0], "--bogus", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) <= 3, p.stderr
    assert lines[-1] == "error: unrecognized arguments: --bogus (see --help)"
    assert lines[0].startswith("usage: ") and len(lines[0]) < 200
    assert p.stdout == ""


def test_bad_flag_value_and_missing_flag_say_so_in_one_line() -> None:
    p = run_script("gen_SFT_data.py", "--n-per-topic", "six")
    assert p.returncode == 2
    assert p.stderr.splitlines() == ["usage: gen_SFT_data.py [options]",
                                     "error: argument --n-per-topic: invalid int value: 'six' (see --help)"]
    p = run_script("infer/infer.py", "--prompt", "hi")
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "usage: infer/infer.py [options] --model MODEL (--input INPUT | --prompt PROMPT | --chat)",
        "error: the following arguments are required: --model (see --help)"]


def test_usage_line_shows_positionals_required_flags_and_required_groups() -> None:
    ap = cli.ScriptParser(prog="x.py")
    ap.add_argument("src")
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--out", required=True, metavar="FILE")
    ap.add_argument("--flag", action="store_true", required=True)
    ap.add_argument("--level", type=int, default=1)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--a", metavar="A")
    g.add_argument("--b", action="store_true")
    assert ap.format_usage() == "usage: x.py [options] src [rest ...] --out FILE --flag (--a A | --b)\n"
    bare = cli.ScriptParser(prog="y.py", add_help=False)
    assert bare.format_usage() == "usage: y.py\n"


def test_parse_errors_exit_2_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    ap = cli.ScriptParser(prog="x.py")
    ap.add_argument("--n", type=int, default=1)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--n", "1", "--bogus", "--more"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("usage: x.py [options]\n"
                                       "error: unrecognized arguments: --bogus --more (see --help)\n")
    assert isinstance(ap, argparse.ArgumentParser)


# ---- run_script: the interrupt line and status -------------------------------------------------------------------


@pytest.mark.parametrize("resumable", [True, False])
def test_run_script_maps_ctrl_c_and_sigterm(resumable: bool, capsys: pytest.CaptureFixture[str]) -> None:
    def ctrl_c() -> int:
        raise KeyboardInterrupt

    def sigterm() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler run_script installs raises in this thread
        raise AssertionError("SIGTERM did not interrupt")

    line = cli.INTERRUPTED if resumable else cli.RESTART
    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_script(ctrl_c, resumable=resumable) == 130
    assert capsys.readouterr().err == line + "\n"
    assert cli.run_script(sigterm, resumable=resumable) == 143
    assert capsys.readouterr().err == line + "\n"
    assert cli.run_script(lambda: 1) == 1 and capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGTERM) is before


FORKED_POOL = """
import multiprocessing as mp, sys, time
from pathlib import Path
from sftkit.io.cli import run_script

def busy(i):
    Path(sys.argv[1], str(i)).write_text("started")
    time.sleep(120)  # ended by the pool's SIGTERM

def main():
    pool = mp.get_context("fork").Pool(2)
    pool.map_async(busy, range(2))
    deadline = time.monotonic() + 60
    while len(list(Path(sys.argv[1]).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.terminate()  # SIGTERM to both workers, which inherited run_script's handler
    pool.join()
    return 0

sys.exit(run_script(main))
"""


def test_forked_workers_ended_by_their_pool_die_quietly(tmp_path: Path) -> None:
    """prep's fork pool ends its workers with SIGTERM: the inherited handler must not turn that into a traceback
    in each worker (it raises only in the process that installed it)."""
    p = subprocess.run([sys.executable, "-c", FORKED_POOL, str(tmp_path)], env=ENV, capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0 and len(list(tmp_path.iterdir())) == 2
    assert p.stderr == ""


# ---- gen and judge on the scripted server: SIGINT -> 130, SIGTERM -> 143, then the rerun resumes ---------------

TOPIC_MARK = "请为主题《"


def gen_items(body: dict, attempt: int) -> Reply:
    user = body["messages"][-1]["content"]
    start = user.index(TOPIC_MARK) + len(TOPIC_MARK)
    topic = user[start:user.index("》", start)]
    items = [{"instruction": f"你是一名熟悉{topic}的校园顾问，请为学生提供准确、具体、可执行的建议和说明。",
              "input": f"关于{topic}，我第{j + 1}次遇到这个问题，应该怎样一步一步处理才稳妥？",
              "output": f"关于{topic}，建议按以下步骤处理：第一，查阅学校发布的正式通知，明确时间节点和材料要求；"
                        "第二，与辅导员或负责老师确认细节，避免因为信息不全而反复奔波；第三，提前准备好证件和复印件；"
                        f"第四，办理完成后保存回执，便于后续查询。以上是第{j + 1}条建议。"} for j in range(2)]
    return Reply.ok(orjson.dumps(items).decode())


def judge_verdict(body: dict, attempt: int) -> Reply:
    dims = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]
    return Reply.ok(orjson.dumps({"reasons": dict.fromkeys(dims, "理由"), "scores": dict.fromkeys(dims, 8)}).decode())


def gen_setup(tmp_path: Path, srv: StubServer, n: int) -> tuple[list[str], Path]:
    topics = tmp_path / "topics.txt"
    topics.write_text("".join(f"主题{i}\n" for i in range(n)), encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    argv = ["--base-url", srv.base_url, "--model", "m", "--topics-file", str(topics), "--n-per-topic", "2",
            "--max-concurrency", "2", "--out", str(out), "--log", "WARNING", "--retries", "0", "--timeout", "20"]
    return argv, out.with_name("gen.journal.jsonl")


def judge_setup(tmp_path: Path, srv: StubServer, n: int) -> tuple[list[str], Path]:
    rows = [{"id": f"r{i}", "source": "t", "messages": [
        {"role": "user", "content": f"请说明办理学生证补办的流程。编号{i}"},
        {"role": "assistant", "content": f"补办学生证的流程如下：第一，到学院办公室领取申请表；第二，签字。编号{i}"}]}
        for i in range(n)]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    cfg = tmp_path / "judges.json"
    cfg.write_bytes(orjson.dumps({"judges": [{"name": "A", "model": "m-a", "base_url": srv.base_url,
                                              "max_concurrency": 2, "retries": 0}], "enable_dedup": False,
                                "min_votes": 1}))
    out = tmp_path / "out"
    return ["--input", str(inp), "--output-dir", str(out), "--config", str(cfg)], out / "judge_journal.jsonl"


def journal_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def default_sigint() -> None:
    # A child started from a shell without job control inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; the user's Ctrl-C reaches a process that has the default one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


STAGES: dict[str, tuple[Callable[[Path, StubServer, int], tuple[list[str], Path]], Callable[[dict, int], Reply]]] = {
    "gen_SFT_data.py": (gen_setup, gen_items),
    "judge.py": (judge_setup, judge_verdict),
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("script", sorted(STAGES))
def test_interrupt_exits_128_plus_signal_with_the_resume_line_and_the_rerun_resumes(
        script: str, sig: signal.Signals, tmp_path: Path) -> None:
    n = 60
    setup, reply = STAGES[script]
    with StubServer(reply, latency=0.05) as srv:
        argv, journal = setup(tmp_path, srv, n)
        proc = subprocess.Popen(script_cmd(script, *argv), env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + 60
            while journal_lines(journal) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()  # still running: 2 of 60 answers journaled
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(10)
        assert proc.returncode == 128 + sig, err
        lines = [x.strip() for x in err.replace("\r", "\n").splitlines() if x.strip()]
        assert lines[-1] == cli.INTERRUPTED and lines.count(cli.INTERRUPTED) == 1, err
        kept = journal_lines(journal)
        assert 2 <= kept < n
        sent = len(srv.requests)
        rerun = subprocess.run(script_cmd(script, *argv), env=ENV, cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, check=False)
        assert rerun.returncode == 0, rerun.stderr
        assert len(srv.requests) - sent == n - kept  # only what the journal lacked


# ---- a locked output: exit 2, one line, nothing sent --------------------------------------------------------------


def eval_setup(tmp_path: Path, srv: StubServer, n: int) -> tuple[list[str], Path]:
    inp = tmp_path / "val.jsonl"
    inp.write_bytes(orjson.dumps({"id": "v1", "messages": [{"role": "user", "content": "你好"}]}) + b"\n")
    judges = tmp_path / "judges.json"
    judges.write_bytes(orjson.dumps({"judges": [{"name": "A", "model": "m-a", "base_url": srv.base_url}]}))
    (tmp_path / "model").mkdir()
    out = tmp_path / "eval"
    out.mkdir()
    return ["--base", str(tmp_path / "model"), "--tuned", str(tmp_path / "model"), "--input", str(inp), "--judges",
            str(judges), "--output-dir", str(out), "--template", "minicpm4"], out / "answers.jsonl"


@pytest.mark.parametrize("script,setup", [("gen_SFT_data.py", gen_setup), ("judge.py", judge_setup),
                                          ("eval.py", eval_setup)])
def test_a_locked_output_exits_2_in_one_line_before_anything_is_sent(script: str, setup, tmp_path: Path) -> None:
    with StubServer(gen_items) as srv:
        argv, journal = setup(tmp_path, srv, 4)
        journal.parent.mkdir(parents=True, exist_ok=True)
        with RunLock(journal.with_name(journal.name + ".lock")):  # another run holds this output
            p = subprocess.run(script_cmd(script, *argv), env=ENV, cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, check=False)
        assert srv.requests == []
    assert p.returncode == 2, p.stderr
    [line] = p.stderr.splitlines()
    assert "in use by another run" in line and f"pid {os.getpid()}" in line
    assert not journal.exists() or journal.read_bytes() == b""
