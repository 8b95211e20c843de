"""train/train.py and train/merge_lora.py on the tiny model (CPU): bad argument files, full/LoRA/QLoRA learning,
merge equality, resume. Training runs in-process (main(argv)) to spare the import time of a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train import merge_lora, train

ROOT = Path(__file__).resolve().parents[1]

# A memorised set: a few short fixed conversations, system prompt and multi-turn included.
CONVS = [
    {"conversation_id": 1, "system": "你是哈工大助手",
     "conversation": [{"human": "哈工大在哪里？", "assistant": "哈尔滨工业大学位于黑龙江省哈尔滨市。"},
                      {"human": "谢谢", "assistant": "不客气！"}]},
    {"conversation_id": 2, "conversation": [{"human": "选课系统什么时候开放？", "assistant": "开学前两周开放。"}]},
    {"conversation_id": 3, "conversation": [{"human": "What is NLP?", "assistant": "Natural language processing."}]},
    {"conversation_id": 4, "conversation": [{"human": "宿舍几点熄灯？", "assistant": "晚上十一点熄灯。"}]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("sftdata")
    train_file = d / "train.jsonl"
    train_file.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVS), encoding="utf-8")
    eval_file = d / "val.jsonl"
    eval_file.write_text(json.dumps(CONVS[1], ensure_ascii=False) + "\n", encoding="utf-8")
    return {"train": str(train_file), "eval": str(eval_file)}


def _args(tmp_path: Path, tiny_model_dir: str, data: dict[str, str], **over) -> dict:
    args = {
        "model_name_or_path": tiny_model_dir, "train_file": data["train"], "output_dir": str(tmp_path / "out"),
        "template_name": "minicpm4", "train_mode": "lora", "max_seq_length": 128,
        "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 1e-2,
        "max_steps": 20, "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no",
        "lr_scheduler_type": "constant", "bf16": False, "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "seed": 0,
    }
    args.update(over)
    return args


def _write_args(tmp_path: Path, args: dict, name: str = "args.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(args), encoding="utf-8")
    return str(path)


def _run(tmp_path: Path, args: dict, *extra: str) -> dict:
    rc = train.main(["--train_args_file", _write_args(tmp_path, args), *extra])
    assert rc == 0
    return json.loads((Path(args["output_dir"]) / train.SUMMARY_FILE).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ bad arguments

BAD = [
    ({"not_a_key": 1, "another": 2}, "unknown key(s): another, not_a_key"),
    ({"fp16": True, "bf16": True}, "fp16 and bf16 are both true"),
    ({"train_mode": "qlora", "deepspeed": "train/ds_z3.json"}, "qlora with DeepSpeed ZeRO-3 is not supported"),
    ({"train_mode": "qlora", "deepspeed": "train/ds_z3_offload.json"}, "qlora with DeepSpeed ZeRO-3"),
    ({"train_file": "/nonexistent/train.jsonl"}, "train_file not found: /nonexistent/train.jsonl"),
    ({"eval_file": "/nonexistent/val.jsonl"}, "eval_file not found"),
    ({"eval_strategy": "steps"}, "eval_strategy is 'steps' but there is no eval_file"),
    ({"train_mode": "prefix"}, "train_mode must be one of full, lora, qlora"),
    ({"template_name": "vicuna"}, "unknown template_name 'vicuna'"),
    ({"model_name_or_path": "/nonexistent/model"}, "model_name_or_path not found"),
    ({"model_name_or_path": "outputs/never-trained-stage1-merged"}, "model_name_or_path not found"),
    ({"lora_rank": 0}, "lora_rank must be an integer >= 1"),
    ({"lora_dropout": 1.5}, "lora_dropout must be in [0, 1)"),
    ({"max_seq_length": "long"}, "max_seq_length must be an integer"),
    ({"overlength": "wrap"}, "overlength must be one of truncate, drop"),
    ({"packing_attention": "magic"}, "packing_attention must be one of"),
    ({"deepspeed": "/nonexistent/ds.json"}, "deepspeed config not found"),
    ({"resume_from_checkpoint": "/nonexistent/checkpoint-7"}, "no such checkpoint directory"),
    ({"bf16": True, "use_cpu": False}, "bf16"),  # TrainingArguments' own check, as one line
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_argument_file_is_one_clear_error(tmp_path, tiny_model_dir, data, capsys, monkeypatch, override, message):
    if override.get("bf16") and override.get("use_cpu") is False:
        import torch

        if torch.cuda.is_available():
            pytest.skip("bf16 is supported here")
    monkeypatch.chdir(ROOT)  # the deepspeed paths are relative to the repository root

    def no_model(*a, **k):
        raise AssertionError("a model was loaded despite bad arguments")

    monkeypatch.setattr(train, "load_model", no_model)
    args = _args(tmp_path, tiny_model_dir, data, **override)
    rc = train.main(["--train_args_file", _write_args(tmp_path, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("train.py: error: ")
    assert message in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_and_invalid_args_file(tmp_path, capsys):
    assert train.main(["--train_args_file", str(tmp_path / "none.json")]) == 2
    assert "train_args_file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert train.main(["--train_args_file", str(bad)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    bad.write_text("[1, 2]", encoding="utf-8")
    assert train.main(["--train_args_file", str(bad)]) == 2
    assert "one JSON object" in capsys.readouterr().err
    bad.write_text("{}", encoding="utf-8")
    assert train.main(["--train_args_file", str(bad), "--set", "novalue"]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err


def test_data_without_a_usable_example_is_a_usage_error(tmp_path, tiny_model_dir, data, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{broken\n", encoding="utf-8")
    args = _args(tmp_path, tiny_model_dir, data, train_file=str(empty))
    assert train.main(["--train_args_file", _write_args(tmp_path, args)]) == 2
    assert "no usable training example" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "train" / "args").glob("*.json")))
def test_shipped_argument_files_parse(tmp_path, data, monkeypatch, name):
    monkeypatch.chdir(ROOT)
    raw = json.loads((ROOT / "train" / "args" / name).read_text(encoding="utf-8"))
    assert raw["template_name"] == "minicpm4" and raw["trust_remote_code"] is True and raw["bf16"] is True
    assert raw["max_seq_length"] == 1024 and raw["gradient_accumulation_steps"] == 16
    if raw["train_mode"] == "full":
        assert raw["learning_rate"] == 1e-5
    else:
        assert (raw["learning_rate"], raw["lora_rank"], raw["lora_alpha"]) == (2e-4, 64, 16)
    sets = ["--set", f"train_file={data['train']}", "--set", f"output_dir={tmp_path}", "--set", "use_cpu=true"]
    if "stage2" in name:
        sets += ["--set", f"model_name_or_path={tmp_path}"]
    sft, targs, _ = train.load_args(["--train_args_file", f"train/args/{name}", *sets])
    assert sft.train_mode in train.TRAIN_MODES and targs.bf16


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize(("mode", "lr"), [("full", 3e-3), ("lora", 1e-2), ("qlora", 1e-2)])
def test_training_lowers_the_loss(tmp_path, tiny_model_dir, data, mode, lr):
    args = _args(tmp_path, tiny_model_dir, data, train_mode=mode, learning_rate=lr,
                 eval_file=data["eval"], eval_steps=10, activation_checkpointing=mode != "full")
    s = _run(tmp_path, args)
    assert s["global_step"] == 20
    assert (s["world_size"], s["global_batch"], s["launch"]) == (1, 4, "single process")
    assert s["last_loss"] < 0.6 * s["first_loss"], s
    # eval at steps 10 and 20, then the final evaluation
    assert len(s["eval_losses"]) == 3 and s["eval_loss"] == s["eval_losses"][-1] < s["eval_losses"][0]
    out = Path(args["output_dir"])
    assert json.loads((out / train.TEMPLATE_FILE).read_text())["template_name"] == "minicpm4"
    assert (out / "tokenizer_config.json").is_file()
    if mode == "full":
        assert (out / "model.safetensors").is_file() and s["trainable_params"] == s["params"]
    else:
        assert (out / "adapter_config.json").is_file() and s["trainable_params"] < s["params"] / 5
        # every linear layer but lm_head: 7 per block (q k v o gate up down) x 2 layers
        adapter = json.loads((out / "adapter_config.json").read_text())
        linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert {t.rsplit(".", 1)[-1] for t in adapter["target_modules"]} == linear
        assert len(adapter["target_modules"]) == 14
        assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
    assert s["linear4bit_layers"] == (14 if mode == "qlora" else 0)


def test_packed_training_is_padding_free(tmp_path, tiny_model_dir, data):
    args = _args(tmp_path, tiny_model_dir, data, packing=True, max_steps=6, per_device_train_batch_size=1,
                 max_seq_length=256)
    s = _run(tmp_path, args)
    assert s["collator_mode"] == "position_ids" and s["padding_share"] == 0.0
    assert s["train_data"]["rows"] < s["train_data"]["examples"]
    assert s["last_loss"] < s["first_loss"]


def test_merged_logits_equal_adapter_logits(tmp_path, tiny_model_dir, data, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for mode in ("lora", "qlora"):
        run_dir = tmp_path / mode
        run_dir.mkdir()
        args = _args(run_dir, tiny_model_dir, data, train_mode=mode, max_steps=5)
        _run(run_dir, args)
        merged_dir = run_dir / "merged"
        rc = merge_lora.main(["--base", tiny_model_dir, "--adapter", args["output_dir"], "--out", str(merged_dir),
                              "--dtype", "float32"])
        assert rc == 0
        x = torch.tensor([[1, 4, 90, 88, 274, 204, 457, 167, 407, 272, 5, 204, 4, 70, 382, 204]])
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, args["output_dir"]).eval()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        with torch.no_grad():
            a, m, p = adapted(x).logits, merged(x).logits, plain(x).logits
        assert (a - m).abs().max().item() < 1e-4
        assert (m - p).abs().max().item() > 1e-3  # the adapter did change the model
        assert getattr(merged.config, "quantization_config", None) is None  # QLoRA merged into the fp32 base
        meta = json.loads((merged_dir / merge_lora.TEMPLATE_FILE).read_text())
        assert meta["template_name"] == "minicpm4" and meta["merged_from"]["adapter"] == args["output_dir"]
        assert (merged_dir / "tokenizer_config.json").is_file()

    # bad usage: no adapter, existing output, a quantized base
    assert merge_lora.main(["--base", tiny_model_dir, "--adapter", tiny_model_dir, "--out", str(tmp_path / "x")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    adapter = str(tmp_path / "lora" / "out")
    assert merge_lora.main(["--base", tiny_model_dir, "--adapter", adapter, "--out", str(merged_dir)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    quant = tmp_path / "quantized-base"
    quant.mkdir()
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quant / "config.json").write_text(json.dumps(config))
    assert merge_lora.main(["--base", str(quant), "--adapter", adapter, "--out", str(tmp_path / "y")]) == 2
    assert "is a quantized model" in capsys.readouterr().err


def test_resume_continues_the_step_count(tmp_path, tiny_model_dir, data):
    args = _args(tmp_path, tiny_model_dir, data, max_steps=4, save_strategy="steps", save_steps=2,
                 resume_from_checkpoint=True)
    first = _run(tmp_path, args)  # no checkpoint yet: `true` starts from scratch
    assert first["resumed_from"] is None and first["global_step"] == 4
    out = Path(args["output_dir"])
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    # a torn checkpoint (no trainer_state.json) newer than the last good one is skipped
    (out / "checkpoint-9").mkdir()
    args["max_steps"] = 6
    second = _run(tmp_path, args)
    assert second["resumed_from"] == str(out / "checkpoint-4")
    assert (second["start_step"], second["global_step"], second["steps_this_run"]) == (4, 6, 2)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    steps_logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps_logged == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu(tmp_path, tiny_model_dir, data):
    """One process, gloo backend, ZeRO-2 (its first run compiles DeepSpeed's CPU ops: minutes)."""
    args = _args(tmp_path, tiny_model_dir, data, train_mode="full", learning_rate=3e-3, max_steps=6,
                 deepspeed=str(ROOT / "train" / "ds_z2.json"))
    with socket.socket() as sock:  # a fixed port collides with any other run of this test on the machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), "--train_args_file",
                           _write_args(tmp_path, args)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((Path(args["output_dir"]) / train.SUMMARY_FILE).read_text())
    assert s["global_step"] == 6 and s["last_loss"] < s["first_loss"]


def _layer0_lora_grads(model, x) -> dict:
    model.train()
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()
            if p.requires_grad and "layers.0." in n and "lora_" in n}


def _model_args(tmp_path, tiny_model_dir, data, **over):
    args = _args(tmp_path, tiny_model_dir, data, **over)
    sft, targs, _ = train.load_args(["--train_args_file", _write_args(tmp_path, args, "model_args.json")])
    return sft, targs


def test_lora_with_checkpointing_gets_gradients_in_the_first_layer(tmp_path, tiny_model_dir, data):
    import torch

    sft, targs = _model_args(tmp_path, tiny_model_dir, data, activation_checkpointing=True)
    model = train.load_model(sft, targs)
    # reentrant checkpointing drops gradients whose block inputs do not require grad: input grads must be on
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    grads = _layer0_lora_grads(model, torch.tensor([[1, 4, 90, 88, 274, 204, 457, 167]]))
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_qlora_gradients_stay_right_after_an_evaluation(tmp_path, tiny_model_dir, data):
    """bitsandbytes repacks 4-bit weights for inference on AVX512-BF16 CPUs; training after an eval must not
    backpropagate through that kernel (it has no autograd). Same gradients before and after an eval forward."""
    import torch
    from peft.tuners.lora import LoraLayer

    sft, targs = _model_args(tmp_path, tiny_model_dir, data, train_mode="qlora")
    model = train.load_model(sft, targs)
    torch.manual_seed(0)
    for module in model.modules():  # non-zero B so that gradients flow through every base layer
        if isinstance(module, LoraLayer):
            for b in module.lora_B.values():
                torch.nn.init.normal_(b.weight, std=0.1)
    x = torch.tensor([[1, 4, 90, 88, 274, 204, 457, 167, 407, 272]])
    before = _layer0_lora_grads(model, x)
    model.eval()
    with torch.no_grad():
        model(input_ids=x)
    after = _layer0_lora_grads(model, x)
    assert before and all((before[k] - after[k]).abs().max().item() < 1e-6 for k in before)


def test_command_line_exit_status_and_help(tmp_path, tiny_model_dir, data):
    """The real entry points: --help exits 0; a contradictory file exits 2 with one line on stderr."""
    args = _args(tmp_path, tiny_model_dir, data, fp16=True, bf16=True)
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), "--train_args_file",
                           _write_args(tmp_path, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"train.py: error: {tmp_path / 'args.json'}: fp16 and bf16 are both true; pick one (bf16 recommended: "
        "fp16 runs diverged in seed 004)"]
    for script in ("train.py", "merge_lora.py"):
        proc = subprocess.run([sys.executable, str(ROOT / "train" / script), "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "--" in proc.stdout


def test_packing_that_leaks_across_sequences_is_refused(tmp_path, tiny_model_dir, data, capsys, monkeypatch):
    import sftkit.model.sft_data

    tried = []

    def leaky(model, mode, *a, **k):
        tried.append(mode)
        return 0.9

    monkeypatch.setattr(sftkit.model.sft_data, "packing_leak", leaky)
    args = _args(tmp_path, tiny_model_dir, data, packing=True, max_steps=2)
    assert train.main(["--train_args_file", _write_args(tmp_path, args)]) == 2
    err = capsys.readouterr().err
    assert "does not keep packed sequences apart (position_ids 0.90, block_mask 0.90" in err
    assert tried == ["position_ids", "block_mask"]  # auto tries both before giving up
