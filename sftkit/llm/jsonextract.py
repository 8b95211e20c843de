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
    return extract_json_checked(text)[0]


def extract_json_checked(text: str) -> tuple[Any, bool]:
    """(the first JSON value in text, needed_repair). needed_repair is False only when the whole text is one JSON
    value as it is (surrounding whitespace aside), as a guided-decoding answer is; True when a code fence, prose
    around it or a broken value before it had to be stripped. Raises ValueError when there is no value."""
    if not text or not text.strip():
        raise ValueError("empty text")
    try:
        return orjson.loads(text), False
    except orjson.JSONDecodeError:
        pass
    for cand in _candidates(text):
        try:
            return orjson.loads(cand), True
        except orjson.JSONDecodeError:
            pass
        try:
            return _scan(cand), True
        except ValueError:
            continue
    raise ValueError("no JSON value found")


LIST_KEYS = ("items", "data", "samples", "results")


def extract_json_list(text: str, list_keys: tuple[str, ...] = LIST_KEYS) -> list[Any]:
    """A JSON array from text. An object that wraps an array under a common key is unwrapped;
    a lone object becomes a one-element list."""
    return extract_json_list_checked(text, list_keys)[0]


def extract_json_list_checked(text: str, list_keys: tuple[str, ...] = LIST_KEYS) -> tuple[list[Any], bool]:
    """extract_json_list with needed_repair as extract_json_checked says it: unwrapping {"items": [...]} or
    listing a lone object is reading the shape asked for, not a repair of the text."""
    value, repaired = extract_json_checked(text)
    if isinstance(value, list):
        return value, repaired
    if isinstance(value, dict):
        for key in list_keys:
            if isinstance(value.get(key), list):
                return value[key], repaired
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            return lists[0], repaired
        return [value], repaired
    raise ValueError(f"JSON is a {type(value).__name__}, not an array or object")
