"""The canonical record and its codecs.

Canonical: {"id", "source", "messages": [{"role", "content"}, ...], "meta": {...}}.
`to_record` reads every form SPEC names (canonical/OpenAI messages, the seed's ChatML text,
<|im_start|> text, Alpaca, ShareGPT, Firefly); the `to_*` writers produce each of them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import regex

ROLES = ("system", "user", "assistant")

# The seed's ChatML text form and its role names.
SEED_BEGIN = "<|beginofutterance|>"
SEED_END = "<|endofutterance|>"
SEED_ROLE_OUT = {"system": "系统", "user": "用户", "assistant": "智能助手"}
ROLE_ALIASES = {
    "系统": "system", "用户": "user", "智能助手": "assistant", "助手": "assistant",
    "system": "system", "user": "user", "assistant": "assistant",
    "human": "user", "gpt": "assistant", "bot": "assistant",
}
_SEED_TURN = regex.compile(r"<\|beginofutterance\|>([^\n]*)\n(.*?)<\|endofutterance\|>", regex.S)
_IM_TURN = regex.compile(r"<\|im_start\|>([^\n]*)\n(.*?)<\|im_end\|>", regex.S)


class RecordError(ValueError):
    """A record that cannot be read; the message is the reason."""


Messages = list[dict[str, str]]


def check_messages(messages: Any, need_answer: bool = True) -> Messages:
    """Validate turn structure: optional system first, then user/assistant alternating from user."""
    if not isinstance(messages, list) or not messages:
        raise RecordError("no messages")
    out: Messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"message {i} is not an object")
        role = ROLE_ALIASES.get(str(m.get("role", "")).strip().lower(), None)
        content = m.get("content")
        if role is None:
            raise RecordError(f"message {i} has unknown role {m.get('role')!r}")
        if not isinstance(content, str):
            raise RecordError(f"message {i} content is not a string")
        out.append({"role": role, "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    if not body:
        raise RecordError("only a system message")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise RecordError(f"turn {i} should be {want}, got {m['role']}")
    if need_answer and body[-1]["role"] != "assistant":
        raise RecordError("last turn is not an assistant answer")
    return out


def _parse_tagged(text: str, pattern: regex.Pattern[str], strip_one_newline: bool) -> Messages:
    msgs = []
    for role_raw, content in pattern.findall(text):
        role = ROLE_ALIASES.get(role_raw.strip().lower())
        if role is None:
            raise RecordError(f"unknown role {role_raw.strip()!r} in text")
        # The seed writes "role\n{content}\n<|endofutterance|>": exactly one newline is framing.
        if strip_one_newline and content.endswith("\n"):
            content = content[:-1]
        msgs.append({"role": role, "content": content})
    if not msgs:
        raise RecordError("text has no recognisable turns")
    return msgs


def _join_alpaca(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp else instruction


def messages_of(obj: Any) -> Messages:
    """The messages of a record in any supported form (not checked for turn order)."""
    if not isinstance(obj, dict):
        raise RecordError("not a JSON object")
    if "messages" in obj:
        return obj["messages"]
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            raise RecordError("text is not a string")
        if SEED_BEGIN in text:
            return _parse_tagged(text, _SEED_TURN, strip_one_newline=True)
        if "<|im_start|>" in text:
            return _parse_tagged(text, _IM_TURN, strip_one_newline=False)
        raise RecordError("text has neither <|beginofutterance|> nor <|im_start|> turns")
    if "conversations" in obj:
        convs = obj["conversations"]
        if not isinstance(convs, list):
            raise RecordError("conversations is not a list")
        msgs = []
        for i, t in enumerate(convs):
            if not isinstance(t, dict):
                raise RecordError(f"conversations[{i}] is not an object")
            msgs.append({"role": t.get("from", ""), "content": t.get("value")})
        if obj.get("system"):
            msgs.insert(0, {"role": "system", "content": obj["system"]})
        return msgs
    if "conversation" in obj:
        conv = obj["conversation"]
        if not isinstance(conv, list):
            raise RecordError("conversation is not a list")
        msgs = []
        if obj.get("system"):
            msgs.append({"role": "system", "content": obj["system"]})
        for i, t in enumerate(conv):
            if not isinstance(t, dict) or "human" not in t:
                raise RecordError(f"conversation[{i}] has no human turn")
            msgs.append({"role": "user", "content": t["human"]})
            if "assistant" in t:
                msgs.append({"role": "assistant", "content": t["assistant"]})
        return msgs
    if "instruction" in obj or "output" in obj:
        ins, inp, out = obj.get("instruction", ""), obj.get("input", "") or "", obj.get("output")
        if not isinstance(ins, str) or not isinstance(inp, str):
            raise RecordError("instruction/input is not a string")
        msgs = []
        if obj.get("system"):
            msgs.append({"role": "system", "content": obj["system"]})
        for pair in obj.get("history") or []:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise RecordError("history entry is not a [question, answer] pair")
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        msgs.append({"role": "user", "content": _join_alpaca(ins, inp)})
        if out is not None:
            msgs.append({"role": "assistant", "content": out})
        return msgs
    raise RecordError("unknown record form (no messages/text/conversations/conversation/instruction)")


def content_id(messages: Messages, source: str = "") -> str:
    """A stable id from a record's content: `source-` and 16 hex digits of a BLAKE2b hash of its roles and
    contents. The same conversation always gets the same id, whatever file or position it comes from."""
    h = hashlib.blake2b(digest_size=8)
    for m in messages:
        h.update(m["role"].encode())
        h.update(b"\x1f")
        h.update(m["content"].encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return f"{source}-{h.hexdigest()}" if source else h.hexdigest()


def to_record(obj: Any, *, source: str = "", rid: str = "", need_answer: bool = True,
              own_source: bool = False, content_ids: bool = True) -> dict[str, Any]:
    """Any supported form -> canonical record. Raises RecordError with the reason.

    id: the row's `id` (or Firefly's `conversation_id`), else `rid`, else content_id (never empty; with
    content_ids=False it stays "" for the caller to fill in).
    source: the row's `source` (or Firefly's `dataset`), else `source`; with own_source, `source` always,
    and a different name the row carried is kept as meta["dataset"]."""
    messages = check_messages(messages_of(obj), need_answer=need_answer)
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), dict) else {}
    for key in ("category", "dataset", "avg_score", "dimension_scores"):
        if key in obj and key not in meta:
            meta[key] = obj[key]
    row_source = obj.get("source") or meta.get("dataset")
    if own_source and source:
        if row_source and row_source != source:
            meta.setdefault("dataset", row_source)
        row_source = source
    row_source = str(row_source or source or "")
    rec_id = obj.get("id", obj.get("conversation_id"))
    if rec_id in (None, ""):
        rec_id = rid or (content_id(messages, row_source) if content_ids else "")
    return {"id": str(rec_id), "source": row_source, "messages": messages, "meta": meta}


# ---- writers -------------------------------------------------------------------------------------


def split_system(messages: Messages) -> tuple[str | None, Messages]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def pairs(body: Messages) -> list[tuple[str, str | None]]:
    """(user, assistant) pairs of an alternating body; the last answer may be missing."""
    return [(body[i]["content"], body[i + 1]["content"] if i + 1 < len(body) else None)
            for i in range(0, len(body), 2)]


def to_seed_chatml_text(messages: Messages) -> str:
    return "\n".join(f"{SEED_BEGIN}{SEED_ROLE_OUT[m['role']]}\n{m['content']}\n{SEED_END}" for m in messages)


def to_im_text(messages: Messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def to_sharegpt(messages: Messages) -> list[dict[str, str]]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]


def to_firefly(messages: Messages) -> dict[str, Any]:
    system, body = split_system(messages)
    out: dict[str, Any] = {}
    if system is not None:
        out["system"] = system
    out["conversation"] = [
        {"human": u, "assistant": a} if a is not None else {"human": u} for u, a in pairs(body)
    ]
    return out


def to_alpaca(messages: Messages, *, with_system: bool = True, complete: bool = False
              ) -> tuple[dict[str, Any], list[str]]:
    """Alpaca with `history`; returns (row, what could not be expressed).

    complete: every row carries `system` ("" when there is none, or with_system is off) and `history` ([] for a
    single turn), so a loader that maps those columns (LLaMA-Factory's dataset_info) finds them in every row."""
    system, body = split_system(messages)
    turns = pairs(body)
    lost = []
    row: dict[str, Any] = {}
    if system is not None and not with_system:
        lost.append("system")
    if system is not None and with_system:
        row["system"] = system
    elif complete:
        row["system"] = ""
    row["instruction"] = turns[-1][0]
    row["input"] = ""
    row["output"] = turns[-1][1] if turns[-1][1] is not None else ""
    if len(turns) > 1 or complete:
        row["history"] = [[u, a] for u, a in turns[:-1]]
    return row, lost
