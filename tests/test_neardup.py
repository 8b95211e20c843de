"""MinHash LSH near-dedup (sftkit.clean.neardup) against plain-Python references: n-gram sets of strings, exact Jaccard,
brute-force band matching and the greedy loop over every pair."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import regex

from sftkit.clean import neardup as nd
from sftkit.clean.dedup_keys import make_keys
from sftkit.distill import semdedup as sd

COMMON = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
          "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由")


def ref_key(text: str) -> str:
    """The documented dedup key: lower case, full-width letters and digits as ASCII, letters and digits only."""
    folded = "".join(chr(ord(c) - 0xFEE0) if "０" <= c <= "ｚ" else c for c in text.lower())
    return "".join(regex.findall(r"[\p{L}\p{N}\p{Han}]", folded))


def ref_grams(text: str, n: int) -> set[str]:
    key = ref_key(text)
    if len(key) >= n:
        return {key[i:i + n] for i in range(len(key) - n + 1)}
    return {key} if key else set()


def ref_jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def ref_greedy(texts: list[str], threshold: float, n: int = 3) -> list[bool]:
    grams = [ref_grams(t, n) for t in texts]
    kept: list[int] = []
    keep = []
    for i, g in enumerate(grams):
        dup = any(ref_jaccard(g, grams[j]) >= threshold for j in kept)
        keep.append(not dup)
        if not dup:
            kept.append(i)
    return keep


def zh(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(COMMON) for _ in range(n))


def edited(rng: random.Random, text: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice(COMMON)
        elif op < 0.7:
            chars.insert(i, rng.choice(COMMON))
        elif len(chars) > 1:
            del chars[i]
    return "".join(chars)


def features_of(texts: list[str], n: int = 3):
    h, nfeat = nd.ngram_features(make_keys(texts), n)
    return h, nfeat, nd.feature_lookup(h, nfeat)


TRICKY = ["", "。！", "a", "ab", "Ab", "abc", "ＡＢＣ", "哈工大", "哈工", "工大", "哈工大哈工大", "İstanbul", "12 34"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_ngram_features_are_the_string_ngrams(n: int) -> None:
    rng = random.Random(n)
    texts = TRICKY + [zh(rng, rng.randint(0, 40)) + rng.choice(["，", " ", "Ａ1", ""]) for _ in range(40)]
    h, nfeat, features = features_of(texts, n)
    offsets = np.concatenate(([0], np.cumsum(nfeat)))
    for i, t in enumerate(texts):
        key = ref_key(t)
        assert nfeat[i] == (len(key) - n + 1 if len(key) >= n else (1 if key else 0))
        assert len(set(h[offsets[i]:offsets[i + 1]].tolist())) == len(ref_grams(t, n))  # no hash collisions
    pairs = np.array(list(itertools.combinations(range(len(texts)), 2)), dtype=np.int64)
    got = nd.jaccard_of_pairs(pairs, features)
    assert got.tolist() == [ref_jaccard(ref_grams(texts[i], n), ref_grams(texts[j], n)) for i, j in pairs.tolist()]


def test_short_and_empty_texts_never_share_a_signature() -> None:
    texts = ["", "。", "！？", "a", "b", "哈", "工", "ab", "ba"]
    h, nfeat, _ = features_of(texts)
    bands = nd.band_hashes(nd.minhash(h, nfeat), nfeat, 32, 4)
    assert (bands[:3] == 0).all() and (bands[3:] != 0).all()  # no features: no band at all
    assert len(nd.lsh_pairs(bands)) == 0  # distinct short texts are never candidates
    assert not nd.near_duplicates(make_keys(texts)).dropped.any()
    again = nd.near_duplicates(make_keys(["哈", "哈"]))  # equal keys: an exact duplicate, found by exact dedup...
    assert again.dropped.tolist() == [False, True]  # ...and a near one (Jaccard 1) when asked


def test_signature_agreement_estimates_jaccard() -> None:
    rng = random.Random(3)
    base = [zh(rng, 300) for _ in range(60)]
    texts = base + [edited(rng, t, rng.randint(1, 60)) for t in base]
    h, nfeat, features = features_of(texts)
    pairs = np.array([(i, i + 60) for i in range(60)], dtype=np.int64)
    exact = nd.jaccard_of_pairs(pairs, features)
    for perm in (128, 256):
        sig = nd.minhash(h, nfeat, perm)
        est = (sig[:60] == sig[60:]).mean(axis=1)
        assert np.abs(est - exact).mean() < 0.03 and np.abs(est - exact).max() < 0.15
    assert exact.min() < 0.5 < exact.max()  # the pairs span the interesting range
    assert np.array_equal(nd.minhash(h, nfeat, 128, seed=0), nd.minhash(h, nfeat, 128, seed=0))
    assert not np.array_equal(nd.minhash(h, nfeat, 128, seed=1), nd.minhash(h, nfeat, 128, seed=0))


def test_lsh_pairs_equal_brute_force_band_matching() -> None:
    rng = np.random.default_rng(0)
    hashes = np.array([0, 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB], dtype=np.uint64)
    bands = hashes[rng.integers(0, 4, size=(60, 3))]  # many collisions, and 0 = "no band"
    expected = sorted({(i, j) for i, j in itertools.combinations(range(60), 2)
                       if any(bands[i, b] == bands[j, b] != 0 for b in range(3))}, key=lambda p: (p[1], p[0]))
    assert [tuple(p) for p in nd.lsh_pairs(bands).tolist()] == expected
    capped = nd.lsh_pairs(np.full((30, 1), 0x9E3779B97F4A7C15, dtype=np.uint64), max_bucket=5)  # 5 before each
    assert len(capped) == sum(min(j, 5) for j in range(30))


def test_greedy_keeps_the_first_drops_for_the_most_similar_and_chains_survive() -> None:
    pairs = np.array([[0, 1], [1, 2], [0, 3], [2, 3]], dtype=np.int64)  # sorted by (j, i)
    res = nd.greedy_keep(4, pairs, np.array([0.9, 0.8, 0.75, 0.95]))
    # 1 is a copy of 0; 2 only resembles the dropped 1, so it stays; 3 resembles 0 and 2: its cause is 2 (closer)
    assert res.dropped.tolist() == [False, True, False, True]
    assert res.cause.tolist() == [-1, 0, -1, 2] and res.similarity.tolist() == [0.0, 0.9, 0.0, 0.95]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.85])
def test_near_duplicates_equal_the_brute_force_greedy(threshold: float) -> None:
    rng = random.Random(int(threshold * 100))
    base = [zh(rng, rng.randint(30, 200)) for _ in range(25)]
    texts = []
    for _ in range(150):
        texts.append(edited(rng, rng.choice(base), rng.choice([0, 1, 2, 4, 8, 16, 40])))
    # With 64 bands of 2 rows every pair above 0.4 is a candidate (miss chance < 1e-10): exactly the reference.
    wide = nd.MinHashParams(bands=64, rows=2, threshold=threshold)
    assert (~nd.near_duplicates(make_keys(texts), wide).dropped).tolist() == ref_greedy(texts, threshold)
    # The defaults (32 bands of 4) on the same texts, at the default threshold: the same decisions.
    if threshold == 0.7:
        assert (~nd.near_duplicates(make_keys(texts)).dropped).tolist() == ref_greedy(texts, threshold)


def test_candidate_probability_of_the_defaults() -> None:
    p = nd.MinHashParams()
    assert (p.ngram, p.num_perm, p.bands, p.rows, p.threshold) == (3, 128, 32, 4, 0.7)
    assert nd.candidate_probability(0.7, p.bands, p.rows) > 0.9998
    assert nd.candidate_probability(0.1, p.bands, p.rows) < 0.004
    with pytest.raises(ValueError):
        nd.MinHashParams(bands=40, rows=4)


# ---- judge's dedup is the same code (semdedup.ngram_dedup) ------------------------------------------------------


def test_judge_ngram_dedup_equals_the_brute_force_greedy() -> None:
    rng = random.Random(5)
    base = ["学生证补办需要到学院办公室领取申请表并交辅导员签字", "图书馆周末晚上九点闭馆节假日另行通知",
            "选课系统在每学期开学前两周开放请按培养方案选课", "食堂早上六点半开门晚上七点停止供应",
            "保险合同是投保人与保险人约定权利义务关系的协议"]
    texts = []
    for i in range(60):
        t = list(rng.choice(base))
        for _ in range(rng.choice([0, 1, 2, 6, 15])):  # a few edits: near copies; many: different texts
            t[rng.randrange(len(t))] = rng.choice(COMMON)
        texts.append("".join(t) + str(i % 7))
    res = sd.ngram_dedup(texts, threshold=0.6)
    assert res.keep == ref_greedy(texts, 0.6)
    assert 0 < res.removed < 55
    for k, dup in enumerate(res.duplicate_of):
        if dup is not None:
            assert dup < k and res.keep[dup]
            assert res.similarity[k] == ref_jaccard(ref_grams(texts[k], 3), ref_grams(texts[dup], 3))
    with pytest.raises(ValueError):
        sd.ngram_dedup(texts, num_perm=100, bands=32)


def test_chinese_near_duplicates_found_where_whitespace_tokens_fail() -> None:
    a = "选课系统通常在每学期开学前两周开放，学生需要登录教务系统选择课程。"
    b = "选课系统一般在每学期开学前两周开放，学生需要登录教务系统选择课程。"
    # Seed 000 split on spaces: a Chinese sentence is one token, so any edit gives Jaccard 0.
    assert len(set(a.split()) & set(b.split())) == 0
    other = "图书馆周末晚上九点闭馆，节假日另行通知，请同学们合理安排时间。"
    res = sd.ngram_dedup([a, other, b])
    assert res.keep == [True, True, False] and res.duplicate_of[2] == 0
    assert res.similarity[2] == ref_jaccard(ref_grams(a, 3), ref_grams(b, 3)) > 0.75
    res = sd.ngram_dedup([a, other, b], tokenizer="jieba", n=1)
    assert res.keep == [True, True, False] and res.method == "ngram:jieba1"
    words_a, words_b = set(sd.jieba_words(a)), set(sd.jieba_words(b))
    assert res.similarity[2] == ref_jaccard(words_a, words_b)
