#!/usr/bin/env python
"""Firefly-style SFT trainer: full, LoRA or QLoRA, rendering chats exactly as inference does.

    python train/train.py --train_args_file train/args/minicpm4-0.5b-qlora.json [--set KEY=VALUE ...]

One JSON file holds both our arguments (``SFTArguments``, sftkit/model/training.py) and
``transformers.TrainingArguments``; it is parsed once with ``HfArgumentParser``. An unknown key, a contradiction
(fp16 and bf16 both, QLoRA under ZeRO-3, a missing train file, ...) is one error line and exit status 2 before
anything loads.

Steps: check arguments -> tokenizer + template -> tokenize (over-length rule, packing) -> model (full / LoRA /
4-bit QLoRA) -> transformers.Trainer with our collator -> save (model or adapter, tokenizer, template name) ->
summary (screen + train_summary.json in output_dir). The steps' code is in sftkit/model/training.py.

Launch on several GPUs with ``deepspeed --num_gpus N train/train.py ...`` (set ``"deepspeed": "train/ds_z2.json"``)
or ``torchrun --nproc_per_node N train/train.py ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sftkit.io.cli import ScriptParser, run_script

# Names tests/, bench/ and other scripts take from here (`from train import train`), re-exported explicitly.
from sftkit.model.training import SUMMARY_FILE as SUMMARY_FILE
from sftkit.model.training import TEMPLATE_FILE as TEMPLATE_FILE
from sftkit.model.training import TRAIN_MODES as TRAIN_MODES
from sftkit.model.training import SFTArguments as SFTArguments
from sftkit.model.training import UsageError as UsageError
from sftkit.model.training import (
    argument_keys_help,
    batch_layout,
    causal_lm_loss,
    collator_mode,
    compute_dtype,
    count_params,
    join_deepspeed_group,
    load_model,
    load_tokenizer_and_template,
    load_training_data,
    losses,
    pad_token_id,
    parse_train_args,
    peak_gpu_memory_gb,
    print_summary,
    read_args_file,
    resume_point,
    summed_counts,
    write_template_file,
)

# ---------------------------------------------------------------------------------------------------------------
# arguments


def _cli(argv: list[str] | None) -> argparse.Namespace:
    p = ScriptParser(
        description="SFT trainer (full / LoRA / QLoRA). All training settings live in the JSON file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Keys of the JSON file, ours:\n{argument_keys_help()}\nplus every transformers.TrainingArguments "
               "field (output_dir, learning_rate, bf16, deepspeed, ...).\n`resume_from_checkpoint: true` resumes "
               "from the newest complete checkpoint in output_dir (starts fresh when there is none).",
        resumable=False,
    )
    p.add_argument("--train_args_file", required=True, help="JSON file with SFTArguments + TrainingArguments keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the file (VALUE is read as JSON when it parses, else as a string); "
                        "repeatable")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher; not for manual use")
    return p.parse_args(argv)


def load_args(argv: list[str] | None = None) -> tuple[SFTArguments, Any, Any]:
    """Parse the CLI and the JSON file; raise UsageError with one clear line on any problem."""
    cli = _cli(argv)
    if cli.local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(cli.local_rank)
    path = Path(cli.train_args_file)
    return parse_train_args(read_args_file(path, cli.set), path)


# ---------------------------------------------------------------------------------------------------------------
# main


def run(sft: SFTArguments, targs: Any, resume: Any) -> dict[str, Any]:
    from transformers import Trainer
    from transformers.trainer_utils import set_seed

    from sftkit.io.jsonl import write_json
    from sftkit.model.sft_data import SFTCollator, SFTDataset
    from sftkit.model.templates import save_chat_files

    started = time.time()
    set_seed(targs.seed)
    is_main = targs.process_index == 0

    # load: tokenizer + template, data, the checkpoint to resume from, the model
    source, tokenizer, template = load_tokenizer_and_template(sft)
    train_rows, train_stats, eval_rows, eval_stats = load_training_data(sft, template, tokenizer, targs.seed,
                                                                        progress=is_main)
    resume_path, start_step = resume_point(resume, targs.output_dir, is_main)
    join_deepspeed_group(targs)
    model = load_model(sft, targs, source.path)
    params = count_params(model)
    mode = collator_mode(sft, targs, model)

    # train, save, evaluate
    collator = SFTCollator(pad_token_id=pad_token_id(tokenizer), mode=mode, mask_dtype=compute_dtype(targs))
    targs.remove_unused_columns = False  # our rows carry seq_lens for the collator
    trainer = Trainer(model=model, args=targs, data_collator=collator, train_dataset=SFTDataset(train_rows),
                      eval_dataset=SFTDataset(eval_rows) if eval_rows else None, compute_loss_func=causal_lm_loss)
    result = trainer.train(resume_from_checkpoint=resume_path)
    trainer.save_model(targs.output_dir)  # the adapter for lora/qlora, the whole model for full
    eval_metrics = trainer.evaluate() if eval_rows else {}
    counts = summed_counts(collator.counts, targs.device)  # every process takes part

    # write (rank 0): tokenizer, chat files, template name, summary
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(targs.output_dir)
        save_chat_files(targs.output_dir, template, tokenizer, source.path, sft.trust_remote_code)
        write_template_file(targs.output_dir, sft)
        history = trainer.state.log_history
        train_losses = losses(history, "loss")
        summary = {
            "train_mode": sft.train_mode, "template_name": sft.template_name, "model": sft.model_name_or_path,
            "model_loaded": source.as_dict(),
            "output_dir": targs.output_dir, "collator_mode": mode, "precision": str(compute_dtype(targs)),
            "train_data": train_stats.as_dict(), "eval_data": eval_stats.as_dict() if eval_stats else None,
            **params, **batch_layout(targs),
            "resumed_from": resume_path, "start_step": start_step, "global_step": trainer.state.global_step,
            "steps_this_run": trainer.state.global_step - start_step,
            "first_loss": train_losses[0] if train_losses else None,
            "last_loss": train_losses[-1] if train_losses else None,
            "train_loss": result.training_loss, "eval_loss": eval_metrics.get("eval_loss"),
            "eval_losses": losses(history, "eval_loss"),
            "tokens_seen": counts["tokens"], "padding_share": round(
                1 - counts["tokens"] / counts["slots"], 4) if counts["slots"] else 0.0,
            "peak_gpu_memory_gb": peak_gpu_memory_gb(),
            "elapsed_s": round(time.time() - started, 1),
        }
        write_json(Path(targs.output_dir) / SUMMARY_FILE, summary)
        print_summary(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # bitsandbytes warns at import, on every CPU run, that the optional `kernels` package is missing; it would
    # bury a usage error under an unrelated line.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        sft, targs, resume = load_args(argv)
    except UsageError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        run(sft, targs, resume)
    except UsageError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
