"""Inference behind one interface, with three engines: transformers, vLLM and SGLang.

Every backend is handed prompts as token ids rendered by `sftkit.model.templates.encode_prompt` (the code the trainer
uses, so training and inference see the same ids), stops on the template's stop ids, and returns completion token
ids that are decoded here with the same tokenizer: given the same ids and greedy decoding, the three engines
produce the same text. vLLM and SGLang are imported only when their backend is opened, so a CPU install needs
neither; a missing one raises `BackendMissing` naming its requirements file.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sftkit.io.records import Messages, to_record

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm", "sglang")
REQUIREMENTS_FILE = {"vllm": "requirements-vllm.txt", "sglang": "requirements-sglang.txt"}
ADAPTER_NAME = "sft"  # the name the LoRA adapter is registered under in vLLM / SGLang
# vLLM accepts only these values for max_lora_rank (vllm/config/lora.py MaxLoRARanks); its default is 16.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
FINISH_REASONS = ("stop", "length", "abort")


class BackendMissing(RuntimeError):
    """The engine package of a backend is not installed; the message says which file installs it."""


class InferenceError(RuntimeError):
    """A model / adapter / option problem found before generating (bad usage: exit 2)."""


class EngineStartError(RuntimeError):
    """vLLM / SGLang failed to start (exit 1); the message is one line: the engine's own reason."""


# ---- options and results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Decoding settings, identical for every backend. temperature 0 means greedy."""

    temperature: float = 0.8
    top_p: float = 0.8
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    seed: int = 42

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class EngineOptions:
    """How to load the model; the fields after `seed` only matter to vLLM / SGLang."""

    model: str
    adapter: str | None = None
    merged: bool = False  # the adapter is already merged into `model` (so engines load no LoRA)
    dtype: str = "auto"  # see resolve_dtype: one rule for every backend
    trust_remote_code: bool = False
    seed: int = 42
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    kv_cache_gib: float | None = None  # vLLM: KV cache size; default on a CPU-only vLLM: CPU_KV_CACHE_GIB
    enforce_eager: bool = False  # vLLM: no torch.compile / CUDA graphs (starts much faster, decodes slower)


@dataclass
class Completion:
    """One answer: `token_ids` exclude the stop token; `completion_tokens` count it (as engines do)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float = 0.0  # wall time of the engine call (or padded batch) that produced it


def finish(
    tokenizer: Any,
    generated: Sequence[int],
    stop_ids: Iterable[int],
    prompt_tokens: int,
    max_new_tokens: int,
    engine_reason: str | None = None,
) -> Completion:
    """Cut generated ids at the first stop id, decode, and name why generation ended."""
    stops = set(stop_ids)
    ids = [int(t) for t in generated]
    cut = next((i for i, t in enumerate(ids) if t in stops), None)
    if cut is not None:
        answer, count, reason = ids[:cut], cut + 1, "stop"
    else:
        answer, count = ids, len(ids)
        if engine_reason in FINISH_REASONS:
            reason = engine_reason
        else:
            reason = "length" if count >= max_new_tokens else "stop"
    text = tokenizer.decode(answer, skip_special_tokens=True)
    return Completion(text, answer, reason, prompt_tokens, count)


class IncrementalText:
    """Turns a growing list of token ids into the new printable text, for streaming.

    The whole answer is decoded each time (answers are short) and only the part past what was already shown is
    returned; a trailing U+FFFD (half of a multi-byte character) is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Any, stop_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.stops = set(stop_ids)
        self.ids: list[int] = []
        self.stopped = False
        self.shown = ""

    def add(self, new_ids: Iterable[int]) -> str:
        for t in new_ids:
            if self.stopped:
                break
            if int(t) in self.stops:
                self.stopped = True
            else:
                self.ids.append(int(t))
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""
        if not text.startswith(self.shown):  # an earlier piece decoded differently once more ids came: wait
            return ""
        new, self.shown = text[len(self.shown):], text
        return new


def read_adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in the adapter's adapter_config.json (`r`, and any `rank_pattern` value)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InferenceError(f"{path}: not found (is --adapter a PEFT LoRA adapter folder?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise InferenceError(f"{path}: unreadable: {e}") from None
    ranks = [cfg.get("r"), *(cfg.get("rank_pattern") or {}).values()]
    ranks = [int(r) for r in ranks if isinstance(r, int | float) and r > 0]
    if not ranks:
        raise InferenceError(f"{path}: no LoRA rank `r`")
    return max(ranks)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank` (vLLM rejects other values and defaults to 16)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise InferenceError(f"LoRA rank {rank} is above vLLM's maximum {VLLM_LORA_RANKS[-1]}")


# ---- records -> prompts -----------------------------------------------------------------------------


@dataclass
class Request:
    """One record ready for an engine: the prompt conversation, its ids, and the reference answer if any."""

    record: dict[str, Any]
    messages: Messages
    reference: str | None
    prompt_ids: list[int] = field(default_factory=list)


def split_prompt(messages: Messages) -> tuple[Messages, str | None]:
    """The conversation up to its last user turn, and the assistant answer after it (the reference) if any."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return list(messages), None


def with_system(messages: Messages, system: str | None) -> Messages:
    """Add `system` as the system prompt when the conversation has none; a record's own one is kept."""
    if system is None or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def request_from_obj(obj: Any, system: str | None, rid: str = "", source: str = "") -> Request:
    """Any SPEC record form -> Request (raises RecordError with the reason)."""
    record = to_record(obj, source=source, rid=rid, need_answer=False)
    prompt, reference = split_prompt(record["messages"])
    return Request(record=record, messages=with_system(prompt, system), reference=reference)


def output_row(req: Request, comp: Completion, latency_s: float) -> dict[str, Any]:
    """The record (its messages now the prompt conversation) plus the answer and its figures."""
    row = dict(req.record)
    row["messages"] = req.messages
    row["reference"] = req.reference
    row["response"] = comp.text
    row["finish_reason"] = comp.finish_reason
    row["prompt_tokens"] = comp.prompt_tokens
    row["completion_tokens"] = comp.completion_tokens
    row["latency_s"] = round(latency_s, 4)
    return row


# ---- shared loading ---------------------------------------------------------------------------------


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    from sftkit.model.minicpm import tokenizer_remote_code

    return AutoTokenizer.from_pretrained(path, trust_remote_code=tokenizer_remote_code(path, trust_remote_code))


def model_eos_ids(model: str) -> list[int]:
    """The eos id(s) of the model's generation_config (vLLM and SGLang stop on them whatever they are told)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):
        return []
    eos = eos if isinstance(eos, list) else [eos]
    return [int(t) for t in eos if isinstance(t, int)]


def engine_stop_ids(template_stops: Sequence[int], model: str) -> list[int]:
    """The template's stop ids, then the model's own eos ids: vLLM and SGLang stop on the latter anyway, so
    transformers is told too and the three backends end answers on the same tokens."""
    out = list(dict.fromkeys(int(t) for t in template_stops))
    return out + [t for t in model_eos_ids(model) if t not in out]


class Backend:
    """What every engine offers. `generate` keeps input order; `stream` calls `on_text` with new text pieces."""

    name = "base"

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        raise NotImplementedError

    def stream(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None]) -> Completion:
        # Engines without token streaming: answer whole, show it whole.
        comp = self.generate([prompt], sampling)[0]
        on_text(comp.text)
        return comp

    def close(self) -> None:
        """Release the engine (worker processes, GPU memory)."""


# ---- dtype: one rule for every backend ----------------------------------------------------------------

DTYPES = ("auto", "bfloat16", "float16", "float32")
DTYPE_RULE = ("auto = bfloat16 on a CUDA GPU (float16 where it lacks bf16), float32 on CPU, for every backend "
              "whatever dtype the checkpoint was saved in")


def resolve_dtype(name: str) -> str:
    """The dtype every backend loads the weights in. `auto` is decided here, not by each engine: vLLM's own
    `auto` downcasts a float32 checkpoint to bfloat16 while transformers keeps float32, so the same checkpoint
    answered differently per backend. bfloat16 on a GPU (fp16 diverged in seed 004's runs), float32 on CPU."""
    if name not in DTYPES:
        raise InferenceError(f"unknown --dtype {name!r} (choose from {', '.join(DTYPES)})")
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


# ---- transformers -----------------------------------------------------------------------------------


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, resolve_dtype(name))


def load_hf_model(opts: EngineOptions, merge: bool = False) -> Any:
    """The model in eval mode on the GPU if there is one; the adapter applied through peft (merged if asked)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftkit.model.minicpm import ConversionError, resolve_model

    try:  # a MiniCPM checkpoint runs as its exact Llama conversion (cached; sftkit/model/minicpm.py)
        path = resolve_model(opts.model).path
    except ConversionError as e:
        raise InferenceError(f"--model {opts.model}: {e}") from None
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(opts.dtype), trust_remote_code=opts.trust_remote_code
    )
    if opts.adapter and not opts.merged:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, opts.adapter)
        if merge:
            model = model.merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


class _TokenQueue:
    """A transformers streamer that forwards each step's new token ids to a queue (the prompt is skipped)."""

    def __init__(self) -> None:
        self.q: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.q.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.q.put(None)


class HFBackend(Backend):
    """transformers `generate` on token ids: batches left-padded, sorted by length to waste little padding."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], batch_size: int = 8,
                 seed: int = 42, progress: Callable[[int], None] | None = None) -> None:
        from transformers import set_seed

        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.batch_size = max(1, batch_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.progress = progress
        set_seed(seed)

    def _config(self, s: Sampling) -> Any:
        from transformers import GenerationConfig

        cfg = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=not s.greedy,
            repetition_penalty=s.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        if not s.greedy:
            # top_k 0: no top-k cut, as vLLM and SGLang do by default.
            cfg.temperature, cfg.top_p, cfg.top_k = s.temperature, s.top_p, 0
        return cfg

    def _inputs(self, batch: list[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        import torch

        cfg = self._config(sampling)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids, mask = self._inputs([prompts[i] for i in idx])
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            new = gen[:, ids.shape[1]:].tolist()
            took = time.perf_counter() - t0
            for row, i in enumerate(idx):
                out[i] = finish(self.tokenizer, new[row], self.stop_ids, len(prompts[i]), sampling.max_new_tokens)
                out[i].latency_s = took
            if self.progress:
                self.progress(len(idx))
        return [c for c in out if c is not None]

    def close(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # leave the GPU to the next engine (bench runs several in one process)

    def stream(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None]) -> Completion:
        import torch

        cfg = self._config(sampling)
        ids, mask = self._inputs([prompt])
        streamer = _TokenQueue()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, streamer=streamer)
            except BaseException as e:  # re-raised in the caller's thread below
                failure.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = IncrementalText(self.tokenizer, self.stop_ids)
        generated: list[int] = []
        while (step := streamer.q.get()) is not None:
            generated += step
            if piece := text.add(step):
                on_text(piece)
        worker.join()
        if failure:
            raise failure[0]
        if piece := text.flush():
            on_text(piece)
        return finish(self.tokenizer, generated, self.stop_ids, len(prompt), sampling.max_new_tokens)


# ---- vLLM -------------------------------------------------------------------------------------------


@dataclass
class VllmApi:
    """The vLLM names the backend uses (a test passes recording stand-ins instead); `on_cpu`: vLLM's CPU build."""

    LLM: Any
    SamplingParams: Any
    TokensPrompt: Any
    LoRARequest: Any
    on_cpu: bool = False


# On a CPU-only vLLM the KV cache is CPU memory: vLLM's default asks for gpu_memory_utilization (0.85) of the
# NUMA node's RAM and fails on a shared machine. 1 GiB holds ~43k tokens of a 0.5B model in float32.
CPU_KV_CACHE_GIB = 1.0
GIB = 1 << 30


def start_engine(backend: str, factory: Any, kwargs: dict[str, Any]) -> Any:
    """`factory(**kwargs)`; any failure becomes one EngineStartError line naming the engine's own reason."""
    try:
        return factory(**kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        raise EngineStartError(f"the {backend} engine did not start: {one_line(e)}") from e


def one_line(err: BaseException) -> str:
    """The innermost useful message of an exception chain, on one line (engines wrap their causes)."""
    seen, best = set(), err
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if str(cur).strip():
            best = cur
        cur = cur.__cause__ or cur.__context__
    line = f"{type(best).__name__}: {' '.join(str(best).split())}"
    return line if len(line) <= 600 else line[:597] + "..."


def _missing(backend: str, err: ImportError) -> BackendMissing:
    req = REQUIREMENTS_FILE[backend]
    return BackendMissing(
        f"--backend {backend} needs the {backend} package ({err.name or err}): install it in its own venv with "
        f"`pip install -r {req}` (see the comment at the top of {req})"
    )


def import_vllm() -> VllmApi:
    # vLLM logs to stdout by default, where --prompt / --chat answers go; a user's own setting is kept.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform
    except ImportError as e:
        raise _missing("vllm", e) from None
    return VllmApi(LLM, SamplingParams, TokensPrompt, LoRARequest, on_cpu=bool(current_platform.is_cpu()))


def vllm_engine_kwargs(opts: EngineOptions, on_cpu: bool = False) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": opts.model,
        "tokenizer": opts.model,
        "dtype": resolve_dtype(opts.dtype),
        "seed": opts.seed,
        "trust_remote_code": opts.trust_remote_code,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "tensor_parallel_size": opts.tensor_parallel_size,
    }
    if opts.max_model_len:
        kw["max_model_len"] = opts.max_model_len
    kv_gib = opts.kv_cache_gib
    if kv_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB
    if kv_gib is not None:
        kw["kv_cache_memory_bytes"] = int(kv_gib * GIB)
    if opts.enforce_eager:
        kw["enforce_eager"] = True
    if opts.adapter and not opts.merged:
        # vLLM's max_lora_rank defaults to 16 and refuses larger adapters: size it from the adapter itself.
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(read_adapter_rank(opts.adapter)))
    return kw


def vllm_sampling_kwargs(s: Sampling, stop_ids: list[int]) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "max_tokens": s.max_new_tokens,
        "temperature": 0.0 if s.greedy else s.temperature,
        "top_p": 1.0 if s.greedy else s.top_p,
        "repetition_penalty": s.repetition_penalty,
        "stop_token_ids": list(stop_ids),
        "detokenize": False,  # completions are decoded here, with the tokenizer every backend shares
    }
    if not s.greedy:
        kw["seed"] = s.seed
    return kw


class VllmBackend(Backend):
    """vLLM's offline `LLM.generate` on `TokensPrompt(prompt_token_ids=...)`; LoRA through a `LoRARequest`."""

    name = "vllm"

    def __init__(self, opts: EngineOptions, tokenizer: Any, stop_ids: list[int], api: VllmApi | None = None,
                 use_tqdm: bool = True) -> None:
        self.api = api or import_vllm()
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.use_tqdm = use_tqdm
        self.engine_kwargs = vllm_engine_kwargs(opts, on_cpu=self.api.on_cpu)
        self.llm = start_engine("vllm", self.api.LLM, self.engine_kwargs)
        self.lora = None
        if opts.adapter and not opts.merged:
            self.lora = self.api.LoRARequest(ADAPTER_NAME, 1, str(Path(opts.adapter).resolve()))

    def close(self) -> None:
        """Shut the engine core and its workers down now (otherwise they die at exit, "engine core exited
        unexpectedly", and a second engine in the same process finds the memory still taken)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm
        gc.collect()

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        params = self.api.SamplingParams(**vllm_sampling_kwargs(sampling, self.stop_ids))
        inputs = [self.api.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        t0 = time.perf_counter()
        outputs = self.llm.generate(inputs, params, lora_request=self.lora, use_tqdm=self.use_tqdm)
        took = time.perf_counter() - t0
        results = []
        for prompt, out in zip(prompts, outputs, strict=True):
            best = out.outputs[0]
            comp = finish(self.tokenizer, best.token_ids, self.stop_ids, len(prompt),
                          sampling.max_new_tokens, engine_reason=best.finish_reason)
            comp.latency_s = took
            results.append(comp)
        return results


# ---- SGLang -----------------------------------------------------------------------------------------


@dataclass
class SglangApi:
    Engine: Any


def import_sglang() -> SglangApi:
    try:
        from sglang import Engine
    except ImportError as e:
        raise _missing("sglang", e) from None
    return SglangApi(Engine)


def sglang_engine_kwargs(opts: EngineOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model_path": opts.model,
        "tokenizer_path": opts.model,
        "dtype": resolve_dtype(opts.dtype),
        "random_seed": opts.seed,
        "trust_remote_code": opts.trust_remote_code,
        # SGLang's nearest knob to vLLM's gpu_memory_utilization: the share for weights + KV cache.
        "mem_fraction_static": opts.gpu_memory_utilization,
        "tp_size": opts.tensor_parallel_size,
        "log_level": "error",
    }
    if opts.max_model_len:
        kw["context_length"] = opts.max_model_len
    if opts.adapter and not opts.merged:
        kw.update(enable_lora=True, max_lora_rank=read_adapter_rank(opts.adapter),
                  lora_paths=[f"{ADAPTER_NAME}={Path(opts.adapter).resolve()}"])
    return kw


def sglang_sampling(s: Sampling, stop_ids: list[int]) -> dict[str, Any]:
    return {
        "max_new_tokens": s.max_new_tokens,
        "temperature": 0.0 if s.greedy else s.temperature,
        "top_p": 1.0 if s.greedy else s.top_p,
        "repetition_penalty": s.repetition_penalty,
        "stop_token_ids": list(stop_ids),
    }


def _sglang_reason(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    if isinstance(reason, dict):
        reason = reason.get("type")
    return reason if isinstance(reason, str) else None


class SglangBackend(Backend):
    """SGLang's offline `Engine.generate(input_ids=...)`; LoRA loaded with `lora_paths`, chosen per request."""

    name = "sglang"

    def __init__(self, opts: EngineOptions, tokenizer: Any, stop_ids: list[int], api: SglangApi | None = None) -> None:
        self.api = api or import_sglang()
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.engine_kwargs = sglang_engine_kwargs(opts)
        self.use_lora = bool(opts.adapter and not opts.merged)
        self.engine = start_engine("sglang", self.api.Engine, self.engine_kwargs)
        self._closed = False

    def _lora(self, n: int) -> list[str] | None:
        return [ADAPTER_NAME] * n if self.use_lora else None

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        t0 = time.perf_counter()
        outs = self.engine.generate(input_ids=[list(p) for p in prompts],
                                    sampling_params=sglang_sampling(sampling, self.stop_ids),
                                    lora_path=self._lora(len(prompts)))
        took = time.perf_counter() - t0
        if isinstance(outs, dict):
            outs = [outs]
        results = []
        for prompt, out in zip(prompts, outs, strict=True):
            meta = out.get("meta_info") or {}
            comp = finish(self.tokenizer, out.get("output_ids") or [], self.stop_ids, len(prompt),
                          sampling.max_new_tokens, engine_reason=_sglang_reason(meta))
            # SGLang times each request itself (e2e_latency); otherwise the call's wall time.
            latency = meta.get("e2e_latency")
            comp.latency_s = float(latency) if isinstance(latency, int | float) else took
            results.append(comp)
        return results

    def stream(self, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None]) -> Completion:
        chunks = self.engine.generate(input_ids=list(prompt), sampling_params=sglang_sampling(sampling, self.stop_ids),
                                      lora_path=ADAPTER_NAME if self.use_lora else None, stream=True)
        text = IncrementalText(self.tokenizer, self.stop_ids)
        ids: list[int] = []
        reason = None
        for chunk in chunks:
            new = [int(t) for t in chunk.get("output_ids") or []]
            meta = chunk.get("meta_info") or {}
            # Chunks carry all ids so far by default; with incremental_streaming_output only the new ones.
            if meta.get("completion_tokens") == len(new):
                added, ids = new[len(ids):], new
            else:
                added, ids = new, ids + new
            if piece := text.add(added):
                on_text(piece)
            reason = _sglang_reason(meta) or reason
        if piece := text.flush():
            on_text(piece)
        return finish(self.tokenizer, ids, self.stop_ids, len(prompt), sampling.max_new_tokens, engine_reason=reason)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.shutdown()


# ---- opening a backend ------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_kept_for_answers() -> Iterator[TextIO]:
    """A text stream on the process's stdout for answers, while file descriptor 1 points at stderr.

    vLLM (and its engine-core and worker processes) and SGLang print log lines and warnings on stdout, from Python
    and from C++; with fd 1 pointing at stderr while an engine lives, none of them mixes into the answers that
    --prompt and --chat print, child processes included (they inherit fd 1)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    raw = os.fdopen(saved, "wb", buffering=0, closefd=False)
    answers = io.TextIOWrapper(raw, encoding=sys.stdout.encoding or "utf-8", errors=sys.stdout.errors or "strict",
                               write_through=True)
    try:
        yield answers
    finally:
        answers.flush()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_backend_installed(name: str) -> None:
    """Fail fast (before loading anything) when the engine package is missing."""
    if name == "vllm":
        import_vllm()
    elif name == "sglang":
        import_sglang()


def open_backend(name: str, opts: EngineOptions, tokenizer: Any, stop_ids: list[int], batch_size: int = 8,
                 api: Any = None, merge: bool = False) -> Backend:
    """Create the engine. For vLLM / SGLang call this under `if __name__ == "__main__"`: both spawn workers."""
    if name == "hf":
        return HFBackend(load_hf_model(opts, merge=merge), tokenizer, stop_ids, batch_size=batch_size, seed=opts.seed)
    if name == "vllm":
        return VllmBackend(opts, tokenizer, stop_ids, api=api)
    if name == "sglang":
        return SglangBackend(opts, tokenizer, stop_ids, api=api)
    raise InferenceError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")

