"""SFT data: reading every record form, the over-length rule, packing, collation, packed == unpacked logits."""

from __future__ import annotations

import json
import logging

import pytest

from sftkit.io.jsonl import BadLines
from sftkit.model.sft_data import (
    DataStats,
    SFTCollator,
    block_diagonal_mask,
    build_rows,
    choose_collator_mode,
    load_sft_rows,
    pack_examples,
    packing_leak,
    read_records,
    tokenize_records,
)
from sftkit.model.templates import IGNORE_INDEX, encode_conversation, get_template

FORMS = [
    {"conversation_id": 1, "category": "Brainstorming", "system": "S1",
     "conversation": [{"human": "q1", "assistant": "a1"}, {"human": "q2", "assistant": "a2"}]},
    {"id": "sg", "conversations": [{"from": "human", "value": "q3"}, {"from": "gpt", "value": "a3"}]},
    {"instruction": "q4", "input": "ctx", "output": "a4"},
    {"messages": [{"role": "user", "content": "q5"}, {"role": "assistant", "content": "a5"}]},
    {"text": "<|im_start|>user\nq6<|im_end|>\n<|im_start|>assistant\na6<|im_end|>\n"},
]


def _write(path, rows_or_lines):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows_or_lines:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def test_read_records_every_form_and_bad_lines_reported(tmp_path, caplog):
    path = _write(tmp_path / "mix.jsonl", [*FORMS, "{broken", {"conversation": [{"human": "no answer"}]}, {"x": 1}])
    bad = BadLines()
    with caplog.at_level(logging.WARNING):
        recs = read_records(path, bad)
    assert [r["messages"][-1]["content"] for r in recs] == ["a2", "a3", "a4", "a5", "a6"]
    assert recs[0]["messages"][0] == {"role": "system", "content": "S1"}  # Firefly system survives
    assert recs[2]["messages"][0]["content"] == "q4\n\nctx"
    assert bad.count == 3
    assert f"{path}:6: invalid JSON" in caplog.text
    assert f"{path}:7: last turn is not an assistant answer" in caplog.text
    assert f"{path}:8: unknown record form" in caplog.text


def test_overlength_truncate_and_drop_are_counted(tiny_tokenizer):
    tok, template = tiny_tokenizer, get_template("minicpm4")
    short = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "好" * 60}]}
    long_prompt = {"messages": [{"role": "user", "content": "问" * 80}, {"role": "assistant", "content": "a"}]}
    recs = [short, long_answer, long_prompt]
    n_short = len(encode_conversation(template, tok, short["messages"])["input_ids"])
    limit = 40
    assert n_short < limit

    stats = DataStats()
    out = tokenize_records(recs, template, tok, limit, "truncate", stats)
    assert len(out) == 2 and stats.truncated == 2 and stats.dropped_no_answer_left == 1
    assert len(out[1]["input_ids"]) == limit
    assert any(lab != IGNORE_INDEX for lab in out[1]["labels"])
    assert stats.tokens == n_short + limit

    stats = DataStats()
    out = tokenize_records(recs, template, tok, limit, "drop", stats)
    assert len(out) == 1 and stats.dropped_overlength == 2 and stats.truncated == 0
    assert stats.trained_tokens == sum(lab != IGNORE_INDEX for lab in out[0]["labels"])
    with pytest.raises(ValueError, match="overlength"):
        tokenize_records(recs, template, tok, limit, "wrap", DataStats())


def _ex(n: int) -> dict:
    return {"input_ids": list(range(n)), "labels": list(range(n))}


def test_pack_examples_best_fit_decreasing():
    lens = [5, 3, 8, 2, 6, 4, 1]
    bins = pack_examples([_ex(n) for n in lens], 10)
    # decreasing: 8 -> bin0, 6 -> bin1, 5 -> bin2, 4 -> bin1 (best fit), 3 -> bin2, 2 -> bin0, 1 -> bin2
    assert bins == [[2, 3], [4, 5], [0, 1, 6]]
    assert sorted(i for b in bins for i in b) == list(range(len(lens)))
    assert all(sum(lens[i] for i in b) <= 10 for b in bins)
    assert pack_examples([_ex(n) for n in lens], 10) == bins  # deterministic
    assert pack_examples([_ex(12), _ex(3)], 10) == [[0], [1]]  # an over-long one is alone


def test_build_rows_keeps_boundaries():
    examples = [_ex(4), _ex(3), _ex(2)]
    stats = DataStats()
    rows = build_rows(examples, 10, packing=True, stats=stats)
    assert len(rows) == 1 and sorted(rows[0]["seq_lens"]) == [2, 3, 4]
    assert len(rows[0]["input_ids"]) == 9 and stats.packing_fill == 0.9 and stats.rows == 1
    plain = build_rows(examples, 10, packing=False, stats=DataStats())
    assert [r["seq_lens"] for r in plain] == [[4], [3], [2]]


def test_collator_pad_mode():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "seq_lens": [3]},
            {"input_ids": [8], "labels": [8], "seq_lens": [1]}]
    c = SFTCollator(pad_token_id=0, mode="pad", pad_to_multiple_of=4)
    b = c(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100], [-100, -100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert c.counts["tokens"] == 4 and c.counts["slots"] == 8


def test_collator_position_ids_mode_is_padding_free():
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lens": [3, 2]},
            {"input_ids": [10, 11], "labels": [-100, 11], "seq_lens": [2]}]
    c = SFTCollator(pad_token_id=0, mode="position_ids")
    b = c(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # the first token of every sequence is never a target (nothing predicts across a boundary)
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 11]]
    assert "attention_mask" not in b
    assert c.counts["tokens"] == c.counts["slots"] == 7


def test_block_diagonal_mask():
    import torch

    m = block_diagonal_mask([[2, 1]], 4, torch.float32)[0, 0]
    allowed = (m == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert m[0, 1] == torch.finfo(torch.float32).min


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_separate_logits(tiny_model_dir, impl):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).eval()
    model.config.use_cache = False
    seqs = [list(range(10, 30)), list(range(40, 47)), list(range(60, 75))]
    rows = [{"input_ids": seqs[0] + seqs[1], "labels": seqs[0] + seqs[1], "seq_lens": [20, 7]},
            {"input_ids": seqs[2], "labels": seqs[2], "seq_lens": [15]}]
    with torch.no_grad():
        separate = [model(torch.tensor([s])).logits[0] for s in seqs]
        for mode in ("position_ids", "block_mask"):
            batch = SFTCollator(pad_token_id=3, mode=mode)(rows)
            batch.pop("labels")
            out = model(**batch).logits
            got = ([out[0, :20], out[0, 20:27], out[0, 27:42]] if mode == "position_ids"
                   else [out[0, :20], out[0, 20:27], out[1, :15]])
            for g, s in zip(got, separate, strict=True):
                assert (g - s).abs().max().item() < 1e-4, mode
        # the check can fail: without restarting positions the second sequence sees the first
        leaked = model(torch.tensor([seqs[0] + seqs[1]])).logits[0, 20:27]
        assert (leaked - separate[1]).abs().max().item() > 1e-2


def test_choose_collator_mode(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert choose_collator_mode(False, "auto", model) == "pad"
    assert choose_collator_mode(True, "auto", model) == "position_ids"
    assert choose_collator_mode(True, "block_mask", model) == "block_mask"

    class RemoteCode:  # a model class defined outside transformers (trust_remote_code)
        pass

    assert choose_collator_mode(True, "auto", RemoteCode()) == "block_mask"


def test_load_sft_rows_end_to_end(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "t.jsonl", [*FORMS, "nope"])
    rows, stats = load_sft_rows(path, get_template("minicpm4"), tiny_tokenizer, 64, packing=True)
    assert stats.records == 5 and stats.bad_lines == 1 and stats.examples == 5
    assert sum(len(r["seq_lens"]) for r in rows) == 5
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    assert stats.bad_by_reason == {"invalid JSON": 1}


def test_packing_leak_detects_a_model_that_ignores_boundaries(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.use_cache = False
    assert packing_leak(model, "position_ids", torch.float32) < 1e-3
    assert packing_leak(model, "block_mask", torch.float32) < 1e-3
    assert packing_leak(model, "block_mask", torch.bfloat16, torch.bfloat16) < 0.05  # rounding only
    # a model whose attention never sees the restarting position ids (as some remote code does)
    inner = model.model.forward

    def without_position_ids(*args, position_ids=None, **kwargs):
        return inner(*args, **kwargs)

    model.model.forward = without_position_ids
    assert packing_leak(model, "position_ids", torch.float32) > 0.5
    assert packing_leak(model, "block_mask", torch.float32) < 1e-3  # the mask alone keeps them apart (RoPE is relative)
