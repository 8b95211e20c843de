"""Conversions between the canonical record and the training formats, with what each one cannot express.

`to_row(record, fmt, ...)` writes one of: firefly (Firefly's conversation format), sharegpt, alpaca, chatml (the
seed's <|beginofutterance|> text or <|im_start|> text) and messages (canonical). Besides what the format itself
holds, every row carries the record's id, source and its full `meta` object, so `from_row(to_row(r))` gives `r`
back exactly. What a format cannot express is returned in `lost` (for example the system prompt with
`no_system`, or a turn whose text contains the format's own end marker) for the caller to count and report.

`fast_record` reads the plain Alpaca rows of firefly ({"instruction", "input", "output"} and nothing else)
without the general reader's checks; it returns exactly what `records.to_record` returns for them (tested).
"""

from __future__ import annotations

from typing import Any

from sftkit.io.records import (
    SEED_BEGIN,
    SEED_END,
    RecordError,
    content_id,
    split_system,
    to_alpaca,
    to_firefly,
    to_im_text,
    to_record,
    to_seed_chatml_text,
    to_sharegpt,
)

FORMATS = ("firefly", "sharegpt", "alpaca", "chatml", "messages")
CHATML_STYLES = ("seed", "im")
_ALPACA_KEYS = frozenset(("instruction", "input", "output"))


def fast_record(obj: Any, source: str, ids: bool = True) -> dict[str, Any]:
    """records.to_record(obj, source=source, own_source=True) with a short cut for plain Alpaca rows.

    ids=False leaves the id of a row that has none empty, for a caller that fills in content_id later (prep
    does, for the records that pass its filters only: most never need one)."""
    if type(obj) is dict and obj.keys() <= _ALPACA_KEYS:
        ins, out = obj.get("instruction"), obj.get("output")
        inp = obj.get("input", "")
        if type(ins) is str and type(out) is str and type(inp) is str:
            messages = [{"role": "user", "content": f"{ins}\n\n{inp}" if inp else ins},
                        {"role": "assistant", "content": out}]
            return {"id": content_id(messages, source) if ids else "", "source": source, "messages": messages,
                    "meta": {}}
    return to_record(obj, source=source, own_source=True, content_ids=ids)


def to_row(rec: dict[str, Any], fmt: str, *, conversation_id: int = 1, default_category: str = "Brainstorming",
           no_system: bool = False, chatml_style: str = "seed") -> tuple[dict[str, Any] | None, list[str]]:
    """(row, lost): the record in format `fmt`, and what it could not carry. row is None when the record cannot
    be written at all (a turn holds the text form's end marker)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    lost: list[str] = []
    messages = rec["messages"]
    meta = dict(rec.get("meta") or {})
    if no_system and messages and messages[0]["role"] == "system":
        messages = messages[1:]
        lost.append("system prompt (--no-system)")
    if fmt in ("firefly", "alpaca") and messages and messages[0]["role"] == "system" and not messages[0]["content"]:
        messages = messages[1:]  # a top-level "system": "" reads back as no system prompt
        lost.append("empty system prompt")
    if fmt == "messages":
        return {"id": rec["id"], "source": rec["source"], "messages": messages, "meta": meta}, lost
    if fmt == "firefly":
        body = to_firefly(messages)
        row: dict[str, Any] = {"conversation_id": conversation_id, "id": rec["id"],
                               "category": meta.get("category", default_category)}
        if "system" in body:
            row["system"] = body["system"]
        row["conversation"] = body["conversation"]
        row["dataset"] = rec["source"]
        row["meta"] = meta
        return row, lost
    if fmt == "sharegpt":
        row = {"id": rec["id"], "conversations": to_sharegpt(messages), "source": rec["source"]}
        for key in ("category", "avg_score", "dimension_scores"):
            if key in meta:
                row[key] = meta[key]
        row["meta"] = meta
        return row, lost
    if fmt == "alpaca":
        row, alpaca_lost = to_alpaca(messages, complete=True)
        lost += alpaca_lost
        out = {"id": rec["id"], **row, "source": rec["source"]}
        if "category" in meta:
            out["category"] = meta["category"]
        out["meta"] = meta
        return out, lost
    # chatml
    if chatml_style not in CHATML_STYLES:
        raise ValueError(f"unknown chatml style {chatml_style!r}")
    # The text forms cannot hold their own end marker inside a turn; <|im_start|> text also must not hold the
    # seed's begin marker, or a reader would take it for the seed's form.
    markers = [SEED_END] if chatml_style == "seed" else ["<|im_end|>", SEED_BEGIN]
    for marker in markers:
        if any(marker in m["content"] for m in messages):
            return None, [*lost, f"a turn contains {marker}"]
    text = to_seed_chatml_text(messages) if chatml_style == "seed" else to_im_text(messages)
    row = {"id": rec["id"], "text": text, "source": rec["source"]}
    if "category" in meta:
        row["category"] = meta["category"]
    row["meta"] = meta
    return row, lost


def from_row(row: Any, *, source: str = "", rid: str = "", need_answer: bool = True) -> dict[str, Any]:
    """Any SPEC form -> canonical record; a `meta` object in the row is taken as the whole meta (so rows
    written by to_row come back exactly). `source` names rows that carry no source (nor Firefly `dataset`); a
    row without an id gets records.content_id."""
    rec = to_record(row, source=source, rid=rid, need_answer=need_answer)
    if isinstance(row.get("meta"), dict):
        rec["meta"] = dict(row["meta"])
    if isinstance(row.get("source"), str) and row["source"]:
        rec["source"] = row["source"]
    elif isinstance(row.get("dataset"), str) and row["dataset"] and "conversation" in row:
        rec["source"] = row["dataset"]
    return rec


# LLaMA-Factory's dataset_info.json entry for our rows (columns and tags as its data/README documents them).
# ShareGPT rows carry the system prompt as a first {"from": "system"} turn, which its converter reads through
# system_tag; Alpaca rows always carry `system` and `history` (to_alpaca complete=True), so mapping them is safe.
LLAMAFACTORY_COLUMNS = {
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system"}},
    "alpaca": {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                   "system": "system", "history": "history"}},
}


def dataset_info_entry(fmt: str, file_name: str) -> dict[str, Any]:
    """The dataset_info.json entry with which LLaMA-Factory reads `file_name` written in `fmt`."""
    return {"file_name": file_name, **LLAMAFACTORY_COLUMNS[fmt]}


def system_of(rec: dict[str, Any]) -> str | None:
    return split_system(rec["messages"])[0]


__all__ = ["CHATML_STYLES", "FORMATS", "LLAMAFACTORY_COLUMNS", "RecordError", "dataset_info_entry", "fast_record",
           "from_row", "system_of", "to_row"]
