"""infer/infer.py's stage: checked arguments, the prompt side (tokenizer, template, stop ids), and the three modes
(batch over a JSONL file, one --prompt, an interactive --chat) on a backend of sftkit.model.inference.

Every check that can fail raises ``UsageError`` (sftkit.io.cli): infer/infer.py reports it as `infer: <reason>`,
exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from sftkit.io.cli import UsageError
from sftkit.io.jsonl import BadLines, iter_jsonl, write_jsonl
from sftkit.io.records import RecordError
from sftkit.model.inference import (
    Backend,
    EngineOptions,
    Request,
    Sampling,
    engine_stop_ids,
    load_tokenizer,
    output_row,
    request_from_obj,
    with_system,
)
from sftkit.model.templates import TEMPLATE_NAMES, TemplateError, encode_prompt, get_template, stop_token_ids

# The script's own logger name: its lines read "WARNING infer: ..." wherever the code lives.
log = logging.getLogger("infer")

DEFAULT_TEMPLATE = "minicpm4"
TEMPLATE_FILE = "sftkit_template.json"  # written by train/train.py and train/merge_lora.py beside the weights


# ---- arguments --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    backend: str
    model: str
    adapter: str | None
    merge: bool
    merge_dir: str | None
    template: str
    input: str | None
    prompt: str | None
    chat: bool
    output: str | None
    token_ids: bool
    limit: int
    system: str | None
    sampling: Sampling
    batch_size: int
    engine: EngineOptions
    verbose: bool = False


def args_from_namespace(ns: argparse.Namespace) -> Args:
    """infer.py's parsed flags -> Args, after the checks argparse cannot make (ranges, combinations, files)."""
    checks = [
        (ns.temperature >= 0, "--temperature must be >= 0"),
        (0 < ns.top_p <= 1, "--top-p must be in (0, 1]"),
        (ns.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (ns.repetition_penalty > 0, "--repetition-penalty must be > 0"),
        (ns.batch_size >= 0, "--batch-size must be >= 0"),
        (ns.limit >= 0, "--limit must be >= 0"),
        (0 < ns.gpu_memory_utilization <= 1, "--gpu-memory-utilization must be in (0, 1]"),
        (ns.tensor_parallel_size >= 1, "--tensor-parallel-size must be >= 1"),
        (ns.max_model_len is None or ns.max_model_len >= 2, "--max-model-len must be >= 2"),
        (ns.kv_cache_gib is None or ns.kv_cache_gib > 0, "--kv-cache-gib must be > 0"),
        (not ns.token_ids or ns.input, "--token-ids is for batch mode (--input)"),
        (not ns.merge or ns.adapter, "--merge needs --adapter"),
        (ns.input is None or ns.output, "--input needs --output"),
        (ns.output is None or ns.input, "--output is for batch mode (--input)"),
        (not ns.merge_dir or ns.merge, "--merge-dir needs --merge"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    if not (Path(ns.model) / "config.json").is_file() and not looks_like_hub_id(ns.model):
        raise UsageError(f"--model {ns.model}: not a model folder (no config.json) nor a hub id (org/name)")
    if ns.adapter and not (Path(ns.adapter) / "adapter_config.json").is_file():
        raise UsageError(f"--adapter {ns.adapter}: not a PEFT adapter folder (no adapter_config.json)")
    if ns.input and not Path(ns.input).is_file():
        raise UsageError(f"--input {ns.input}: no such file")
    if ns.input and ns.output and Path(ns.input).resolve() == Path(ns.output).resolve():
        raise UsageError("--output must differ from --input")
    template = ns.template or recorded_template(ns.adapter, ns.model) or DEFAULT_TEMPLATE
    sampling = Sampling(ns.temperature, ns.top_p, ns.max_new_tokens, ns.repetition_penalty, ns.seed)
    engine = EngineOptions(
        model=ns.model, adapter=ns.adapter, dtype=ns.dtype, trust_remote_code=ns.trust_remote_code, seed=ns.seed,
        gpu_memory_utilization=ns.gpu_memory_utilization, tensor_parallel_size=ns.tensor_parallel_size,
        max_model_len=ns.max_model_len, kv_cache_gib=ns.kv_cache_gib, enforce_eager=ns.enforce_eager,
    )
    return Args(ns.backend, ns.model, ns.adapter, ns.merge, ns.merge_dir, template, ns.input, ns.prompt, ns.chat,
                ns.output, ns.token_ids, ns.limit, ns.system, sampling, ns.batch_size, engine, ns.verbose)


def looks_like_hub_id(name: str) -> bool:
    """`org/name` that is not a local path: left to transformers / the engines to fetch (needs network)."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
            and all(part.strip() for part in name.split("/")))


def recorded_template(*folders: str | None) -> str | None:
    """The template name train/ recorded beside an adapter or model, first folder first."""
    for folder in folders:
        path = Path(folder) / TEMPLATE_FILE if folder else None
        if path and path.is_file():
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("template_name")
            except (OSError, ValueError, AttributeError) as e:
                raise UsageError(f"{path}: unreadable: {e}") from None
            if name not in TEMPLATE_NAMES:
                raise UsageError(f"{path}: unknown template_name {name!r}")
            return name
    return None


def tokenizer_source(args: Args) -> str:
    """The adapter's tokenizer when train/ saved one with it (what training used), else the model's."""
    if args.adapter and (Path(args.adapter) / "tokenizer_config.json").is_file():
        return args.adapter
    return args.model


# ---- loading ----------------------------------------------------------------------------------------


def load_prompt_side(args: Args) -> tuple[Any, Any, list[int]]:
    """(tokenizer, template, the ids the engine stops on: the template's stop ids plus the model's eos)."""
    tokenizer = load_tokenizer(tokenizer_source(args), args.engine.trust_remote_code)
    template = get_template(args.template, tokenizer)
    template_stops = stop_token_ids(template, tokenizer)
    if not template_stops:
        raise UsageError(f"template {args.template}: the tokenizer has none of its stop tokens")
    return tokenizer, template, engine_stop_ids(template_stops, args.model)


@dataclass
class Prepared:
    requests: list[Request]
    lines: int
    bad: BadLines


def prepare_requests(args: Args, template: Any, tokenizer: Any) -> Prepared:
    """Read every input line; keep the records that make a prompt, report the others as `file:line: reason`."""
    bad = BadLines(log)
    requests: list[Request] = []
    parsed = bad_records = 0
    source = Path(args.input).name.split(".")[0]
    limit = args.engine.max_model_len
    for lineno, obj in iter_jsonl(args.input, bad):
        parsed += 1
        if args.limit and len(requests) >= args.limit:
            continue
        try:
            req = request_from_obj(obj, args.system, rid=f"{source}-{lineno}", source=source)
            req.prompt_ids = encode_prompt(template, tokenizer, req.messages)
            if limit and len(req.prompt_ids) >= limit:
                raise RecordError(f"prompt too long: {len(req.prompt_ids)} tokens, --max-model-len {limit}")
        except (RecordError, TemplateError) as e:
            bad.add(args.input, lineno, str(e))
            bad_records += 1
            continue
        requests.append(req)
    # Lines that were not JSON never reach the loop: count them back in.
    return Prepared(requests, parsed + bad.count - bad_records, bad)


@contextlib.contextmanager
def merged_model(args: Args, merge_into: Callable[[Args, Path], None]) -> Iterator[EngineOptions]:
    """Engine options with the adapter merged into a plain model folder first (vllm/sglang with --merge).
    `merge_into(args, out)` writes the merged model to `out`."""
    if not (args.merge and args.adapter and args.backend != "hf"):
        yield args.engine
        return
    with contextlib.ExitStack() as stack:
        if args.merge_dir:
            out = Path(args.merge_dir)
        else:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="infer-merge-"))) / "merged"
        log.info("merging %s into %s -> %s", args.adapter, args.model, out)
        merge_into(args, out)
        yield EngineOptions(**{**args.engine.__dict__, "model": str(out), "merged": True})


# ---- batch mode -------------------------------------------------------------------------------------


def run_batch(args: Args, backend: Backend, prep: Prepared, load_s: float, t_start: float) -> dict[str, Any]:
    """Answer every prepared request, write the output JSONL; returns the summary."""
    reqs = prep.requests
    chunk = args.batch_size if (args.batch_size and args.backend != "hf") else len(reqs)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(reqs), unit="prompt", desc=f"infer[{args.backend}]", dynamic_ncols=True)
    if hasattr(backend, "progress"):
        backend.progress = bar.update  # hf reports each padded batch
    t0 = time.perf_counter()
    for start in range(0, len(reqs), max(chunk, 1)):
        part = reqs[start:start + chunk]
        comps = backend.generate([r.prompt_ids for r in part], args.sampling)
        for r, c in zip(part, comps, strict=True):
            rows.append(output_row(r, c, c.latency_s))
            if args.token_ids:
                rows[-1]["response_token_ids"] = c.token_ids
        if not hasattr(backend, "progress"):
            bar.update(len(part))
    gen_s = time.perf_counter() - t0
    bar.close()
    write_jsonl(args.output, rows)
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    completion_tokens = sum(r["completion_tokens"] for r in rows)
    return {
        "backend": args.backend, "model": args.model, "adapter": args.adapter, "merged": args.merge,
        "template": args.template, "sampling": args.sampling.__dict__, "batch_size": args.batch_size,
        "input": args.input, "output": args.output,
        "lines_read": prep.lines, **prep.bad.as_dict(), "records_out": len(rows),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in rows)),
        "with_reference": sum(r["reference"] is not None for r in rows),
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
        "prompts_per_s": round(len(rows) / gen_s, 3) if gen_s > 0 else None,
        "completion_tokens_per_s": round(completion_tokens / gen_s, 2) if gen_s > 0 else None,
        "total_tokens_per_s": round((prompt_tokens + completion_tokens) / gen_s, 2) if gen_s > 0 else None,
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }


def summary_path(output: str) -> Path:
    out = Path(output)
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".jsonl") + ".summary.json")


def print_summary(s: dict[str, Any], err: TextIO) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["finish_reasons"].items())) or "none"
    adapter = f" + adapter {s['adapter']}" + (" (merged)" if s["merged"] else "") if s["adapter"] else ""
    lines = [
        f"infer [{s['backend']}] model {s['model']}{adapter}",
        f"  template {s['template']}, temperature {s['sampling']['temperature']}, "
        f"max_new_tokens {s['sampling']['max_new_tokens']}",
        f"  lines read {s['lines_read']}, bad {s['bad_lines']}, answered {s['records_out']} ({reasons}), "
        f"with reference {s['with_reference']}",
        f"  tokens: prompt {s['prompt_tokens']:,}, completion {s['completion_tokens']:,}",
        f"  load {s['load_s']:.1f} s, generate {s['generate_s']:.1f} s: {s['prompts_per_s']} prompts/s, "
        f"{s['completion_tokens_per_s']} completion tokens/s",
        f"  output {s['output']} (summary {summary_path(s['output'])})",
    ]
    err.write("\n".join(lines) + "\n")


# ---- prompt and chat modes --------------------------------------------------------------------------


def run_prompt(args: Args, backend: Backend, template: Any, tokenizer: Any, out: TextIO, err: TextIO) -> None:
    messages = with_system([{"role": "user", "content": args.prompt}], args.system)
    ids = encode_prompt(template, tokenizer, messages)
    t0 = time.perf_counter()
    comp = backend.generate([ids], args.sampling)[0]
    took = time.perf_counter() - t0
    out.write(comp.text + "\n")
    out.flush()
    rate = comp.completion_tokens / took if took > 0 else 0.0
    err.write(f"[{comp.finish_reason}] {comp.prompt_tokens} prompt + {comp.completion_tokens} completion tokens, "
              f"{took:.2f} s, {rate:.1f} tokens/s\n")


def fit_history(history: list[dict[str, str]], user: dict[str, str], args: Args, template: Any,
                tokenizer: Any) -> tuple[list[int], list[dict[str, str]], int]:
    """Prompt ids for history + user; drops the oldest exchanges while the prompt exceeds --max-model-len."""
    dropped = 0
    while True:
        ids = encode_prompt(template, tokenizer, with_system([*history, user], args.system))
        limit = args.engine.max_model_len
        if not limit or len(ids) < limit or not history:
            return ids, history, dropped
        history, dropped = history[2:], dropped + 1


def run_chat(args: Args, backend: Backend, template: Any, tokenizer: Any, inp: TextIO, out: TextIO,
             err: TextIO) -> int:
    err.write(f"chat [{args.backend}] {args.model}" + (f" + {args.adapter}" if args.adapter else "")
              + f", template {args.template}. /reset clears the history, /exit (or end of input) quits.\n")
    history: list[dict[str, str]] = []
    turns = 0
    while True:
        out.write(">>> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            break
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            break
        if command == "/reset":
            history = []
            err.write("(history cleared)\n")
            continue
        user = {"role": "user", "content": text}
        ids, history, dropped = fit_history(history, user, args, template, tokenizer)
        if dropped:
            err.write(f"(dropped the {dropped} oldest exchange(s) to fit --max-model-len)\n")

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        comp = backend.stream(ids, args.sampling, show)
        out.write("\n")
        out.flush()
        history = [*history, user, {"role": "assistant", "content": comp.text}]
        turns += 1
    err.write(f"chat ended after {turns} answer(s)\n")
    return 0
