"""Configuration: deep merge over defaults, and API key / base URL resolution.

Precedence for keys and URLs (SPEC): command-line flag > environment (OPENAI_API_KEY,
OPENAI_BASE_URL) > `.env` in the working directory > config file.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from dotenv import dotenv_values


def deep_merge(base: Any, override: Any) -> Any:
    """Recursively merge `override` into a copy of `base`. Dicts merge key by key; lists of dicts
    merge element by element when both sides name their elements (`name` key), else the override wins."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(override, list)
            and all(isinstance(x, dict) and "name" in x for x in base + override)):
        by_name = {x["name"]: x for x in base}
        merged = [deep_merge(by_name[x["name"]], x) if x["name"] in by_name else copy.deepcopy(x) for x in override]
        return merged
    return copy.deepcopy(override)


def load_config(path: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return copy.deepcopy(defaults)
    data = orjson.loads(Path(path).read_bytes())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config must be a JSON object")
    return deep_merge(defaults, data)


def resolve(flag: str | None, env: dict[str, str], env_name: str, config_value: str | None) -> str:
    """First non-empty of: flag, process environment, `.env`, config."""
    import os

    for value in (flag, os.environ.get(env_name), env.get(env_name), config_value):
        if value:
            return value
    return ""


def dotenv(path: str = ".env") -> dict[str, str]:
    return {k: v for k, v in dotenv_values(path).items() if v is not None} if Path(path).exists() else {}


def is_local_url(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


class RedactFilter(logging.Filter):
    """Replaces secrets in every log record, so a key cannot leak through a log line or traceback."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        for s in self.secrets:
            msg = msg.replace(s, "***")
        record.msg, record.args = msg, None
        if record.exc_info:
            import traceback

            text = "".join(traceback.format_exception(*record.exc_info))
            for s in self.secrets:
                text = text.replace(s, "***")
            record.exc_info, record.exc_text = None, None
            record.msg = f"{msg}\n{text}"
        return True


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text
