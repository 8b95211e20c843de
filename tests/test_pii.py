"""PII detection: test vectors for every kind, digits glued to Chinese text, and look-alikes that must pass."""

from __future__ import annotations

import pytest

from sftkit.pii import find_pii, id18_check_char, luhn_ok, redact, valid_id15, valid_id18


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
    from sftkit.pii import gate_positions

    samples = ["电话13812345678", "+86 138-1234-5678", "身份证11010519491231002X", "老身份证110105491231002",
               "卡号4111 1111 1111 1111", "6222 0212 3456 7890 128", "a@b.cn", "ip1.2.3.4", "2001:db8::1",
               "fe80:0:0:0:202:b3ff:fe1e:8329", "::ffff:1.2.3.4"]
    for text in samples:
        assert find_pii(text), text
        assert gate_positions(text), text
    assert gate_positions("今天是2023年，天气很好。1. 第一点") == []
