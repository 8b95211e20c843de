"""Estimated API cost. Prices change: every figure here is overridable from the command line or config.

USD per million tokens: (input on cache miss, input on cache hit, output). Reasoning tokens are billed
as output by every provider listed, and are already inside completion_tokens.
"""

from __future__ import annotations

from typing import Any

from sftkit.llm.client import Usage

# Public list prices, checked 2025-12; a rough guide, not a bill.
PRICES: dict[str, tuple[float, float, float]] = {
    "deepseek-chat": (0.28, 0.028, 0.42),
    "deepseek-reasoner": (0.28, 0.028, 0.42),
    "qwen3-max": (1.2, 0.24, 6.0),
    "qwen-plus": (0.4, 0.08, 1.2),
    "moonshot-kimi-k2-instruct": (0.6, 0.15, 2.5),
    "kimi-k2": (0.6, 0.15, 2.5),
    "gpt-4o-mini": (0.15, 0.075, 0.6),
    "gpt-4o": (2.5, 1.25, 10.0),
}


def price_of(model: str, overrides: dict[str, Any] | None = None) -> tuple[float, float, float] | None:
    """(input, cached input, output) USD per 1M tokens; `overrides` may set `input`, `cached`, `output`."""
    base = PRICES.get(model.lower())
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    if base is None and "input" not in o and "output" not in o:
        return None
    inp, cached, out = base or (0.0, 0.0, 0.0)
    inp = float(o.get("input", inp))
    cached = float(o.get("cached", cached if base else inp))
    out = float(o.get("output", out))
    return inp, cached, out


def estimate_cost(model: str, usage: Usage | dict[str, Any], overrides: dict[str, Any] | None = None) -> float | None:
    """Estimated USD for `usage` on `model`; None when the model has no known or given price."""
    price = price_of(model, overrides)
    if price is None:
        return None
    u = usage if isinstance(usage, Usage) else Usage(**{k: int(usage.get(k, 0)) for k in Usage().__dict__})
    inp, cached, out = price
    miss = max(0, u.prompt_tokens - u.cached_tokens)
    return (miss * inp + u.cached_tokens * cached + u.completion_tokens * out) / 1e6
