"""Personal-data cases judged by outside oracles, for tests/test_pii.py and bench/bench_pii.py.

Every positive value is accepted by its oracle (python-stdnum for resident IDs and the Luhn check, phonenumbers for
mobile and fixed-line numbers, ipaddress for IP addresses) and every look-alike is refused by it; the generators
take a random.Random so hypothesis (st.randoms) and the benchmark share them. `case(rng, kind)` glues a value
into Chinese text the ways people write it: against Han characters, after a full-width colon, in brackets, at a
line end, glued to Latin letters, with and without a context word, followed by another number.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import phonenumbers
from stdnum import luhn
from stdnum.cn import ric

# Real division codes (GB/T 2260) and area codes; the oracles decide validity, these only make hits likely.
COUNTIES = ["110101", "110105", "110108", "120101", "230102", "230103", "310104", "310115", "320102", "330106",
            "370102", "410105", "420106", "440106", "440305", "510107", "610113", "620102", "650102", "530102"]
AREA_CODES = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029", "0451", "0411", "0431", "0371",
              "0571", "0755", "0532", "0591", "0731", "0871"]
HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方"

# ---- positives ---------------------------------------------------------------------------------------------------


def ric_valid(number: str) -> bool:
    """stdnum.cn.ric.is_valid, which raises KeyError for a prefecture code without a county entry (stdnum 2.2)."""
    try:
        return ric.is_valid(number)
    except KeyError:
        return False


def _date(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.randint(lo, hi)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def id18(rng: random.Random) -> str:
    while True:
        body = rng.choice(COUNTIES) + _date(rng, 1950, 2015) + f"{rng.randint(0, 999):03d}"
        number = body + ric.calc_check_digit(body + "0")
        if ric_valid(number):
            return number if rng.random() < 0.8 else number.lower()


def id15(rng: random.Random) -> str:
    while True:
        code, date, seq = rng.choice(COUNTIES), _date(rng, 1950, 1999), f"{rng.randint(0, 999):03d}"
        upgraded = code + date + seq
        if ric_valid(upgraded + ric.calc_check_digit(upgraded + "0")):  # the 15-digit form's 18-digit upgrade
            return code + date[2:] + seq


def card_digits(rng: random.Random, prefix: str = "62", length: int | None = None) -> str:
    length = length or rng.choice([16, 16, 16, 17, 18, 19, 19])
    while True:
        body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        number = body + luhn.calc_check_digit(body)
        if luhn.is_valid(number) and not (length == 18 and ric_valid(number)):
            return number


def group_card(rng: random.Random, digits: str) -> str:
    style = rng.choice(["plain", "4", "4", "4-dash", "6-rest"])
    if style == "plain":
        return digits
    if style == "6-rest":
        return digits[:6] + " " + digits[6:]
    sep = "-" if style == "4-dash" else " "
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))  # 4-4-4-4 and a last group of 1-3


def mobile_digits(rng: random.Random) -> str:
    while True:
        number = "1" + rng.choice("3456789") + "".join(str(rng.randint(0, 9)) for _ in range(9))
        parsed = phonenumbers.parse(number, "CN")
        if phonenumbers.is_valid_number(parsed) and \
                phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE:
            return number


def format_mobile(rng: random.Random, d: str) -> str:
    return rng.choice([d, f"{d[:3]} {d[3:7]} {d[7:]}", f"{d[:3]}-{d[3:7]}-{d[7:]}", f"+86 {d[:3]}-{d[3:7]}-{d[7:]}",
                       f"+86{d}", f"0086{d}", f"(+86){d}", f"86{d}", f"0{d}"])


def landline_digits(rng: random.Random) -> tuple[str, str]:
    """(area code, local number) of a number phonenumbers accepts as a mainland fixed line."""
    while True:
        area = rng.choice(AREA_CODES)
        local = str(rng.randint(2, 8)) + "".join(str(rng.randint(0, 9)) for _ in range(rng.choice([6, 7])))
        parsed = phonenumbers.parse(area + local, "CN")
        if phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in (
                phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
            return area, local


def format_landline(rng: random.Random, area: str, local: str, context: bool) -> str:
    split = f"{local[:-4]} {local[-4:]}"
    forms = [f"{area}-{local}", f"({area}){local}", f"({area}) {split}", f"{area} {split}", f"{area}-{local[:-4]}-"
             f"{local[-4:]}", f"+86 {area[1:]} {split}", f"+86-{area[1:]}-{local}"]
    if context:
        forms.append(area + local)  # no separator at all: only after a word such as 电话
    return rng.choice(forms)


def ipv4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def ipv6(rng: random.Random) -> str:
    kind = rng.choice(["random", "random", "zeros", "mapped", "loopback", "link", "doc"])
    if kind == "mapped":
        return f"::ffff:{ipv4(rng)}"
    if kind == "loopback":
        return "::1"
    if kind == "link":
        return f"fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}" if rng.random() < 0.7 else "fe80::"
    if kind == "doc":
        return f"2001:db8::{rng.getrandbits(16):x}"
    bits = rng.getrandbits(128) | (1 << 127)  # never "::", the unspecified address (no one's address)
    if kind == "zeros":  # a run of zero groups in the middle
        bits &= ~(((1 << 64) - 1) << 32)
    addr = ipaddress.IPv6Address(bits)
    text = addr.compressed if rng.random() < 0.7 else addr.exploded
    return text.upper() if rng.random() < 0.2 else text


def email(rng: random.Random) -> str:
    name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789._") for _ in range(rng.randint(3, 12)))
    name = name.strip("._") or "a"
    domain = rng.choice(["qq.com", "163.com", "hit.edu.cn", "gmail.com", "stu.hit.edu.cn"])
    return f"{name}@{domain}" if rng.random() < 0.8 else f"{name}@{domain}".upper()


# ---- contexts -----------------------------------------------------------------------------------------------------

WORDS = {"phone": ["电话", "手机", "联系电话", "手机号", "Tel"], "landline": ["电话", "座机", "办公室电话", "联系电话"],
         "id": ["身份证号", "证件号码", "身份证"], "card": ["卡号", "银行卡", "转账到银行卡", "请汇款至", "信用卡"],
         "email": ["邮箱", "email", "电子邮件"], "ip": ["IP", "主机", "服务器地址", "我的IP", "地址"]}


def han(rng: random.Random, lo: int = 1, hi: int = 6) -> str:
    return "".join(rng.choice(HAN) for _ in range(rng.randint(lo, hi)))


def wrap(rng: random.Random, value: str, kind: str, context: bool, after_number: bool = False) -> str:
    """value glued into Chinese text; context: a word naming the kind comes first."""
    lead = rng.choice(["", han(rng), han(rng) + "，", "\n", "（", "【", "「", " "])
    if context:
        word = rng.choice(WORDS[kind])
        # an ASCII word glued to an e-mail address would be read as part of its local part (emailaaa@qq.com)
        glue = ["：", ":", " ", "是", "为"] + ([""] if kind != "email" or not word.isascii() else [])
        lead += word + rng.choice(glue)
    elif kind == "ip" and rng.random() < 0.3:
        lead += "IP"  # glued to Latin letters
    tail = rng.choice(["", han(rng), "。", "，" + han(rng), "）", "】", "」", "\n", " " + han(rng)])
    if kind == "card" and tail[:1] in "年月日号次期":
        tail = "，" + tail  # "…7890 128年": is 128 the card's or a year's? Ambiguous; prep reads it as a year
    if after_number:
        tail = rng.choice([" 12月到期", " 2023年开户", " 3次", "，有效期 12 个月"]) + tail
    return lead + value + tail


def case(rng: random.Random, kind: str) -> tuple[str, str]:
    """(text, the exact span a detector must report) for one positive case of `kind`."""
    context = rng.random() < 0.5
    if kind == "id":
        value = id18(rng) if rng.random() < 0.7 else id15(rng)
        return wrap(rng, value, kind, context), value
    if kind == "card":
        if context and rng.random() < 0.3:
            value = group_card(rng, card_digits(rng, prefix=rng.choice(["4", "5", "3"])))  # not UnionPay: the word
        else:
            value = group_card(rng, card_digits(rng))
        return wrap(rng, value, kind, context, after_number=rng.random() < 0.3), value
    if kind == "phone":
        value = format_mobile(rng, mobile_digits(rng))
        return wrap(rng, value, kind, context), value
    if kind == "landline":
        area, local = landline_digits(rng)
        value = format_landline(rng, area, local, context)
        return wrap(rng, value, kind, context), value
    if kind == "email":
        value = email(rng)
        return wrap(rng, value, kind, context), value
    value = ipv4(rng) if rng.random() < 0.4 else ipv6(rng)
    return wrap(rng, value, kind, context), value


# ---- look-alikes (no detector may report anything in them) ---------------------------------------------------------


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def id_wrong_check(rng: random.Random) -> str:
    number = id18(rng).upper()
    wrong = rng.choice([c for c in "0123456789X" if c != number[-1]])
    assert not ric_valid(number[:-1] + wrong)
    return number[:-1] + wrong


def card_wrong_luhn(rng: random.Random) -> str:
    digits = card_digits(rng)
    wrong = digits[:-1] + rng.choice([c for c in "0123456789" if c != digits[-1]])
    assert not luhn.is_valid(wrong)
    return group_card(rng, wrong)


def order_number(rng: random.Random) -> str:
    return rng.choice(["订单号", "单号", "编号", "流水号", "运单号", "订单"]) + _digits(rng, rng.randint(15, 24))


def timestamp(rng: random.Random) -> str:
    seconds = str(rng.randint(1_000_000_000, 1_900_000_000))
    return rng.choice(["时间戳", "ts=", "创建于"]) + (seconds + f"{rng.randint(0, 999):03d}" if rng.random() < 0.5
                                                    else seconds)


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{y}年{m}月{d}日", f"{y}{m:02d}{d:02d}", f"{y}/{m}/{d}",
                       f"{y}-{m:02d}-{d:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                       f"{rng.randint(0, 59):02d}"])


def version(rng: random.Random) -> str:
    parts = ".".join(str(rng.randint(0, 30)) for _ in range(4))
    return rng.choice(["版本", "版本号", "version ", "v", "V", "当前版本为", "固件版本：", "ver "]) + parts


def clock(rng: random.Random) -> str:
    h, m, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    return rng.choice(["会议在", "时间", "比分"]) + f"{h}:{m:02d}:{s:02d}"


def id15_lookalike(rng: random.Random) -> str:
    """A random 15-digit number after an order word: what the legacy-ID check must not take for an ID."""
    while True:
        number = _digits(rng, 15)
        upgraded = number[:6] + "19" + number[6:]
        if not ric_valid(upgraded + ric.calc_check_digit(upgraded + "0")):
            return rng.choice(["订单号", "单号", "编号", ""]) + number


LOOKALIKES: dict[str, Callable[[random.Random], str]] = {
    "ID, wrong check digit": id_wrong_check, "card, Luhn-invalid": card_wrong_luhn,
    "order number": order_number, "15-digit number (not a legacy ID)": id15_lookalike, "timestamp": timestamp,
    "date": date, "version string": version, "clock time": clock,
}


def lookalike(rng: random.Random, name: str) -> str:
    value = LOOKALIKES[name](rng)
    lead = rng.choice(["", han(rng), han(rng) + "，", "\n", "（", "："])
    return lead + value + rng.choice(["", han(rng), "。", "）", "\n"])
