#!/usr/bin/env python
"""Merge a LoRA / QLoRA adapter into its UNQUANTIZED base model and save a standalone model.

    python train/merge_lora.py --base openbmb/MiniCPM4-0.5B --adapter outputs/minicpm4-0.5b-qlora \
        --out outputs/minicpm4-0.5b-qlora-merged [--dtype bfloat16] [--trust_remote_code]

A QLoRA adapter was trained against 4-bit weights but is merged into the bf16 (or fp32) base: merging into a
4-bit model would round the merged weights to NF4 again, so a base carrying a 4-bit quantization_config is
refused. Runs on CPU. The output directory gets the merged weights, the tokenizer (the adapter's copy when it
has one, else the base's) with the training template as its jinja ``chat_template``, a generation_config whose
eos ids include the template's stop tokens (so any OpenAI-compatible server tokenises and stops as training
did), ``sftkit_template.json`` (template name, for infer/) and ``merge_summary.json``.
It is written beside its final place and renamed into it, so a killed merge leaves no half model.
Exit status: 0 done, 2 bad usage (missing adapter, quantized base, existing output), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sftkit.io.cli import ScriptParser, UsageError, run_script

log = logging.getLogger("merge_lora")

TEMPLATE_FILE = "sftkit_template.json"
DTYPES = ("bfloat16", "float16", "float32")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ScriptParser(description="Merge a LoRA/QLoRA adapter into its unquantized base model.", resumable=False)
    p.add_argument("--base", required=True, help="base model directory or hub id (unquantized)")
    p.add_argument("--adapter", required=True, help="adapter directory written by train/train.py (adapter_config.json)")
    p.add_argument("--out", required=True, help="output directory for the merged model")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                   help="dtype the base is loaded in and the merged model saved in (default bfloat16)")
    p.add_argument("--template", default=None,
                   help="template name to record (default: the one train.py recorded with the adapter)")
    p.add_argument("--trust_remote_code", action="store_true", help="allow the base repo's own code (MiniCPM4)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p.parse_args(argv)


def _base_is_quantized(base: str, trust_remote_code: bool) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    q = getattr(config, "quantization_config", None)
    if q is None:
        return False
    q = q if isinstance(q, dict) else q.to_dict()
    return bool(q.get("load_in_4bit") or q.get("load_in_8bit") or q.get("quant_method"))


def check(args: argparse.Namespace) -> dict[str, Any]:
    adapter = Path(args.adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {adapter}: no adapter_config.json (is it a LoRA/QLoRA output directory?)")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} exists and is not empty (use --overwrite)")
    if out.resolve() in (adapter.resolve(), Path(args.base).resolve()):
        raise UsageError("--out must differ from --base and --adapter")
    base = Path(args.base)
    if (base.is_absolute() or args.base.startswith(".") or args.base.count("/") > 1) and not base.exists():
        raise UsageError(f"--base {args.base} not found")
    from sftkit.model.minicpm import ConversionError, resolve_model

    try:  # a MiniCPM base is merged as its exact Llama conversion (cached), so the output is a plain Llama
        base_path = resolve_model(args.base).path
    except ConversionError as exc:
        raise UsageError(f"--base {args.base}: {exc}") from exc
    if _base_is_quantized(base_path, args.trust_remote_code):
        raise UsageError(f"--base {args.base} is a quantized model; merge into the unquantized (bf16/fp32) base")
    meta: dict[str, Any] = {}
    if (adapter / TEMPLATE_FILE).is_file():
        meta = json.loads((adapter / TEMPLATE_FILE).read_text(encoding="utf-8"))
    if args.template:
        from sftkit.model.templates import TEMPLATE_NAMES

        if args.template not in TEMPLATE_NAMES:
            raise UsageError(f"--template {args.template!r}: known templates are {', '.join(TEMPLATE_NAMES)}")
        meta["template_name"] = args.template
    return meta


def merge(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.io.jsonl import write_json
    from sftkit.model.minicpm import resolve_model

    started = time.time()
    dtype = getattr(torch, args.dtype)
    source = resolve_model(args.base)  # check() made any MiniCPM conversion: this finds it in the cache
    base = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, trust_remote_code=args.trust_remote_code)
    model = PeftModel.from_pretrained(base, args.adapter)
    merged = model.merge_and_unload()
    adapter = Path(args.adapter)
    tok_src = str(adapter) if (adapter / "tokenizer_config.json").is_file() else source.path
    tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=args.trust_remote_code)

    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp-merge")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {
        "base": args.base, "base_loaded": source.describe(), "adapter": str(adapter), "out": str(out),
        "dtype": args.dtype,
        "params": sum(p.numel() for p in merged.parameters()), "tokenizer_from": tok_src,
        "template_name": meta.get("template_name"), "elapsed_s": round(time.time() - started, 1),
    }
    if meta.get("template_name"):
        from sftkit.model.templates import get_template, save_chat_files

        # chat_template + stop ids for any OpenAI-compatible server; generation_config from the merged model
        save_chat_files(tmp, get_template(meta["template_name"], tokenizer), tokenizer, source.path,
                        args.trust_remote_code)
        write_json(tmp / TEMPLATE_FILE, {**meta, "merged_from": {"base": args.base, "adapter": str(adapter)}})
    else:
        log.warning("no template name recorded with the adapter and no --template: %s not written", TEMPLATE_FILE)
    write_json(tmp / "merge_summary.json", summary)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        meta = check(args)
    except (UsageError, OSError, ValueError) as exc:
        print(f"merge_lora.py: error: {exc}", file=sys.stderr)
        return 2
    s = merge(args, meta)
    print(f"merge_lora.py: {s['adapter']} + {s['base']} -> {s['out']} ({s['dtype']}, {s['params']:,} params, "
          f"template {s['template_name']}, {s['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
