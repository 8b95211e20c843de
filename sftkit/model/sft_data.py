"""SFT training data: read records, tokenize them with a chat template, pack, and collate.

Reading: every JSONL line in any record form of SPEC (Firefly conversation, ShareGPT, Alpaca, messages, ChatML
text) goes through ``sftkit.io.records.to_record``; a bad line is reported ``file:line: reason``, skipped, counted.

Over-length rule (``overlength``), for an example longer than ``max_seq_length`` tokens:
  - ``truncate`` (default, as Firefly does): keep its first ``max_seq_length`` tokens. If no trained (assistant)
    token is left the example is dropped. Counted as ``truncated`` and ``dropped_no_answer_left``.
  - ``drop``: drop the example. Counted as ``dropped_overlength``.

Packing (``packing=True``): examples are put into rows of at most ``max_seq_length`` tokens, best-fit decreasing
(deterministic). Sequence boundaries are kept in one of two ways (``packing_attention``):
  - ``position_ids``: padding-free. A batch is flattened into ONE row, position ids restart at 0 for every
    sequence and no attention_mask is passed. transformers' own model classes turn restarting position ids
    into per-sequence attention: flash-attention runs varlen kernels, and sdpa/eager get a block-diagonal causal
    mask built from the position ids (``masking_utils.find_packed_sequence_indices``).
  - ``block_mask``: rows are padded to the batch's longest row and get a 4-D additive block-diagonal causal mask
    plus restarting position ids: for remote-code models (``trust_remote_code``) whose attention does not read
    boundaries from position ids but accepts a prepared 4-D mask.
  ``auto`` picks ``position_ids`` for models whose class lives in ``transformers`` and ``block_mask`` otherwise.
In both, the first label of every sequence is -100, so no token learns to predict across a boundary.
Without packing, batches are padded to their longest example (right padding, labels -100 on padding).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.io.jsonl import BadLines, iter_jsonl
from sftkit.io.records import RecordError, to_record
from sftkit.model.templates import IGNORE_INDEX, Template, TemplateError, encode_conversation

log = logging.getLogger(__name__)

OVERLENGTH_RULES = ("truncate", "drop")
PACKING_ATTENTION = ("auto", "position_ids", "block_mask")


@dataclass
class DataStats:
    """Counts of one file's way from lines to training examples."""

    path: str = ""
    records: int = 0
    bad_lines: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_no_answer_left: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_length: int = 0
    rows: int = 0  # after packing (== examples without packing)
    packing_fill: float = 0.0  # tokens / (rows * max_seq_length) when packed

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_records(path: str | Path, bad: BadLines) -> list[dict[str, Any]]:
    """Canonical records of a JSONL file in any SPEC form; bad lines are reported, skipped and counted."""
    records = []
    source = Path(path).stem
    for lineno, obj in iter_jsonl(path, bad):
        try:
            records.append(to_record(obj, source=source, rid=f"{source}-{lineno}", need_answer=True))
        except RecordError as exc:
            bad.add(path, lineno, str(exc))
    return records


def tokenize_records(records: Iterable[dict[str, Any]], template: Template, tokenizer: Any, max_seq_length: int,
                     overlength: str, stats: DataStats, progress: bool = False) -> list[dict[str, list[int]]]:
    """Template-encoded examples ({input_ids, labels}) after the over-length rule; counts go to ``stats``."""
    if overlength not in OVERLENGTH_RULES:
        raise ValueError(f"overlength must be one of {OVERLENGTH_RULES}, got {overlength!r}")
    records = list(records)
    it: Iterable[dict[str, Any]] = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="tokenizing", unit="rec", mininterval=2.0)
    out = []
    for rec in it:
        try:
            enc = encode_conversation(template, tokenizer, rec["messages"])
        except TemplateError as exc:
            stats.bad_lines += 1
            stats.bad_by_reason[str(exc)] = stats.bad_by_reason.get(str(exc), 0) + 1
            log.warning("%s: record %s: %s", stats.path, rec.get("id"), exc)
            continue
        n = len(enc["input_ids"])
        stats.max_length = max(stats.max_length, n)
        if n > max_seq_length:
            if overlength == "drop":
                stats.dropped_overlength += 1
                continue
            enc = {"input_ids": enc["input_ids"][:max_seq_length], "labels": enc["labels"][:max_seq_length]}
            stats.truncated += 1
            if all(lab == IGNORE_INDEX for lab in enc["labels"]):
                stats.dropped_no_answer_left += 1
                continue
        stats.tokens += len(enc["input_ids"])
        stats.trained_tokens += sum(lab != IGNORE_INDEX for lab in enc["labels"])
        out.append(enc)
    stats.examples = len(out)
    return out


def pack_examples(examples: Sequence[dict[str, list[int]]], max_seq_length: int) -> list[list[int]]:
    """Best-fit-decreasing bins of example indices, each bin at most ``max_seq_length`` tokens in total.

    Deterministic: ties are broken by index. Examples longer than max_seq_length get a bin of their own."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    bins: list[list[int]] = []
    free: list[int] = []  # remaining space of each bin
    # Bins sorted by remaining space would make this O(n log n); a linear scan over open bins is enough here
    # because bins fill up quickly and are closed once less than the shortest example fits.
    open_bins: list[int] = []
    shortest = min((len(e["input_ids"]) for e in examples), default=1)
    for i in order:
        n = len(examples[i]["input_ids"])
        best, best_free = -1, max_seq_length + 1
        for b in open_bins:
            if n <= free[b] < best_free:
                best, best_free = b, free[b]
        if best < 0:
            bins.append([i])
            free.append(max_seq_length - n)
            if free[-1] >= shortest:
                open_bins.append(len(bins) - 1)
        else:
            bins[best].append(i)
            free[best] -= n
            if free[best] < shortest:
                open_bins.remove(best)
    return bins


def build_rows(examples: Sequence[dict[str, list[int]]], max_seq_length: int, packing: bool,
               stats: DataStats, seed: int = 0) -> list[dict[str, Any]]:
    """Training rows: one example each, or packed bins. Each row keeps ``seq_lens`` (its sequence boundaries)."""
    if not packing:
        rows = [{"input_ids": e["input_ids"], "labels": e["labels"], "seq_lens": [len(e["input_ids"])]}
                for e in examples]
    else:
        bins = pack_examples(examples, max_seq_length)
        # Shuffle within bins' order deterministically so a bin is not all-long or all-short by position.
        rng = random.Random(seed)
        rows = []
        for b in bins:
            members = list(b)
            rng.shuffle(members)
            rows.append({
                "input_ids": [t for i in members for t in examples[i]["input_ids"]],
                "labels": [t for i in members for t in examples[i]["labels"]],
                "seq_lens": [len(examples[i]["input_ids"]) for i in members],
            })
        total = sum(len(r["input_ids"]) for r in rows)
        stats.packing_fill = round(total / max(1, len(rows) * max_seq_length), 4)
    stats.rows = len(rows)
    return rows


def load_sft_rows(path: str | Path, template: Template, tokenizer: Any, max_seq_length: int,
                  overlength: str = "truncate", packing: bool = False, progress: bool = False,
                  seed: int = 0) -> tuple[list[dict[str, Any]], DataStats]:
    """Read, tokenize, apply the over-length rule and (optionally) pack one file."""
    stats = DataStats(path=str(path))
    bad = BadLines(logger=log)
    records = read_records(path, bad)
    stats.records = len(records)
    examples = tokenize_records(records, template, tokenizer, max_seq_length, overlength, stats, progress)
    stats.bad_lines += bad.count
    for reason, n in bad.by_reason.items():
        stats.bad_by_reason[reason] = stats.bad_by_reason.get(reason, 0) + n
    rows = build_rows(examples, max_seq_length, packing, stats, seed=seed)
    return rows, stats


class SFTDataset:
    """A list of rows as a map-style dataset (what ``transformers.Trainer`` expects)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _position_ids(seq_lens: Sequence[int]) -> list[int]:
    return [p for n in seq_lens for p in range(n)]


def _boundary_labels(labels: Sequence[int], seq_lens: Sequence[int]) -> list[int]:
    out = list(labels)
    start = 0
    for n in seq_lens:
        if n:
            out[start] = IGNORE_INDEX
        start += n
    return out


@dataclass
class SFTCollator:
    """Batches rows. ``mode``: "pad" (no packing), "position_ids" (padding-free) or "block_mask" (see module doc).

    ``mask_dtype`` is the dtype of the 4-D additive mask in block_mask mode (the model's compute dtype).
    Label 0 of every row is -100 (a sequence start): train.py's loss divides by the Trainer's count of trained
    tokens, which for remote-code models includes position 0, so the count stays that of the shifted labels."""

    pad_token_id: int
    mode: str = "pad"
    pad_to_multiple_of: int | None = None
    mask_dtype: Any = None
    counts: Counter = field(default_factory=Counter)  # tokens and padding seen, for benchmarks

    def _padded_len(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else ((n + m - 1) // m) * m

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        real = sum(len(r["input_ids"]) for r in rows)
        if self.mode == "position_ids":
            ids = [t for r in rows for t in r["input_ids"]]
            seq_lens = [n for r in rows for n in r["seq_lens"]]
            labels = _boundary_labels([t for r in rows for t in r["labels"]], seq_lens)
            self.counts["tokens"] += real
            self.counts["slots"] += len(ids)
            return {
                "input_ids": torch.tensor([ids], dtype=torch.long),
                "labels": torch.tensor([labels], dtype=torch.long),
                "position_ids": torch.tensor([_position_ids(seq_lens)], dtype=torch.long),
            }
        width = self._padded_len(max(len(r["input_ids"]) for r in rows))
        batch_ids, batch_labels, batch_pos, batch_att = [], [], [], []
        for r in rows:
            n = len(r["input_ids"])
            pad = width - n
            batch_ids.append(r["input_ids"] + [self.pad_token_id] * pad)
            batch_labels.append(_boundary_labels(r["labels"], r["seq_lens"]) + [IGNORE_INDEX] * pad)
            batch_pos.append(_position_ids(r["seq_lens"]) + list(range(pad)))
            batch_att.append([1] * n + [0] * pad)
        self.counts["tokens"] += real
        self.counts["slots"] += width * len(rows)
        out: dict[str, Any] = {
            "input_ids": torch.tensor(batch_ids, dtype=torch.long),
            "labels": torch.tensor(batch_labels, dtype=torch.long),
        }
        if self.mode == "pad":
            out["attention_mask"] = torch.tensor(batch_att, dtype=torch.long)
            return out
        if self.mode != "block_mask":
            raise ValueError(f"unknown collator mode {self.mode!r}")
        out["position_ids"] = torch.tensor(batch_pos, dtype=torch.long)
        out["attention_mask"] = block_diagonal_mask([r["seq_lens"] for r in rows], width,
                                                    self.mask_dtype or torch.float32)
        return out


def block_diagonal_mask(seq_lens_per_row: Sequence[Sequence[int]], width: int, dtype: Any) -> Any:
    """[batch, 1, width, width] additive mask: 0 where a token may attend (same sequence, not later), min elsewhere.

    Padding positions attend to themselves only, so no row of the softmax is empty."""
    import torch

    batch = len(seq_lens_per_row)
    seg = torch.full((batch, width), -1, dtype=torch.long)
    for b, lens in enumerate(seq_lens_per_row):
        start = 0
        for k, n in enumerate(lens):
            seg[b, start:start + n] = k
            start += n
        seg[b, start:] = torch.arange(len(lens), len(lens) + width - start)  # each pad slot its own "sequence"
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(batch, 1, width, width, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask


def is_transformers_native(model: Any) -> bool:
    """Whether the (peft-unwrapped) model's class comes with transformers rather than remote code."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__module__.startswith("transformers.")


def choose_collator_mode(packing: bool, packing_attention: str, model: Any) -> str:
    """"pad" without packing; with packing, the explicit choice, or (auto) position_ids for transformers' own model
    classes and block_mask for remote code. ``train.py`` then verifies the choice with ``packing_leak``."""
    if not packing:
        return "pad"
    if packing_attention not in PACKING_ATTENTION:
        raise ValueError(f"packing_attention must be one of {PACKING_ATTENTION}")
    if packing_attention != "auto":
        return packing_attention
    return "position_ids" if is_transformers_native(model) else "block_mask"


def packing_leak(model: Any, mode: str, mask_dtype: Any, autocast_dtype: Any = None) -> float:
    """How much packing in ``mode`` changes a sequence's logits, relative to packing with no boundaries at all.

    Two short random sequences are run separately and packed. Returns max|packed - separate| divided by
    max|naive concatenation - separate| for the second sequence: about 0 when the model keeps packed sequences
    apart (rounding only), about 1 when its attention ignores the boundaries. Remote-code models may ignore
    position ids or expect another 4-D mask convention; this catches that before training instead of after."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 1000))
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(10, max(11, min(vocab, 1000)), (12,), generator=gen).tolist()
    second = torch.randint(10, max(11, min(vocab, 1000)), (9,), generator=gen).tolist()
    device = next(p.device for p in model.parameters())
    rows = [{"input_ids": first + second, "labels": first + second, "seq_lens": [12, 9]}]
    batch = SFTCollator(pad_token_id=0, mode=mode, mask_dtype=mask_dtype)(rows)
    batch.pop("labels")
    was_training = model.training
    model.eval()
    ctx = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(device_type=device.type, enabled=False))
    try:
        with torch.no_grad(), ctx:
            def logits(**kw: Any) -> Any:
                return model(**{k: v.to(device) for k, v in kw.items()}, use_cache=False).logits.float()

            alone = logits(input_ids=torch.tensor([second]))[0]
            packed = logits(**batch)[0, 12:21]
            naive = logits(input_ids=torch.tensor([first + second]))[0, 12:21]
    finally:
        model.train(was_training)
    leak_ref = (naive - alone).abs().max().item()
    return (packed - alone).abs().max().item() / max(leak_ref, 1e-6)
