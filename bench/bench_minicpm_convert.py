#!/usr/bin/env python
"""What the automatic MiniCPM -> Llama conversion costs at the real model's size, and that it is still exact there.

    python bench/bench_minicpm_convert.py --config ../shared/data/minicpm4-0.5b/config.json

Writes a random bf16 checkpoint with the given MiniCPM config.json (the real MiniCPM4-0.5B one: hidden 1024,
24 layers, vocab 73,448, tied embeddings), then times the first `resolve_model` (conversion into a fresh cache),
a second one (cache hit: what every later train/merge/infer start pays) and loading the converted folder, and
compares its float32 logits on one prompt with tests/minicpm_reference.py. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.model.minicpm import resolve_model  # noqa: E402
from tests.minicpm_reference import MiniCPMReference, random_state_dict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a MiniCPM config.json")
    p.add_argument("--tokens", type=int, default=64, help="prompt length for the logits check")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-minicpm-"))
    src = work / "minicpm"
    src.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(args.config.read_text(encoding="utf-8"))
    shutil.copy(args.config, src / "config.json")
    sd = random_state_dict(cfg, seed=0, dtype=torch.bfloat16)
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    params = sum(t.numel() for t in sd.values())
    size_gb = (src / "model.safetensors").stat().st_size / 1e9
    del sd
    cache = work / "cache"
    t0 = time.perf_counter()
    first = resolve_model(str(src), cache_dir=cache)
    t_convert = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = resolve_model(str(src), cache_dir=cache)
    t_cached = time.perf_counter() - t0
    assert again.reused and again.path == first.path
    out_gb = sum(f.stat().st_size for f in Path(first.path).glob("*.safetensors")) / 1e9
    t0 = time.perf_counter()
    ours = AutoModelForCausalLM.from_pretrained(first.path, dtype=torch.float32).eval()
    t_load = time.perf_counter() - t0
    ref = MiniCPMReference.from_checkpoint(src)
    ids = torch.randint(0, cfg["vocab_size"], (1, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(ids)
        diff = (want - ours(ids).logits).abs().max().item()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"MiniCPM config {args.config} ({params / 1e6:.0f}M parameters, {size_gb:.2f} GB bf16 safetensors)")
    print("| step | seconds |\n|---|---|")
    print(f"| first resolve_model: convert into the cache ({out_gb:.2f} GB written) | {t_convert:.1f} |")
    print(f"| second resolve_model: cache hit | {t_cached:.3f} |")
    print(f"| from_pretrained of the converted folder (float32) | {t_load:.1f} |")
    print(f"max |logit diff| vs the MiniCPM reference, {args.tokens} tokens, float32: {diff:.3g} "
          f"(max |logit| {want.abs().max().item():.1f}); peak RSS of this process {peak_gb:.1f} GB")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
