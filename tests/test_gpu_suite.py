"""bench/gpu_suite.py, the run prepared for the first GPU machine, in its CPU smoke mode: every section runs to
its end on the tiny model (figures mean nothing there), in this venv and, for the engine section, in .venv-vllm
with the real vLLM engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, engine_env
from test_infer import RECORDS, write_jsonl

SUITE = str(ROOT / "bench" / "gpu_suite.py")
# records with long answers, so the length mix has several lengths under the smoke run's 128-token rows
DATA = RECORDS + [{"messages": [{"role": "user", "content": "介绍一下哈尔滨工业大学" * k},
                                {"role": "assistant", "content": "哈工大位于哈尔滨。" * (3 * k)}]} for k in range(1, 7)]


def smoke(python: str, tmp_path: Path, *extra: str, env: dict | None = None) -> dict:
    data = write_jsonl(tmp_path / "records.jsonl", DATA)
    out = tmp_path / "suite.json"
    proc = subprocess.run([python, SUITE, "--smoke", "--data", str(data), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| goal | measured | target | met | note |" in proc.stdout
    return json.loads(out.read_text())


def test_gpu_suite_smoke_runs_every_training_and_hf_section(tmp_path: Path) -> None:
    report = smoke(sys.executable, tmp_path)
    s = report["sections"]
    assert report["smoke"] is True and report["device"].startswith("CPU")
    mem = s["train_memory"]["rows"]
    assert mem["qlora"]["status"] == mem["lora"]["status"] == "ok", mem
    assert mem["qlora"]["linear4bit_layers"] > 0 and mem["lora"]["linear4bit_layers"] == 0
    packing = s["packing"]["rows"]
    assert packing["padded"]["status"] == packing["packed"]["status"] == "ok", packing
    assert packing["padded"]["batches"] == "pad" and packing["packed"]["batches"] != "pad"
    assert s["packing"]["length_mix"].startswith("estimated token lengths of")
    assert s["packing"]["examples"] == 9  # the records that end with an answer
    assert [r["batch_size"] for r in s["hf_batching"]["rows"]] == ["1", "32"]
    assert s["engines"]["status"] == "skipped" and "neither vllm nor sglang" in s["engines"]["reason"]
    goals = {g["goal"]: g for g in report["goals"]}
    assert len(goals) == 5 and all(g["met"] is None for g in goals.values())  # smoke: goals are not judged
    assert goals["packed / padded tokens/s (LoRA)"]["value"] > 0


@pytest.mark.vllm
def test_gpu_suite_smoke_engine_section_with_the_real_vllm(vllm_python: str, tmp_path: Path) -> None:
    report = smoke(vllm_python, tmp_path, "--only", "hf_batching,engines", env=engine_env())
    eng = report["sections"]["engines"]
    assert eng["status"] == "ok", eng
    assert eng["greedy_agreement"]["vllm"]["identical"] == eng["greedy_agreement"]["vllm"]["prompts"] == 8
    backends = [r["backend"] for r in eng["rows"]]
    assert backends == ["hf", "vllm", "vllm (raw LLM.generate)"]
    assert "our vLLM backend / raw LLM.generate, prompts/s" in {g["goal"] for g in report["goals"]}
    assert "train_memory" not in report["sections"]


def test_gpu_suite_refuses_without_gpu_or_with_unknown_sections(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, SUITE, "--only", "nonesuch"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--only takes some of" in proc.stderr
    proc = subprocess.run([sys.executable, SUITE, "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr


@pytest.mark.parametrize(("required", "outcome"), [("1", "ERROR at setup of test_vllm_engine_start_failure"),
                                                   ("", "SKIPPED [1]")])
def test_real_engine_tests_fail_instead_of_skipping_where_make_test_requires_them(required: str, outcome: str,
                                                                                    tmp_path: Path) -> None:
    # what `make test` (CI) sets: without .venv-vllm the real-engine tests fail, they are never skipped there
    env = {**os.environ, "SFTKIT_VLLM_PYTHON": str(tmp_path / "no-venv" / "python"), "SFTKIT_REQUIRE_VLLM": required}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/test_vllm_engine.py::test_vllm_engine_start_failure_is_one_line_exit_1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert outcome in proc.stdout, proc.stdout[-2000:]
    assert "make venv-vllm" in proc.stdout
    assert proc.returncode == (1 if required else 0)
