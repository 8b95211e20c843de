#!/usr/bin/env python
"""Generation throughput of the local teacher: vLLM's OpenAI server driven by the project's AsyncChatClient
vs vLLM's offline `LLM.generate`, on the same prompts and the same engine batch, one after the other in one run.

Prompts are gen_SFT_data.py's topics-mode requests (its system prompt and prompt template over
data/topics/hit_campus.txt), rendered by the model's chat template: the server does it for /chat/completions, the
offline run renders the same messages with the tokenizer's `apply_chat_template` and calls `LLM.generate` on those
token ids (the table's prompt token counts show both sides saw the same ids). Greedy, `ignore_eos`, `--max-tokens`
each, so both sides decode exactly the same number of tokens; each row is the fastest of `--repeats` timed rounds.
Each side runs in its own engine with the same settings (dtype, max_model_len, max_num_seqs = the concurrency,
KV cache); engine start and one warm-up round are not timed. Only one engine is alive at a time.

    python bench/bench_local_teacher.py                              # tiny random model built here (CPU smoke)
    python bench/bench_local_teacher.py --model Qwen/Qwen2.5-7B-Instruct --dtype bfloat16 --concurrency 32,128 \\
        --n-prompts 512 --max-tokens 512,2048 --max-model-len 4096   # a real teacher on a GPU

Writes bench/results/bench_local_teacher.json and prints a markdown table (goal: server >= 0.9x offline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or hub id (default: a tiny random model built into "
                                                 "bench/results/tiny_teacher)")
    p.add_argument("--venv", default=str(ROOT / ".venv-vllm"), help="the vLLM venv (default: %(default)s)")
    p.add_argument("--n-prompts", type=int, default=64, help="requests per configuration (default: %(default)s)")
    p.add_argument("--concurrency", default="16", help="comma list: client concurrency = engine max_num_seqs")
    p.add_argument("--max-tokens", default="64,256",
                   help="comma list: tokens decoded per request, one row pair each (default: %(default)s)")
    p.add_argument("--in-flight", default="1,4",
                   help="comma list: requests the client keeps in flight, as multiples of the engine batch (1: as many "
                        "as the engine runs at once; 4: a queue waits in the engine, as offline, where all are queued)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds per row; the fastest counts (a shared machine's load only slows a round down)")
    p.add_argument("--n-per-topic", type=int, default=6, help="items asked for per topic in the prompt")
    p.add_argument("--dtype", default=None, help="vLLM dtype (default: float32 for the tiny model, else auto)")
    p.add_argument("--max-model-len", type=int, default=2048, help="engine context length (default: %(default)s)")
    p.add_argument("--kv-cache-gib", type=int, default=None, help="CPU build: VLLM_CPU_KVCACHE_SPACE (default 2)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="GPU build: vLLM's share")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs on either side")
    p.add_argument("--out", default=str(ROOT / "bench/results/bench_local_teacher.json"))
    p.add_argument("--offline-worker", default=None, help=argparse.SUPPRESS)  # internal: run in the vLLM venv
    return p.parse_args(argv)


def topic_messages(n: int, n_per_topic: int) -> list[list[dict[str, str]]]:
    from sftkit.distill.generation import TOPIC_PROMPT, plan_topics, read_topics
    from sftkit.io.jsonl import BadLines

    topics = read_topics(str(ROOT / "data/topics/hit_campus.txt"), BadLines())
    topics = [topics[i % len(topics)] + ("" if i < len(topics) else f"（{i // len(topics) + 1}）") for i in range(n)]
    return [r.messages for r in plan_topics(topics, n_per_topic, "bench", TOPIC_PROMPT, json_mode=False)]


# ---- offline side: runs inside the vLLM venv ---------------------------------------------------------------


def offline_worker(spec_path: str) -> int:
    """Time `LLM.generate` on the spec's prompts for each max_tokens; print one JSON line with the figures."""
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    kw: dict[str, Any] = {"model": spec["model"], "dtype": spec["dtype"], "max_model_len": spec["max_model_len"],
                          "max_num_seqs": spec["concurrency"], "enforce_eager": spec["enforce_eager"], "seed": 0}
    if spec.get("gpu_memory_utilization") is not None:
        kw["gpu_memory_utilization"] = spec["gpu_memory_utilization"]
    llm = LLM(**kw)
    tokenizer = llm.get_tokenizer()
    # The ids the server's /chat/completions gives the engine: the template rendered and tokenised without adding
    # special tokens (tokenising the text with tokenizer(text) would add a second BOS for BOS-adding tokenizers).
    prompts = []
    for m in spec["messages"]:
        ids = tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True)
        prompts.append({"prompt_token_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)})
    results = {}
    for max_tokens in spec["max_tokens"]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        llm.generate(prompts[: spec["concurrency"]], params, use_tqdm=False)  # warm-up round, not timed
        walls = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            walls.append(time.perf_counter() - start)
        results[str(max_tokens)] = {"wall_s": min(walls), "walls_s": walls, "requests": len(outs),
                                    "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
                                    "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
    print(json.dumps(results), flush=True)
    return 0


def run_offline(args: argparse.Namespace, model: str, dtype: str, concurrency: int, max_tokens: list[int],
                messages: list[list[dict[str, str]]], workdir: Path) -> dict[str, dict[str, Any]]:
    from sftkit.llm.local_teacher import CPU_KV_CACHE_GIB, is_cpu_build, venv_python

    spec = {"model": model, "dtype": dtype, "max_model_len": args.max_model_len, "concurrency": concurrency,
            "enforce_eager": args.enforce_eager, "max_tokens": max_tokens, "messages": messages,
            "repeats": args.repeats, "gpu_memory_utilization": args.gpu_memory_utilization}
    spec_path = workdir / f"offline_spec_{concurrency}.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ)
    if is_cpu_build(args.venv):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib or env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB)
    log = workdir / f"offline_{concurrency}.log"
    with open(log, "wb") as err:
        proc = subprocess.run([str(venv_python(args.venv)), __file__, "--offline-worker", str(spec_path)],
                              stdout=subprocess.PIPE, stderr=err, env=env, check=False)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"offline LLM.generate failed (exit {proc.returncode}); log: {log}")
    return json.loads(lines[-1])


# ---- server side: the project's client against the local teacher ----------------------------------------------


def run_server(args: argparse.Namespace, model: str, dtype: str, concurrency: int, max_tokens: list[int],
               messages: list[list[dict[str, str]]], workdir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """{(max_tokens, in-flight factor): figures} from one server whose engine batches `concurrency` sequences."""
    from sftkit.llm.client import AsyncChatClient
    from sftkit.llm.local_teacher import LocalTeacher, TeacherSettings

    settings = TeacherSettings(venv=args.venv, dtype=dtype, max_model_len=args.max_model_len,
                               kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
                               max_num_seqs=concurrency, enforce_eager=args.enforce_eager, log_dir=workdir,
                               extra_args=("--seed", "0"))
    extra = {"ignore_eos": True}

    async def round_(client: AsyncChatClient, batch: list[list[dict[str, str]]], name: str, n: int) -> list[Any]:
        return await asyncio.gather(*(client.chat(m, model=name, temperature=0.0, max_tokens=n, extra=extra)
                                      for m in batch))

    async def go(teacher: LocalTeacher) -> dict[tuple[int, int], dict[str, Any]]:
        out = {}
        for factor in (int(f) for f in args.in_flight.split(",")):
            async with AsyncChatClient(teacher.base_url, max_concurrency=factor * concurrency, timeout=3600,
                                       retries=0) as c:
                for n in max_tokens:
                    await round_(c, messages[:concurrency], teacher.model_name, n)  # warm-up round, not timed
                    walls = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        results = await round_(c, messages, teacher.model_name, n)
                        walls.append(time.perf_counter() - start)
                    out[(n, factor)] = {"wall_s": min(walls), "walls_s": walls, "requests": len(results),
                                        "in_flight": factor * concurrency,
                                        "prompt_tokens": sum(r.usage.prompt_tokens for r in results),
                                        "completion_tokens": sum(r.usage.completion_tokens for r in results)}
        return out

    with LocalTeacher(model, settings) as teacher:
        return asyncio.run(go(teacher))


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| configuration | engine batch | max tokens | requests | prompt tokens | completion tokens | wall s "
           "| req/s | tokens/s | vs offline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['side']} | {r['concurrency']} | {r['max_tokens']} | {r['requests']} | {r['prompt_tokens']} | "
                   f"{r['completion_tokens']} | "
                   f"{r['wall_s']:.2f} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['vs_offline']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.offline_worker:
        return offline_worker(args.offline_worker)
    from sftkit.io.jsonl import write_json

    workdir = Path(args.out).parent
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from sftkit.testing.tiny_teacher import build_tiny_teacher

        model = build_tiny_teacher(workdir / "tiny_teacher")
    dtype = args.dtype or ("float32" if args.model is None else "auto")
    messages = topic_messages(args.n_prompts, args.n_per_topic)
    max_tokens = [int(n) for n in args.max_tokens.split(",")]
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        server = run_server(args, model, dtype, concurrency, max_tokens, messages, workdir)
        offline = run_offline(args, model, dtype, concurrency, max_tokens, messages, workdir)
        for n in max_tokens:
            off = offline[str(n)]
            sides = {f"server, AsyncChatClient, {r['in_flight']} in flight": r
                     for (m, _), r in server.items() if m == n}
            sides["offline LLM.generate, all queued"] = off
            for side, r in sides.items():
                tps = r["completion_tokens"] / r["wall_s"]
                rows.append({"side": side, "concurrency": concurrency, "max_tokens": n, **r,
                             "requests_per_s": r["requests"] / r["wall_s"], "tokens_per_s": tps,
                             "vs_offline": f"{tps / (off['completion_tokens'] / off['wall_s']):.2f}x"})
                if r["prompt_tokens"] != off["prompt_tokens"]:
                    print(f"note: {side} saw {r['prompt_tokens']} prompt tokens, offline {off['prompt_tokens']}",
                          file=sys.stderr)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": str(model), "dtype": dtype,
            "n_prompts": args.n_prompts, "max_tokens": args.max_tokens, "max_model_len": args.max_model_len,
            "enforce_eager": args.enforce_eager, "repeats": args.repeats,
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "command": " ".join(sys.argv)}
    write_json(Path(args.out), {**meta, "rows": rows})
    print(table(rows))
    print(f"\n(results: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
