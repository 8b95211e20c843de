"""Exports the peers load: LLaMA-Factory reads our ShareGPT and Alpaca files through the dataset_info.json entry
written beside them (with its own converter where it is installed; everywhere with the column mapping its
data/README documents, over rows loaded by HF datasets as LLaMA-Factory loads them); stable content ids."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest

import chatml2conversation
from sftkit.io.records import content_id, to_record

RECORDS = [
    {"id": "m1", "source": "hit", "meta": {"topic": "图书馆", "usage": {"prompt_tokens": 3}},
     "messages": [{"role": "system", "content": "你是哈工大的校园助手，回答要准确。"},
                  {"role": "user", "content": "图书馆几点开门？"},
                  {"role": "assistant", "content": "早上8点，\n周末9点。"},
                  {"role": "user", "content": "周日呢？"}, {"role": "assistant", "content": "周日也是9点。"}]},
    {"instruction": "写一首关于春天的诗", "input": "", "output": "春眠不觉晓，处处闻啼鸟。"},
    {"conversation_id": 3, "category": "Brainstorming", "dataset": "moss",
     "conversation": [{"human": "你好", "assistant": "你好！有什么可以帮你？"}]},
]


def expected_messages() -> list[list[dict[str, str]]]:
    return [to_record(r)["messages"] for r in RECORDS]


def export(tmp_path: Path, fmt: str, name: str = "") -> Path:
    src = tmp_path / "records.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    out = tmp_path / f"train_{fmt}.jsonl"
    args = ["--in", str(src), "--out", str(out), "--format", fmt] + (["--dataset-name", name] if name else [])
    assert chatml2conversation.main(args) == 0
    return out


def load_rows(path: Path) -> list[dict]:
    """The rows as LLaMA-Factory gets them: `datasets.load_dataset("json", data_files=...)` (one Arrow schema
    for the whole file: a column missing from some rows becomes None there, and from all rows is no column)."""
    datasets = pytest.importorskip("datasets")
    return list(datasets.load_dataset("json", data_files=str(path), split="train"))


def documented_reader(entry: dict, row: dict) -> list[dict[str, str]]:
    """LLaMA-Factory's documented column mapping (data/README.md), applied to one row. A mapped column that the
    row lacks raises KeyError, as it does there."""
    cols = entry.get("columns", {})
    messages: list[dict[str, str]] = []
    if entry.get("formatting", "alpaca") == "alpaca":
        system = row[cols["system"]] if "system" in cols else ""
        if system:
            messages.append({"role": "system", "content": system})
        for question, answer in row[cols["history"]] if "history" in cols else []:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        prompt = [row[cols.get("prompt", "instruction")]]
        if row[cols.get("query", "input")]:
            prompt.append(row[cols.get("query", "input")])
        messages.append({"role": "user", "content": "\n".join(prompt)})
        messages.append({"role": "assistant", "content": row[cols.get("response", "output")]})
        return messages
    tags = entry.get("tags", {})
    role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    names = {tags.get("user_tag", "human"): "user", tags.get("assistant_tag", "gpt"): "assistant",
             tags.get("system_tag", "system"): "system"}
    turns = row[cols.get("messages", "conversations")]
    for i, turn in enumerate(turns):
        who = names[turn[role]]
        assert who != "system" or i == 0, "a system turn is only read in first position"
        messages.append({"role": who, "content": turn[content]})
    return messages


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca"])
def test_dataset_info_entry_reads_every_row_back(tmp_path: Path, fmt: str) -> None:
    out = export(tmp_path, fmt)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info[f"train_{fmt}"]
    assert entry["file_name"] == out.name and entry["formatting"] == fmt
    rows = load_rows(out)
    assert [documented_reader(entry, row) for row in rows] == expected_messages()


def test_alpaca_columns_exist_in_every_row_even_without_system_or_history(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in export(tmp_path, "alpaca").read_text(encoding="utf-8").splitlines()]
    system = RECORDS[0]["messages"][0]["content"]
    assert [(r["system"], len(r["history"])) for r in rows] == [(system, 1), ("", 0), ("", 0)]


def test_dataset_info_keeps_other_entries_and_names_ours(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    export(tmp_path, "sharegpt", name="hit_campus")
    export(tmp_path, "alpaca")
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"alpaca_en_demo", "hit_campus", "train_alpaca"}
    assert info["hit_campus"]["file_name"] == "train_sharegpt.jsonl"


def test_firefly_rows_name_their_source_and_get_content_ids(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in export(tmp_path, "firefly").read_text(encoding="utf-8").splitlines()]
    assert [r["dataset"] for r in rows] == ["hit", "records", "moss"]  # the record's, else the input file's name
    assert [r["id"] for r in rows] == ["m1", content_id(expected_messages()[1], "records"), "3"]


def test_content_ids_are_stable_and_never_empty() -> None:
    row = {"instruction": "写一首诗", "output": "春眠不觉晓"}
    a, b = to_record(row), to_record(dict(row), source="firefly")
    assert a["id"] and a["id"] == to_record(json.loads(json.dumps(row)))["id"]  # same content, same id
    assert b["id"] == "firefly-" + a["id"] and len(a["id"]) == 16
    assert to_record({**row, "output": "春眠不觉晓。"})["id"] != a["id"]
    assert to_record({**row, "id": ""})["id"] == a["id"]  # an empty id counts as none
    assert to_record(row, rid="hit-7")["id"] == "hit-7"  # a caller's id still wins


# ---- LLaMA-Factory's own code, where it is installed (not in CI: it pins another transformers and torch) --------


def llamafactory_data() -> tuple[types.ModuleType, types.ModuleType]:
    lf = pytest.importorskip("llamafactory")
    # llamafactory.data's __init__ pulls the whole trainer stack (torchaudio, collators); the converter and the
    # dataset_info parser need none of it, so the package is entered without running that __init__.
    if "llamafactory.data" not in sys.modules:
        stub = types.ModuleType("llamafactory.data")
        stub.__path__ = [str(Path(lf.__file__).parent / "data")]
        sys.modules["llamafactory.data"] = stub
    return importlib.import_module("llamafactory.data.parser"), importlib.import_module("llamafactory.data.converter")


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca"])
def test_llamafactory_converter_reads_our_export(tmp_path: Path, fmt: str) -> None:
    parser, converter = llamafactory_data()
    export(tmp_path, fmt)
    [attr] = parser.get_dataset_list([f"train_{fmt}"], str(tmp_path))
    dataset = __import__("datasets").load_dataset("json", data_files=str(tmp_path / attr.dataset_name),
                                                  split="train")
    data_args = types.SimpleNamespace(streaming=False, preprocessing_num_workers=None, overwrite_cache=True,
                                      media_dir=str(tmp_path))
    aligned = converter.align_dataset(dataset, attr, data_args, types.SimpleNamespace(local_process_index=0))
    got = [([{"role": "system", "content": r["_system"]}] if r["_system"] else []) + r["_prompt"] + r["_response"]
           for r in aligned]
    assert got == expected_messages()
