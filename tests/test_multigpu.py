"""Several processes train as one (CPU, gloo): one plain SGD step with 2 processes x batch B gives the weights, logged
loss and eval loss of one process with batch 2B, and of a plain PyTorch step over the same examples (native Llama
forward + F.cross_entropy summed over every trained token / their count: the outside reference).

Each case is one `torchrun --nproc_per_node 2` launch (DDP, DeepSpeed ZeRO-2/3), the 1-process runs are in-process.
A model in MiniCPM4's remote-code convention (forward takes **kwargs, returns its own mean cross-entropy) is the
case that was wrong before: its loss and update were 2x with 2 processes, and 2x again with 2 accumulation steps."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train import train

ROOT = Path(__file__).resolve().parents[1]
LR = 0.5
MAX_LEN = 128  # the 8 examples below pack into exactly 4 rows of 128 tokens (asserted)
REL_TOL = 1e-6

CONVS = [
    {"system": "你是哈工大助手",
     "conversation": [{"human": "哈工大在哪里？", "assistant": "哈尔滨工业大学位于黑龙江省哈尔滨市。"},
                      {"human": "谢谢", "assistant": "不客气！"}]},
    {"conversation": [{"human": "选课系统什么时候开放？", "assistant": "开学前两周开放。"}]},
    {"conversation": [{"human": "What is NLP?", "assistant": "Natural language processing."}]},
    {"conversation": [{"human": "宿舍几点熄灯？", "assistant": "晚上十一点熄灯。"}]},
    {"conversation": [{"human": "图书馆怎么借书？", "assistant": "同学们可以在图书馆借阅图书，请带好校园卡。"}]},
    {"conversation": [{"human": "Hello!", "assistant": "Hello! I am a helpful assistant."}]},
    {"conversation": [{"human": "校训是什么？", "assistant": "规格严格，功夫到家。"},
                      {"human": "学校哪一年创建？", "assistant": "1920年。"}]},
    {"conversation": [{"human": "one plus one?", "assistant": "one plus one is two."}]},
]

# MiniCPM4's modeling_minicpm.py computes its loss this way: **kwargs in the signature (so transformers.Trainer
# believes it normalises by num_items_in_batch) and a plain CrossEntropyLoss() mean over the micro-batch.
MEAN_LOSS_MODELING = '''
from torch.nn import CrossEntropyLoss
from transformers import LlamaForCausalLM


class MeanLossLlamaForCausalLM(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        if labels is not None:
            logits = out.logits.float()
            out.loss = CrossEntropyLoss()(logits[..., :-1, :].reshape(-1, logits.shape[-1]),
                                          labels[..., 1:].reshape(-1))
        return out
'''


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mg_data") / "train.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVS), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def remote_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model's weights under a remote-code class with MiniCPM4's loss convention."""
    out = tmp_path_factory.mktemp("mean_loss_model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    (out / "modeling_meanloss.py").write_text(MEAN_LOSS_MODELING, encoding="utf-8")
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_meanloss.MeanLossLlamaForCausalLM"}
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


@pytest.fixture(scope="module")
def examples(tiny_model_dir, train_file) -> list[dict]:
    from transformers import AutoTokenizer

    from sftkit.model.sft_data import load_sft_rows
    from sftkit.model.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template("minicpm4", tokenizer)
    rows, stats = load_sft_rows(train_file, template, tokenizer, MAX_LEN)
    packed, _ = load_sft_rows(train_file, template, tokenizer, MAX_LEN, packing=True)
    assert stats.examples == 8 and stats.truncated == 0 and len(packed) == 4
    return rows


@pytest.fixture(scope="module")
def reference(tiny_model_dir, examples) -> dict:
    """One plain SGD step by hand: loss = summed token cross-entropy / trained tokens, over all 8 examples."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def mean_loss() -> torch.Tensor:
        total, count = torch.zeros(()), 0
        for row in examples:  # each example alone: no padding, no packing
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:])
            total = total + F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
            count += int((targets != -100).sum())
        return total / count

    loss = mean_loss()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
        eval_loss = mean_loss().item()
    return {"loss": loss.item(), "eval_loss": eval_loss, "start": start,
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "params": sum(p.numel() for p in model.parameters())}


def _args(out: Path, model: str, train_file: str, **over) -> dict:
    args = {
        "model_name_or_path": model, "train_file": train_file, "eval_file": train_file, "output_dir": str(out),
        "template_name": "minicpm4", "train_mode": "full", "max_seq_length": MAX_LEN,
        "optim": "sgd", "learning_rate": LR, "weight_decay": 0.0, "max_grad_norm": 0, "lr_scheduler_type": "constant",
        "max_steps": 1, "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "use_cpu": True,
        "bf16": False, "report_to": "none", "disable_tqdm": True, "seed": 0, "lora_dropout": 0.0, "lora_rank": 8,
    }
    args.update(over)
    return args


def _write(out: Path, args: dict) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(args), encoding="utf-8")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, args: dict) -> dict:
    """2 processes on this machine over gloo; returns rank 0's train_summary.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_MODULES_CACHE": str(out.parent / "hf_modules")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "train" / "train.py"), "--train_args_file", _write(out, args)]
    # under pytest's 900 s: the first DeepSpeed launch on a machine compiles its CPU comm op (~30 s idle, minutes
    # on a loaded machine)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads((out / train.SUMMARY_FILE).read_text(encoding="utf-8"))


def _in_process(out: Path, args: dict, monkeypatch) -> dict:
    monkeypatch.setenv("HF_MODULES_CACHE", str(out.parent / "hf_modules"))
    assert train.main(["--train_args_file", _write(out, args)]) == 0
    return json.loads((out / train.SUMMARY_FILE).read_text(encoding="utf-8"))


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    name = "model.safetensors" if (out / "model.safetensors").is_file() else "adapter_model.safetensors"
    return load_file(out / name)


def _assert_same_step(got: dict, want: dict, start: dict) -> None:
    """Every tensor within REL_TOL of the wanted weights, and its update the wanted one (a 2x update fails both)."""
    assert got.keys() == want.keys()
    for key in want:
        g, w, s = got[key].float(), want[key].float(), start[key].float()
        assert (g - w).abs().max().item() <= REL_TOL * w.abs().max().item(), key
        if (w - s).abs().max().item() > 0:
            ratio = (g - s).norm().item() / (w - s).norm().item()
            assert abs(ratio - 1) < 1e-4, (key, ratio)


def _assert_summary(s: dict, reference: dict, world_size: int, global_batch: int) -> None:
    assert s["first_loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert s["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)
    assert (s["world_size"], s["global_batch"], s["global_step"]) == (world_size, global_batch, 1)


# --------------------------------------------------------------------------------------------------- in-process


def test_loss_is_the_token_mean_over_the_whole_step():
    """causal_lm_loss divides by the step's token count the Trainer passes, whatever the micro-batch holds."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, 7], [-100, -100, 1, 2, -100]])
    targets = labels[:, 1:].reshape(-1)
    summed = F.cross_entropy(logits[:, :-1].reshape(-1, 11), targets, ignore_index=-100, reduction="sum")
    got = train.causal_lm_loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(20))
    assert got.item() == pytest.approx(summed.item() / 20, rel=1e-6)
    alone = train.causal_lm_loss({"logits": logits}, labels)
    assert alone.item() == pytest.approx(summed.item() / int((targets != -100).sum()), rel=1e-6)


@pytest.mark.parametrize("mode", ["pad", "position_ids", "block_mask"])
def test_every_batch_starts_with_an_untrained_label(mode):
    """The Trainer counts a remote-code model's trained tokens over all labels, not the shifted ones: equal only
    because label 0 of every row is -100 (the collator's boundary rule), even when a row starts with an answer."""
    from sftkit.model.sft_data import SFTCollator

    rows = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8], "seq_lens": [2, 2]},
            {"input_ids": [9, 10, 11], "labels": [9, 10, 11], "seq_lens": [3]}]
    batch = SFTCollator(pad_token_id=0, mode=mode)(rows)
    assert (batch["labels"][:, 0] == -100).all()


def test_processes_that_would_not_train_together_are_refused(tmp_path, tiny_model_dir, train_file, monkeypatch,
                                                             capsys):
    """torchrun on a machine without a GPU and without use_cpu: every process would train alone."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU the processes would really join a process group")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = _args(tmp_path / "out", tiny_model_dir, train_file, use_cpu=False)
    assert train.main(["--train_args_file", _write(tmp_path / "out", args)]) == 2
    err = capsys.readouterr().err
    assert "launched as 2 processes, but training would run as 1" in err and "use_cpu: true" in err


# --------------------------------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
def test_ddp_padded_equals_one_process_and_the_reference(tmp_path, tiny_model_dir, train_file, reference,
                                                         monkeypatch):
    one = _in_process(tmp_path / "one", _args(tmp_path / "one", tiny_model_dir, train_file,
                                              per_device_train_batch_size=8, per_device_eval_batch_size=8),
                      monkeypatch)
    two = _torchrun(tmp_path / "two", _args(tmp_path / "two", tiny_model_dir, train_file,
                                            per_device_train_batch_size=4, per_device_eval_batch_size=4))
    _assert_summary(one, reference, 1, 8)
    _assert_summary(two, reference, 2, 8)
    assert two["launch"] == "DDP" and two["tokens_seen"] == one["tokens_seen"]
    _assert_same_step(_weights(tmp_path / "one"), reference["weights"], reference["start"])
    _assert_same_step(_weights(tmp_path / "two"), reference["weights"], reference["start"])


@pytest.mark.slow
def test_ddp_remote_code_model_packed_with_accumulation(tmp_path, remote_model_dir, train_file, reference):
    """MiniCPM4's convention, block-mask packing, 2 processes x 1 row x 2 accumulation steps (4 packed rows)."""
    two = _torchrun(tmp_path / "two", _args(tmp_path / "two", remote_model_dir, train_file, trust_remote_code=True,
                                            packing=True, per_device_train_batch_size=1,
                                            gradient_accumulation_steps=2, per_device_eval_batch_size=2))
    assert two["collator_mode"] == "block_mask"
    _assert_summary(two, reference, 2, 4)
    _assert_same_step(_weights(tmp_path / "two"), reference["weights"], reference["start"])


@pytest.mark.slow
def test_deepspeed_zero2_packed_equals_the_reference(tmp_path, tiny_model_dir, train_file, reference):
    two = _torchrun(tmp_path / "two", _args(tmp_path / "two", tiny_model_dir, train_file, packing=True,
                                            deepspeed=str(ROOT / "train" / "ds_z2.json"),
                                            per_device_train_batch_size=2, per_device_eval_batch_size=2))
    assert two["collator_mode"] == "position_ids" and two["launch"] == "DeepSpeed ZeRO-2"
    _assert_summary(two, reference, 2, 4)
    _assert_same_step(_weights(tmp_path / "two"), reference["weights"], reference["start"])


@pytest.mark.slow
def test_deepspeed_zero3_counts_partitioned_parameters(tmp_path, tiny_model_dir, train_file, reference):
    two = _torchrun(tmp_path / "two", _args(tmp_path / "two", tiny_model_dir, train_file,
                                            deepspeed=str(ROOT / "train" / "ds_z3.json"),
                                            per_device_train_batch_size=4, per_device_eval_batch_size=4))
    assert two["launch"] == "DeepSpeed ZeRO-3"
    assert two["params"] == two["trainable_params"] == reference["params"]
    _assert_summary(two, reference, 2, 8)
    _assert_same_step(_weights(tmp_path / "two"), reference["weights"], reference["start"])


@pytest.mark.slow
def test_qlora_ddp_equals_one_process(tmp_path, remote_model_dir, train_file, monkeypatch):
    """No hand-written reference for NF4 + LoRA: the 1-process run is the reference; LoRA B moves from zero."""
    common = {"train_mode": "qlora", "trust_remote_code": True}
    one = _in_process(tmp_path / "one", _args(tmp_path / "one", remote_model_dir, train_file, **common,
                                              per_device_train_batch_size=8, per_device_eval_batch_size=8),
                      monkeypatch)
    two = _torchrun(tmp_path / "two", _args(tmp_path / "two", remote_model_dir, train_file, **common,
                                            per_device_train_batch_size=4, per_device_eval_batch_size=4))
    assert two["first_loss"] == pytest.approx(one["first_loss"], rel=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    assert (two["world_size"], two["global_batch"], two["linear4bit_layers"]) == (2, 8, 14)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    start = {k: v * 0 if "lora_B" in k else v for k, v in a.items()}
    assert any((v != 0).any() for k, v in a.items() if "lora_B" in k)
    _assert_same_step(b, a, start)
