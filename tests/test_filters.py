"""Filters: exact results on small hand-written inputs, and the fast paths equal to their reference definitions."""

from __future__ import annotations

import copy
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.clean.filters import (
    UNICODE_FORMS,
    Bounds,
    ChineseRatio,
    Length,
    Normalize,
    Patterns,
    Pii,
    build_chain,
    chinese_ratios,
    fold_unicode,
    nfkc,
    normalize_many,
    normalize_text,
    parse_length,
)
from sftkit.io.text import chinese_ratio


def rec(*turns: tuple[str, str]) -> dict:
    return {"id": "x", "source": "t", "messages": [{"role": r, "content": c} for r, c in turns], "meta": {}}


# Characters that exercise every NFKC path: full-width forms, combining marks, Hangul jamo, compatibility
# ideographs, astral math letters, the batch separator, line separators, controls, zero-width, spaces.
TRICKY = st.sampled_from([
    *"abcAZ 09，。：？！（）～＂＇　\u00a0\u2026\u00b2\u2460\u2163\u3300\u0301\u0308\u0323\u1100\u1161\u11a8",
    *"\uac00\uf900\ufb01\ue000\u2028\u2029\r\n\t\x00\x1f\x7f\u00ad\u200b\u200d\ufeff中文字",
    "\U0001d400", "\U0002f800", "\U0001f600", "  ", "\n\n\n", " \n"])
TEXTS = st.lists(TRICKY, max_size=30).map("".join)


# The protected characters, defined here from the Unicode categories (not from the module's table): punctuation,
# symbols, circled/superscript/Roman numerals and the ideographic space, but not the radicals (folded to ideographs).
def is_protected(ch: str) -> bool:
    if ch == "\u3000":
        return True
    if 0x2E80 <= ord(ch) < 0x2FE0:
        return False
    cat = unicodedata.category(ch)
    return cat[0] in "PS" or cat in ("No", "Nl")


def reference_keep_cjk(text: str) -> str:
    """keep-cjk by its definition: NFKC of every run between protected characters, protected ones as they are."""
    out, run = [], []
    for ch in text:
        if is_protected(ch):
            out.append(unicodedata.normalize("NFKC", "".join(run)))
            out.append(ch)
            run = []
        else:
            run.append(ch)
    out.append(unicodedata.normalize("NFKC", "".join(run)))
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_fast_forms_equal_their_definitions(text: str) -> None:
    assert nfkc(text) == unicodedata.normalize("NFKC", text)
    assert nfkc(text, astral=True) == unicodedata.normalize("NFKC", text)
    assert fold_unicode(text, "keep-cjk") == reference_keep_cjk(text)
    assert fold_unicode(text, "keep-cjk", astral=True) == reference_keep_cjk(text)
    assert fold_unicode(text, "none") == text


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXTS, max_size=6), st.sampled_from(UNICODE_FORMS))
def test_batch_normalisation_equals_one_by_one(texts: list[str], form: str) -> None:
    assert normalize_many(texts, form) == [normalize_text(t, form) for t in texts]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40) | TEXTS, max_size=8))
def test_batch_chinese_ratio_equals_the_shared_definition(texts: list[str]) -> None:
    assert chinese_ratios(texts).tolist() == [chinese_ratio(t) for t in texts]


WIDTH_TEXTS = st.lists(st.sampled_from([*"中文字哈工大ab1,. ", *"ＡＢｃ１２，。：（）＠　"]), max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(WIDTH_TEXTS)
def test_chinese_ratio_does_not_depend_on_width_folding(text: str) -> None:
    ratios = {form: chinese_ratio(normalize_text(text, form)) for form in UNICODE_FORMS}
    assert len(set(ratios.values())) == 1, ratios


def test_pii_filter_finds_full_width_digits_whatever_the_form() -> None:
    phone = "".join(chr(ord(c) + 0xFEE0) for c in "13812345678")
    for form in UNICODE_FORMS:
        chain = build_chain(form=form, min_chinese_ratio=None, lengths={}, patterns=[], pii_mode="drop")
        kept = chain.run([rec(("user", f"我的手机{phone}，请回电"), ("assistant", "好的"))])
        assert kept == [] and chain.take_counts()["pii"]["drop:contains phone"] == 1, form


# Every full-width form of ASCII, every CJK punctuation mark and symbol of the Unicode blocks Chinese text uses.
CJK_PUNCTUATION = ("，。、；：？！“”‘’（）《》〈〉【】「」『』…—～·〔〕〖〗〘〙〚〛〝〞〟‥﹏"
                   "＂＃＄％＆＇＊＋－．／＜＝＞＠［＼］＾＿｀｛｜｝｟｠￥￡￠℃℉№㎡㎎①⑩⑴⒈㈠Ⅱⅻ²½")


def test_keep_cjk_keeps_every_chinese_punctuation_mark_and_symbol() -> None:
    text = "中文" + "中".join(CJK_PUNCTUATION) + "　缩进"
    assert normalize_text(text) == text
    assert all(is_protected(c) for c in CJK_PUNCTUATION)
    assert normalize_text(text, "nfkc") != text  # what NFKC everywhere would have done


@pytest.mark.parametrize("raw,expected", [
    ("  你好，世界！  ", "你好，世界！"),  # full-width punctuation kept, outer spaces stripped
    ("ＡＢＣ１２３　ｘ", "ABC123　x"),  # full-width letters and digits folded, the ideographic space kept
    ("\uf900\u2f00\u2e9f", "豈一母"),  # compatibility ideograph, Kangxi radical, CJK radical -> unified ideographs
    ("ｶﾀｶﾅ ﬁ ª a\u00a0b\u2003c", "カタカナ fi a a b c"),  # half-width katakana, ligature, no-break/em spaces
    ("e\u0301 ＝\u0338", "\u00e9 ＝\u0338"),  # composed; but a mark never composes with a protected character
    ("第一行\r\n第二行\r第三行", "第一行\n第二行\n第三行"),  # CR/LF -> LF, newlines kept
    ("a  b\t\tc", "a b c"),  # runs of spaces/tabs inside a line -> one space
    ("def f():\n    return 1  \n", "def f():\n    return 1"),  # indentation kept, trailing spaces dropped
    ("一\n\n\n\n二", "一\n\n二"),  # at most one blank line
    ("零\u200b宽\ufeff字\u00ad符\x07", "零宽字符"),  # zero-width, BOM, soft hyphen, control characters
    ("行\u2028分隔", "行\n分隔"),
])
def test_normalize_text_exact(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected
    assert normalize_many([raw, raw]) == [expected, expected]


@pytest.mark.parametrize("raw,form,expected", [
    ("你好，世界！ＡＢ①…  ", "nfkc", "你好,世界!AB1..."),
    ("你好，世界！ＡＢ①…  ", "none", "你好，世界！ＡＢ①…"),
])
def test_other_forms(raw: str, form: str, expected: str) -> None:
    assert normalize_text(raw, form) == expected
    with pytest.raises(ValueError):
        normalize_text(raw, "nfc")


def test_normalize_filter_counts_and_drops_empty() -> None:
    f = Normalize()
    batch = [rec(("user", "你好，请问 "), ("assistant", "好的")), rec(("user", "\u200b "), ("assistant", "x")),
             rec(("user", "q"), ("assistant", "a"))]
    kept = f.run(batch)
    assert [r["messages"][0]["content"] for r in kept] == ["你好，请问", "q"]
    assert f.counts == {"seen": 3, "dropped": 1, "changed": 2, "drop:empty user": 1}


def test_chinese_ratio_filter_checks_every_message_of_the_roles() -> None:
    f = ChineseRatio(0.65)
    good = rec(("user", "请介绍哈工大"), ("assistant", "哈工大位于哈尔滨市"))
    english_answer = rec(("user", "请翻译成英文"), ("assistant", "Harbin Institute of Technology"))
    mixed = rec(("user", "用Python写hello"), ("assistant", "可以这样写"))  # user: 3 Han of 14 counted
    assert f.run([good, english_answer, mixed]) == [good]
    assert f.counts["dropped"] == 2
    only_answers = ChineseRatio(0.65, roles=("assistant",))
    assert only_answers.run([good, english_answer, mixed]) == [good, mixed]


def test_length_bounds_per_role_and_turn() -> None:
    f = Length({"user": Bounds(2, 10), "assistant": Bounds(3, 5), "system": Bounds(0, 4)})
    ok = rec(("system", "四个字符"), ("user", "ab"), ("assistant", "abc"), ("user", "abcdefghij"),
             ("assistant", "abcde"))
    long_second_answer = rec(("user", "ab"), ("assistant", "abc"), ("user", "ab"), ("assistant", "abcdef"))
    short_user = rec(("user", "a"), ("assistant", "abc"))
    long_system = rec(("system", "五个字符啊"), ("user", "ab"), ("assistant", "abc"))
    assert f.run([ok, long_second_answer, short_user, long_system]) == [ok]
    assert f.counts["drop:assistant longer than 5"] == 1
    assert f.counts["drop:user shorter than 2"] == 1
    assert f.counts["drop:system longer than 4"] == 1


def test_parse_length() -> None:
    assert parse_length("user=20:500") == ("user", Bounds(20, 500))
    assert parse_length("assistant=:100") == ("assistant", Bounds(0, 100))
    assert parse_length("system=5:")[1].lo == 5
    for bad in ("user", "tool=1:2", "user=1-2"):
        with pytest.raises(ValueError):
            parse_length(bad)


def test_pattern_drops_name_the_pattern_and_count_urls() -> None:
    f = Patterns(max_urls=2)
    refusal = rec(("user", "帮我写"), ("assistant", "作为一个AI语言模型，我无法完成。"))
    ad = rec(("user", "推荐"), ("assistant", "欢迎关注公众号领取"))
    urls = rec(("user", "链接"), ("assistant", "见 http://a.cn http://b.cn https://c.cn"))
    fine = rec(("user", "作为AI，你怎么看？"), ("assistant", "这是一个好问题。"))  # user turns are not checked
    assert f.run([refusal, ad, urls, fine]) == [fine]
    assert f.counts["drop:more than 2 URLs"] == 1
    assert any(k.startswith("drop:pattern 作为") for k in f.counts)
    assert any("公众号" in k for k in f.counts)


def test_custom_pattern_list_replaces_the_defaults() -> None:
    f = Patterns(["广告"], max_urls=-1)
    assert f.run([rec(("user", "x"), ("assistant", "作为一个AI"))])  # default refusal no longer applies
    assert not f.run([rec(("user", "x"), ("assistant", "这是广告"))])


def test_pii_drop_and_redact() -> None:
    batch = [rec(("user", "我的电话13812345678"), ("assistant", "好的")), rec(("user", "无"), ("assistant", "无"))]
    drop = Pii("drop")
    assert drop.run(copy.deepcopy(batch)) == batch[1:]
    assert drop.counts["drop:contains phone"] == 1 and drop.counts["found:phone"] == 1
    red = Pii("redact")
    out = red.run(copy.deepcopy(batch))
    assert out[0]["messages"][0]["content"] == "我的电话<PHONE>" and len(out) == 2
    assert red.counts["changed"] == 1
    with pytest.raises(ValueError):
        Pii("mask")


def test_chain_runs_in_order_and_counts_per_filter() -> None:
    chain = build_chain(min_chinese_ratio=0.5, pii_mode="drop")
    q = "请介绍一下哈尔滨工业大学的历史沿革和主要学科"
    batch = [
        rec(("user", q), ("assistant", "哈尔滨工业大学" * 15)),
        rec(("user", "Tell me about Harbin and its long history please"), ("assistant", "Harbin " * 30)),
        rec(("user", q), ("assistant", "太短")),
        rec(("user", q), ("assistant", "电话13812345678。" + "哈工大" * 30)),
    ]
    kept = chain.run(batch)
    assert len(kept) == 1
    counts = chain.take_counts()
    assert counts["chinese_ratio"]["dropped"] == 1
    assert counts["length"]["drop:assistant shorter than 80"] == 1
    assert counts["pii"]["drop:contains phone"] == 1
    assert chain.take_counts()["length"] == {}  # taken counts are reset
