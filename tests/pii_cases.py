"""Personal-data cases judged by outside oracles, for tests/test_pii.py and bench/bench_pii.py.

Every positive value is accepted by its oracle (python-stdnum for resident IDs and the Luhn check, phonenumbers for
mobile and fixed-line numbers, ipaddress for IP addresses) and every look-alike is refused by it; the generators
take a random.Random so hypothesis (st.randoms) and the benchmark share them. `case(rng, kind)` glues a value
into Chinese text the ways people write it: against Han characters, after a full-width colon, in brackets, at a
line end, glued to Latin letters, with and without a context word, followed by another number.

The families of issue 22 (`FAMILIES`): bank cards followed by an amount, a count, a date or another number, in
every grouping, valid and Luhn-invalid; resident IDs with every division code of python-stdnum's table, born
before their code was created, and their look-alikes (a code the table lacks, a future birth date, a wrong check
digit). Resident IDs are judged by stdnum's own pieces without its date rule (`ric_valid_any_date`): an ID keeps
the code of first registration for life, so a code newer than the birth year is normal; `ric.is_valid` demands
that the code existed in the birth year.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import random
import re
from collections.abc import Callable

import phonenumbers
from stdnum import luhn, numdb
from stdnum.cn import ric
from stdnum.exceptions import ValidationError

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


def ric_valid_any_date(number: str) -> bool:
    """python-stdnum's checks without its date rule: 18 characters, the check digit (ric.calc_check_digit), a real
    birth date (ric.get_birth_date) not in the future, and a division code its GB/T 2260 table lists at any date
    (the lookup ric.get_birth_place makes, without comparing the code's years with the birth year)."""
    number = ric.compact(number)
    if len(number) != 18 or not number[:17].isdigit() or number[-1] != ric.calc_check_digit(number):
        return False
    try:
        born = ric.get_birth_date(number)
    except ValidationError:
        return False
    return 1800 <= born.year and born <= datetime.date.today() and code_listed(number[:6])


def id_shaped(first17: str) -> bool:
    """17 digits that open an ID valid by ric_valid_any_date with the right check digit."""
    return ric_valid_any_date(first17 + ric.calc_check_digit(first17 + "0"))


def code_listed(code: str) -> bool:
    """stdnum's table lists this 6-digit code (ric.get_birth_place's lookup finds a county entry for it)."""
    return any("county" in props for _, props in numdb.get("cn/loc").info(code))


@functools.lru_cache(maxsize=1)
def table_codes() -> dict[str, int | None]:
    """Every code of stdnum's GB/T 2260 table -> the year it was created (None: the table gives no start, it is
    as old as the table). A code with several names ("[-1991]东郊区,[1992-]东丽区") counts from its first name."""
    out: dict[str, int | None] = {}
    for _, plo, _, _, children in numdb.get("cn/loc").prefixes:
        for _, clo, _, props, _ in children:
            if "county" not in props:
                continue
            starts = [re.match(r"\[(\d{4})?-", name) for name in props["county"].split(",")]
            years = [int(m.group(1)) if m and m.group(1) else None for m in starts]
            out[plo + clo] = None if None in years else min(years)  # type: ignore[type-var]
    return out


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
    """A Luhn-valid card number (stdnum.luhn), never an 18-digit number that opens a resident ID."""
    length = length or rng.choice([16, 16, 16, 17, 18, 19, 19])
    while True:
        body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        number = body + luhn.calc_check_digit(body)
        if luhn.is_valid(number) and not (length == 18 and id_shaped(number[:17])):
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


# Words that make the number before them a number of its own (an amount, a count, a date): what a card's last
# group must not be glued to in a positive case, since "6222 0212 3456 7890 128年" may be a card and a year.
UNIT_WORDS = "元圆块角毛分万千百亿年月日号时点秒次笔个张件天周期岁人位名份台条遍倍%‰"


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
    if kind == "card" and tail.lstrip(" ")[:1] in UNIT_WORDS and tail.strip(" "):
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
    """A card number with a wrong last digit, Luhn-invalid at every end a card could have (16 digits .. all of
    them): 6283 1809 3348 1207 78 whose first 16 digits pass Luhn is a card and a number, not a look-alike."""
    while True:
        digits = card_digits(rng)
        wrong = digits[:-1] + rng.choice([c for c in "0123456789" if c != digits[-1]])
        if not any(luhn.is_valid(wrong[:n]) for n in range(16, len(wrong) + 1)):
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
    """A random 15-digit number after an order word: what the legacy-ID check must not take for an ID (its 18-digit
    upgrade, 19 inserted before the year, is no ID by ric_valid_any_date)."""
    while True:
        number = _digits(rng, 15)
        upgraded = number[:6] + "19" + number[6:]
        if not id_shaped(upgraded):
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


# ---- issue 22's families: cards followed by a number, IDs by every code of the table --------------------------------

CARD_GROUPINGS = ("contiguous", "4-4-4-4 spaces", "4-4-4-4 dashes", "6 then the rest", "19 digits 4-4-4-4-3")
FOLLOWERS = ("amount", "count", "date", "other number")


def group_as(digits: str, grouping: str) -> str:
    if grouping == "contiguous":
        return digits
    if grouping == "6 then the rest":
        return digits[:6] + " " + digits[6:]
    sep = "-" if grouping == "4-4-4-4 dashes" else " "
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def _card_for(rng: random.Random, grouping: str, valid: bool) -> tuple[str, bool]:
    """(digits, a card word comes first). Half with a card word and any prefix, half a 62 prefix and no word.
    A Luhn-invalid number is also invalid at every shorter end a grouped card could have (16..len-1 digits):
    otherwise a rule that tries every end finds a real, shorter card in it."""
    word = rng.random() < 0.5
    prefix = rng.choice(["62", "4", "5", "3"]) if word else "62"
    length = 19 if grouping.startswith("19") else rng.choice([16, 16, 17, 18, 19])
    while True:
        digits = card_digits(rng, prefix, length)
        if valid:
            return digits, word
        digits = digits[:-1] + rng.choice([c for c in "0123456789" if c != digits[-1]])
        if not any(luhn.is_valid(digits[:n]) for n in range(16, len(digits) + 1)) and not (
                length == 18 and id_shaped(digits[:17])):
            return digits, word


def follower(rng: random.Random, kind: str, digits: str, grouping: str, sep: str) -> str:
    """A number of its own after a card: amount, count, date, or a bare number. The one shape no rule can read
    (a 16-digit card in groups of 4, the same separator, 1-3 bare digits: also how a 19-digit card is written) is
    left to `ambiguous_card`."""
    if kind == "amount":
        return rng.choice([f"{rng.randint(1, 99999)}元", f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}元",
                           f"{rng.randint(1, 99)},{rng.randint(0, 999):03d}元", f"{rng.randint(1, 999)} 元",
                           f"{rng.randint(1, 99)}万元", f"{rng.randint(1, 999)}块", f"{rng.randint(1, 9999)}RMB",
                           f"{rng.randint(1, 9999)} CNY", f"{rng.randint(1, 99)}%"])
    if kind == "count":
        return f"{rng.randint(1, 999)}{rng.choice(['次', '笔', '张', '个', '期', '天', '人'])}"
    if kind == "date":
        y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{y}/{m:02d}/{d:02d}", f"{y}年{m}月{d}日", f"{m}月到期",
                           f"{m:02d}/{y % 100:02d}", f"{y}年开户", f"{d}号", f"{y}-{m:02d}-{d:02d} 12:30"])
    ambiguous = len(digits) == 16 and grouping.startswith("4-4-4-4") and sep == ("-" if "dash" in grouping else " ")
    n = rng.randint(4, 8) if ambiguous else rng.randint(1, 8)
    return _digits(rng, n)


def card_then_number(rng: random.Random, grouping: str, kind: str, valid: bool = True) -> tuple[str, str]:
    """(text, the card as written) for a card, then a space or a dash, then a number of its own."""
    digits, word = _card_for(rng, grouping, valid)
    value = group_as(digits, grouping)
    sep = rng.choice([" ", " ", "-"])
    words = ["卡号", "银行卡", "收款卡号", "请汇款至", "转账到银行卡", "信用卡"]
    lead = rng.choice(["", han(rng), han(rng) + "，", "\n", "（"]) + (
        rng.choice(words) + rng.choice(["：", " ", "", "为"]) if word else "")
    tail = rng.choice(["", "。", "，" + han(rng), "\n", "）"])
    return lead + value + sep + follower(rng, kind, digits, grouping, sep) + tail, value


def ambiguous_card(rng: random.Random, valid: bool) -> tuple[str, str, str]:
    """(text, the 16-digit card, the whole grouped number) for the shape the rule cannot decide: a 16-digit card in
    groups of 4, the same separator, 1-3 digits and nothing after them."""
    sep = rng.choice([" ", "-"])
    digits, word = _card_for(rng, "4-4-4-4 spaces", valid)
    while len(digits) != 16:
        digits, word = _card_for(rng, "4-4-4-4 spaces", valid)
    value = sep.join(digits[i:i + 4] for i in range(0, 16, 4))
    whole = value + sep + _digits(rng, rng.randint(1, 3))
    lead = rng.choice(["", han(rng)]) + (rng.choice(["卡号", "银行卡", "请汇款至"]) if word else "")
    return lead + whole + rng.choice(["", "。", "，谢谢", "\n"]), value, whole


def _birth(rng: random.Random, lo: int, hi: int) -> datetime.date:
    today = datetime.date.today()
    while True:
        try:
            born = datetime.date(rng.randint(lo, hi), rng.randint(1, 12), rng.randint(1, 31))
        except ValueError:
            continue
        if born <= today:
            return born


def id_with(rng: random.Random, code: str, born: datetime.date, legacy: bool = False) -> str:
    """An ID of this code and birth date: 18 digits with stdnum's check digit, or the 15-digit legacy form."""
    seq = f"{rng.randint(0, 999):03d}"
    if legacy:
        return code + born.strftime("%y%m%d") + seq
    body = code + born.strftime("%Y%m%d") + seq
    number = body + ric.calc_check_digit(body + "0")
    return number.lower() if number.endswith("X") and rng.random() < 0.3 else number


def id_of_code(rng: random.Random, code: str) -> str:
    """An ID with this code, born in any year from the code's creation (or 1930) to today."""
    created = table_codes()[code] or 1930
    return id_with(rng, code, _birth(rng, created, datetime.date.today().year))


def id_born_before_code(rng: random.Random, code: str) -> str:
    """An ID born before its code was created (registered there later): what stdnum's is_valid rejects. A code
    created before 2000 also gives 15-digit legacy IDs (issued 1984-2004, years 19YY)."""
    created = table_codes()[code]
    assert created is not None and created > 1900
    if created <= 2000 and rng.random() < 0.3:
        return id_with(rng, code, _birth(rng, 1900, created - 1), legacy=True)
    return id_with(rng, code, _birth(rng, max(1900, created - 80), created - 1))


def _not_a_card(number: str) -> bool:
    return not (number.startswith("62") and luhn.is_valid(number))


def id_unlisted_code(rng: random.Random) -> str:
    """18 digits with a right check digit and a real birth date whose code the table does not list."""
    provinces = sorted({c[:2] for c in table_codes()})
    while True:
        code = rng.choice(provinces) + f"{rng.randint(0, 9999):04d}"
        if code_listed(code):
            continue
        number = id_with(rng, code, _birth(rng, 1930, 2015)).upper()
        if _not_a_card(number):
            return number


def id_future_birth(rng: random.Random) -> str:
    """A listed code and a right check digit, born after today."""
    today = datetime.date.today()
    while True:
        code = rng.choice(sorted(table_codes()))
        born = today + datetime.timedelta(days=rng.randint(1, 365 * 60))
        body = code + born.strftime("%Y%m%d") + f"{rng.randint(0, 999):03d}"
        number = body + ric.calc_check_digit(body + "0")
        if _not_a_card(number):
            return number


def id_born_before_code_wrong_check(rng: random.Random) -> str:
    codes = sorted(c for c, y in table_codes().items() if y and y > 1900)
    while True:
        number = id_born_before_code(rng, rng.choice(codes)).upper()
        if len(number) != 18:
            continue
        wrong = number[:-1] + rng.choice([c for c in "0123456789X" if c != number[-1]])
        if _not_a_card(wrong) and not ric_valid_any_date(wrong):
            return wrong


def id_family_born_before_code(rng: random.Random) -> tuple[str, str]:
    codes = sorted(c for c, y in table_codes().items() if y and y > 1900)
    value = id_born_before_code(rng, rng.choice(codes))
    return wrap(rng, value, "id", rng.random() < 0.5), value


def every_code_ids(rng: random.Random) -> list[tuple[str, str]]:
    """One ID for every code of the table (text, value), born from the code's creation (or 1930) to today."""
    out = []
    for code in sorted(table_codes()):
        value = id_of_code(rng, code)
        out.append((wrap(rng, value, "id", rng.random() < 0.5), value))
    return out


def lookalike_text(rng: random.Random, value: str) -> str:
    lead = rng.choice(["", han(rng), han(rng) + "，", "\n", "（", "：", "身份证号"])
    return lead + value + rng.choice(["", han(rng), "。", "）", "\n"])


def _card_family(grouping: str, kind: str, valid: bool) -> Callable[[random.Random], tuple[str, str]]:
    def make(rng: random.Random) -> tuple[str, str]:
        text, value = card_then_number(rng, grouping, kind, valid)
        return text, value if valid else ""
    return make


def _lookalike_family(make: Callable[[random.Random], str]) -> Callable[[random.Random], tuple[str, str]]:
    return lambda rng: (lookalike_text(rng, make(rng)), "")


def undecidable_expectation(value: str, whole: str) -> str:
    """What the rule reports for ambiguous_card's text, by the oracles: the whole when it passes Luhn and is no
    ID's shape, else the 16-digit card when it passes Luhn, else nothing ("")."""
    joined = whole.replace(" ", "").replace("-", "")
    if luhn.is_valid(joined) and not (len(joined) == 18 and id_shaped(joined[:17])):
        return whole
    return value if luhn.is_valid(value.replace(" ", "").replace("-", "")) else ""


def _undecidable_family(valid: bool) -> Callable[[random.Random], tuple[str, str]]:
    def make(rng: random.Random) -> tuple[str, str]:
        text, value, whole = ambiguous_card(rng, valid)
        return text, undecidable_expectation(value, whole)
    return make


# Family name -> (kind, a generator of (text, the exact span a detector must report; "" when nothing)).
FAMILIES: dict[str, tuple[str, Callable[[random.Random], tuple[str, str]]]] = {
    **{f"card before {f}, {g}": ("card", _card_family(g, f, True)) for g in CARD_GROUPINGS for f in FOLLOWERS},
    **{f"Luhn-invalid card before {f}, {g}": ("card", _card_family(g, f, False))
       for g in CARD_GROUPINGS for f in FOLLOWERS},
    "undecidable: 16-digit card in 4s, same separator, 1-3 digits": ("card", _undecidable_family(True)),
    "undecidable: Luhn-invalid 16 digits in 4s, same separator, 1-3 digits": ("card", _undecidable_family(False)),
    "ID, code newer than the birth year": ("id", id_family_born_before_code),
    "ID, code not in the table": ("id", _lookalike_family(id_unlisted_code)),
    "ID, birth date in the future": ("id", _lookalike_family(id_future_birth)),
    "ID, code newer than birth year, wrong check digit": ("id", _lookalike_family(id_born_before_code_wrong_check)),
}
