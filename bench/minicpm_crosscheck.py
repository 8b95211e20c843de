#!/usr/bin/env python
"""Cross-check of the MiniCPM conversion against MiniCPM4's ORIGINAL remote code, run once by hand (not in CI:
the original code may not be committed and needs transformers 4.x).

Two phases, two Python environments, one work folder:

    # 1. the original code, in a throwaway venv with the transformers it was written for
    python3 -m venv /tmp/minicpm-ref && /tmp/minicpm-ref/bin/pip install torch==2.13.0 transformers==4.56.2 \
        safetensors sentencepiece protobuf
    #    modeling_minicpm.py + configuration_minicpm.py from the model repo (e.g. models/minicpm05b/ of
    #    ArrebolBlack/HIT_NLP_lab2-SFT) in CODE_DIR, outside this repository
    /tmp/minicpm-ref/bin/python bench/minicpm_crosscheck.py original --code-dir CODE_DIR --work /tmp/minicpm-xcheck
    # 2. our conversion under the project's transformers 5
    .venv/bin/python bench/minicpm_crosscheck.py ours --work /tmp/minicpm-xcheck

Phase 1 builds tiny random MiniCPM4 checkpoints (tests/minicpm_reference.py: the real config shrunk, its LongRoPE
factors and muP scalings kept), copies the original .py files into them (in the work folder only), and compares
the original forward (eager and sdpa, float32) with tests/minicpm_reference.py, the plain-torch reference the CI
tests use. It saves the inputs and the original's logits (float32 and bfloat16). Phase 2 converts the same
checkpoints with sftkit.model.minicpm and compares our logits with the original's, then compares LoRA training on three
forms of the model: the reference (MiniCPM's own parameterisation), our conversion, and the folding the issue
suggested (c folded into o_proj/down_proj, eps unchanged).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.minicpm_reference import MiniCPMReference, build_tiny_minicpm  # noqa: E402

SEEDS = (0, 1, 2, 3)
LENGTHS = (1, 16, 256, 1024)


def _ids(vocab: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1000 * seed + n))


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def phase_original(code_dir: Path, work: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    rows = []
    for seed in SEEDS:
        ckpt = work / f"seed{seed}"
        shutil.rmtree(ckpt, ignore_errors=True)
        build_tiny_minicpm(ckpt, seed=seed)
        for name in ("modeling_minicpm.py", "configuration_minicpm.py"):
            shutil.copy(code_dir / name, ckpt / name)
        ref = MiniCPMReference.from_checkpoint(ckpt)
        models = {impl: AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float32,
                                                             attn_implementation=impl).eval()
                  for impl in ("eager", "sdpa")}
        bf16 = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.bfloat16).eval()
        saved = {}
        for n in LENGTHS:
            ids = _ids(ref.cfg["vocab_size"], n, seed)
            with torch.no_grad():
                want = ref(ids)
                out = {impl: m(ids, use_cache=False).logits.float() for impl, m in models.items()}
                out_bf16 = bf16(ids, use_cache=False).logits.float()
            saved[n] = {"ids": ids, "eager": out["eager"], "sdpa": out["sdpa"], "bf16": out_bf16}
            rows.append({"seed": seed, "n": n, "ref_vs_eager": _maxdiff(want, out["eager"]),
                         "ref_vs_sdpa": _maxdiff(want, out["sdpa"]), "max_logit": want.abs().max().item()})
        torch.save(saved, ckpt / "original_logits.pt")
        for name in ("modeling_minicpm.py", "configuration_minicpm.py"):
            (ckpt / name).unlink()  # the original code stays out of everything but this one run
    print(f"original code under transformers {transformers.__version__} vs tests/minicpm_reference.py (float32)")
    print("| seed | tokens | ref vs original eager | ref vs original sdpa | max |logit| |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['n']} | {r['ref_vs_eager']:.3g} | {r['ref_vs_sdpa']:.3g} | {r['max_logit']:.1f} |")
    (work / "original.json").write_text(json.dumps({"transformers": transformers.__version__, "rows": rows},
                                                   indent=1))


def _fold_variant(src: Path, out: Path) -> None:
    """The other exact-forward conversion: c folded into o_proj/down_proj, embeddings x scale_emb, eps unchanged."""
    import math

    from safetensors.torch import load_file, save_file

    from sftkit.model import minicpm

    cfg = json.loads((src / "config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    minicpm.convert_checkpoint(src, out)
    sd = load_file(str(src / "model.safetensors"))
    c = cfg["scale_depth"] / math.sqrt(cfg["num_hidden_layers"])
    new = {}
    for k, v in sd.items():
        v = v.double()
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            v = v * c
        new[k] = v.float().contiguous()
    new["model.embed_tokens.weight"] = (sd["model.embed_tokens.weight"].double() * cfg["scale_emb"]).float()
    new["lm_head.weight"] = (sd["model.embed_tokens.weight"].double() * cfg["dim_model_base"]
                             / cfg["hidden_size"]).float()
    for f in out.glob("*.safetensors"):
        f.unlink()
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    llama_cfg = json.loads((out / "config.json").read_text())
    llama_cfg["rms_norm_eps"] = cfg["rms_norm_eps"]
    (out / "config.json").write_text(json.dumps(llama_cfg, indent=2))


def _lora_losses(model: torch.nn.Module, ids: torch.Tensor, init: dict[str, torch.Tensor] | None,
                 steps: int = 8) -> tuple[list[float], dict[str, torch.Tensor]]:
    from peft import LoraConfig, inject_adapter_in_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets), model)
    lora = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters() if "lora_" in n}
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    with torch.no_grad():
        if init is None:
            torch.manual_seed(0)
            init = {n: torch.randn_like(p) * 0.05 for n, p in lora.items()}
        for n, p in lora.items():
            p.copy_(init[n])
    opt = torch.optim.AdamW(list(lora.values()), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(ids)
        logits = out.logits if hasattr(out, "logits") else out
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, init


def phase_ours(work: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    from sftkit.model.minicpm import resolve_model

    original = json.loads((work / "original.json").read_text())
    rows = []
    for seed in SEEDS:
        ckpt = work / f"seed{seed}"
        saved = torch.load(ckpt / "original_logits.pt", weights_only=True)
        path = resolve_model(str(ckpt), cache_dir=work / "cache").path
        ours = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        ours_bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        exact = MiniCPMReference.from_checkpoint(ckpt, exact_angles=True)  # MiniCPM's math, RoPE angles in fp64
        for n in LENGTHS:
            s = saved[n]
            with torch.no_grad():
                got = ours(s["ids"]).logits.float()
                got_bf16 = ours_bf16(s["ids"]).logits.float()
                want_exact = exact(s["ids"])
            rows.append({"seed": seed, "n": n, "ours_vs_eager": _maxdiff(got, s["eager"]),
                         "ours_vs_sdpa": _maxdiff(got, s["sdpa"]),
                         "original_vs_exact_angles": _maxdiff(s["eager"], want_exact),
                         "ours_vs_exact_angles": _maxdiff(got, want_exact),
                         "original_bf16_vs_fp32": _maxdiff(s["bf16"], s["eager"]),
                         "ours_bf16_vs_original_fp32": _maxdiff(got_bf16, s["eager"])})
    print(f"\nours (sftkit.model.minicpm, transformers {transformers.__version__}) vs the original code "
          f"(transformers {original['transformers']})")
    print("| seed | tokens | ours vs original eager (fp32) | ours vs original sdpa (fp32) | original vs exact "
          "RoPE angles | ours vs exact RoPE angles | original bf16 vs fp32 | ours bf16 vs original fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['n']} | {r['ours_vs_eager']:.3g} | {r['ours_vs_sdpa']:.3g} | "
              f"{r['original_vs_exact_angles']:.3g} | {r['ours_vs_exact_angles']:.3g} | "
              f"{r['original_bf16_vs_fp32']:.3g} | {r['ours_bf16_vs_original_fp32']:.3g} |")

    # LoRA on three forms of seed 0: MiniCPM's own parameterisation (the reference), ours, and o/down folding.
    ckpt = work / "seed0"
    fold_dir = work / "fold-o-down"
    _fold_variant(ckpt, fold_dir)
    ref = MiniCPMReference.from_checkpoint(ckpt)
    ids = _ids(ref.cfg["vocab_size"], 48, 7)
    want, init = _lora_losses(ref, ids, None)
    path = resolve_model(str(ckpt), cache_dir=work / "cache").path
    mine, _ = _lora_losses(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), ids, init)
    fold, _ = _lora_losses(AutoModelForCausalLM.from_pretrained(fold_dir, dtype=torch.float32), ids, init)
    print("\nLoRA r=4 on every linear layer, same init and batch, AdamW lr 1e-2, 8 steps (losses)")
    print("| step | MiniCPM reference | ours (stream / c) | o_proj/down_proj folding |")
    print("|---|---|---|---|")
    for i, (a, b, c) in enumerate(zip(want, mine, fold, strict=True)):
        print(f"| {i} | {a:.5f} | {b:.5f} | {c:.5f} |")
    print(f"max |loss - reference|: ours {max(abs(a - b) for a, b in zip(want, mine, strict=True)):.3g}, "
          f"folding {max(abs(a - c) for a, c in zip(want, fold, strict=True)):.3g}")
    (work / "ours.json").write_text(json.dumps({"rows": rows, "lora": {"reference": want, "ours": mine,
                                                                      "fold": fold}}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("original", "ours"))
    p.add_argument("--code-dir", type=Path, help="folder with the original modeling_minicpm.py and "
                                                 "configuration_minicpm.py (phase original)")
    p.add_argument("--work", type=Path, required=True, help="work folder shared by the two phases")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase == "original":
        if not args.code_dir or not (args.code_dir / "modeling_minicpm.py").is_file():
            p.error("phase original needs --code-dir with modeling_minicpm.py and configuration_minicpm.py")
        phase_original(args.code_dir, args.work)
    else:
        phase_ours(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
