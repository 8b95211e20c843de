"""Record filters for cleaning SFT data: normalisation, Chinese ratio, length bounds, pattern drops, PII.

Every filter is a small unit with its own counters (`counts`: seen, dropped, changed, and `drop:<reason>` /
detail keys); `FilterChain.run(batch)` passes a batch of canonical records through them in order and returns
the survivors. Counters are plain Counters so worker processes can ship them back and the caller adds them up.
`FilterConfig` is a chain's settings as a script's flags give them; `.chain()` builds it (in each worker).

Chinese text is data: the default Unicode form (keep-cjk, see UNICODE_FORMS_HELP) is NFKC with a protected set,
so full-width letters and digits are folded to ASCII while Chinese punctuation (，。：？！（）…) and symbols stay
exactly as written; plain NFKC is the option "nfkc".

Speed matters here (a million records in well under a minute on two cores), so the hot paths avoid per-character
Python: NFKC is skipped for text that has no character the form would touch (a precomputed character class), and
the Chinese ratio of a whole batch is computed with one numpy table look-up. Both are tested to agree exactly with
`unicodedata.normalize("NFKC", ...)` (per unprotected run for keep-cjk) and `sftkit.io.text.chinese_ratio`.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import regex

from sftkit.clean import pii as pii_mod
from sftkit.io.text import CHINESE_RATIO_HELP, REFUSAL_PATTERNS

Record = dict[str, Any]

# ---- character tables ---------------------------------------------------------------------------------

_TABLE_SIZE = 0x110000
CLS_OTHER, CLS_COUNTED, CLS_HAN = 0, 1, 2


@functools.lru_cache(maxsize=1)
def char_classes() -> np.ndarray:
    """uint8 class of every code point: 2 = \\p{Han}, 1 = other \\p{L} or \\p{N}, 0 = anything else.

    Built from the same `regex` classes as sftkit.io.text.chinese_ratio, so the two definitions cannot drift.
    """
    table = np.zeros(_TABLE_SIZE, dtype=np.uint8)
    every = "".join(chr(c) for c in range(_TABLE_SIZE) if not 0xD800 <= c <= 0xDFFF)
    for cls, pattern in ((CLS_COUNTED, r"[\p{L}\p{N}]+"), (CLS_HAN, r"\p{Han}+")):
        chars = "".join(regex.findall(pattern, every))
        table[np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)] = cls
    return table


# ---- Unicode forms -----------------------------------------------------------------------------------------

# What normalisation does to characters (the flag --unicode of prep):
#   keep-cjk  NFKC except for the protected characters below, which stay exactly as written (the default)
#   nfkc      NFKC on everything (，-> ,  ：-> :  （）-> ()  … -> ...  ① -> 1  ㎡ -> m2)
#   none      no Unicode folding at all
UNICODE_FORMS = ("keep-cjk", "nfkc", "none")
DEFAULT_FORM = "keep-cjk"

UNICODE_FORMS_HELP = (
    "keep-cjk (default): NFKC, except that punctuation and symbols (Unicode categories P* and S*), circled, "
    "superscript and Roman numerals (No, Nl) and the ideographic space U+3000 are kept exactly as written: "
    "，。、；：？！“”‘’（）《》〈〉【】「」『』…—～·￥℃①²Ⅱ stay; what it changes: full-width letters and digits "
    "become ASCII (Ａ１ -> A1), CJK compatibility ideographs and Kangxi radicals become the unified ideograph, "
    "half-width katakana become full-width, ligatures are split (ﬁ -> fi), no-break and other typographic "
    "spaces become a plain space. nfkc: NFKC on everything (，-> , ：-> : （）-> () … -> ... ① -> 1). "
    "none: no Unicode folding. In every form: CR/LF and line separators -> LF, control and zero-width "
    "characters removed, runs of spaces/tabs inside a line -> one space (indentation kept), trailing spaces and "
    "more than one blank line in a row removed, outer whitespace stripped; newlines are kept")

# Radicals are symbols (So) by category, but text extracted from PDFs is full of them in place of the
# ideograph they look like (⼀ U+2F00 for 一): keep-cjk folds them like compatibility ideographs.
_RADICALS = (range(0x2E80, 0x2F00), range(0x2F00, 0x2FE0))


def _protected(ch: str) -> bool:
    """Characters keep-cjk leaves as written although NFKC would change them."""
    if ch == "\u3000":
        return True
    if any(ord(ch) in r for r in _RADICALS):
        return False
    cat = unicodedata.category(ch)
    return cat[0] in "PS" or cat in ("No", "Nl")


@functools.lru_cache(maxsize=1)
def _nfkc_sensitive_chars() -> str:
    """Characters whose presence means NFKC may change the text.

    A character is safe (NFKC leaves it alone whatever its neighbours) when it has no decomposition, combining
    class 0, and is never the second element of a canonical composition pair. Everything else is listed.
    """
    sensitive = set()
    for c in list(range(0x32000)) + list(range(0xE0000, 0xE0200)):
        if 0xD800 <= c <= 0xDFFF:
            continue
        ch = chr(c)
        dec = unicodedata.decomposition(ch)
        if dec or unicodedata.combining(ch):
            sensitive.add(ch)
        if dec and not dec.startswith("<"):
            parts = dec.split()
            if len(parts) == 2:  # canonical pair: its second element can compose with what precedes it
                sensitive.add(chr(int(parts[1], 16)))
    # Hangul: medial vowels and final consonants compose with a preceding syllable or lead consonant.
    sensitive.update(chr(c) for c in range(0x1161, 0x1176))
    sensitive.update(chr(c) for c in range(0x11A8, 0x11C3))
    return "".join(sorted(sensitive))


@functools.lru_cache(maxsize=1)
def protected_chars() -> frozenset[str]:
    """The characters NFKC would change that keep-cjk keeps (see UNICODE_FORMS_HELP)."""
    return frozenset(c for c in _nfkc_sensitive_chars() if _protected(c))


def _sensitive(form: str) -> str:
    """Characters that can make `form` change a text (protected ones excluded for keep-cjk)."""
    if form == "nfkc":
        return _nfkc_sensitive_chars()
    keep = protected_chars()
    return "".join(c for c in _nfkc_sensitive_chars() if c not in keep)


def _char_class(chars: Iterable[str]) -> str:
    """A regex character class written as ranges (thousands of single characters match far more slowly)."""
    spans: list[list[int]] = []
    for c in sorted(ord(ch) for ch in chars):
        if spans and spans[-1][1] == c - 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return "[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in spans) + "]"


@functools.lru_cache(maxsize=2)
def _form_tables(form: str) -> tuple[re.Pattern[str], re.Pattern[str], frozenset[str]]:
    chars = _sensitive(form)
    # `re` matches a class of BMP characters with a bitmap but walks a list of ranges for astral ones, which is
    # slow: astral characters are found with one plain range and looked up in a set instead.
    bmp = _char_class(c for c in chars if ord(c) < 0x10000)
    return re.compile(bmp), re.compile(bmp + "+"), frozenset(c for c in chars if ord(c) >= 0x10000)


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def has_astral(text: str) -> bool:
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


# Characters that fill ordinary text and that the form changes; str.replace is far cheaper than a regex callback.
_COMMON = {
    "nfkc": [(chr(c), unicodedata.normalize("NFKC", chr(c))) for c in (
        0xFF0C, 0xFF1A, 0xFF1F, 0xFF01, 0xFF08, 0xFF09, 0xFF1B, 0x3000, 0xA0, 0x2026)],
    "keep-cjk": [("\u00a0", " ")],
    "none": [],
}


def check_form(form: str) -> str:
    if form not in UNICODE_FORMS:
        raise ValueError(f"unknown Unicode form {form!r} (one of {', '.join(UNICODE_FORMS)})")
    return form


def fold_unicode(text: str, form: str = DEFAULT_FORM, astral: bool | None = None) -> str:
    """The Unicode part of normalisation: NFKC ("nfkc"), NFKC outside the protected characters ("keep-cjk"),
    or nothing ("none"); much faster than unicodedata on text that is mostly normalised already.

    `astral`: whether the text may hold characters beyond U+FFFF (None: find out). Replacing a character by
    its own NFKC form never changes the NFKC of the whole string, so the common cases are swapped with
    str.replace first; what is left is normalised piecewise: each run of sensitive characters together with
    the character before it (a safe character is a stable boundary for NFKC). For keep-cjk a protected character
    is a boundary too: the text is NFKC'd between protected characters, never across them.
    """
    if form == "none" or text.isascii():
        return text
    find_bmp, runs_bmp, astral_set = _form_tables(check_form(form))
    if astral is None:
        astral = has_astral(text)
    astral_hits = [m.span() for m in _ASTRAL.finditer(text) if m.group() in astral_set] if astral else []
    if not astral_hits and not find_bmp.search(text):
        return text
    for wide, narrow in _COMMON[form]:
        text = text.replace(wide, narrow)
    if astral_hits:
        astral_hits = [m.span() for m in _ASTRAL.finditer(text) if m.group() in astral_set]
    spans = sorted([m.span() for m in runs_bmp.finditer(text)] + astral_hits)
    return _nfkc_spans(text, spans, form)


def nfkc(text: str, astral: bool | None = None) -> str:
    """unicodedata.normalize("NFKC", text), fast (see fold_unicode)."""
    return fold_unicode(text, "nfkc", astral)


def _nfkc_spans(text: str, spans: list[tuple[int, int]], form: str = "nfkc") -> str:
    """`text` with NFKC applied to (sorted) spans that cover every character the form could change."""
    if not spans:
        return text
    keep = protected_chars() if form == "keep-cjk" else frozenset()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    pos = 0
    for a, b in merged:
        # Take the safe character before the run along (a combining mark may compose with it), unless it is a
        # protected one, which must stay as written.
        if a > pos and text[a - 1] not in keep:
            a -= 1
        out.append(text[pos:a])
        out.append(unicodedata.normalize("NFKC", text[a:b]))
        pos = b
    out.append(text[pos:])
    return "".join(out)


# ---- the filter protocol -------------------------------------------------------------------------------


class Filter:
    """A step over a batch of records; subclasses implement `check` (per record) or override `run`."""

    name = "filter"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def check(self, rec: Record) -> str | None:
        """Return a drop reason, or None to keep (the record may be modified in place)."""
        raise NotImplementedError

    def run(self, batch: list[Record]) -> list[Record]:
        return self.run_checking(batch, None)

    def run_checking(self, batch: list[Record], suspects: set[int] | None) -> list[Record]:
        """Keep what passes `check`; only records whose index is in `suspects` are checked (None: all)."""
        kept = []
        for i, rec in enumerate(batch):
            reason = self.check(rec) if suspects is None or i in suspects else None
            if reason is None:
                kept.append(rec)
            else:
                self.counts["drop:" + reason] += 1
        self.counts["seen"] += len(batch)
        self.counts["dropped"] += len(batch) - len(kept)
        return kept

    def take_counts(self) -> Counter[str]:
        """The counts since the last call (and reset them): what a worker ships back per batch."""
        out, self.counts = self.counts, Counter()
        return out


_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_NEEDS_CLEAN = re.compile("[\r\t\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
# Runs of spaces/tabs start with a plain character class, so `re` can skip ahead to them quickly; whether a run
# is leading indentation (kept) is decided in the callback.
_SPACE_RUN = re.compile(r"[ \t]{2,}|\t")
_TRAILING_SPACE = re.compile(r"[ \t]+(?=\n)")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Joins a batch of messages into one string so the normalisation runs once per batch at C speed; a private-use
# character: NFKC leaves it alone and none of the cleaning steps touches it.
_SEP = "\ue000"


def _collapse_run(m: re.Match[str]) -> str:
    start = m.start()
    text = m.string
    if start == 0 or text[start - 1] in "\n" + _SEP:
        return m.group()  # leading indentation
    return " "


def _clean(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    text = _CTRL.sub("", text)
    text = _SPACE_RUN.sub(_collapse_run, text)
    text = _TRAILING_SPACE.sub("", text)
    return _MANY_NEWLINES.sub("\n\n", text)


def normalize_text(text: str, form: str = DEFAULT_FORM, astral: bool | None = None) -> str:
    """The Unicode form (see UNICODE_FORMS_HELP; keep-cjk by default); CR/LF and Unicode line separators -> \\n;
    control and zero-width characters removed; runs of spaces/tabs inside a line -> one space (leading
    indentation kept); trailing spaces dropped; at most one blank line in a row; outer whitespace stripped.
    Newlines are kept."""
    text = fold_unicode(text, form, astral)
    # One character-class scan plus plain substring tests: an alternation would defeat re's fast scanning.
    if _NEEDS_CLEAN.search(text) or "  " in text or " \n" in text or "\n\n\n" in text:
        text = _clean(text)
    return text.strip()


def _owners(texts: Sequence[str], positions: Iterable[int], sep_len: int = 1) -> set[int]:
    """Indexes of the texts (joined with a separator of sep_len characters) that hold these positions."""
    pos = np.fromiter(positions, dtype=np.int64)
    if not len(pos):
        return set()
    lens = np.fromiter((len(t) + sep_len for t in texts), dtype=np.int64, count=len(texts))
    return set(np.searchsorted(np.cumsum(lens), pos, side="right").tolist())


def _find_all(text: str, needle: str) -> Iterator[int]:
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


_CLEANING_TRIGGERS = "".join(itertools.chain(
    "\r\t\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\u00ad\u2028\u2029\ufeff",
    (chr(c) for c in itertools.chain(range(0x10, 0x20), range(0x7F, 0xA0), range(0x200B, 0x2010),
                                     range(0x202A, 0x202F), range(0x2060, 0x2065)))))


@functools.lru_cache(maxsize=3)
def _batch_table(form: str) -> np.ndarray:
    """bool per code point: the form may change it or the cleaning removes it. (NFKC leaves every cleaning
    trigger as it is, so normalising a span of them changes nothing.) A table look-up over a whole batch's code
    points costs a few ns a character, a regex scan with a class of thousands of ranges several times that."""
    table = np.zeros(_TABLE_SIZE, dtype=bool)
    chars = itertools.chain(_sensitive(form) if form != "none" else "", _CLEANING_TRIGGERS)
    table[np.fromiter((ord(c) for c in chars), dtype=np.int64)] = True
    return table


def warm_tables(form: str) -> None:
    """Build the look-up tables of `form` now (before forking workers, so they share them)."""
    char_classes()
    fold_unicode("，Ａ", form)
    _batch_table(form)


def normalize_many(texts: list[str], form: str = DEFAULT_FORM) -> list[str]:
    """[normalize_text(t, form) for t in texts], done on one joined string: one table look-up over its code
    points finds every character the form or the cleaning would touch (astral ones included); NFKC runs on those
    spots only, and only texts with a cleaning trigger are cleaned one by one (equal results, far less work)."""
    if not texts:
        return []
    check_form(form)
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:
        return [normalize_text(t, form) for t in texts]  # a text holds the separator itself: one by one
    if not joined.isascii():
        for wide, narrow in _COMMON[form]:
            joined = joined.replace(wide, narrow)
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    hits = np.flatnonzero(_batch_table(form)[cps]).tolist()
    spots = [(a, a + 1) for a in hits]
    # Texts with a character the cleaning removes (cleaning a text without any trigger changes nothing, so
    # flagging a text for a merely NFKC-sensitive character is harmless).
    flagged = _owners(joined.split(_SEP), (a for a, _ in spots)) if spots else set()
    if form != "none" and spots:
        joined = _nfkc_spans(joined, spots, form)
    out = joined.split(_SEP)
    if len(out) != len(texts):  # cannot happen (NFKC leaves the separator alone); be safe all the same
        return [normalize_text(t, form) for t in texts]
    # Space triggers are looked for after NFKC, which can turn other spaces into plain ones.
    hits = itertools.chain(_find_all(joined, "  "), _find_all(joined, " \n"), _find_all(joined, "\n\n\n"))
    flagged |= _owners(out, hits)
    for i in flagged:
        out[i] = _clean(out[i])
    return [t.strip() for t in out]


class Normalize(Filter):
    """Normalise every message in place (see normalize_text); drop a record left with an empty message."""

    name = "normalize"

    def __init__(self, form: str = DEFAULT_FORM) -> None:
        super().__init__()
        self.form = check_form(form)

    def run(self, batch: list[Record]) -> list[Record]:
        olds = [m["content"] for r in batch for m in r["messages"]]
        news = iter(normalize_many(olds, self.form))
        kept = []
        for rec in batch:
            changed = False
            empty = None
            for m in rec["messages"]:
                new = next(news)
                if new != m["content"]:
                    m["content"] = new
                    changed = True
                if not new and empty is None:
                    empty = m["role"]
            if changed:
                self.counts["changed"] += 1
            if empty is None:
                kept.append(rec)
            else:
                self.counts[f"drop:empty {empty}"] += 1
        self.counts["seen"] += len(batch)
        self.counts["dropped"] += len(batch) - len(kept)
        return kept

    def check(self, rec: Record) -> str | None:
        return None if self.run([rec]) else "empty message"


_RATIO_WEIGHT = np.array([0, 1 << 32, (1 << 32) + 1], dtype=np.int64)  # by class: other, counted, Han


def chinese_ratios(texts: Sequence[str]) -> np.ndarray:
    """chinese_ratio (sftkit.io.text) of many texts at once, as float64; equal to it exactly."""
    if not texts:
        return np.zeros(0)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = char_classes()[cps]
    ends = np.cumsum(lens)
    starts = ends - lens
    # One running sum carries both counts: Han in the low 32 bits, letters and digits in the high ones.
    both = np.concatenate(([0], np.cumsum(_RATIO_WEIGHT[cls], dtype=np.int64)))
    diff = both[ends] - both[starts]
    n_han = diff & 0xFFFFFFFF
    n_counted = diff >> 32
    return np.where(n_counted > 0, n_han / np.maximum(n_counted, 1), 0.0)


class ChineseRatio(Filter):
    __doc__ = "Drop a record if any message of the given roles has a Chinese ratio below `min_ratio`. " + \
        CHINESE_RATIO_HELP
    name = "chinese_ratio"

    def __init__(self, min_ratio: float, roles: Iterable[str] = ("system", "user", "assistant")) -> None:
        super().__init__()
        self.min_ratio = min_ratio
        self.roles = frozenset(roles)

    def run(self, batch: list[Record]) -> list[Record]:
        texts: list[str] = []
        owner: list[int] = []
        for i, rec in enumerate(batch):
            for m in rec["messages"]:
                if m["role"] in self.roles:
                    texts.append(m["content"])
                    owner.append(i)
        ratios = chinese_ratios(texts)
        low = np.bincount(np.asarray(owner, dtype=np.int64), weights=ratios < self.min_ratio,
                          minlength=len(batch)) > 0 if texts else np.zeros(len(batch), dtype=bool)
        kept = [rec for rec, bad in zip(batch, low, strict=True) if not bad]
        self.counts["seen"] += len(batch)
        self.counts["dropped"] += len(batch) - len(kept)
        if len(batch) > len(kept):
            self.counts["drop:below min ratio"] += len(batch) - len(kept)
        return kept


@dataclass(frozen=True)
class Bounds:
    lo: int
    hi: int


DEFAULT_LENGTHS = {"system": Bounds(0, 500), "user": Bounds(20, 500), "assistant": Bounds(80, 1200)}


def parse_length(spec: str) -> tuple[str, Bounds]:
    """'user=20:500' -> ('user', Bounds(20, 500)); either side may be empty (0 / unlimited)."""
    role, _, rng = spec.partition("=")
    lo, sep, hi = rng.partition(":")
    if role not in DEFAULT_LENGTHS or not sep:
        raise ValueError(f"bad --length {spec!r}: want ROLE=MIN:MAX with ROLE system|user|assistant")
    try:
        return role, Bounds(int(lo or 0), int(hi) if hi else 1 << 62)
    except ValueError:
        raise ValueError(f"bad --length {spec!r}: MIN and MAX must be integers") from None


class Length(Filter):
    """Drop a record if any message is shorter or longer (in characters, after normalisation) than its role's
    bounds; multi-turn conversations are checked turn by turn."""

    name = "length"

    def __init__(self, bounds: dict[str, Bounds] | None = None) -> None:
        super().__init__()
        self.bounds = dict(DEFAULT_LENGTHS if bounds is None else bounds)

    def check(self, rec: Record) -> str | None:
        for m in rec["messages"]:
            b = self.bounds.get(m["role"])
            if b is None:
                continue
            n = len(m["content"])
            if n < b.lo:
                return f"{m['role']} shorter than {b.lo}"
            if n > b.hi:
                return f"{m['role']} longer than {b.hi}"
        return None


# Refusals and disclaimers (shared list), ads and contact bait, canned English disclaimers.
DEFAULT_DROP_PATTERNS = [
    *REFUSAL_PATTERNS,
    r"抱歉.{0,6}(不能|无权|不便)", r"无法(回答|提供|协助|帮助)", r"请咨询.{0,12}(专业人士|医生|律师)",
    r"点击链接|关注(我们的)?公众号|扫描?二维码|加(我)?微信|私信我|添加客服|淘宝店铺",
    r"(?i)for educational purposes only", r"(?i)i (can ?not|can't|am unable to) (assist|help)",
    r"(?i)i do not have (access|the ability)", r"(?i)i am not a (doctor|lawyer|financial advisor)",
]
_URL = re.compile(r"(?i)https?://|www\.")


class Patterns(Filter):
    """Drop a record when a message of the given roles matches one of the patterns, or holds more than
    `max_urls` URLs. The counts name the pattern that matched."""

    name = "patterns"

    def __init__(self, patterns: Sequence[str] = tuple(DEFAULT_DROP_PATTERNS), max_urls: int = 5,
                 roles: Iterable[str] = ("assistant",)) -> None:
        super().__init__()
        self.patterns = list(patterns)
        # One search per message; the named group that took part says which pattern matched.
        self.combined = regex.compile("|".join(f"(?P<p{i}>{p})" for i, p in enumerate(patterns))) \
            if patterns else None
        self.max_urls = max_urls
        self.roles = frozenset(roles)

    def check(self, rec: Record) -> str | None:
        for m in rec["messages"]:
            if m["role"] not in self.roles:
                continue
            text = m["content"]
            m = self.combined.search(text) if self.combined is not None else None
            if m is not None:
                which = next(int(k[1:]) for k, v in m.groupdict().items() if v is not None)
                return f"pattern {self.patterns[which]}"
            if self.max_urls >= 0 and ("://" in text or "www." in text):
                if len(_URL.findall(text)) > self.max_urls:
                    return f"more than {self.max_urls} URLs"
        return None


class Pii(Filter):
    """Find personal data (sftkit.clean.pii) in every message; mode "drop" drops the record, "redact" replaces each
    piece with its token (<PHONE>, <ID>, <CARD>, <EMAIL>, <IP>). Counts `found:<kind>` per piece. Works on the
    text as it is: full-width digits are found whether or not normalisation folded them."""

    name = "pii"

    def __init__(self, mode: str = "drop", kinds: Iterable[str] = pii_mod.DEFAULT_KINDS) -> None:
        super().__init__()
        if mode not in ("drop", "redact"):
            raise ValueError(f"bad PII mode {mode!r}")
        self.mode = mode
        self.kinds = tuple(kinds)

    def run(self, batch: list[Record]) -> list[Record]:
        # One scan of the whole batch for anything that could start a piece of personal data; only the
        # records where it finds something go through the detectors.
        texts = [m["content"] for r in batch for m in r["messages"]]
        owner = [i for i, r in enumerate(batch) for _ in r["messages"]]
        suspects = {owner[t] for t in _owners(texts, pii_mod.gate_positions("\n".join(texts), self.kinds))}
        return self.run_checking(batch, suspects)

    def check(self, rec: Record) -> str | None:
        found = False
        for m in rec["messages"]:
            hits = pii_mod.find_pii(m["content"], self.kinds)
            if not hits:
                continue
            found = True
            for h in hits:
                self.counts["found:" + h.kind] += 1
            if self.mode == "drop":
                return "contains " + hits[0].kind
            m["content"] = pii_mod.redact(m["content"], hits)
        if found:
            self.counts["changed"] += 1
        return None


@dataclass
class FilterChain:
    filters: list[Filter] = field(default_factory=list)

    def run(self, batch: list[Record]) -> list[Record]:
        for f in self.filters:
            if not batch:
                break
            batch = f.run(batch)
        return batch

    def take_counts(self) -> dict[str, Counter[str]]:
        return {f.name: f.take_counts() for f in self.filters}


def build_chain(*, normalize: bool = True, form: str = DEFAULT_FORM, min_chinese_ratio: float | None = 0.65,
                ratio_roles: Iterable[str] = ("system", "user", "assistant"),
                lengths: dict[str, Bounds] | None = None, patterns: Sequence[str] | None = None,
                max_urls: int = 5, pattern_roles: Iterable[str] = ("assistant",), pii_mode: str | None = None,
                pii_kinds: Iterable[str] = pii_mod.DEFAULT_KINDS) -> FilterChain:
    """The default cleaning chain; pass None / empty to leave a step out."""
    chain: list[Filter] = []
    if normalize:
        chain.append(Normalize(form))
    # Length first: it is the cheapest test and usually drops the most, so the others see fewer records.
    if lengths is None or lengths:
        chain.append(Length(lengths))
    if min_chinese_ratio is not None and min_chinese_ratio > 0:
        chain.append(ChineseRatio(min_chinese_ratio, ratio_roles))
    pats = DEFAULT_DROP_PATTERNS if patterns is None else list(patterns)
    if pats or max_urls >= 0:
        chain.append(Patterns(pats, max_urls, pattern_roles))
    if pii_mode:
        chain.append(Pii(pii_mode, pii_kinds))
    return FilterChain(chain)


@dataclass
class FilterConfig:
    """The chain as a script's flags describe it: plain data, so worker processes can build their own chain."""

    no_filter: bool
    form: str
    min_chinese_ratio: float
    lengths: dict[str, Bounds]
    patterns: list[str]
    max_urls: int
    pattern_roles: list[str]
    pii_mode: str | None
    pii_kinds: list[str]
    ratio_roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"])

    def chain(self) -> FilterChain:
        if self.no_filter:  # the original's --no-filter: no dropping filters; normalising (and redaction) stays
            return build_chain(form=self.form, min_chinese_ratio=None, lengths={}, patterns=[],
                               max_urls=-1, pii_mode="redact" if self.pii_mode == "redact" else None,
                               pii_kinds=self.pii_kinds)
        return build_chain(form=self.form, min_chinese_ratio=self.min_chinese_ratio,
                           ratio_roles=self.ratio_roles, lengths=self.lengths,
                           patterns=self.patterns, max_urls=self.max_urls, pattern_roles=self.pattern_roles,
                           pii_mode=self.pii_mode, pii_kinds=self.pii_kinds)
