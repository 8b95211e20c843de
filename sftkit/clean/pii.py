"""Personal data in Chinese and English text: detect, redact.

Kinds (and the token `redact` puts in their place); DEFAULT_KINDS are looked for unless asked otherwise:
- phone `<PHONE>`: mainland mobile numbers, 1[3-9]x plus 8 digits, optionally written with +86 / 0086 / 86 or a
  leading trunk 0, spaces or dashes (138 1234 5678, +86-138-1234-5678, 013812345678).
- landline `<PHONE>` (not a default kind: a campus office number is useful training data): mainland fixed-line
  numbers with their area code, 0 + 2-3 digits, then 7-8 digits (0451-86412114, (0451)8641 2114,
  +86 451 8641 2114); written without any separator only after a word such as 电话 / 座机 / tel.
- id `<ID>`: 18-digit resident ID (GB 11643-1999): a division code that exists in GB/T 2260 at any date, a real
  birth date that is not in the future (1800 or later), and a correct ISO 7064 MOD 11-2 check digit; the 15-digit
  legacy form (same code rule, a real 19YYMMDD date; it has no check digit). The table of codes is python-stdnum's
  (`stdnum/cn/loc.dat`, every code it lists, with or without dates), but not its date rule: `stdnum.cn.ric.is_valid`
  demands that the code existed in the birth year, and a real ID does not: an ID keeps for life the code of the
  place of first registration, so a person born in 1961 who registered in Pudong (310115, created 1992) holds
  31011519610703106X. stdnum stays the oracle of the tests (its table, check digit and Luhn), not of this rule.
- card `<CARD>`: 16-19 digits of its own that pass the Luhn check AND either start with 62 (China UnionPay) or
  follow a word such as 卡号 / 银行卡 / card within 12 characters (a number after 订单 / 单号 / 编号 / order and no
  card word is an order number, not a card). Written plain or in groups split by one kind of separator (a single
  space or dash): one group, two or more groups of 4-6 digits and a last group of any length (6222 0212 3456 7890
  128, 6223-2957-8911-63033), or the 6-digit issuer number and the rest (622202 1234567890123); no group joined
  to it before by its separator (6221 3657 0169 9530 1997 is not 6221 and a card). The card is tried at
  every possible end, so a number that follows it (an amount, a count, a date, any number after a space or dash)
  is never glued to it: a following group belongs to the card only when the groups before it and it form one of
  these shapes with one separator and nothing marks it as a number of its own (a unit or count word glued or
  after one space: 500元, 3次, 12月, 50%, 500 RMB; a decimal point, a thousands comma, a slash or a colon and a
  digit: 500.00, 1,000, 12/28, 12:30; a Latin letter glued). Of the ends that remain, the longest that makes a
  valid card wins; a Luhn-invalid card is never rescued by taking in its neighbour. One shape is undecidable by
  any rule: a 16-digit card in groups of 4, the same separator, then 1-3 digits and nothing after them (6222 0212
  3456 7890 128 is also how a 19-digit card is written); Luhn reads it: the whole when it passes (also when the
  16 digits do: the whole is redacted), else the 16 digits when they pass, else no card.
- email `<EMAIL>`: local@domain.tld in any letter case.
- ip `<IP>`: dotted-quad IPv4 (each part 0-255, not part of a longer dotted number, not after a word such as 版本 /
  version: 20.9.0.1 is a version) and IPv6 (any form `ipaddress` accepts: full, :: compressed, IPv4-mapped,
  ::1 and fe80:: included).

Full-width digits, letters and signs (１３８, ＠, ：, （）) are read as their ASCII forms: detection runs on a
copy of the text folded character by character, so positions stay those of the original and redaction never
changes anything else. Digit runs are delimited by "no digit before / after" checks, never by \\b: in Chinese
text a number sits right against Han characters ("电话13812345678联系"), where \\b finds no boundary. Every
candidate is validated before it counts, so order numbers, timestamps, dates, versions and IDs or cards with a
wrong check digit are left alone (measured against python-stdnum, phonenumbers and ipaddress in tests/test_pii.py
and bench/bench_pii.py).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("phone", "landline", "id", "card", "email", "ip")
DEFAULT_KINDS = ("phone", "id", "card", "email", "ip")
TOKENS = {"phone": "<PHONE>", "landline": "<PHONE>", "id": "<ID>", "card": "<CARD>", "email": "<EMAIL>",
          "ip": "<IP>"}
# When two detections overlap, the earlier kind in this order wins (an 18-digit ID is not also a card).
PRIORITY = ("email", "id", "card", "phone", "landline", "ip")

# ---- folding: full-width forms read as ASCII, one character for one ---------------------------------------

_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FOLD.update({c: 0x20 for c in (0x3000, 0x00A0, 0x2002, 0x2003, 0x2009, 0x202F)})
_FOLD.update({c: 0x2D for c in (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xFE63)})  # dashes


def fold(text: str) -> str:
    """The text detection reads: full-width ASCII forms, typographic spaces and dashes as ASCII (same length)."""
    return text if text.isascii() else text.translate(_FOLD)


# ---- patterns (ASCII digits only: the text is folded first) ------------------------------------------------

_A = re.ASCII
# The batch gate (gate_positions) reads the text unfolded, so it needs no copy of a whole batch: its patterns take
# full-width forms as they are (\d is Unicode here: it matches ０-９). Anything that can begin a piece of personal
# data: 11+ digits (single separators allowed), a dotted number, an @, a colon between hex digits or a ::, a
# landline shape. Text without any of these has none (used to skip whole records quickly).
_LONGNUM = re.compile(r"\d(?:[ \-－\u3000]?\d){10}")
# (These two start with the rarer character, the dot or the colon, and look behind for the digit before it:
# `re` skips through text to a plain first character far faster than to a member of a large class.)
_DOTTED_QUAD_START = re.compile(r"[.．](?<=\d[.．])\d{1,3}[.．]\d")
_HEX = "0-9A-Fa-f０-９Ａ-Ｆａ-ｆ"
_HEXCOLON = re.compile(f"[:：](?<=[{_HEX}][:：])[{_HEX}:：]")
_LANDLINE_GATE = re.compile(r"(?:[0０]|[8８][6６][ \-－]?[(（]?)[1-9１-９]\d{0,2}[)）]?[ \-－\u3000]?[2-9２-９]\d{2}")
# The same shapes in folded text, where the detectors run.
_LONGNUM_A = re.compile(r"\d(?:[ -]?\d){10}", _A)
_HEXCOLON_A = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]", _A)
_LANDLINE_GATE_A = re.compile(r"(?:0|86[ -]?\(?)[1-9]\d{0,2}\)?[ -]?[2-9]\d{2}", _A)

# Mobile core: 1[3-9]x then 8 digits, in 3-4-4 groups optionally split by a space or dash. A +86 / 0086 / 86
# prefix or a trunk 0 in front of it is looked for by hand (see _phone_hits).
_PHONE = re.compile(r"1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)", _A)
_PHONE_PREFIX = re.compile(r"(?:(?:\((?:\+|00)?86\)|(?:\+|00)?86)[ -]?|0)$", _A)
# Landline: area code (010, 02x, 0xxx) in optional brackets, or +86/0086 and the area code without its 0, then a
# local number of 7-8 digits that starts with 2-9 (optionally split after its first 3-4 digits).
_LANDLINE = re.compile(
    r"(?:(?:\+|00)86[ -]?\(?(?P<intl>10|2\d|[3-9]\d{2})\)?|\((?P<par>0(?:10|2\d|[3-9]\d{2}))\)|"
    r"(?P<area>0(?:10|2\d|[3-9]\d{2})))(?P<sep>[ -]?)(?P<local>[2-9]\d{2,3}[ -]?\d{4})(?!\d)", _A)
_LANDLINE_CONTEXT = re.compile(r"(?i)电话|座机|固话|办公室|传真|总机|热线|联系|tel|fax|phone")
# Candidates for IDs: 18 chars (17 digits + digit or X) or 15 digits, not inside a longer digit run.
_ID18 = re.compile(r"\d(?<!\d\d)\d{16}[\dXx](?![\dXx])", _A)
_ID15 = re.compile(r"\d(?<!\d\d)\d{14}(?!\d)", _A)
# Cards: runs of digit groups split by single spaces or dashes; which groups form a card is decided by hand.
_GROUPS = re.compile(r"\d(?<!\d\d)\d*(?:[ -]\d+)*", _A)
_GROUP = re.compile(r"\d+", _A)
_CARD_CONTEXT = re.compile(r"(?i)卡号|银行卡|信用卡|储蓄卡|借记卡|银联|card|账号|帐号|卡\s*:|汇款|转账")
# What marks a digit group after a card's possible end as a number of its own (an amount, a count, a date, a
# time, a share): a unit or count word glued to it or after one space, a decimal point, thousands comma, slash or
# colon and a digit, or a Latin letter glued to it. The match starts right after the group.
_UNIT_WORDS = "元圆块角毛分万千百亿年月日号时点秒次笔个张件天周期岁人位名份台条遍倍%‰"
_OWN_NUMBER = re.compile(
    f"[{_UNIT_WORDS}]|[.,/:]\\d|[A-Za-z]| (?:[{_UNIT_WORDS}]|(?i:rmb|cny|usd|hkd|eur)(?![A-Za-z]))", _A)
_ORDER_CONTEXT = re.compile(r"(?i)订单|单号|编号|流水|运单|快递|序列号|order|serial|no\.")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}",
                    _A)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}", _A)
_VERSION_CONTEXT = re.compile(r"(?i)(?:版本号?|version|ver\.?|release|build|固件|内核|kernel|v)\s*(?:号|为|是|:)?\s*$")
_IPV6_RUN = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*", _A)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


@dataclass(frozen=True)
class Hit:
    kind: str
    start: int
    end: int
    text: str


def _find_all(text: str, needle: str) -> list[int]:
    out = []
    i = text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def gate_positions(text: str, kinds: Iterable[str] = KINDS) -> list[int]:
    """Positions where a piece of personal data of these kinds could start (each scan on its own: one alternation
    of all of them would keep `re` from skipping ahead and is slower than the separate scans together)."""
    kinds = set(kinds)
    pos = []
    if kinds & {"phone", "id", "card"}:
        pos += [m.start() for m in _LONGNUM.finditer(text)]
    if "ip" in kinds:
        pos += [m.start() for m in _DOTTED_QUAD_START.finditer(text)]
        pos += [m.start() for m in _HEXCOLON.finditer(text)]
        pos += _find_all(text, "::")  # ::1, ::ffff:...
    if "email" in kinds:
        pos += _find_all(text, "@") + _find_all(text, "＠")
    if "landline" in kinds:
        pos += [m.start() for m in _LANDLINE_GATE.finditer(text)]
    return pos


# ---- validation --------------------------------------------------------------------------------------------


# The earliest birth year taken for real: no one alive was born before it (the oldest residents who held an ID were
# born in the 1880s); the latest birth date is today.
EARLIEST_BIRTH_YEAR = 1800


def _real_date(year: int, month: int, day: int) -> bool:
    """A date of the calendar, from EARLIEST_BIRTH_YEAR to today (a birth date cannot be in the future)."""
    if year < EARLIEST_BIRTH_YEAR:
        return False
    try:
        return datetime.date(year, month, day) <= datetime.date.today()
    except ValueError:
        return False


def _ascii_digits(s: str) -> str | None:
    s = fold(s)
    return s if s.isascii() and s.isdigit() else None


def id18_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID."""
    digits = _ascii_digits(first17)
    if digits is None or len(digits) != 17:
        raise ValueError("want 17 digits")
    return _ID_CHECK[sum((ord(c) - 48) * w for c, w in zip(digits, _ID_WEIGHTS, strict=True)) % 11]


@functools.lru_cache(maxsize=1)
def division_codes() -> frozenset[str]:
    """Every 6-digit administrative division code of GB/T 2260 that python-stdnum's table (stdnum/cn/loc.dat)
    lists, at any date: its date ranges are ignored (see the module docstring: an ID keeps the code of first
    registration for life, so a code newer than the birth year is normal)."""
    from stdnum import numdb

    codes: set[str] = set()

    def walk(prefixes: list, head: str) -> None:
        for length, low, high, _props, children in prefixes:
            for value in range(int(low), int(high) + 1):
                code = head + str(value).zfill(length)
                if len(code) == 6:
                    codes.add(code)
                elif len(code) < 6:
                    walk(children, code)

    walk(numdb.get("cn/loc").prefixes, "")
    return frozenset(codes)


def _code_exists(code: str) -> bool:
    return code in division_codes()


def valid_id18(s: str) -> bool:
    """A resident ID by the rule of the module docstring: division code of the table at any date, real birth date
    not in the future, correct check character (x read as X)."""
    s = fold(s)
    if len(s) != 18 or not s[:17].isascii() or not s[:17].isdigit():
        return False
    return _id_shaped(s[:17]) and s[17].upper() == id18_check_char(s[:17])


def _id_shaped(first17: str) -> bool:
    """17 digits that open a resident ID: a division code of the table and a real birth date."""
    return _code_exists(first17[:6]) and _real_date(int(first17[6:10]), int(first17[10:12]), int(first17[12:14]))


def valid_id15(s: str) -> bool:
    """A 15-digit legacy ID: a division code of the table at any date and a real date 19YYMMDD (no check digit)."""
    s = fold(s)
    if len(s) != 15 or not s.isascii() or not s.isdigit():
        return False
    return _code_exists(s[:6]) and _real_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12]))


def luhn_ok(digits: str) -> bool:
    """Luhn check of a digit string (full-width digits are read as digits; anything else fails)."""
    ascii_digits = _ascii_digits(digits)
    if not ascii_digits:
        return False
    total = 0
    for i, c in enumerate(reversed(ascii_digits)):
        d = ord(c) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _valid_ipv4(text: str, start: int, end: int) -> bool:
    if start > 0 and text[start - 1] in "0123456789.":
        return False  # part of a longer dotted number
    if end < len(text) and (text[end].isdigit() or (text[end] == "." and text[end + 1:end + 2].isdigit())):
        return False
    if _VERSION_CONTEXT.search(text, max(0, start - 12), start):
        return False  # 版本20.9.0.1, v1.2.3.4
    try:
        ipaddress.IPv4Address(text[start:end])
    except ValueError:  # a part above 255, or a leading zero
        return False
    return True


def _valid_ipv6(s: str) -> bool:
    if s.count(":") < 2:
        return False
    groups = [g for g in s.replace(".", ":").split(":") if g] if "." in s else [g for g in s.split(":") if g]
    if not groups:
        return False  # "::" alone
    if len(groups) == 1 and not (len(groups[0]) >= 3 or any(c.isdigit() for c in groups[0])):
        return False  # a::, d:: (C++ scopes and the like); ::1 and fe80:: are addresses
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


# ---- detectors (all on the folded text) --------------------------------------------------------------------


def _grouped_before(text: str, start: int) -> bool:
    """A digit group ends just before `start` (6200 0130 0000 0000): the number is the tail of a longer one."""
    return start >= 2 and text[start - 1] in " -" and text[start - 2].isdigit()


def _phone_hits(text: str) -> list[Hit]:
    hits = []
    for m in _PHONE.finditer(text):
        start = m.start()
        pre = _PHONE_PREFIX.search(text, max(0, start - 8), start)
        if pre is not None and pre.start() < start:
            start = pre.start()
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] == "+" or _grouped_before(text, start)):
            continue
        hits.append(Hit("phone", start, m.end(), text[start:m.end()]))
    return hits


def _landline_hits(text: str) -> list[Hit]:
    hits = []
    for m in _LANDLINE.finditer(text):
        start = m.start()
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] in "+." or _grouped_before(text, start)):
            continue
        if m.group("area") and not m.group("sep") and " " not in m.group("local") and "-" not in m.group("local") \
                and not _LANDLINE_CONTEXT.search(text, max(0, start - 8), start):
            continue  # a bare run of digits is a landline only after a word that says so
        hits.append(Hit("landline", start, m.end(), text[start:m.end()]))
    return hits


def _card_hits(text: str) -> list[Hit]:
    hits = []
    for m in _GROUPS.finditer(text):
        if m.end() - m.start() < 16:
            continue  # fewer than 16 digits
        if m.end() < len(text) and text[m.end()] in "Xx":
            continue  # 17 digits and an X: an ID's shape
        groups = [(g.start() + m.start(), g.end() + m.start()) for g in _GROUP.finditer(m.group())]
        s = 0
        while s < len(groups):
            hit = _card_at(text, groups, s)
            if hit is None:
                s += 1
                continue
            hits.append(hit)
            s = next((k for k, g in enumerate(groups) if g[0] >= hit.end), len(groups))
    return hits


def _card_shape(lens: list[int]) -> bool:
    """Group lengths a card is written in: 16-19 digits in one group, in two or more groups of 4-6 digits and a
    last group of any length (4-4-4-4, 4-4-4-4-3, 4-4-4-5), or as the 6-digit issuer number and the rest (6-13)."""
    if not 16 <= sum(lens) <= 19:
        return False
    if len(lens) == 1:
        return True
    head = lens[:-1]
    if len(head) == 1:
        return head[0] == 6
    return 4 <= head[0] <= 6 and all(n == head[0] for n in head)


def _card_at(text: str, groups: list[tuple[int, int]], s: int) -> Hit | None:
    """The card that starts at group s, if any. It is tried at every end e where groups s..e have a card's shape
    with one separator (and, when it has several groups, the group before s is not joined to it by that
    separator). A group that ends a longer shape after a shorter one could be the next number instead: it
    joins only when nothing marks it as a number of its own (_OWN_NUMBER). Of the ends left, the longest that makes
    a valid card wins: 16-19 digits passing Luhn, a 62 prefix or a card word before it (never an order number's),
    not an 18-digit ID's shape. No end valid: no card (a neighbour never rescues a Luhn-invalid one)."""
    start = groups[s][0]
    sep = text[groups[s][1]] if s + 1 < len(groups) else ""
    # Groups joined to the one before s by the same separator are no card of their own: 6221 3657 0169 9530 1997
    # is not 6221 and a card (a card of one group still is: 500 6209207648911946).
    joined_before = s > 0 and text[groups[s - 1][1]] == sep
    lens: list[int] = []
    ends: list[int] = []
    for e in range(s, len(groups)):
        if e > s and (joined_before or text[groups[e - 1][1]] != sep):
            break  # a second kind of separator: what follows is another number
        lens.append(groups[e][1] - groups[e][0])
        if sum(lens) > 19:
            break
        if _card_shape(lens):
            if ends and _OWN_NUMBER.match(text, groups[e][1]):
                break  # 6222 0212 3456 7890 500元: the 500 is an amount (and the run ends here)
            ends.append(e)
    if not ends:
        return None
    word = _CARD_CONTEXT.search(text, max(0, start - 12), start) is not None
    order = _ORDER_CONTEXT.search(text, max(0, start - 8), start) is not None
    for e in reversed(ends):
        end = groups[e][1]
        digits = text[start:end].replace(sep, "") if sep else text[start:end]
        if not luhn_ok(digits) or (len(digits) == 18 and _id_shaped(digits[:17])):
            continue  # (an ID with a wrong check digit is no card either: Gansu IDs start with 62 too)
        if word or (digits.startswith("62") and not order):
            return Hit("card", start, end, text[start:end])
    return None


def _ipv6_hits(text: str) -> list[Hit]:
    hits = []
    for m in _IPV6_RUN.finditer(text):
        start, end = m.span()
        if end < len(text) and ((text[end].isalnum() and text[end].isascii()) or text[end] == "_"):
            continue  # part of a longer word (std::cout, Foo::bar)
        run = m.group()
        if run.startswith(":") and (not run.startswith("::") or run.startswith(":::")):
            run, start = run[1:], start + 1  # 主机：2001:db8::1 (folded) or 主机:::1: the first colon is a label's
        while run and run[-1] in ".:" and not run.endswith("::"):
            run, end = run[:-1], end - 1
        # Glued to hex letters before (地址是abcd2409:8a00::1): a first group can have at most 4 of them.
        first = len(run) - len(run.lstrip("0123456789abcdefABCDEF"))
        cut = first - 4 if first > 4 and run[first:first + 1] == ":" else 0
        if _valid_ipv6(run[cut:]):
            hits.append(Hit("ip", start + cut, end, run[cut:]))
    return hits


def _candidates(text: str, kinds: Iterable[str]) -> list[Hit]:
    kinds = set(kinds)
    hits: list[Hit] = []
    if "email" in kinds and "@" in text:
        hits += [Hit("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
    digits = _LONGNUM_A.search(text) is not None
    if "id" in kinds and digits:
        hits += [Hit("id", m.start(), m.end(), m.group()) for m in _ID18.finditer(text) if valid_id18(m.group())]
        hits += [Hit("id", m.start(), m.end(), m.group()) for m in _ID15.finditer(text) if valid_id15(m.group())]
    if "card" in kinds and digits:
        hits += _card_hits(text)
    if "phone" in kinds and digits:
        hits += _phone_hits(text)
    if "landline" in kinds and _LANDLINE_GATE_A.search(text):
        hits += _landline_hits(text)
    if "ip" in kinds:
        if "." in text:
            hits += [Hit("ip", m.start(), m.end(), m.group()) for m in _IPV4.finditer(text)
                     if _valid_ipv4(text, m.start(), m.end())]
        if ":" in text and ("::" in text or _HEXCOLON_A.search(text)):
            hits += _ipv6_hits(text)
    return hits


def find_pii(text: str, kinds: Iterable[str] = DEFAULT_KINDS) -> list[Hit]:
    """Every validated piece of personal data in `text`, left to right, without overlaps. Positions and `text`
    of each hit are those of the original (full-width forms included)."""
    folded = fold(text)
    hits = _candidates(folded, kinds)
    if not hits:
        return []
    rank = {k: i for i, k in enumerate(PRIORITY)}
    hits.sort(key=lambda h: (rank[h.kind], h.start, h.start - h.end))  # the longer of two at one place
    taken: list[Hit] = []
    for h in hits:
        if all(h.end <= t.start or h.start >= t.end for t in taken):
            taken.append(h)
    taken.sort(key=lambda h: h.start)
    if folded is text:
        return taken
    return [Hit(h.kind, h.start, h.end, text[h.start:h.end]) for h in taken]


def redact(text: str, hits: list[Hit]) -> str:
    """Replace each hit (as returned by find_pii: sorted, non-overlapping) with its kind's token."""
    if not hits:
        return text
    out = []
    pos = 0
    for h in hits:
        out.append(text[pos:h.start])
        out.append(TOKENS[h.kind])
        pos = h.end
    out.append(text[pos:])
    return "".join(out)


def warm() -> None:
    """Load the division-code table now (before forking workers, so they share it)."""
    division_codes()
