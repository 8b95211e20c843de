"""Small text measures shared by generation, judging and prep."""

from __future__ import annotations

import regex

# Runs, not single characters: one match per run keeps the regex engine's per-match cost down (~4x faster).
_HAN_RUN = regex.compile(r"\p{Han}+")
# Han radicals and a few other Han code points are symbols, not letters: count them in the denominator too,
# so the ratio never exceeds 1 and a lone radical is 100% Chinese, not 0/0.
_COUNTED_RUN = regex.compile(r"[\p{L}\p{N}\p{Han}]+")

CHINESE_RATIO_HELP = (
    "Chinese ratio = (number of \\p{Han} characters) / (number of letters, digits and Han characters, "
    "\\p{L}|\\p{N}|\\p{Han}); "
    "whitespace, punctuation and other symbols are not counted; a text with none of them has ratio 0."
)


def han_count(text: str) -> int:
    """Number of \\p{Han} characters."""
    return len(text) - len(_HAN_RUN.sub("", text))


def chinese_ratio(text: str) -> float:
    """Share of Han characters among letters, digits and Han characters (see CHINESE_RATIO_HELP)."""
    counted = len(text) - len(_COUNTED_RUN.sub("", text))
    if counted == 0:
        return 0.0
    return han_count(text) / counted


# Refusals and disclaimers that make an answer useless as training data (seed 004's list and more).
REFUSAL_PATTERNS = [
    r"仅供参考", r"免责声明", r"抱歉[，,]?\s*我(不能|无法)", r"无法回答", r"我不能回答",
    r"作为(一个)?(AI|人工智能|语言模型|AI助手|人工智能助手)", r"我只是一个?(AI|人工智能|语言模型)",
    r"(?i)as an ai( language model)?", r"(?i)i('m| am) (sorry|unable)", r"(?i)i cannot (help|assist)",
    r"不构成(任何)?(投资|法律|医疗)?(建议|意见)",
]
REFUSAL_RE = regex.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS))


def find_refusal(text: str, pattern: regex.Pattern[str] = REFUSAL_RE) -> str | None:
    m = pattern.search(text)
    return m.group(0) if m else None
