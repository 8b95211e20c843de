"""infer/infer.py with the transformers backend, end to end on the tiny model (CPU)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftkit.model.inference import EngineOptions, HFBackend, Sampling, engine_stop_ids, load_hf_model
from sftkit.model.templates import encode_prompt, get_template, stop_token_ids

ROOT = Path(__file__).resolve().parents[1]


def _load_cli():
    spec = importlib.util.spec_from_file_location("infer_cli", ROOT / "infer" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["infer_cli"] = module
    spec.loader.exec_module(module)
    return module


infer_cli = _load_cli()

GREEDY = ["--temperature", "0", "--max-new-tokens", "10"]

RECORDS = [
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}]},
    {"instruction": "介绍一下哈尔滨工业大学", "input": "", "output": "哈工大位于哈尔滨。"},
    {"text": "<|beginofutterance|>系统\n你是校园助手\n<|endofutterance|>\n"
             "<|beginofutterance|>用户\n图书馆几点开门？\n<|endofutterance|>"},
    {"conversation": [{"human": "hi", "assistant": "hello"}, {"human": "What is NLP?"}], "system": "Be brief."},
    {"conversations": [{"from": "human", "value": "选课系统什么时候开放？"}, {"from": "gpt", "value": "开学前两周。"}]},
]


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = infer_cli.main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def batch_out(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("batch")
    src = write_jsonl(tmp / "val.jsonl", RECORDS, extra_lines=("{not json", '{"messages": [{"role": "assistant", '
                                                               '"content": "x"}]}'))
    out = tmp / "answers.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(out), "--batch-size", "3",
                      *GREEDY])
    assert rc == 0, err
    return out, read_rows(out)


def test_batch_file_in_out(batch_out: tuple[Path, list[dict]], tiny_tokenizer) -> None:
    out, rows = batch_out
    assert [r["id"] for r in rows] == ["val-1", "val-2", "val-3", "val-4", "val-5"]
    # The prompt is the conversation up to the last user turn; a final answer becomes `reference`.
    assert rows[0]["messages"] == [{"role": "user", "content": "你好"}]
    assert rows[0]["reference"] == "你好！有什么可以帮你？"
    assert rows[1]["messages"] == [{"role": "user", "content": "介绍一下哈尔滨工业大学"}]
    assert rows[2]["reference"] is None
    assert rows[2]["messages"][0] == {"role": "system", "content": "你是校园助手"}
    assert rows[3]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "What is NLP?"},
    ]
    template = get_template("minicpm4", tiny_tokenizer)
    for r in rows:
        assert r["prompt_tokens"] == len(encode_prompt(template, tiny_tokenizer, r["messages"]))
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["completion_tokens"] <= 10
        assert isinstance(r["response"], str)
        assert r["latency_s"] >= 0
    summary = json.loads((out.parent / "answers.summary.json").read_text())
    assert summary["lines_read"] == 7
    assert summary["bad_lines"] == 2
    assert summary["records_out"] == 5
    assert summary["with_reference"] == 3
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert sum(summary["finish_reasons"].values()) == 5


def test_bad_lines_reported_with_file_and_line(tiny_model_dir: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS[:1], extra_lines=("[1, 2", '{"foo": 1}'))
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                      *GREEDY])
    assert rc == 0, err
    assert f"{src}:2: invalid JSON" in caplog.text
    assert f"{src}:3: unknown record form" in caplog.text
    assert len(read_rows(tmp_path / "o.jsonl")) == 1


def test_greedy_batch_equals_single(batch_out: tuple[Path, list[dict]], tiny_model_dir: str, tmp_path: Path) -> None:
    _, batched = batch_out
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    out = tmp_path / "one_by_one.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(out), "--batch-size", "1",
                      *GREEDY])
    assert rc == 0, err
    single = read_rows(out)
    assert [r["response"] for r in single] == [r["response"] for r in batched]
    assert [r["completion_tokens"] for r in single] == [r["completion_tokens"] for r in batched]
    # --prompt renders the same prompt as a one-turn record and gives the same answer.
    rc, printed, err = run(["--model", tiny_model_dir, "--prompt", "你好", *GREEDY])
    assert rc == 0, err
    assert printed == batched[0]["response"] + "\n"
    assert "completion tokens" in err


def test_system_flag_applies_only_where_missing(tiny_model_dir: str, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [RECORDS[0], RECORDS[2]])
    out = tmp_path / "o.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(out), "--system", "SYS",
                      *GREEDY])
    assert rc == 0, err
    rows = read_rows(out)
    assert rows[0]["messages"][0] == {"role": "system", "content": "SYS"}
    assert rows[1]["messages"][0] == {"role": "system", "content": "你是校园助手"}


def test_max_model_len_skips_long_prompts(tiny_model_dir: str, tmp_path: Path, tiny_tokenizer) -> None:
    template = get_template("minicpm4", tiny_tokenizer)
    short = len(encode_prompt(template, tiny_tokenizer, [{"role": "user", "content": "你好"}]))
    src = write_jsonl(tmp_path / "in.jsonl", [RECORDS[0], {"messages": [{"role": "user", "content": "长" * 400}]}])
    out = tmp_path / "o.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(out),
                      "--max-model-len", str(short + 20), *GREEDY])
    assert rc == 0, err
    assert len(read_rows(out)) == 1
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["by_reason"] == {"prompt too long": 1}


def test_hf_stop_token_ends_answer(tiny_model_dir: str, tiny_tokenizer) -> None:
    template = get_template("minicpm4", tiny_tokenizer)
    stops = engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir)
    model = load_hf_model(EngineOptions(model=tiny_model_dir))
    ids = encode_prompt(template, tiny_tokenizer, [{"role": "user", "content": "你好"}])
    greedy = Sampling(temperature=0, max_new_tokens=6)
    free = HFBackend(model, tiny_tokenizer, stops).generate([ids], greedy)[0]
    assert free.finish_reason == "length" and free.completion_tokens == 6
    # Make the model's first greedy token a stop token: the answer is empty and ends with "stop".
    stopped = HFBackend(model, tiny_tokenizer, [*stops, free.token_ids[0]]).generate([ids], greedy)[0]
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == ("", "stop", 1)
    # The second token as stop: the answer is exactly the first token.
    second = HFBackend(model, tiny_tokenizer, [*stops, free.token_ids[1]]).generate([ids], greedy)[0]
    if free.token_ids[1] != free.token_ids[0]:
        assert second.token_ids == free.token_ids[:1] and second.finish_reason == "stop"


def test_chat_through_stdin_keeps_history_and_resets(tiny_model_dir: str, tiny_tokenizer) -> None:
    script = "你好\n\n图书馆几点开门？\n/reset\n你好\n/exit\n不会被回答\n"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infer" / "infer.py"), "--model", tiny_model_dir, "--chat", *GREEDY],
        input=script, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    # Each answer follows a ">>> " prompt and ends with a newline (answers may hold newlines themselves); a blank
    # input line re-prompts at once (">>> >>> "), which leaves an empty part.
    answers = [part.removesuffix("\n") for part in proc.stdout.split(">>> ")[1:] if part]
    assert len(answers) == 3, proc.stdout
    assert "history cleared" in proc.stderr
    assert "chat ended after 3 answer(s)" in proc.stderr
    # After /reset the same question gets the same greedy answer as the first time.
    assert answers[2] == answers[0]
    # The second answer saw the first exchange: compare with a direct greedy run on that history.
    template = get_template("minicpm4", tiny_tokenizer)
    backend = HFBackend(load_hf_model(EngineOptions(model=tiny_model_dir)), tiny_tokenizer,
                        engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir))
    greedy = Sampling(temperature=0, max_new_tokens=10)
    first = backend.generate([encode_prompt(template, tiny_tokenizer, [{"role": "user", "content": "你好"}])],
                             greedy)[0].text
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "图书馆几点开门？"}]
    with_history = backend.generate([encode_prompt(template, tiny_tokenizer, history)], greedy)[0].text
    without = backend.generate([encode_prompt(template, tiny_tokenizer, history[2:])], greedy)[0].text
    assert answers[0] == first
    assert answers[1] == with_history
    assert with_history != without  # the check above could not pass by ignoring history


def test_chat_streams_pieces_that_join_to_the_answer(tiny_model_dir: str, tiny_tokenizer) -> None:
    template = get_template("minicpm4", tiny_tokenizer)
    backend = HFBackend(load_hf_model(EngineOptions(model=tiny_model_dir)), tiny_tokenizer,
                        engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir))
    ids = encode_prompt(template, tiny_tokenizer, [{"role": "user", "content": "介绍一下哈尔滨工业大学"}])
    greedy = Sampling(temperature=0, max_new_tokens=16)
    pieces: list[str] = []
    streamed = backend.stream(ids, greedy, pieces.append)
    whole = backend.generate([ids], greedy)[0]
    assert "".join(pieces) == streamed.text == whole.text
    assert streamed.token_ids == whole.token_ids
    assert len(pieces) > 1


# ---- LoRA -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny LoRA adapter with random (non-zero) B weights, so it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                assert p.abs().sum() > 0
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return str(out)


def test_lora_adapter_applied_and_merge_agrees(batch_out: tuple[Path, list[dict]], tiny_model_dir: str,
                                               lora_adapter: str, tmp_path: Path) -> None:
    _, base_rows = batch_out
    src = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    out = tmp_path / "lora.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--adapter", lora_adapter, "--input", str(src), "--output",
                      str(out), "--batch-size", "3", *GREEDY])
    assert rc == 0, err
    with_lora = [r["response"] for r in read_rows(out)]
    assert with_lora != [r["response"] for r in base_rows]
    merged_out = tmp_path / "merged.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--adapter", lora_adapter, "--merge", "--input", str(src),
                      "--output", str(merged_out), "--batch-size", "3", *GREEDY])
    assert rc == 0, err
    assert [r["response"] for r in read_rows(merged_out)] == with_lora
    summary = json.loads((tmp_path / "merged.summary.json").read_text())
    assert summary["adapter"] == lora_adapter and summary["merged"] is True


def test_lora_answers_match_peft_directly(tiny_model_dir: str, lora_adapter: str, tiny_tokenizer) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rc, printed, err = run(["--model", tiny_model_dir, "--adapter", lora_adapter, "--prompt", "你好", *GREEDY])
    assert rc == 0, err
    template = get_template("minicpm4", tiny_tokenizer)
    ids = encode_prompt(template, tiny_tokenizer, [{"role": "user", "content": "你好"}])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_adapter).eval()
    with torch.no_grad():
        gen = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                             eos_token_id=engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir))
    new = gen[0, len(ids):].tolist()
    stops = set(engine_stop_ids(stop_token_ids(template, tiny_tokenizer), tiny_model_dir))
    new = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
    assert printed == tiny_tokenizer.decode(new, skip_special_tokens=True) + "\n"


# ---- bad usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/nonexistent/model", "--prompt", "hi"], "not a model folder"),
        (["--model", "{model}", "--input", "{model}/config.json"], "--input needs --output"),
        (["--model", "{model}", "--prompt", "hi", "--merge"], "--merge needs --adapter"),
        (["--model", "{model}", "--prompt", "hi", "--adapter", "{model}"], "not a PEFT adapter folder"),
        (["--model", "{model}", "--prompt", "hi", "--top-p", "0"], "--top-p"),
        (["--model", "{model}", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
        (["--model", "{model}", "--input", "/nonexistent.jsonl", "--output", "x.jsonl"], "no such file"),
        (["--model", "{model}", "--prompt", "hi", "--output", "x.jsonl"], "--output is for batch mode"),
    ],
)
def test_bad_usage_is_one_line_exit_2(argv: list[str], message: str, tiny_model_dir: str) -> None:
    rc, out, err = run([a.replace("{model}", tiny_model_dir) for a in argv])
    assert rc == 2
    assert message in err and err.count("\n") == 1 and err.startswith("infer: ")
    assert out == ""


def test_input_without_usable_records_is_exit_2(tiny_model_dir: str, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": []}], extra_lines=("nope",))
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "no usable records" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_mode_is_required(tiny_model_dir: str) -> None:
    with pytest.raises(SystemExit) as exc:
        infer_cli.build_parser().parse_args(["--model", tiny_model_dir])
    assert exc.value.code == 2


def test_help_mentions_every_flag() -> None:
    text = infer_cli.build_parser().format_help()
    for flag in ("--backend", "--model", "--adapter", "--template", "--input", "--output", "--prompt", "--chat",
                 "--system", "--temperature", "--top-p", "--max-new-tokens", "--repetition-penalty", "--seed",
                 "--batch-size", "--merge", "--gpu-memory-utilization", "--tensor-parallel-size",
                 "--max-model-len"):
        assert flag in text


def test_limit_answers_only_the_first_records(tiny_model_dir: str, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "o.jsonl"
    rc, _, err = run(["--model", tiny_model_dir, "--input", str(src), "--output", str(out), "--limit", "2", *GREEDY])
    assert rc == 0, err
    assert [r["id"] for r in read_rows(out)] == ["in-1", "in-2"]


def test_bench_runs_on_the_tiny_model(tiny_model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_infer.py"), "--model", tiny_model_dir, "--n-prompts", "4",
         "--batch-sizes", "1,4", "--max-new-tokens", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["batch_size"], r["prompts"]) for r in rows] == [("hf", "1", 4), ("hf", "4", 4)]
    assert rows[0]["completion_tokens"] == rows[1]["completion_tokens"] <= 12  # greedy: same answers either way
    assert "x one-at-a-time" in rows[1]["note"]
    assert "| hf | 4 | 4 |" in proc.stdout
    spec = importlib.util.spec_from_file_location("bench_infer", ROOT / "bench" / "bench_infer.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_infer"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.agreement({"hf": [[1, 2], [3]]}) == {}
    assert bench.agreement({"hf": [[1, 2], [3], [5]], "vllm": [[1, 2], [4], [5]]}) == {
        "vllm": {"against": "hf", "identical": 2, "prompts": 3, "first_different_prompt": 1}}
