"""SimHash signatures (against a plain-Python reference), dedup keys, and the permuted-block index (against brute
force and the `simhash` package)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from simhash import Simhash
from simhash import SimhashIndex as ReferenceIndex

from sftkit.clean.dedup_keys import exact_hashes, make_keys
from sftkit.clean.simhash_index import (
    SimhashIndex,
    candidate_pairs,
    choose_blocks,
    hamming,
    near_duplicates,
    table_masks,
)
from sftkit.testing.dedup_reference import brute_force_near_duplicates, simhash_texts

MASK = (1 << 64) - 1


def py_mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def py_simhash(text: str) -> int:
    """The documented definition, written out plainly: bigrams of the lower-cased letters and digits (full-width
    ones read as ASCII)."""
    import regex

    folded = "".join(chr(ord(c) - 0xFEE0) if "０" <= c <= "ｚ" else c for c in text.lower())  # full width -> ASCII
    key = "".join(regex.findall(r"[\p{L}\p{N}]", folded))
    cps = [ord(c) for c in key]
    if len(cps) >= 2:
        feats = [py_mix(((a << 21) | b) ^ 0x5BD1E9955BD1E995) for a, b in itertools.pairwise(cps)]
    elif len(cps) == 1:
        feats = [py_mix(cps[0] ^ 0x27D4EB2F165667C5)]
    else:
        return 0
    sig = 0
    for bit in range(64):
        ones = sum((f >> bit) & 1 for f in feats)
        if 2 * ones > len(feats):
            sig |= 1 << bit
    return sig


def chinese_text(rng: random.Random, n: int) -> str:
    common = (
        "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
        "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还"
        "因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结"
        "解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级"
    )
    out = []
    for _ in range(n):
        out.append(rng.choice(common))
        if rng.random() < 0.08:
            out.append(rng.choice("，。；"))
    return "".join(out)


def test_signatures_equal_the_plain_python_definition() -> None:
    rng = random.Random(0)
    texts = ["", "。", "a", "AB", "哈工大", chinese_text(rng, 40), chinese_text(rng, 700),  # 700: several runs
             "Hello, World! 123", "ＡＢＣ 全角", "İstanbul ǅ"]
    texts += [chinese_text(rng, rng.randint(0, 300)) for _ in range(20)]
    sigs = simhash_texts(texts)
    assert [int(s) for s in sigs] == [py_simhash(t) for t in texts]


def test_exact_keys_ignore_punctuation_space_and_case_but_not_order() -> None:
    texts = ["你好，世界！Hello", "你好 世界 hello", "你好世界HELLO。", "世界你好hello", "你好世界hello!", ""]
    h = exact_hashes(make_keys(texts)).tolist()
    assert h[0] == h[1] == h[2] == h[4]
    assert h[3] != h[0] and h[5] not in h[:5]


def test_single_edits_stay_within_three_bits_and_unrelated_texts_do_not() -> None:
    rng = random.Random(1)
    base = [chinese_text(rng, 600) for _ in range(30)]
    edited = []
    for t in base:
        i = rng.randrange(len(t))
        edited.append(t[:i] + "变" + t[i + 1:])
    sigs = simhash_texts(base + edited)
    close = [hamming(sigs[i], sigs[30 + i]) for i in range(30)]
    assert sum(d <= 3 for d in close) >= 24  # a single changed character in 600 moves about 1-2 bits
    far = [hamming(sigs[i], sigs[j]) for i in range(30) for j in range(i + 1, 30)]
    assert min(far) > 10


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 6])
def test_block_choice_satisfies_the_pigeonhole(k: int) -> None:
    b, m = choose_blocks(k, 1_000_000)
    assert 1 <= m <= b - k
    masks = table_masks(k, 1_000_000)
    assert len(set(masks)) == len(masks)
    rng = random.Random(k)
    for _ in range(300):  # any k flipped bits leave at least one table's blocks untouched
        flips = sum(1 << i for i in rng.sample(range(64), k))
        assert any(flips & mask == 0 for mask in masks)
    with pytest.raises(ValueError):
        choose_blocks(40)


def planted_signatures(rng: random.Random, n: int, plant: int) -> np.ndarray:
    sigs = [rng.getrandbits(64) for _ in range(n)]
    for _ in range(plant):  # near copies, chains (copy of a copy) and exact repeats
        src = rng.randrange(n)
        x = sigs[src]
        for _ in range(rng.randint(0, 5)):
            x ^= 1 << rng.randrange(64)
        sigs[rng.randrange(n)] = x
    return np.array(sigs, dtype=np.uint64)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_near_duplicates_equal_brute_force(k: int) -> None:
    rng = random.Random(k)
    sigs = planted_signatures(rng, 1500, 600)
    fast = near_duplicates(sigs, k)
    slow = brute_force_near_duplicates(sigs.tolist(), k)
    assert fast.dropped.tolist() == slow.dropped.tolist()
    assert fast.cause.tolist() == slow.cause.tolist()
    assert fast.pairs_checked == slow.pairs_checked
    assert fast.dropped.sum() > 0


def test_every_pair_within_k_is_found_once_and_sorted() -> None:
    rng = random.Random(7)
    sigs = planted_signatures(rng, 800, 400)
    pairs = candidate_pairs(sigs, 3).tolist()
    expected = sorted(((i, j) for j in range(len(sigs)) for i in range(j)
                       if hamming(sigs[i], sigs[j]) <= 3), key=lambda p: (p[1], p[0]))
    assert [tuple(p) for p in pairs] == expected


def test_greedy_keeps_the_first_and_chains_survive() -> None:
    a = 0
    b = a ^ 0b111  # 3 bits from a
    c = b ^ 0b111000  # 3 bits from b, 6 from a
    res = near_duplicates(np.array([a, b, c], dtype=np.uint64), 3)
    # b is dropped for a; c is only near b, which was dropped, so c is kept (as an online index would do)
    assert res.dropped.tolist() == [False, True, False]
    assert res.cause.tolist() == [-1, 0, -1]


def test_online_index_equals_brute_force_and_the_simhash_package() -> None:
    rng = random.Random(3)
    sigs = planted_signatures(rng, 600, 300).tolist()
    ours = SimhashIndex(k=3, expected_size=600)
    ref = ReferenceIndex([], k=3)
    for i, s in enumerate(sigs[:400]):
        ours.add(i, s)
        ref.add(str(i), Simhash(int(s)))
    assert len(ours) == 400
    for s in sigs[400:]:
        got = sorted(i for i, _ in ours.query(s))
        brute = sorted(i for i in range(400) if hamming(s, sigs[i]) <= 3)
        assert got == brute
        assert sorted(int(x) for x in ref.get_near_dups(Simhash(int(s)))) == brute
        assert all(d == hamming(s, sigs[i]) for i, d in ours.query(s))


def test_batch_and_online_agree_on_real_signatures() -> None:
    rng = random.Random(5)
    texts = [chinese_text(rng, rng.randint(30, 400)) for _ in range(300)]
    for _ in range(100):
        t = rng.choice(texts)
        i = rng.randrange(len(t))
        texts.append(t[:i] + t[i + 1:])
    sigs = simhash_texts(texts)
    batch = near_duplicates(sigs, 3)
    index = SimhashIndex(3, expected_size=len(sigs))
    online = []
    for i, s in enumerate(sigs.tolist()):
        hits = index.query(s)
        online.append(bool(hits))
        if not hits:
            index.add(i, s)
    assert batch.dropped.tolist() == online
    assert sum(online) > 50
