#!/usr/bin/env python
"""Convert a MiniCPM checkpoint (MiniCPMForCausalLM, hub remote code) into an exactly equivalent plain Llama one.

    python train/convert_minicpm.py --model openbmb/MiniCPM4-0.5B --out models/minicpm4-0.5b-llama

train/train.py, train/merge_lora.py and infer/ (hf backend) do this by themselves when they meet a MiniCPM
checkpoint (into a cache folder, $SFTKIT_CACHE or ~/.cache/sftkit); this command writes the conversion where you
want it, e.g. to serve the base model with any Llama-capable engine. The math is in sftkit/model/minicpm.py: embeddings
and lm_head are rescaled (and untied), RMSNorm eps becomes eps / c^2, every other weight is copied unchanged, and
the tokenizer, chat template and generation_config files are copied as they are. No remote code is run or fetched.
Exit status: 0 done, 2 bad usage (not a MiniCPM checkpoint, output exists, a checkpoint that cannot be converted
exactly), 1 anything else.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from sftkit.io.cli import ScriptParser, run_script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ScriptParser(description="MiniCPM checkpoint -> equivalent plain Llama checkpoint.", resumable=False)
    p.add_argument("--model", required=True, help="MiniCPM checkpoint: a local folder or a hub id")
    p.add_argument("--out", required=True, help="output folder for the Llama checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sftkit.model.minicpm import ConversionError, convert_checkpoint, is_minicpm, local_snapshot, read_config

    args = parse_args(argv)
    out = Path(args.out)
    cfg = read_config(args.model)
    if cfg is None:
        print(f"convert_minicpm.py: error: --model {args.model}: no config.json to read", file=sys.stderr)
        return 2
    if not is_minicpm(cfg):
        print(f"convert_minicpm.py: error: --model {args.model} is not a MiniCPM checkpoint "
              f"(architectures {cfg.get('architectures')}); nothing to convert", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"convert_minicpm.py: error: --out {out} exists (use --overwrite)", file=sys.stderr)
        return 2
    started = time.time()
    src = local_snapshot(args.model)
    if out.exists() and out.resolve() == src.resolve():
        print("convert_minicpm.py: error: --out must differ from --model", file=sys.stderr)
        return 2
    staged = out.with_name(f".{out.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        record = convert_checkpoint(src, staged, source_name=args.model)
    except ConversionError as exc:
        print(f"convert_minicpm.py: error: {args.model}: {exc}", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    print(f"convert_minicpm.py: {args.model} -> {out} (LlamaForCausalLM) in {time.time() - started:.1f} s\n"
          f"  residual scale c {record['residual_scale']:.6g}; embeddings x {record['embedding_scale']:.6g}, "
          f"lm_head x {record['lm_head_scale']:.6g}{' (untied)' if record['tied_embeddings_untied'] else ''}; "
          f"rms_norm_eps {record['rms_norm_eps']['minicpm']:g} -> {record['rms_norm_eps']['llama']:.6g}\n"
          f"  rope {(record['rope_scaling'] or {}).get('rope_type', 'default')}; copied "
          f"{', '.join(record['copied_files']) or 'no tokenizer files'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
