"""Pull JSON out of LLM text: code fences, prose around it, an object where an array was asked for."""

from __future__ import annotations

from typing import Any

import orjson
import regex

_FENCE = regex.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", regex.S)


def _candidates(text: str) -> list[str]:
    out = [m.group(1).strip() for m in _FENCE.finditer(text)]
    out.append(text.strip())
    return out


def _scan(text: str) -> Any:
    """First decodable top-level JSON value starting at a '[' or '{' (brackets matched, strings respected).
    A bracket that never closes ends the search: what follows is inside it (e.g. a truncated array)."""
    start = 0
    while True:
        starts = [i for i in (text.find("[", start), text.find("{", start)) if i >= 0]
        if not starts:
            raise ValueError("no JSON value found")
        start = min(starts)
        end = _matching_end(text, start)
        if end < 0:
            raise ValueError("unterminated JSON value")
        if (text[start] == "[") == (text[end] == "]"):
            try:
                return orjson.loads(text[start:end + 1])
            except orjson.JSONDecodeError:
                pass
        start = end + 1


def _matching_end(text: str, start: int) -> int:
    depth, in_str, esc = 0, False, False
    for end in range(start, len(text)):
        c = text[end]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return end
    return -1


def extract_json(text: str) -> Any:
    """The first JSON value in text; raises ValueError when there is none."""
    if not text or not text.strip():
        raise ValueError("empty text")
    for cand in _candidates(text):
        try:
            return orjson.loads(cand)
        except orjson.JSONDecodeError:
            pass
        try:
            return _scan(cand)
        except ValueError:
            continue
    raise ValueError("no JSON value found")


def extract_json_list(text: str, list_keys: tuple[str, ...] = ("items", "data", "samples", "results")) -> list[Any]:
    """A JSON array from text. An object that wraps an array under a common key is unwrapped;
    a lone object becomes a one-element list."""
    value = extract_json(text)
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in list_keys:
            if isinstance(value.get(key), list):
                return value[key]
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            return lists[0]
        return [value]
    raise ValueError(f"JSON is a {type(value).__name__}, not an array or object")
