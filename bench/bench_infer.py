#!/usr/bin/env python
"""Inference throughput per backend and batch size: prompts/s and completion tokens/s.

Every backend gets the same prompts (rendered once with sftkit.model.templates), greedy decoding and the same
max_new_tokens; engine start-up and one warm-up call are not timed. Extra rows:
  - hf: batched vs one prompt at a time (the goal on a GPU: batched >= 5x);
  - vllm: our backend vs raw `vllm.LLM.generate` on the same engine and prompts (goal: ours >= 0.95x raw).
vLLM and SGLang live in separate venvs (requirements-vllm.txt / requirements-sglang.txt): run this once per venv;
with several backends in one run (e.g. --backends hf,vllm in the vLLM venv) it also counts the prompts whose greedy
answers are identical token for token to the first backend's.

    python bench/bench_infer.py                              # hf on a tiny random model built here (CPU)
    python bench/bench_infer.py --backends vllm --model PATH --batch-sizes 0 --n-prompts 512
Writes bench/results/bench_infer_<backends>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.io.jsonl import BadLines, iter_jsonl, write_json  # noqa: E402
from sftkit.io.records import RecordError  # noqa: E402
from sftkit.model.inference import (  # noqa: E402
    BACKENDS,
    DTYPE_RULE,
    DTYPES,
    Backend,
    BackendMissing,
    Completion,
    EngineOptions,
    Sampling,
    check_backend_installed,
    engine_stop_ids,
    load_tokenizer,
    open_backend,
    request_from_obj,
    resolve_dtype,
)
from sftkit.model.templates import TEMPLATE_NAMES, TemplateError, encode_prompt, get_template, stop_token_ids  # noqa: E402

DEFAULT_INPUTS = (ROOT / "data/processed/val_firefly.jsonl", ROOT.parent / "shared/data/hit/generated_data.jsonl")
FALLBACK_QUESTIONS = ("介绍一下哈尔滨工业大学。", "图书馆几点开门？", "选课系统什么时候开放？",
                      "What is supervised fine-tuning?", "宿舍几点熄灯？", "如何申请奖学金？")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="hf", help=f"comma list from {', '.join(BACKENDS)}")
    p.add_argument("--model", default=None,
                   help="model folder (default: a tiny random Llama built into bench/results/tiny_model)")
    p.add_argument("--template", default="minicpm4", choices=TEMPLATE_NAMES, help="chat template")
    p.add_argument("--input", default=None,
                   help="JSONL records to take prompts from (default: data/processed/val_firefly.jsonl, else "
                   "../shared/data/hit/generated_data.jsonl, else a few built-in questions repeated)")
    p.add_argument("--n-prompts", type=int, default=64, help="prompts per measurement")
    p.add_argument("--batch-sizes", default="1,8,32",
                   help="comma list; 0 = all prompts in one call (the natural mode for vllm/sglang)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (greedy)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_RULE)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm / sglang")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm / sglang")
    p.add_argument("--kv-cache-gib", type=float, default=None,
                   help="vllm: KV cache GiB (default on a CPU-only vLLM: 1, see infer/infer.py --help)")
    p.add_argument("--enforce-eager", action="store_true", help="vllm: no torch.compile / CUDA graphs")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row (the best is kept)")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/bench_infer_<backends>.json)")
    return p.parse_args(argv)


def load_prompts(path: Path | None, n: int) -> tuple[list[list[dict[str, str]]], str]:
    """n prompt conversations from the first readable input, cycling when it has fewer."""
    candidates = [path] if path else [p for p in DEFAULT_INPUTS if p.is_file()]
    for src in candidates:
        convs = []
        for lineno, obj in iter_jsonl(src, BadLines()):
            try:
                convs.append(request_from_obj(obj, None, rid=str(lineno)).messages)
            except RecordError:
                continue
            if len(convs) >= n:
                break
        if convs:
            return [convs[i % len(convs)] for i in range(n)], str(src)
    builtin = [[{"role": "user", "content": FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)]}] for i in range(n)]
    return builtin, "built-in"


@dataclass
class Row:
    backend: str
    batch_size: str
    prompts: int
    seconds: float
    completion_tokens: int
    note: str = ""

    @property
    def prompts_per_s(self) -> float:
        return self.prompts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run_backend(backend: Backend, ids: list[list[int]], sampling: Sampling, batch: int,
                repeats: int) -> tuple[Row, list[list[int]]]:
    """One timed row, and the answers' token ids (for the agreement check between backends)."""
    if isinstance(getattr(backend, "batch_size", None), int):
        backend.batch_size = batch or len(ids)  # hf batches inside generate (sorted by length)
        calls = [ids]
    else:
        size = batch or len(ids)
        calls = [ids[i:i + size] for i in range(0, len(ids), size)]

    def go() -> list[Completion]:
        return [c for part in calls for c in backend.generate(part, sampling)]

    seconds, comps = timed(go, repeats)
    row = Row(backend.name, str(batch or "all"), len(ids), seconds, sum(c.completion_tokens for c in comps))
    return row, [c.token_ids for c in comps]


def agreement(answers: dict[str, list[list[int]]]) -> dict[str, dict[str, Any]]:
    """Greedy answers of each backend against the first one: prompts identical token for token."""
    names = list(answers)
    if len(names) < 2:
        return {}
    ref = answers[names[0]]
    out = {}
    for name in names[1:]:
        same = [a == b for a, b in zip(ref, answers[name], strict=True)]
        first_diff = next((i for i, ok in enumerate(same) if not ok), None)
        out[name] = {"against": names[0], "identical": sum(same), "prompts": len(same),
                     "first_different_prompt": first_diff}
    return out


def raw_vllm_row(backend: Any, ids: list[list[int]], sampling: Sampling, stops: list[int], repeats: int) -> Row:
    """Plain vLLM on the same engine: LLM.generate on TokensPrompt with stock SamplingParams."""
    api = backend.api
    params = api.SamplingParams(max_tokens=sampling.max_new_tokens, temperature=0.0, stop_token_ids=stops)
    prompts = [api.TokensPrompt(prompt_token_ids=p) for p in ids]

    def go() -> int:
        outs = backend.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    seconds, tokens = timed(go, repeats)
    return Row("vllm (raw LLM.generate)", "all", len(ids), seconds, tokens, "reference")


def table(rows: list[Row]) -> str:
    lines = ["| backend | batch | prompts | s | prompts/s | completion tokens/s | note |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.batch_size} | {r.prompts} | {r.seconds:.2f} | {r.prompts_per_s:.2f} | "
              f"{r.tokens_per_s:.1f} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not names or any(b not in BACKENDS for b in names):
        print(f"bench_infer: --backends must name some of {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    try:
        for name in names:
            check_backend_installed(name)
    except BackendMissing as e:
        print(f"bench_infer: {e}", file=sys.stderr)
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    model = args.model
    if model is None:
        from sftkit.testing.tiny_model import build_tiny_model

        model = build_tiny_model(ROOT / "bench/results/tiny_model")
    tokenizer = load_tokenizer(model)
    try:
        template = get_template(args.template, tokenizer)
    except TemplateError as e:
        print(f"bench_infer: {e}", file=sys.stderr)
        return 2
    stops = engine_stop_ids(stop_token_ids(template, tokenizer), model)
    convs, source = load_prompts(Path(args.input) if args.input else None, args.n_prompts)
    ids = [encode_prompt(template, tokenizer, c) for c in convs]
    sampling = Sampling(temperature=0, max_new_tokens=args.max_new_tokens)
    opts = EngineOptions(model=model, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                         max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                         enforce_eager=args.enforce_eager)
    rows: list[Row] = []
    answers: dict[str, list[list[int]]] = {}
    for name in names:
        backend = open_backend(name, opts, tokenizer, stops, batch_size=8)
        try:
            if hasattr(backend, "use_tqdm"):
                backend.use_tqdm = False
            backend.generate(ids[:2], sampling)  # warm-up (kernels, caches)
            for batch in batch_sizes:
                row, token_ids = run_backend(backend, ids, sampling, batch, args.repeats)
                rows.append(row)
                answers.setdefault(name, token_ids)
                print(f"{rows[-1].backend} batch {rows[-1].batch_size}: {rows[-1].prompts_per_s:.2f} prompts/s",
                      file=sys.stderr)
            if name == "vllm":
                rows.append(raw_vllm_row(backend, ids, sampling, stops, args.repeats))
        finally:
            backend.close()
    for name in names:
        mine = [r for r in rows if r.backend == name]
        single = next((r for r in mine if r.batch_size == "1"), None)
        for r in mine:
            if single and r is not single:
                r.note = f"{r.prompts_per_s / single.prompts_per_s:.2f}x one-at-a-time"
        raw = next((r for r in rows if r.backend.startswith("vllm (raw")), None)
        if name == "vllm" and raw:
            for r in mine:
                r.note = (r.note + "; " if r.note else "") + f"{r.prompts_per_s / raw.prompts_per_s:.3f}x raw vLLM"
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86'})"
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": device, "model": model,
            "prompts_from": source, "n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens,
            "template": args.template, "dtype": resolve_dtype(args.dtype)}
    out = Path(args.out or ROOT / f"bench/results/bench_infer_{'_'.join(names)}.json")
    agree = agreement(answers)
    write_json(out, {**meta, "rows": [{**r.__dict__, "prompts_per_s": round(r.prompts_per_s, 3),
                                       "tokens_per_s": round(r.tokens_per_s, 2)} for r in rows],
                     "greedy_agreement": agree})
    print(f"\n{meta['date']}, {device}, model {model}, {args.n_prompts} prompts from {source}, "
          f"greedy, {args.max_new_tokens} new tokens max\n")
    print(table(rows))
    for name, a in agree.items():
        print(f"\ngreedy agreement {name} vs {a['against']}: {a['identical']}/{a['prompts']} prompts identical "
              f"token for token" + (f" (first difference: prompt {a['first_different_prompt']})"
                                    if a["first_different_prompt"] is not None else ""))
    print(f"\n(results: {out})")
    return 0


if __name__ == "__main__":
    # vLLM and SGLang spawn workers that re-import this file: engines are created only from here.
    sys.exit(main())
