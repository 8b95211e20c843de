"""The SFT trainer's parts (train/train.py runs them in order): arguments and their checks, tokenizer + template
and data loading, the model (full / LoRA / 4-bit QLoRA), the loss, packing verification, resume, the summary.

Every check that can fail raises ``UsageError``: train/train.py reports it as one line, exit status 2.
transformers, peft, torch and DeepSpeed are imported inside the functions that need them, so a usage error is
reported before any of them loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sftkit.io.cli import UsageError
from sftkit.model.sft_data import OVERLENGTH_RULES, PACKING_ATTENTION
from sftkit.model.templates import TEMPLATE_NAMES

# The script's own logger name: its lines read "INFO train: ..." wherever the code lives.
log = logging.getLogger("train")

TRAIN_MODES = ("full", "lora", "qlora")
TEMPLATE_FILE = "sftkit_template.json"  # written next to every saved model/adapter; infer/ reads it
SUMMARY_FILE = "train_summary.json"
# First path components that always mean a local directory (outputs of earlier stages), never a hub id.
LOCAL_ROOTS = ("outputs", "data", "models")
MAX_PACKING_LEAK = 0.05  # packed vs separate logits, relative to no boundaries at all (see sft_data.packing_leak)


@dataclass
class SFTArguments:
    """Our arguments (everything else in the JSON file is a transformers.TrainingArguments field)."""

    model_name_or_path: str = field(metadata={"help": "base model: a local directory or a hub id"})
    train_file: str = field(metadata={"help": "JSONL in any record form (Firefly conversation, ShareGPT, ...)"})
    eval_file: str | None = field(default=None, metadata={"help": "JSONL; eval loss is computed every eval_steps"})
    template_name: str = field(default="minicpm4", metadata={"help": f"chat template: {', '.join(TEMPLATE_NAMES)}"})
    max_seq_length: int = field(default=1024, metadata={"help": "longest example in tokens (see overlength)"})
    overlength: str = field(default="truncate", metadata={
        "help": "truncate: keep the first max_seq_length tokens (dropped if no answer token is left); drop: drop"})
    train_mode: str = field(default="lora", metadata={"help": "full | lora | qlora"})
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale alpha/r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch"})
    lora_target: str = field(default="all-linear", metadata={
        "help": "comma-separated module names, or all-linear (every linear layer except lm_head)"})
    packing: bool = field(default=False, metadata={"help": "pack examples into rows of max_seq_length tokens"})
    packing_attention: str = field(default="auto", metadata={
        "help": "how packed sequences stay apart: position_ids (padding-free), block_mask (4-D mask) or auto"})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "sdpa | eager | flash_attention_2 (default: the model's own choice)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow the model repo's own code (MiniCPM4)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training rows"})


# ---------------------------------------------------------------------------------------------------------------
# arguments


def argument_keys_help() -> str:
    """One line per key of SFTArguments, for the script's --help."""
    return "\n".join(f"  {f.name:<20} {f.metadata.get('help', '')}" for f in fields(SFTArguments))


def parse_value(text: str) -> Any:
    """A --set VALUE: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "latest"))


def looks_local(path: str) -> bool:
    """A model reference that must exist on disk (a hub id is 'owner/name' with no local first component)."""
    p = Path(path).expanduser()
    return (p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
            or (len(p.parts) > 1 and (Path(p.parts[0]).is_dir() or p.parts[0] in LOCAL_ROOTS)))


def zero_stage(ds: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a path or an already loaded dict); None when it names none."""
    conf = ds
    if isinstance(ds, str):
        if not Path(ds).is_file():
            raise UsageError(f"deepspeed config not found: {ds}")
        try:
            conf = json.loads(Path(ds).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"deepspeed config {ds} is not valid JSON: {exc}") from exc
    stage = (conf or {}).get("zero_optimization", {}).get("stage")
    return int(stage) if stage is not None else None


def read_args_file(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The JSON argument file as a dict, with each --set KEY=VALUE applied on top."""
    if not path.is_file():
        raise UsageError(f"train_args_file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must hold one JSON object")
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        raw[key.strip()] = parse_value(value)
    return raw


def check_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """Checks that need only the raw dict (unknown keys, contradictions, files); returns a cleaned copy."""
    from transformers import TrainingArguments

    raw = dict(raw)
    ours = {f.name for f in fields(SFTArguments)}
    theirs = {f.name for f in fields(TrainingArguments) if f.init}
    unknown = sorted(set(raw) - ours - theirs)
    if unknown:
        raise UsageError(f"unknown key(s): {', '.join(unknown)}")
    for key in ("model_name_or_path", "train_file"):
        if not raw.get(key):
            raise UsageError(f"missing required key {key!r}")
    if raw.get("fp16") and raw.get("bf16"):
        raise UsageError("fp16 and bf16 are both true; pick one (bf16 recommended: fp16 runs diverged in seed 004)")
    mode = raw.get("train_mode", "lora")
    if mode not in TRAIN_MODES:
        raise UsageError(f"train_mode must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    if raw.get("template_name", "minicpm4") not in TEMPLATE_NAMES:
        raise UsageError(f"unknown template_name {raw['template_name']!r}; known: {', '.join(TEMPLATE_NAMES)}")
    if raw.get("overlength", "truncate") not in OVERLENGTH_RULES:
        raise UsageError(f"overlength must be one of {', '.join(OVERLENGTH_RULES)}")
    if raw.get("packing_attention", "auto") not in PACKING_ATTENTION:
        raise UsageError(f"packing_attention must be one of {', '.join(PACKING_ATTENTION)}")
    for key, low in (("max_seq_length", 2), ("lora_rank", 1), ("lora_alpha", 1)):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < low):
            raise UsageError(f"{key} must be an integer >= {low}, got {raw[key]!r}")
    if not 0 <= float(raw.get("lora_dropout", 0.05)) < 1:
        raise UsageError("lora_dropout must be in [0, 1)")
    if not Path(raw["train_file"]).is_file():
        raise UsageError(f"train_file not found: {raw['train_file']}")
    if raw.get("eval_file") and not Path(raw["eval_file"]).is_file():
        raise UsageError(f"eval_file not found: {raw['eval_file']}")
    if raw.get("eval_strategy", "no") != "no" and not raw.get("eval_file"):
        raise UsageError(f"eval_strategy is {raw['eval_strategy']!r} but there is no eval_file")
    if raw.get("eval_file") and "eval_strategy" not in raw:
        raw["eval_strategy"] = "steps"
    model = str(raw["model_name_or_path"])
    if looks_local(model) and not Path(model).expanduser().exists():
        raise UsageError(f"model_name_or_path not found: {model}")
    if raw.get("deepspeed"):
        stage = zero_stage(raw["deepspeed"])
        if mode == "qlora" and stage == 3:
            raise UsageError("qlora with DeepSpeed ZeRO-3 is not supported here (4-bit weights cannot be "
                             "partitioned); use train/ds_z2.json or no deepspeed")
    resume = raw.get("resume_from_checkpoint")
    if resume not in (None, False, "") and not is_true(resume) and not Path(str(resume)).is_dir():
        raise UsageError(f"resume_from_checkpoint: no such checkpoint directory: {resume}")
    if not raw.get("output_dir"):
        raise UsageError("missing required key 'output_dir'")
    return raw


def parse_train_args(raw: dict[str, Any], path: Path) -> tuple[SFTArguments, Any, Any]:
    """Checked raw dict -> (SFTArguments, TrainingArguments, resume_from_checkpoint as written); errors name `path`."""
    from transformers import HfArgumentParser, TrainingArguments

    try:
        raw = check_raw(raw)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    resume = raw.pop("resume_from_checkpoint", None)
    try:
        sft, targs = HfArgumentParser((SFTArguments, TrainingArguments)).parse_dict(raw)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: {' '.join(str(exc).split())}") from exc
    check_world_size(targs)
    return sft, targs, resume


def check_world_size(targs: Any) -> None:
    """Refuse a launch whose processes would not train together.

    Without a GPU and without `use_cpu`, transformers sets up no process group: every process launched by
    torchrun/deepspeed trains alone on its own shard-sized batch and all of them write the same output_dir."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != targs.world_size:
        raise UsageError(f"launched as {launched} processes, but training would run as {targs.world_size}; "
                         "on a machine without a GPU set use_cpu: true (processes then talk over gloo)")


def resolve_resume(resume: Any, output_dir: str) -> str | None:
    """`true`/"latest": the newest complete checkpoint in output_dir (None when there is none yet)."""
    if resume in (None, False, ""):
        return None
    if not is_true(resume):
        return str(resume)
    out = Path(output_dir)
    if not out.is_dir():
        return None
    done = [p for p in out.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()
            and p.name.split("-")[-1].isdigit()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def resume_point(resume: Any, output_dir: str, is_main: bool) -> tuple[str | None, int]:
    """(checkpoint to resume from or None, its global step)."""
    resume_path = resolve_resume(resume, output_dir)
    start_step = 0
    if resume_path:
        state = json.loads((Path(resume_path) / "trainer_state.json").read_text(encoding="utf-8"))
        start_step = int(state.get("global_step", 0))
        if is_main:
            log.info("resuming from %s (step %d)", resume_path, start_step)
    return resume_path, start_step


# ---------------------------------------------------------------------------------------------------------------
# tokenizer, template, data


def load_tokenizer_and_template(sft: SFTArguments) -> tuple[Any, Any, Any]:
    """(the resolved model source, its tokenizer, the chat template). A MiniCPM checkpoint is trained as its exact
    Llama conversion (cached; sftkit/model/minicpm.py)."""
    from transformers import AutoTokenizer

    from sftkit.model.minicpm import ConversionError, resolve_model
    from sftkit.model.templates import TemplateError, get_template

    try:
        source = resolve_model(sft.model_name_or_path)
    except ConversionError as exc:
        raise UsageError(f"{sft.model_name_or_path}: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=sft.trust_remote_code)
    try:
        template = get_template(sft.template_name, tokenizer)
    except TemplateError as exc:
        raise UsageError(str(exc)) from exc
    return source, tokenizer, template


def load_training_data(sft: SFTArguments, template: Any, tokenizer: Any, seed: int,
                       progress: bool) -> tuple[list[Any], Any, list[Any], Any]:
    """(train rows, their DataStats, eval rows, their DataStats or None); no usable example is a UsageError."""
    from sftkit.model.sft_data import load_sft_rows

    train_rows, train_stats = load_sft_rows(sft.train_file, template, tokenizer, sft.max_seq_length,
                                            sft.overlength, sft.packing, progress=progress, seed=seed)
    if sft.max_train_samples is not None:
        train_rows = train_rows[: sft.max_train_samples]
    if not train_rows:
        raise UsageError(f"{sft.train_file}: no usable training example (see the counts above)")
    eval_rows, eval_stats = ([], None)
    if sft.eval_file:
        eval_rows, eval_stats = load_sft_rows(sft.eval_file, template, tokenizer, sft.max_seq_length,
                                              sft.overlength, sft.packing, seed=seed)
        if not eval_rows:
            raise UsageError(f"{sft.eval_file}: no usable eval example")
    return train_rows, train_stats, eval_rows, eval_stats


def pad_token_id(tokenizer: Any) -> int:
    """The first of pad, unk, eos ids the tokenizer has (0 when none): padding is masked out anyway."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, 0)
                if i is not None)


# ---------------------------------------------------------------------------------------------------------------
# model


def compute_dtype(targs: Any) -> Any:
    import torch

    return torch.bfloat16 if targs.bf16 else torch.float16 if targs.fp16 else torch.float32


def load_model(sft: SFTArguments, targs: Any, path: str | None = None) -> Any:
    """The model to train: full (fp32 master weights, autocast does bf16), LoRA (bf16 base), QLoRA (NF4 base).
    `path`: where to load it from (default model_name_or_path; train.py passes a MiniCPM's Llama conversion)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(targs)
    kwargs: dict[str, Any] = {"trust_remote_code": sft.trust_remote_code}
    if sft.attn_implementation:
        kwargs["attn_implementation"] = sft.attn_implementation
    if sft.train_mode == "full":
        # bf16 weights would lose lr=1e-5 updates to rounding; keep fp32 masters and let autocast/DeepSpeed do bf16.
        kwargs["dtype"] = torch.float32
    elif sft.train_mode == "lora":
        kwargs["dtype"] = dtype
    else:
        kwargs["dtype"] = dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path or sft.model_name_or_path, **kwargs)
    # No KV cache while training: it is useless here and, in transformers, disables packed-sequence masks.
    model.config.use_cache = False
    if sft.train_mode == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = targs.activation_checkpointing_kwargs or {"use_reentrant": False}
    if sft.train_mode == "qlora":
        # bitsandbytes 0.50 on an AVX512-BF16 CPU repacks 4-bit weights for a gemv kernel at the first no-grad
        # eval forward and never packs them back; that kernel has no autograd, so after the first evaluation the
        # backward pass through the base layers is silently wrong (LoRA grads of early layers are lost). Keep the
        # trainable layout. No effect on GPU.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=targs.activation_checkpointing, gradient_checkpointing_kwargs=gc_kwargs)
    elif targs.activation_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; LoRA then gets no gradient.
        model.enable_input_require_grads()
    target: str | list[str] = sft.lora_target
    if sft.lora_target != "all-linear":
        target = [t.strip() for t in sft.lora_target.split(",") if t.strip()]
    config = LoraConfig(r=sft.lora_rank, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                        target_modules=target, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def count_params(model: Any) -> dict[str, int]:
    total = trainable = 0
    for p in model.parameters():
        # ZeRO-3 leaves each process an empty placeholder per partitioned weight; ds_numel is the full size.
        n = getattr(p, "ds_numel", None) or p.numel()
        n *= 2 if p.__class__.__name__ == "Params4bit" else 1  # 4-bit: two weights per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    linear4bit = sum(1 for m in model.modules()
                     if m.__class__.__name__ == "Linear4bit" and m.__class__.__module__.startswith("bitsandbytes"))
    return {"params": total, "trainable_params": trainable, "linear4bit_layers": linear4bit}


def causal_lm_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy summed over this micro-batch's trained tokens, divided by the trained tokens of the whole
    optimizer step (every process, every accumulation step), which the Trainer counts and passes in.

    The Trainer then multiplies the loss by the number of processes, since DDP and DeepSpeed average gradients: the
    update equals that of one process given the whole global batch, and the logged loss is its token mean. It leaves
    that division to any model whose forward takes **kwargs, but MiniCPM4's remote code takes **kwargs and returns
    its own mean over the micro-batch: every loss and gradient came out (processes x accumulation steps) times too
    large. Computing it here from the logits, with transformers' own causal-LM loss, makes it so for every model.
    Counting needs labels[:, 0] == -100 in every batch (SFTCollator guarantees it): for remote-code models the
    Trainer counts all labels, not the shifted ones."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)


def join_deepspeed_group(targs: Any) -> None:
    """Hand DeepSpeed the process group before the model loads.

    With `use_cpu` (gloo) transformers sets up torch.distributed itself, not DeepSpeed's communicator; ZeRO-3's
    zero.Init at from_pretrained then saw one process and failed its batch-size check (8 != 4 * 1 * 1)."""
    if not targs.deepspeed or targs.world_size == 1:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=targs.distributed_state.backend)


def batch_layout(targs: Any) -> dict[str, Any]:
    """How many rows one optimizer step takes, and where they come from."""
    launch = "DDP" if targs.world_size > 1 else "single process"
    if targs.deepspeed:
        stage = zero_stage(targs.deepspeed)
        launch = "DeepSpeed" + (f" ZeRO-{stage}" if stage is not None else "")
    return {"world_size": targs.world_size, "per_device_batch": targs.per_device_train_batch_size,
            "gradient_accumulation_steps": targs.gradient_accumulation_steps,
            "global_batch": targs.per_device_train_batch_size * targs.gradient_accumulation_steps * targs.world_size,
            "launch": launch}


def summed_counts(counts: Counter, device: Any) -> dict[str, int]:
    """The collator's token counts over every process (each one collates only its own shard)."""
    import torch
    import torch.distributed as dist

    keys = ("tokens", "slots")
    values = torch.tensor([counts[k] for k in keys], dtype=torch.long, device=device)  # NCCL reduces GPU tensors
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def verified_packing_mode(sft: SFTArguments, targs: Any, model: Any, mode: str) -> str:
    """The packing mode after checking that the model really keeps packed sequences apart (see packing_leak).

    With `packing_attention: auto` on a remote-code model both modes are tried. Under ZeRO-3 the weights are
    partitioned and cannot run outside the engine: only transformers' own models are accepted there."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    # Looked up at call time (not at import) so a test can replace sft_data.packing_leak.
    from sftkit.model.sft_data import is_transformers_native, packing_leak

    if is_deepspeed_zero3_enabled():
        if mode == "position_ids" and is_transformers_native(model):
            return mode
        raise UsageError("packing with this model under ZeRO-3 cannot be verified; use ZeRO-2 or packing: false")
    autocast = compute_dtype(targs) if (targs.bf16 or targs.fp16) else None
    candidates = [mode]
    if sft.packing_attention == "auto":
        candidates += [m for m in ("block_mask", "position_ids") if m != mode]
    leaks = {}
    for candidate in candidates:
        leaks[candidate] = packing_leak(model, candidate, compute_dtype(targs), autocast)
        if leaks[candidate] < MAX_PACKING_LEAK:
            log.info("packing: %s keeps sequences apart (relative leak %.2g)", candidate, leaks[candidate])
            return candidate
    detail = ", ".join(f"{m} {v:.2f}" for m, v in leaks.items())
    raise UsageError(f"packing: this model's attention does not keep packed sequences apart ({detail} relative "
                     "leak); set packing: false")


def collator_mode(sft: SFTArguments, targs: Any, model: Any) -> str:
    """pad, or the packing mode verified on this model."""
    from sftkit.model.sft_data import choose_collator_mode

    mode = choose_collator_mode(sft.packing, sft.packing_attention, model)
    if mode != "pad":
        mode = verified_packing_mode(sft, targs, model, mode)
    return mode


# ---------------------------------------------------------------------------------------------------------------
# outputs and summary


def losses(history: list[dict[str, Any]], key: str) -> list[float]:
    """The numeric values of `key` in the Trainer's log history, in order."""
    return [h[key] for h in history if key in h and isinstance(h[key], int | float)]


def write_template_file(out_dir: str, sft: SFTArguments) -> None:
    from sftkit.io.jsonl import write_json

    write_json(Path(out_dir) / TEMPLATE_FILE, {
        "template_name": sft.template_name, "train_mode": sft.train_mode, "base_model": sft.model_name_or_path,
        "max_seq_length": sft.max_seq_length,
    })


def peak_gpu_memory_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def print_summary(s: dict[str, Any]) -> None:
    d = s["train_data"]
    lines = [
        f"train.py: {s['train_mode']} on {s['model']} -> {s['output_dir']}",
        *([f"  model     {s['model_loaded']['summary']}"] if s["model_loaded"]["minicpm_converted"] else []),
        f"  data      {d['path']}: {d['records']} records, {d['bad_lines']} bad, {d['examples']} examples, "
        f"{d['truncated']} truncated, {d['dropped_overlength'] + d['dropped_no_answer_left']} dropped, "
        f"{d['rows']} rows (packing fill {d['packing_fill']})",
        f"  tokens    {d['tokens']} ({d['trained_tokens']} trained), longest {d['max_length']}",
        f"  params    {s['trainable_params']:,} trainable of {s['params']:,}; {s['precision']}; "
        f"batches: {s['collator_mode']}, padding share {s['padding_share']}",
        f"  batch     {s['global_batch']} rows per step = {s['per_device_batch']} per process x "
        f"{s['gradient_accumulation_steps']} accumulation x {s['world_size']} processes ({s['launch']}); "
        "loss = mean over the step's trained tokens",
        f"  steps     {s['start_step']} -> {s['global_step']}"
        + (f" (resumed from {s['resumed_from']})" if s["resumed_from"] else ""),
        f"  loss      first {_fmt(s['first_loss'])}, last {_fmt(s['last_loss'])}, mean {_fmt(s['train_loss'])}"
        + (f", eval {_fmt(s['eval_loss'])}" if s["eval_loss"] is not None else ""),
        f"  time      {s['elapsed_s']} s" + (f", peak GPU memory {s['peak_gpu_memory_gb']} GB"
                                             if s["peak_gpu_memory_gb"] is not None else ""),
        f"  summary   {Path(s['output_dir']) / SUMMARY_FILE}",
    ]
    print("\n".join(lines), flush=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
