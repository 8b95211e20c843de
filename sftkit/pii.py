"""Personal data in Chinese and English text: detect, redact.

Kinds (and the token `redact` puts in their place):
- phone `<PHONE>`: mainland mobile numbers, 1[3-9]x plus 8 digits, optionally written with +86 / 0086 / 86,
  spaces or dashes (138 1234 5678, +86-138-1234-5678).
- id `<ID>`: 18-digit resident ID with a known province code, a real birth date (1900..this year) and a valid
  ISO 7064 MOD 11-2 check digit; the 15-digit legacy form (province code, real 19YYMMDD date, no check digit).
- card `<CARD>`: 16-19 digits (optionally in groups split by spaces or dashes) that pass the Luhn check AND
  either start with 62 (China UnionPay) or follow a context word such as 卡号 / 银行卡 / card within 12 characters.
- email `<EMAIL>`: local@domain.tld in any letter case.
- ip `<IP>`: dotted-quad IPv4 (each part 0-255, not part of a longer dotted number such as a version 1.2.3.4.5)
  and IPv6 (full or :: compressed, validated by `ipaddress`, at least two non-empty groups).

Digit runs are delimited by "no digit before / after" look-arounds, never by \\b: in Chinese text a number sits
right against Han characters ("电话13812345678联系"), where \\b finds no boundary. Every candidate is validated
before it counts, so order numbers, timestamps and IDs with a wrong check digit are left alone.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("phone", "id", "card", "email", "ip")
TOKENS = {"phone": "<PHONE>", "id": "<ID>", "card": "<CARD>", "email": "<EMAIL>", "ip": "<IP>"}
# When two detections overlap, the earlier kind in this order wins (an 18-digit ID is not also a card).
PRIORITY = ("email", "id", "card", "phone", "ip")

# Every pattern below starts with a plain character or class (the "no digit before" look-behind comes after
# the first digit), so `re` can skip through text quickly to the places worth trying.
_DIGIT3 = re.compile(r"\d\d\d")
# Anything that can begin a piece of personal data: 11+ digits (separators allowed), a dotted number, an @, or
# a colon between hex digits. Text without any of these has none (used to skip whole records quickly).
_LONGNUM = re.compile(r"\d(?:[ -]?\d){10}")
_DOTTED_QUAD_START = re.compile(r"\d\.\d{1,3}\.\d")


def gate_positions(text: str) -> list[int]:
    """Positions where a piece of personal data could start (each scan on its own: one alternation of all of
    them would keep `re` from skipping ahead and is slower than the separate scans together)."""
    pos = [m.start() for m in _LONGNUM.finditer(text)]
    pos += [m.start() for m in _DOTTED_QUAD_START.finditer(text)]
    for needle in ("@", "::"):
        i = text.find(needle)
        while i >= 0:
            pos.append(i)
            i = text.find(needle, i + 1)
    if ":" in text:
        pos += [m.start() for m in _HEXCOLON.finditer(text)]
    return pos
_DOTTED = re.compile(r"\d\.\d")
_HEXCOLON = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]")

# Mobile core: 1[3-9]x then 8 digits, in 3-4-4 groups optionally split by a space or dash. A +86 / 0086 / 86
# prefix in front of it is looked for by hand (see _phone_hits).
_PHONE = re.compile(r"1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)")
_PHONE_PREFIX = re.compile(r"\(?(?:\+|00)?86\)?[ -]?$")
# Candidates for IDs: 18 chars (17 digits + digit or X) or 15 digits, not inside a longer digit run.
_ID18 = re.compile(r"\d(?<!\d\d)\d{16}[\dXx](?![\dXx])")
_ID15 = re.compile(r"\d(?<!\d\d)\d{14}(?!\d)")
# Cards: 16-19 digits, plain or split into groups by single spaces/dashes.
_CARD = re.compile(r"\d(?<![\d-]\d)\d{3,5}(?:[ -]?\d{2,6}){2,4}(?![\dXx])")  # 17 digits + X: an ID shape
_CARD_CONTEXT = re.compile(r"(?i)卡号|银行卡|信用卡|储蓄卡|借记卡|银联|card|账号|帐号|卡\s*[:：]")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![0-9A-Za-z_:.][0-9A-Fa-f:])[0-9A-Fa-f:]*(?![0-9A-Za-z_:])")

# Province-level codes that open a resident ID number (GB/T 2260).
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82 91".split()
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


@dataclass(frozen=True)
class Hit:
    kind: str
    start: int
    end: int
    text: str


def _real_date(year: int, month: int, day: int) -> bool:
    if not 1900 <= year <= datetime.date.today().year:
        return False
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def id18_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def valid_id18(s: str) -> bool:
    if len(s) != 18 or not s[:17].isdigit() or s[:2] not in _PROVINCES:
        return False
    if not _real_date(int(s[6:10]), int(s[10:12]), int(s[12:14])):
        return False
    return s[17].upper() == id18_check_char(s[:17])


def valid_id15(s: str) -> bool:
    if len(s) != 15 or not s.isdigit() or s[:2] not in _PROVINCES:
        return False
    return _real_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12]))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _valid_ipv4(text: str, start: int, end: int) -> bool:
    if start > 0 and text[start - 1] in "0123456789.vV":
        return False  # part of a longer dotted number or a version such as v1.2.3.4
    if end < len(text) and (text[end].isdigit() or (text[end] == "." and text[end + 1:end + 2].isdigit())):
        return False
    return all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in text[start:end].split("."))


def _phone_hits(text: str) -> list[Hit]:
    hits = []
    for m in _PHONE.finditer(text):
        start = m.start()
        pre = _PHONE_PREFIX.search(text, max(0, start - 8), start)
        if pre is not None and pre.start() < start:
            start = pre.start()
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] == "+"):
            continue
        hits.append(Hit("phone", start, m.end(), text[start:m.end()]))
    return hits


def _valid_ipv6(s: str) -> bool:
    if s.count(":") < 2 or sum(1 for g in s.split(":") if g) < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _candidates(text: str, kinds: Iterable[str]) -> list[Hit]:
    kinds = set(kinds)
    hits: list[Hit] = []
    if "email" in kinds and "@" in text:
        hits += [Hit("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
    digits3 = _LONGNUM.search(text) is not None
    if "id" in kinds and digits3:
        hits += [Hit("id", m.start(), m.end(), m.group()) for m in _ID18.finditer(text) if valid_id18(m.group())]
        hits += [Hit("id", m.start(), m.end(), m.group()) for m in _ID15.finditer(text) if valid_id15(m.group())]
    if "card" in kinds and digits3:
        for m in _CARD.finditer(text):
            digits = m.group().replace(" ", "").replace("-", "")
            if not 16 <= len(digits) <= 19 or not luhn_ok(digits):
                continue
            if digits.startswith("62") or _CARD_CONTEXT.search(text, max(0, m.start() - 12), m.start()):
                hits.append(Hit("card", m.start(), m.end(), m.group()))
    if "phone" in kinds and digits3:
        hits += _phone_hits(text)
    if "ip" in kinds:
        if _DOTTED.search(text):
            hits += [Hit("ip", m.start(), m.end(), m.group()) for m in _IPV4.finditer(text)
                     if _valid_ipv4(text, m.start(), m.end())]
        if ":" in text and ("::" in text or _HEXCOLON.search(text)):
            hits += [Hit("ip", m.start(), m.end(), m.group()) for m in _IPV6.finditer(text)
                     if _valid_ipv6(m.group())]
    return hits


def find_pii(text: str, kinds: Iterable[str] = KINDS) -> list[Hit]:
    """Every validated piece of personal data in `text`, left to right, without overlaps."""
    hits = _candidates(text, kinds)
    if not hits:
        return []
    rank = {k: i for i, k in enumerate(PRIORITY)}
    hits.sort(key=lambda h: (rank[h.kind], h.start))
    taken: list[Hit] = []
    for h in hits:
        if all(h.end <= t.start or h.start >= t.end for t in taken):
            taken.append(h)
    taken.sort(key=lambda h: h.start)
    return taken


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
