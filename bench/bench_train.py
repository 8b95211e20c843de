#!/usr/bin/env python
"""Training throughput: tokens/s, padding share and peak memory for full / LoRA / QLoRA, padded vs packed,
optionally against plain TRL SFTTrainer on the same model, data and settings.

    # CPU smoke run on the tiny test model (minutes on 2 cores)
    python bench/bench_train.py --methods lora --steps 6 --batch-size 4 --max-seq-length 256
    # GPU: a random model of MiniCPM4-0.5B's size, built as a Llama config from its config.json
    python bench/bench_train.py --model-config /path/to/minicpm4-0.5b/config.json --methods full,lora,qlora \
        --packing both --trl --steps 30 --batch-size 8 --max-seq-length 1024 --bf16

Data: ``--data FILE`` (any record form, tokenized with --template and the model's tokenizer), else a synthetic
firefly-like length mix (prompt ~ lognormal, median 40 tokens; answer ~ lognormal, median 160 tokens, long
tail; clipped to [4, 1500]; a fifth of the rows have 2-3 turns; seeded). Synthetic token ids are random: the
model is random too, only the shapes matter.

tokens/s counts real (non-padding) tokens of the timed steps (after --warmup-steps) over their wall time;
padding share = padding slots / all slots fed to the model; peak memory = torch.cuda.max_memory_allocated on
GPU, peak RSS of the run's process on CPU. Each configuration runs in its own process (clean peaks).
Results: a table on screen and JSON at --out (default bench/results/train_<date>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("full", "lora", "qlora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SFT training throughput benchmark (see the module docstring).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="an existing model directory (with tokenizer)")
    src.add_argument("--model-config", help="config.json to copy dimensions from (e.g. MiniCPM4-0.5B's); a random "
                                            "Llama model of that size is built (default: the tiny test model)")
    p.add_argument("--methods", default="lora", help="comma-separated: full, lora, qlora (default lora)")
    p.add_argument("--packing", choices=("off", "on", "both"), default="both",
                   help="padded batches, packed (padding-free) rows, or both (default both)")
    p.add_argument("--trl", action="store_true", help="also run plain TRL SFTTrainer with the same settings")
    p.add_argument("--data", help="JSONL records to train on (default: synthetic firefly-like lengths)")
    p.add_argument("--template", default="minicpm4", help="template for --data (default minicpm4)")
    p.add_argument("--examples", type=int, default=2000, help="synthetic examples (default 2000)")
    p.add_argument("--max-seq-length", type=int, default=1024, help="default 1024")
    p.add_argument("--batch-size", type=int, default=4, help="per-device batch size (rows) (default 4)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps in all (default 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the timing (default 3)")
    p.add_argument("--bf16", action="store_true", help="bf16 (GPU); default fp32")
    p.add_argument("--attn", default=None, help="attn_implementation: sdpa, eager, flash_attention_2")
    p.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing on")
    p.add_argument("--lora-rank", type=int, default=64, help="default 64")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--out", help="result JSON (default bench/results/train_<date>.json)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print its result
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# data


def synthetic_examples(n: int, vocab: int, max_len: int, seed: int) -> list[dict[str, list[int]]]:
    """Firefly-like lengths with random ids; labels -100 on prompts, trained on answers (see module doc)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids: list[int] = [1]
        labels: list[int] = [-100]
        turns = 1 if rng.random() < 0.8 else rng.choice((2, 3))
        for _ in range(turns):
            p = min(1500, max(4, int(rng.lognormvariate(3.7, 0.8))))
            a = min(1500, max(4, int(rng.lognormvariate(5.1, 0.9))))
            prompt = [rng.randrange(10, vocab) for _ in range(p)]
            answer = [rng.randrange(10, vocab) for _ in range(a)]
            ids += prompt + answer
            labels += [-100] * p + answer
        out.append({"input_ids": ids[:max_len], "labels": labels[:max_len]})
    return [e for e in out if any(x != -100 for x in e["labels"])]


def real_examples(path: str, model_dir: str, template_name: str, max_len: int) -> list[dict[str, list[int]]]:
    from transformers import AutoTokenizer

    from sftkit.io.jsonl import BadLines
    from sftkit.model.sft_data import DataStats, read_records, tokenize_records
    from sftkit.model.templates import get_template

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    recs = read_records(path, BadLines())
    return tokenize_records(recs, get_template(template_name, tok), tok, max_len, "truncate", DataStats())


# ---------------------------------------------------------------------------------------------------------------
# model


def random_model_from_config(config_path: str, out_dir: str, dtype: str) -> str:
    """A random LlamaForCausalLM with the dimensions of ``config_path`` (MiniCPM's muP scalings are left out)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftkit.testing.tiny_model import build_tokenizer

    src = json.loads(Path(config_path).read_text(encoding="utf-8"))
    config = LlamaConfig(
        vocab_size=src["vocab_size"], hidden_size=src["hidden_size"], intermediate_size=src["intermediate_size"],
        num_hidden_layers=src["num_hidden_layers"], num_attention_heads=src["num_attention_heads"],
        num_key_value_heads=src.get("num_key_value_heads", src["num_attention_heads"]),
        rms_norm_eps=src.get("rms_norm_eps", 1e-5), max_position_embeddings=4096,
        tie_word_embeddings=src.get("tie_word_embeddings", True), bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)  # a stand-in tokenizer (ids < vocab); only --data needs it
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# one configuration (runs in its own process)


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from sftkit.model.sft_data import DataStats, SFTCollator, SFTDataset, build_rows, choose_collator_mode
    from train.train import SFTArguments, count_params, load_model

    examples = json.loads(Path(cfg["data_file"]).read_text())
    stats = DataStats()
    rows = build_rows(examples, cfg["max_seq_length"], cfg["packing"], stats, seed=cfg["seed"])
    cuda = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir=cfg["work_dir"], per_device_train_batch_size=cfg["batch_size"], max_steps=cfg["steps"],
        learning_rate=1e-5 if cfg["method"] == "full" else 2e-4, bf16=cfg["bf16"], use_cpu=not cuda,
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=cfg["seed"],
        activation_checkpointing=cfg["gradient_checkpointing"], dataloader_num_workers=0,
        remove_unused_columns=False, optim="adamw_torch",
    )
    sft = SFTArguments(model_name_or_path=cfg["model_dir"], train_file="-", train_mode=cfg["method"],
                       max_seq_length=cfg["max_seq_length"], packing=cfg["packing"], lora_rank=cfg["lora_rank"],
                       attn_implementation=cfg["attn"])
    model = load_model(sft, targs)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter())

    batch_tokens: list[tuple[int, int]] = []
    if cfg["trl"]:
        trainer = _trl_trainer(cfg, model, rows, targs)
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            ids = batch["input_ids"]
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
            batch_tokens.append((real, ids.numel()))
            return batch

        trainer.data_collator = counting
        mode = "trl-packed" if cfg["packing"] else "trl-padded"
    else:
        mode = choose_collator_mode(cfg["packing"], "auto", model)
        collator = SFTCollator(pad_token_id=0, mode=mode, mask_dtype=torch.bfloat16 if cfg["bf16"] else None)

        def counting(features):
            before = (collator.counts["tokens"], collator.counts["slots"])
            batch = collator(features)
            batch_tokens.append((collator.counts["tokens"] - before[0], collator.counts["slots"] - before[1]))
            return batch

        trainer = Trainer(model=model, args=targs, train_dataset=SFTDataset(rows), data_collator=counting)
    trainer.add_callback(Timer())
    start = time.perf_counter()
    trainer.train()
    w = cfg["warmup_steps"]
    timed = batch_tokens[w:len(step_times)]
    elapsed = step_times[-1] - step_times[w - 1] if w >= 1 else step_times[-1] - start
    real = sum(t for t, _ in timed)
    slots = sum(s for _, s in timed)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {
        "method": cfg["method"], "impl": "trl" if cfg["trl"] else "ours", "batches": mode,
        "packing": cfg["packing"], "tokens_per_s": round(real / elapsed, 1),
        "padding_share": round(1 - real / slots, 4),
        "peak_memory_gb": round(peak, 3), "peak_memory_kind": "cuda_allocated" if cuda else "cpu_rss",
        "timed_steps": len(timed), "tokens_timed": real, "rows": stats.rows, "packing_fill": stats.packing_fill,
        **count_params(model),
    }


def _trl_trainer(cfg: dict[str, Any], model: Any, rows: list[dict[str, Any]], targs: Any) -> Any:
    """Plain TRL SFTTrainer on the same pre-tokenized examples; masking given as assistant_masks."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    examples = json.loads(Path(cfg["data_file"]).read_text())
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "assistant_masks": [int(x != -100) for x in e["labels"]]}
                            for e in examples])
    conf = SFTConfig(**{k: v for k, v in targs.to_dict().items() if k in SFTConfig.__dataclass_fields__
                        and SFTConfig.__dataclass_fields__[k].init},
                     max_length=cfg["max_seq_length"], packing=cfg["packing"], padding_free=cfg["packing"],
                     dataset_num_proc=None)
    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    return SFTTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok)


# ---------------------------------------------------------------------------------------------------------------
# driver


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"bench_train.py: error: unknown method(s) {bad}; known: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if args.warmup_steps >= args.steps:
        print("bench_train.py: error: --warmup-steps must be below --steps", file=sys.stderr)
        return 2
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if args.model:
        model_dir = args.model
    elif args.model_config:
        model_dir = random_model_from_config(args.model_config, str(work / "model"),
                                             "bfloat16" if args.bf16 else "float32")
    else:
        from sftkit.testing.tiny_model import build_tiny_model

        model_dir = build_tiny_model(work / "model")
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    examples = (real_examples(args.data, model_dir, args.template, args.max_seq_length) if args.data
                else synthetic_examples(args.examples, vocab, args.max_seq_length, args.seed))
    data_file = work / "examples.json"
    data_file.write_text(json.dumps(examples))
    lengths = sorted(len(e["input_ids"]) for e in examples)

    packings = {"off": [False], "on": [True], "both": [False, True]}[args.packing]
    results = []
    for method in methods:
        for packing in packings:
            for trl in ([False, True] if args.trl else [False]):
                cfg = {"method": method, "packing": packing, "trl": trl, "model_dir": model_dir,
                       "data_file": str(data_file), "work_dir": str(work / "run"), "max_seq_length":
                       args.max_seq_length, "batch_size": args.batch_size, "steps": args.steps,
                       "warmup_steps": args.warmup_steps, "bf16": args.bf16, "attn": args.attn,
                       "gradient_checkpointing": args.gradient_checkpointing, "lora_rank": args.lora_rank,
                       "seed": args.seed}
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], cwd=ROOT,
                                      capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    res = {"method": method, "impl": "trl" if trl else "ours", "packing": packing,
                           "error": tail[0][:300]}
                else:
                    res = json.loads(line[len("RESULT "):])
                results.append(res)
                print(_row(res), flush=True)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    report = {
        "date": time.strftime("%Y-%m-%d"), "device": device, "model": args.model or args.model_config or "tiny",
        "settings": {k: v for k, v in vars(args).items() if k not in ("one",)},
        "data": {"examples": len(examples), "median_len": lengths[len(lengths) // 2], "max_len": lengths[-1],
                 "source": args.data or "synthetic firefly-like"},
        "results": results,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"train_{time.strftime('%Y%m%d-%H%M%S')}.json")
    from sftkit.io.jsonl import write_json

    write_json(out, report)
    print(f"\n{device}; {len(examples)} examples, median {report['data']['median_len']} tokens; results: {out}")
    return 0


def _row(r: dict[str, Any]) -> str:
    head = f"{r['method']:<6} {r['impl']:<5} {'packed' if r['packing'] else 'padded':<7}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    return (f"{head} {r['batches']:<13} {r['tokens_per_s']:>10.1f} tok/s  padding {r['padding_share']:.3f}  "
            f"peak {r['peak_memory_gb']:.3f} GB ({r['peak_memory_kind']})")


if __name__ == "__main__":
    sys.exit(main())
