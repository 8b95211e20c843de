"""vLLM and SGLang backends up to the engine call, with recording stand-ins for the engine packages.

The stand-ins below are test doubles: they record what our code hands the engine (constructor arguments, prompt
token ids, sampling parameters, LoRA requests) and answer with scripted token ids. The backends' real code path
runs unchanged; only the names normally imported from `vllm` / `sglang` are replaced.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_infer import RECORDS, ROOT, infer_cli, lora_adapter, read_rows, write_jsonl  # noqa: F401 (fixture)

import sftkit.model.inference as inference
from sftkit.model.inference import (
    EngineOptions,
    IncrementalText,
    InferenceError,
    SglangApi,
    VllmApi,
    engine_stop_ids,
    finish,
    read_adapter_rank,
    vllm_lora_rank,
)
from sftkit.model.templates import encode_conversation, encode_prompt, get_template, stop_token_ids

ANSWER = "答案是"


def run(argv: list[str], api: Any = None, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = infer_cli.main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err, engine_api=api)
    return rc, out.getvalue(), err.getvalue()


def scripted_reply(tokenizer: Any, prompt: list[int], stop_id: int) -> tuple[list[int], str]:
    """The double's answer: depends on the prompt (its length), so a mix-up of answers shows."""
    text = f"{ANSWER}{len(prompt)}"
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [stop_id], text


# ---- recording stand-ins ----------------------------------------------------------------------------


def fake_vllm(tokenizer: Any, stop_id: int, finish_reason: str = "stop", on_cpu: bool = False,
              start_error: BaseException | None = None) -> tuple[VllmApi, SimpleNamespace]:
    rec = SimpleNamespace(engines=[], calls=[], sampling=[], loras=[], shutdowns=0)

    class EngineCore:
        def shutdown(self) -> None:
            rec.shutdowns += 1

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            rec.engines.append(kwargs)
            if start_error is not None:
                raise start_error
            model = Path(kwargs["model"])
            rec.model_files = sorted(p.name for p in model.iterdir()) if model.is_dir() else []
            self.llm_engine = SimpleNamespace(engine_core=EngineCore())  # where vLLM keeps the engine client

        def generate(self, prompts: list[dict], sampling_params: Any, lora_request: Any = None,
                     use_tqdm: bool = True) -> list[Any]:
            rec.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request})
            outs = []
            for p in prompts:
                ids, _ = scripted_reply(tokenizer, p["prompt_token_ids"], stop_id)
                if finish_reason == "length":
                    ids = ids[:-1][: sampling_params.kwargs["max_tokens"]]
                outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[
                    SimpleNamespace(token_ids=ids, text="(engine text unused)", finish_reason=finish_reason)]))
            return outs

    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            rec.sampling.append(kwargs)

    def tokens_prompt(**kwargs: Any) -> dict:  # vLLM's TokensPrompt is a TypedDict: calling it makes a dict
        return dict(kwargs)

    class LoRARequest:
        def __init__(self, name: str, int_id: int, path: str) -> None:
            self.args = (name, int_id, path)
            rec.loras.append(self.args)

    return VllmApi(LLM, SamplingParams, tokens_prompt, LoRARequest, on_cpu=on_cpu), rec


def fake_sglang(tokenizer: Any, stop_id: int, incremental: bool = False,
                interrupt: bool = False) -> tuple[SglangApi, SimpleNamespace]:
    rec = SimpleNamespace(engines=[], calls=[], shutdowns=0)

    def meta(prompt: list[int], n: int, done: bool) -> dict:
        return {"prompt_tokens": len(prompt), "completion_tokens": n, "e2e_latency": 0.25,
                "finish_reason": {"type": "stop", "matched": stop_id} if done else None}

    class Engine:
        def __init__(self, **kwargs: Any) -> None:
            rec.engines.append(kwargs)

        def generate(self, input_ids: Any = None, sampling_params: Any = None, lora_path: Any = None,
                     stream: bool = False) -> Any:
            rec.calls.append({"input_ids": input_ids, "sampling_params": sampling_params, "lora_path": lora_path,
                              "stream": stream})
            if interrupt:
                raise KeyboardInterrupt
            if stream:
                ids, _ = scripted_reply(tokenizer, input_ids, stop_id)

                def chunks():
                    for n in range(1, len(ids) + 1):
                        part = ids[n - 1:n] if incremental else ids[:n]
                        yield {"text": None, "output_ids": part, "meta_info": meta(input_ids, n, n == len(ids))}

                return chunks()
            outs = []
            for p in input_ids:
                ids, text = scripted_reply(tokenizer, p, stop_id)
                outs.append({"text": text, "output_ids": ids, "meta_info": meta(p, len(ids), True)})
            return outs

        def shutdown(self) -> None:
            rec.shutdowns += 1

    return SglangApi(Engine), rec


@pytest.fixture(scope="module")
def tok_and_template(tiny_tokenizer, tiny_model_dir: str) -> tuple[Any, Any, list[int]]:
    """Tokenizer, minicpm4 template, and the stop ids every engine gets: the template's, then the model's eos."""
    template = get_template("minicpm4", tiny_tokenizer)
    return tiny_tokenizer, template, engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir)


def test_stop_ids_are_the_templates_then_the_models_eos(tok_and_template) -> None:
    tokenizer, template, stops = tok_and_template
    im_end, eos2 = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("</s>")
    assert stop_token_ids(template, tokenizer) == [im_end]
    assert stops == [im_end, eos2]  # the tiny model's generation_config ends on both, as MiniCPM4's does


def adapter_config_only(tmp_path: Path, rank: int) -> str:
    """An adapter folder with just its config: enough for what the backends read before the engine loads it."""
    d = tmp_path / f"adapter_r{rank}"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank, "peft_type": "LORA"}))
    return str(d)


# ---- training ids == the ids every backend is given -------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "你是哈工大的校园助手。"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么可以帮你？"},
    {"role": "user", "content": "图书馆几点开门？"},
    {"role": "assistant", "content": "早上八点。\n周末九点。"},
    {"role": "user", "content": "What about the dining hall?"},
    {"role": "assistant", "content": "It opens at 7."},
]


@pytest.mark.parametrize("backend", ["hf", "vllm", "sglang"])
def test_backend_gets_the_trainers_prompt_ids(backend: str, tiny_model_dir: str, tok_and_template, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer, template, stops = tok_and_template
    # One record per user turn k: the conversation up to answer k (the answer becomes the reference).
    cut_after = [i for i, m in enumerate(CONVERSATION) if m["role"] == "assistant"]
    records = [{"messages": CONVERSATION[: i + 1]} for i in cut_after]
    records.append({"messages": CONVERSATION[:-1]})  # ends with a user turn: no reference
    src = write_jsonl(tmp_path / "conv.jsonl", records)
    given: list[list[int]] = []
    api = None
    if backend == "hf":
        real_load = inference.load_hf_model

        def load_and_spy(opts: EngineOptions, merge: bool = False) -> Any:
            model = real_load(opts, merge)
            real_generate = model.generate

            def spy(input_ids: Any, attention_mask: Any, **kw: Any) -> Any:
                for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
                    given.append([t for t, m in zip(row, mask, strict=True) if m])  # drop left padding
                return real_generate(input_ids=input_ids, attention_mask=attention_mask, **kw)

            model.generate = spy
            return model

        monkeypatch.setattr(inference, "load_hf_model", load_and_spy)
    elif backend == "vllm":
        api, rec = fake_vllm(tokenizer, stops[0])
    else:
        api, rec = fake_sglang(tokenizer, stops[0])
    rc, _, err = run(["--backend", backend, "--model", tiny_model_dir, "--input", str(src), "--output",
                      str(tmp_path / "o.jsonl"), "--temperature", "0", "--max-new-tokens", "4"], api=api)
    assert rc == 0, err
    if backend == "vllm":
        given = [p["prompt_token_ids"] for call in rec.calls for p in call["prompts"]]
    elif backend == "sglang":
        given = [ids for call in rec.calls for ids in call["input_ids"]]
    train = encode_conversation(template, tokenizer, CONVERSATION)
    assert len(given) == 4
    # Three user turns -> three prompts; the last record (no reference) repeats the third one.
    assert len({len(g) for g in given}) == 3 and sorted(given, key=len)[-1] == sorted(given, key=len)[-2]
    for ids in given:
        n = len(ids)
        assert ids == train["input_ids"][:n]
        assert train["labels"][n - 1] == -100 and train["labels"][n] != -100  # ends exactly at the answer start
    assert train["input_ids"][0] == tokenizer.bos_token_id  # minicpm4: BOS at training and at inference alike
    rows = read_rows(tmp_path / "o.jsonl")
    assert [r["reference"] for r in rows] == [CONVERSATION[2]["content"], CONVERSATION[4]["content"],
                                              CONVERSATION[6]["content"], None]


# ---- vLLM -------------------------------------------------------------------------------------------


def test_vllm_engine_sampling_and_lora_arguments(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    adapter = adapter_config_only(tmp_path, 64)
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    api, rec = fake_vllm(tokenizer, stops[0])
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", adapter, "--input", str(src),
                      "--output", str(tmp_path / "o.jsonl"), "--temperature", "0.6", "--top-p", "0.9",
                      "--max-new-tokens", "32", "--repetition-penalty", "1.1", "--seed", "7",
                      "--gpu-memory-utilization", "0.5", "--tensor-parallel-size", "2", "--max-model-len", "1024",
                      "--dtype", "bfloat16"], api=api)
    assert rc == 0, err
    assert rec.engines == [{
        "model": tiny_model_dir, "tokenizer": tiny_model_dir, "dtype": "bfloat16", "seed": 7,
        "trust_remote_code": False, "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2,
        "max_model_len": 1024, "enable_lora": True, "max_loras": 1, "max_lora_rank": 64,
    }]
    assert rec.sampling == [{"max_tokens": 32, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1,
                             "stop_token_ids": stops, "detokenize": False, "seed": 7}]
    assert rec.loras == [("sft", 1, str(Path(adapter).resolve()))]
    assert len(rec.calls) == 1 and rec.calls[0]["lora"].args == rec.loras[0]  # all prompts in one call
    rows = read_rows(tmp_path / "o.jsonl")
    for r, p in zip(rows, rec.calls[0]["prompts"], strict=True):
        n = len(p["prompt_token_ids"])
        assert r["response"] == f"{ANSWER}{n}"  # decoded by us, stop token cut, order kept
        assert r["prompt_tokens"] == n
        assert r["finish_reason"] == "stop"
        assert r["completion_tokens"] == len(scripted_reply(tokenizer, p["prompt_token_ids"], stops[0])[0])


def test_vllm_greedy_length_and_batches(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    api, rec = fake_vllm(tokenizer, stops[0], finish_reason="length")
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--input", str(src), "--output",
                      str(tmp_path / "o.jsonl"), "--temperature", "0", "--max-new-tokens", "2", "--batch-size", "2"],
                     api=api)
    assert rc == 0, err
    assert "enable_lora" not in rec.engines[0] and "max_model_len" not in rec.engines[0]
    assert rec.sampling[0] == {"max_tokens": 2, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0,
                               "stop_token_ids": stops, "detokenize": False}
    assert [len(c["prompts"]) for c in rec.calls] == [2, 2, 1]
    assert all(c["lora"] is None for c in rec.calls)
    rows = read_rows(tmp_path / "o.jsonl")
    assert [r["id"] for r in rows] == [f"val-{i}" for i in range(1, 6)]
    assert {r["finish_reason"] for r in rows} == {"length"}
    assert {r["completion_tokens"] for r in rows} == {2}


def test_vllm_engine_is_shut_down_when_done(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    api, rec = fake_vllm(tokenizer, stops[0])
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi"], api=api)
    assert rc == 0, err
    assert rec.shutdowns == 1
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    api, rec = fake_vllm(tokenizer, stops[0])
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--input", str(src), "--output",
                      str(tmp_path / "o.jsonl")], api=api)
    assert rc == 0 and rec.shutdowns == 1, err


def test_one_dtype_rule_for_every_backend(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    # the tiny model is saved in float32 and this machine has no GPU: `auto` is float32 for hf, vLLM and SGLang
    # alike (vLLM's own `auto` would downcast it to bfloat16)
    tokenizer, _, stops = tok_and_template
    assert inference.resolve_dtype("auto") == "float32"
    assert inference.load_hf_model(EngineOptions(model=tiny_model_dir)).dtype == torch_dtype("float32")
    api, rec = fake_vllm(tokenizer, stops[0])
    assert run(["--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi"], api=api)[0] == 0
    sg_api, sg_rec = fake_sglang(tokenizer, stops[0])
    assert run(["--backend", "sglang", "--model", tiny_model_dir, "--prompt", "hi"], api=sg_api)[0] == 0
    assert rec.engines[0]["dtype"] == sg_rec.engines[0]["dtype"] == "float32"
    assert "auto = bfloat16 on a CUDA GPU" in " ".join(infer_cli.build_parser().format_help().split())
    with pytest.raises(InferenceError, match="unknown --dtype"):
        inference.resolve_dtype("fp8")


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


@pytest.mark.parametrize(("flags", "env", "expected"), [
    ([], {}, 1 << 30),  # CPU-only vLLM: 1 GiB instead of 85% of the machine's RAM
    (["--kv-cache-gib", "2.5"], {}, int(2.5 * (1 << 30))),
    ([], {"VLLM_CPU_KVCACHE_SPACE": "3"}, None),  # the user's own setting wins (vLLM reads it)
])
def test_vllm_cpu_kv_cache_default(flags: list[str], env: dict, expected: int | None, tiny_model_dir: str,
                                   tok_and_template, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer, _, stops = tok_and_template
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    api, rec = fake_vllm(tokenizer, stops[0], on_cpu=True)
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi", "--enforce-eager", *flags],
                     api=api)
    assert rc == 0, err
    assert rec.engines[0].get("kv_cache_memory_bytes") == expected
    assert rec.engines[0]["enforce_eager"] is True
    api, rec = fake_vllm(tokenizer, stops[0], on_cpu=False)  # a GPU: vLLM's gpu_memory_utilization decides
    assert run(["--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi"], api=api)[0] == 0
    assert "kv_cache_memory_bytes" not in rec.engines[0] and "enforce_eager" not in rec.engines[0]


def test_engine_start_failure_is_one_line_exit_1(tiny_model_dir: str, tok_and_template) -> None:
    # vLLM wraps the real reason: RuntimeError("Engine core initialization failed...") from the worker's error
    tokenizer, _, stops = tok_and_template
    try:
        try:
            raise ValueError("Available memory on node 0 (2.1/23.5 GiB) on kv cache allocation is less than "
                             "requested memory for kv (100.0 GiB).")
        except ValueError as cause:
            raise RuntimeError("Engine core initialization failed. See root cause above.") from cause
    except RuntimeError as e:
        failure = e
    api, rec = fake_vllm(tokenizer, stops[0], start_error=failure)
    rc, out, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--prompt", "hi"], api=api)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("infer: the vllm engine did not start: ValueError: Available "
                                                   "memory on node 0")
    assert rec.shutdowns == 0
    sg_api, _ = fake_sglang(tokenizer, stops[0])
    sg_api.Engine = lambda **kw: (_ for _ in ()).throw(OSError("CUDA not available"))
    rc, _, err = run(["--backend", "sglang", "--model", tiny_model_dir, "--prompt", "hi"], api=sg_api)
    assert rc == 1 and err == "infer: the sglang engine did not start: OSError: CUDA not available\n"


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (4, 8), (8, 8), (16, 16), (24, 32), (64, 64), (300, 320)])
def test_vllm_lora_rank_rounds_up_to_an_allowed_value(rank: int, expected: int) -> None:
    assert vllm_lora_rank(rank) == expected


def test_adapter_rank_read_from_config(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {"q_proj": 96}}))
    assert read_adapter_rank(d) == 96
    (d / "adapter_config.json").write_text("{broken")
    with pytest.raises(InferenceError, match="unreadable"):
        read_adapter_rank(d)
    (d / "adapter_config.json").write_text(json.dumps({"lora_alpha": 8}))
    with pytest.raises(InferenceError, match="no LoRA rank"):
        read_adapter_rank(d)
    with pytest.raises(InferenceError, match="above vLLM's maximum"):
        vllm_lora_rank(1024)


def test_vllm_rank_too_large_is_exit_2(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    api, rec = fake_vllm(tokenizer, stops[0])
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", adapter_config_only(tmp_path, 1024),
                      "--prompt", "hi"], api=api)
    assert rc == 2 and "above vLLM's maximum 512" in err
    assert rec.engines == []


# ---- SGLang -----------------------------------------------------------------------------------------


def test_sglang_engine_sampling_and_lora_arguments(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    adapter = adapter_config_only(tmp_path, 64)
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    api, rec = fake_sglang(tokenizer, stops[0])
    rc, _, err = run(["--backend", "sglang", "--model", tiny_model_dir, "--adapter", adapter, "--input", str(src),
                      "--output", str(tmp_path / "o.jsonl"), "--temperature", "0", "--max-new-tokens", "16",
                      "--seed", "3", "--gpu-memory-utilization", "0.7", "--tensor-parallel-size", "1",
                      "--max-model-len", "2048"], api=api)
    assert rc == 0, err
    assert rec.engines == [{
        "model_path": tiny_model_dir, "tokenizer_path": tiny_model_dir, "dtype": "float32", "random_seed": 3,
        "trust_remote_code": False, "mem_fraction_static": 0.7, "tp_size": 1, "log_level": "error",
        "context_length": 2048, "enable_lora": True, "max_lora_rank": 64,
        "lora_paths": [f"sft={Path(adapter).resolve()}"],
    }]
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert call["sampling_params"] == {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0,
                                       "repetition_penalty": 1.0, "stop_token_ids": stops}
    assert call["lora_path"] == ["sft"] * 5 and call["stream"] is False
    rows = read_rows(tmp_path / "o.jsonl")
    for r, ids in zip(rows, call["input_ids"], strict=True):
        assert r["response"] == f"{ANSWER}{len(ids)}"
        assert r["finish_reason"] == "stop"
        assert r["latency_s"] == 0.25  # SGLang's own per-request e2e_latency
    assert rec.shutdowns == 1


def test_sglang_shut_down_on_ctrl_c(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    api, rec = fake_sglang(tokenizer, stops[0], interrupt=True)
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    out = tmp_path / "o.jsonl"
    rc, _, err = run(["--backend", "sglang", "--model", tiny_model_dir, "--input", str(src), "--output", str(out)],
                     api=api)
    assert rc == 130 and "interrupted" in err
    assert rec.shutdowns == 1
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("incremental", [False, True])
def test_sglang_chat_streams_and_keeps_history(incremental: bool, tiny_model_dir: str, tok_and_template) -> None:
    tokenizer, template, stops = tok_and_template
    api, rec = fake_sglang(tokenizer, stops[0], incremental=incremental)
    rc, out, err = run(["--backend", "sglang", "--model", tiny_model_dir, "--chat", "--system", "S"], api=api,
                       stdin="你好\n再见\n/exit\n")
    assert rc == 0, err
    first = encode_prompt(template, tokenizer, [{"role": "system", "content": "S"},
                                                {"role": "user", "content": "你好"}])
    answer1 = f"{ANSWER}{len(first)}"
    second = encode_prompt(template, tokenizer, [
        {"role": "system", "content": "S"}, {"role": "user", "content": "你好"},
        {"role": "assistant", "content": answer1}, {"role": "user", "content": "再见"}])
    assert [c["input_ids"] for c in rec.calls] == [first, second]
    assert all(c["stream"] for c in rec.calls)
    assert out == f">>> {answer1}\n>>> {ANSWER}{len(second)}\n>>> "
    assert rec.shutdowns == 1


# ---- --merge for the engines ------------------------------------------------------------------------


def test_merge_hands_engines_a_plain_merged_model(tiny_model_dir: str, lora_adapter: str,  # noqa: F811
                                                   tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    api, rec = fake_vllm(tokenizer, stops[0])
    merged = tmp_path / "merged"
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", lora_adapter, "--merge",
                      "--merge-dir", str(merged), "--prompt", "hi"], api=api)
    assert rc == 0, err
    assert rec.engines[0]["model"] == str(merged) and "enable_lora" not in rec.engines[0]
    assert rec.loras == [] and rec.calls[0]["lora"] is None
    assert "config.json" in rec.model_files and "sftkit_template.json" in rec.model_files
    # The merged folder answers like base + adapter (hf, greedy).
    greedy = ["--temperature", "0", "--max-new-tokens", "8", "--prompt", "图书馆几点开门？"]
    rc, via_adapter, err = run(["--model", tiny_model_dir, "--adapter", lora_adapter, *greedy])
    assert rc == 0, err
    rc, via_merged, err = run(["--model", str(merged), *greedy])
    assert rc == 0, err
    assert via_merged == via_adapter
    # An existing, non-empty --merge-dir is refused (merge_lora's own check), never overwritten.
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", lora_adapter, "--merge",
                      "--merge-dir", str(merged), "--prompt", "hi"], api=fake_vllm(tokenizer, stops[0])[0])
    assert rc == 2 and "exists and is not empty" in err
    assert (merged / "config.json").is_file()


def test_merge_to_a_temporary_folder_is_removed(tiny_model_dir: str, lora_adapter: str,  # noqa: F811
                                                tok_and_template) -> None:
    tokenizer, _, stops = tok_and_template
    api, rec = fake_sglang(tokenizer, stops[0])
    rc, _, err = run(["--backend", "sglang", "--model", tiny_model_dir, "--adapter", lora_adapter, "--merge",
                      "--prompt", "hi"], api=api)
    assert rc == 0, err
    model_path = Path(rec.engines[0]["model_path"])
    assert model_path.name == "merged" and "lora_paths" not in rec.engines[0]
    assert rec.calls[0]["lora_path"] is None
    assert not model_path.exists()


# ---- missing packages -------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "module", "req"), [("vllm", "vllm", "requirements-vllm.txt"),
                                                        ("sglang", "sglang", "requirements-sglang.txt")])
def test_missing_backend_package_is_one_line_exit_2(backend: str, module: str, req: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import vllm` / `import sglang` fail
    # A model folder with nothing loadable in it: the check must come before any loading.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS[:1])
    rc, out, err = run(["--backend", backend, "--model", str(model), "--input", str(src), "--output",
                        str(tmp_path / "o.jsonl")])
    assert rc == 2
    assert err.count("\n") == 1 and req in err and "Traceback" not in err
    assert out == "" and not (tmp_path / "o.jsonl").exists()


# ---- decoding helpers -------------------------------------------------------------------------------


def test_finish_cuts_at_first_stop_and_names_the_reason(tok_and_template) -> None:
    tokenizer, _, stops = tok_and_template
    body = tokenizer("你好", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    c = finish(tokenizer, [*body, stops[0], pad, pad], stops, prompt_tokens=9, max_new_tokens=50)
    assert (c.text, c.finish_reason, c.completion_tokens, c.token_ids) == ("你好", "stop", len(body) + 1, body)
    c = finish(tokenizer, body, stops, prompt_tokens=9, max_new_tokens=len(body))
    assert (c.text, c.finish_reason, c.completion_tokens) == ("你好", "length", len(body))
    c = finish(tokenizer, body, stops, prompt_tokens=9, max_new_tokens=50, engine_reason="abort")
    assert c.finish_reason == "abort"


def test_incremental_text_never_shows_half_characters(tok_and_template) -> None:
    tokenizer, _, stops = tok_and_template
    text = "哈尔滨工业大学，规格严格，功夫到家。Hello!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Byte-level BPE: some tokens hold part of a Chinese character, so one-token pieces would show U+FFFD.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    inc = IncrementalText(tokenizer, stops)
    pieces = [inc.add([t]) for t in [*ids, stops[0], *ids[:3]]]  # ids after the stop are ignored
    pieces.append(inc.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert inc.stopped and inc.ids == ids


# ---- the template recorded by train/ ----------------------------------------------------------------


def test_template_recorded_beside_the_adapter_is_used(tiny_model_dir: str, tok_and_template, tmp_path: Path) -> None:
    tokenizer, _, stops = tok_and_template
    adapter = Path(adapter_config_only(tmp_path, 8))
    (adapter / "sftkit_template.json").write_text(json.dumps({"template_name": "chatml", "train_mode": "lora"}))
    user = [{"role": "user", "content": "你好"}]
    expected = {name: encode_prompt(get_template(name, tokenizer), tokenizer, user) for name in ("chatml", "minicpm4")}
    assert expected["chatml"] != expected["minicpm4"]  # minicpm4 starts with BOS, chatml does not
    for extra, name in (([], "chatml"), (["--template", "minicpm4"], "minicpm4")):
        api, rec = fake_vllm(tokenizer, stops[0])
        rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", str(adapter), "--prompt", "你好",
                          *extra], api=api)
        assert rc == 0, err
        assert rec.calls[0]["prompts"][0]["prompt_token_ids"] == expected[name]
    (adapter / "sftkit_template.json").write_text(json.dumps({"template_name": "nonesuch"}))
    rc, _, err = run(["--backend", "vllm", "--model", tiny_model_dir, "--adapter", str(adapter), "--prompt", "hi"],
                     api=fake_vllm(tokenizer, stops[0])[0])
    assert rc == 2 and "unknown template_name 'nonesuch'" in err


# ---- engine output kept off stdout ------------------------------------------------------------------------------


def test_engine_output_never_reaches_stdout_children_included(tmp_path: Path) -> None:
    # what vLLM does: log lines from Python (print, logging to sys.stdout), a C-level write to fd 1, and a worker
    # process that inherits fd 1; only the answer written to the yielded stream may reach stdout
    script = tmp_path / "engine.py"
    script.write_text(
        "import logging, os, subprocess, sys\n"
        "from sftkit.model.inference import stdout_kept_for_answers\n"
        "with stdout_kept_for_answers() as answers:\n"
        "    print('INFO engine starting')\n"
        "    logging.basicConfig(stream=sys.stdout, level=logging.INFO); logging.info('engine log line')\n"
        "    os.write(1, b'C-level write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"worker process line\")'], check=True)\n"
        "    answers.write('答案：你好\\n')\n"
        "    print('INFO engine shutdown')\n"
        "print('after the engine')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "答案：你好\nafter the engine\n"
    for line in ("INFO engine starting", "engine log line", "C-level write", "worker process line",
                 "INFO engine shutdown"):
        assert line in proc.stderr
