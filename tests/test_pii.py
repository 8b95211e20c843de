"""PII detection: test vectors for every kind, digits glued to Chinese text, look-alikes that must pass, and
hypothesis-generated cases judged by outside oracles (python-stdnum, phonenumbers, ipaddress: tests/pii_cases.py)."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pii_cases import LOOKALIKES, card_digits, case, id15, id18, lookalike
from stdnum import luhn
from stdnum.cn import ric

from sftkit.clean.pii import KINDS, find_pii, fold, id18_check_char, luhn_ok, redact, valid_id15, valid_id18


def kinds(text: str) -> list[tuple[str, str]]:
    return [(h.kind, h.text) for h in find_pii(text)]


@pytest.mark.parametrize("text,expected", [
    ("请拨打13812345678联系", [("phone", "13812345678")]),
    ("电话:138 1234 5678。", [("phone", "138 1234 5678")]),
    ("电话138-1234-5678", [("phone", "138-1234-5678")]),
    ("电话+86 138-1234-5678谢谢", [("phone", "+86 138-1234-5678")]),
    ("电话+8613812345678谢谢", [("phone", "+8613812345678")]),
    ("(+86)19912345678", [("phone", "(+86)19912345678")]),
    ("008615912345678", [("phone", "008615912345678")]),
    ("8613812345678号", [("phone", "8613812345678")]),
])
def test_mobile_numbers_are_caught_even_inside_chinese(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize("text", [
    "订单号202311221234567890123已发货",  # 21-digit order number
    "时间戳1700000000123",  # millisecond timestamp (13 digits)
    "时间戳1700000000",  # 10 digits
    "编号2138123456789",  # a mobile-shaped run inside a longer number
    "12812345678",  # 128 is not a mobile prefix
    "2023年11月22日14:30:05",
    "价格12,345,678元",
])
def test_numbers_that_are_not_personal_data(text: str) -> None:
    assert find_pii(text) == []


def test_resident_id_check_digit_and_date() -> None:
    assert id18_check_char("11010519491231002") == "X"
    assert valid_id18("11010519491231002X") and valid_id18("11010519491231002x")
    assert valid_id18("110101199003074514")
    assert not valid_id18("110101199003074515")  # wrong check digit
    assert not valid_id18("110101199002304510")  # 30 February
    assert not valid_id18("000101199003074514")  # no such province
    assert valid_id15("110105491231002") and not valid_id15("110105491331002")  # month 13


@pytest.mark.parametrize("text,expected", [
    ("身份证号11010519491231002X，请核对", [("id", "11010519491231002X")]),
    ("身份证110101199003074514号", [("id", "110101199003074514")]),
    ("老身份证110105491231002", [("id", "110105491231002")]),
    ("编号110101199003074515", []),  # wrong check digit: not an ID (and not a card: no 62, no context)
    ("流水号110101199002304510", []),  # impossible date
])
def test_resident_ids(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("6200000000000005")
    assert not luhn_ok("4111111111111112") and not luhn_ok("6200000000000006")


@pytest.mark.parametrize("text,expected", [
    ("银联卡6200000000000005请查收", [("card", "6200000000000005")]),  # 62 prefix
    ("卡号：4111111111111111", [("card", "4111111111111111")]),  # context word
    ("卡号为4111 1111 1111 1111", [("card", "4111 1111 1111 1111")]),
    ("6222 0212 3456 7890 128", [("card", "6222 0212 3456 7890 128")]),
    ("编号4111111111111111", []),  # Luhn-valid but neither 62 nor a card context
    ("卡号6200000000000006", []),  # Luhn fails
])
def test_bank_cards(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("邮箱abc.def@qq.com请联系", [("email", "abc.def@qq.com")]),
    ("邮箱ABC_X@HIT.EDU.CN吧", [("email", "ABC_X@HIT.EDU.CN")]),
    ("地址192.168.1.1可以访问", [("ip", "192.168.1.1")]),
    ("服务器10.0.0.255。", [("ip", "10.0.0.255")]),
    ("地址2001:db8::1好", [("ip", "2001:db8::1")]),
    ("fe80:0:0:0:202:b3ff:fe1e:8329", [("ip", "fe80:0:0:0:202:b3ff:fe1e:8329")]),
    ("版本v1.2.3.4和1.2.3.4.5", []),  # a version string and a longer dotted number
    ("256.1.1.1", []),
    ("std::vector<int> 和 a::b::c", []),
    ("会议在12:30:45开始", []),
])
def test_email_and_ip(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


def test_redact_replaces_each_piece_with_its_token() -> None:
    text = "电话13812345678，邮箱a@b.cn，身份证11010519491231002X，卡号6200000000000005，IP 8.8.8.8。"
    assert redact(text, find_pii(text)) == "电话<PHONE>，邮箱<EMAIL>，身份证<ID>，卡号<CARD>，IP <IP>。"


def test_kinds_can_be_limited() -> None:
    text = "电话13812345678，IP 8.8.8.8"
    assert [h.kind for h in find_pii(text, ("ip",))] == ["ip"]
    assert [h.kind for h in find_pii(text, ("phone",))] == ["phone"]


def test_an_id_is_not_also_reported_as_a_card_or_phone() -> None:
    body = "62010119900307451"
    assert id18_check_char(body) != "X"
    # ID-shaped with a wrong check character: neither an ID nor (though 62... and Luhn-valid) a card.
    assert luhn_ok(body) and kinds(f"身份证{body}X") == []
    valid = body + id18_check_char(body)
    assert kinds(f"号码{valid}") == [("id", valid)]


def test_the_batch_gate_sees_every_kind() -> None:
    # Pii.run only runs the detectors on records where gate_positions finds something: it must never miss.
    from sftkit.clean.pii import gate_positions

    samples = ["电话13812345678", "+86 138-1234-5678", "身份证11010519491231002X", "老身份证110105491231002",
               "卡号4111 1111 1111 1111", "6222 0212 3456 7890 128", "a@b.cn", "ip1.2.3.4", "2001:db8::1",
               "fe80:0:0:0:202:b3ff:fe1e:8329", "::ffff:1.2.3.4"]
    for text in samples:
        assert find_pii(text), text
        assert gate_positions(text), text
    assert gate_positions("今天是2023年，天气很好。1. 第一点") == []


# ---- the failures found against outside oracles (issue 9), one by one ------------------------------------------

WIDE_CARD = "".join(chr(ord(c) + 0xFEE0) for c in "6200000000000005")  # full-width digits


@pytest.mark.parametrize("text,expected", [
    ("主机：2001:db8::1", [("ip", "2001:db8::1")]),  # after a full-width colon
    ("主机:2001:db8::1", [("ip", "2001:db8::1")]),  # the same after NFKC folded the colon
    ("我的IP2409:8a00::72e1", [("ip", "2409:8a00::72e1")]),  # glued to Latin letters
    ("映射地址::ffff:192.0.2.1。", [("ip", "::ffff:192.0.2.1")]),  # IPv4-mapped, all of it
    ("本机::1可用", [("ip", "::1")]), ("链路fe80::即可", [("ip", "fe80::")]),  # single-group forms
    ("转账到银行卡6223 2957 8911 63033 12月到期", [("card", "6223 2957 8911 63033")]),  # a number follows the card
    ("请汇款至623457462736054056 2023年开户", [("card", "623457462736054056")]),
    ("卡号6222 0212 3456 7890 3 请核对", [("card", "6222 0212 3456 7890 3")]),  # 17 digits grouped 4-4-4-4-1
    ("版本20.9.0.1发布", []), ("当前版本为 20.9.0.1", []),  # a version string after a word, not an IP
    ("订单号310199871231002", []),  # 15 digits with a real date but no such county code: an order number
    ("老身份证310104871231002", [("id", "310104871231002")]),  # the same with a real county: a legacy ID
    ("电话０４５１－８６４１２１１４", []),  # a landline is not a default kind
    ("手机１３８１２３４５６７８请回电", [("phone", "１３８１２３４５６７８")]),  # full-width digits
    ("身份证：１１０１０１１９９００３０７４５１４", [("id", "１１０１０１１９９００３０７４５１４")]),
    ("卡号" + WIDE_CARD, [("card", WIDE_CARD)]),
    ("邮箱ａｂｃ＠ｑｑ．ｃｏｍ", [("email", "ａｂｃ＠ｑｑ．ｃｏｍ")]),
    ("手机013812345678", [("phone", "013812345678")]),  # a leading trunk 0
])
def test_issue_cases(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("办公室0451-86412114", [("landline", "0451-86412114")]),
    ("电话(0451)8641 2114。", [("landline", "(0451)8641 2114")]),
    ("（0451）8641-2114", [("landline", "(0451)8641-2114".replace("(", "（").replace(")", "）"))]),
    ("总机+86 451 8641 2114", [("landline", "+86 451 8641 2114")]),
    ("座机045186412114", [("landline", "045186412114")]),  # no separator: after a word that says so
    ("编号045186412114", []),  # ... and not without one
    ("日期2023-11-22", []), ("手机13812345678", [("phone", "13812345678")]),  # not landlines
])
def test_landlines_when_asked_for(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(h.kind, h.text) for h in find_pii(text, KINDS)] == expected


def test_full_width_digits_and_luhn() -> None:
    assert luhn_ok(WIDE_CARD) and not luhn_ok(WIDE_CARD[:-1] + "６")
    assert not luhn_ok("") and not luhn_ok("12a4") and not luhn_ok("١٢٣٤")  # Arabic-Indic digits are no card
    assert valid_id18("１１０１０１１９９００３０７４５１４")
    assert id18_check_char("１１０１０１１９９００３０７４５１") == "4"
    assert fold("１３８－１２３４　５６７８") == "138-1234 5678" and len(fold("ＡＢ")) == 2


def test_redaction_keeps_full_width_text_around() -> None:
    text = "请拨打１３８１２３４５６７８，谢谢！"
    assert redact(text, find_pii(text)) == "请拨打<PHONE>，谢谢！"


# ---- against the oracles ---------------------------------------------------------------------------------------


def test_check_digits_agree_with_stdnum() -> None:
    rng = random.Random(1)
    for _ in range(300):
        number = id18(rng).upper()
        assert valid_id18(number) and id18_check_char(number[:17]) == ric.calc_check_digit(number)
        assert valid_id15(id15(rng))
        digits = card_digits(rng)
        assert luhn_ok(digits) == luhn.is_valid(digits) is True
        wrong = digits[:-1] + str((int(digits[-1]) + 1) % 10)
        assert luhn_ok(wrong) == luhn.is_valid(wrong) is False
    assert not valid_id18("110101199003074515") and not ric.is_valid("110101199003074515")


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(KINDS))
def test_every_kind_is_found_exactly_in_any_context(rng: random.Random, kind: str) -> None:
    text, value = case(rng, kind)
    found = [(h.kind, h.text) for h in find_pii(text, KINDS)]
    assert found == [(kind, value)], text


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(LOOKALIKES)))
def test_look_alikes_are_left_alone(rng: random.Random, name: str) -> None:
    text = lookalike(rng, name)
    assert find_pii(text) == [], text


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mobiles_phonenumbers_accepts_are_found(rng: random.Random) -> None:
    text, value = case(rng, "phone")
    digits = "".join(c for c in value if c.isdigit())
    parsed = phonenumbers.parse(digits if not value.startswith(("+", "(+")) else value.replace("(", "").replace(
        ")", ""), "CN")
    assert phonenumbers.is_valid_number(parsed)  # the oracle agrees the case is a mobile number
    assert [h.text for h in find_pii(text)] == [value]
