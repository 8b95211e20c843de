"""Generate N firefly-like Alpaca records for benchmarking prep_sft_firefly_hit.py.

Text is built from jieba's bundled word list (weighted by its corpus frequencies), so the character and
n-gram statistics look like Chinese even though the sentences mean nothing. Planted on purpose, with the
ground truth written to `<out>.truth.json`:

- exact duplicates (identical copies, or copies differing only in punctuation / spaces / letter case);
- near-duplicates: copies of a record of at least 120 characters with 1-3 characters substituted, inserted or
  deleted, a short phrase appended or removed, or punctuation changed (`near_pairs`: [original index, copy
  index, kind]; kinds in NEAR_KINDS);
- with --cross-from HIT_FILE, near copies of the hit records (`cross_pairs`: [hit line index, copy index, kind]);
- look-alikes that are not duplicates: a record's instruction and the first half of its answer, the rest new
  (`lookalike_pairs`: [original index, look-alike index]);
- PII next to Chinese characters (phone, resident ID with a valid check digit, UnionPay card, e-mail, IPv4,
  IPv6) and decoys that must NOT be caught (order numbers, timestamps, IDs with a wrong check digit);
- English rows, refusals / ads, answers too short for the default length bounds.

Output: one JSON array (pretty-printed like the Alpaca-CoT files) or JSON Lines (`--jsonl`); `.gz` compresses.
Usage: python bench/make_firefly_like.py --n 1000000 --out /tmp/firefly_like.json --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import jieba
import numpy as np
import orjson

ENGLISH = (
    "the of and to in is that it for you was with on as have but be they this from at not by we what all were "
    "when your can said there use an each which she do how their if will up other about out many then them these "
    "so some her would make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part model data learning "
    "explain describe translate summary question answer example following sentence paragraph write story poem"
).split()
INSTRUCTIONS = [
    "请介绍一下{t}。", "{t}是什么意思？", "请用简洁的语言解释{t}。", "写一首关于{t}的诗。",
    "总结以下内容的主要观点：\n{p}", "根据下面的描述，给出三条建议：{s}", "{s}这句话应该如何理解？",
    "请为{t}写一段宣传文案。", "把下面这段话改写得更正式一些：{s}", "列举{t}的几个特点。",
    "你如何看待{t}？请说明理由。", "请续写下面的故事：{s}", "对比{t}和{t2}的异同。", "给{t}起一个好听的名字。",
]
ADS = ["欢迎关注公众号获取更多资料", "点击链接领取优惠", "加微信免费咨询", "扫描二维码下载"]
REFUSALS = ["作为一个AI语言模型，我无法回答这个问题。", "抱歉，我不能提供这方面的帮助。"]
PROVINCES = ["11", "31", "44", "23", "51", "33", "42", "61"]
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check(first17: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        s = prefix + d
        total = 0
        for i, c in enumerate(reversed(s)):
            v = int(c) * (2 if i % 2 else 1)
            total += v - 9 if v > 9 else v
        if total % 10 == 0:
            return s
    raise AssertionError


class TextMaker:
    def __init__(self, rng: random.Random, seed: int) -> None:
        words, freqs = [], []
        path = os.path.join(os.path.dirname(jieba.__file__), "dict.txt")
        with open(path, encoding="utf-8") as f:
            for line in f:
                w, c, *_ = line.split(" ")
                if all("\u4e00" <= ch <= "\u9fff" for ch in w) and int(c) >= 20:
                    words.append(w)
                    freqs.append(int(c))
        p = np.asarray(freqs, dtype=np.float64)
        self.words = words
        self.np_rng = np.random.default_rng(seed)
        # A large pre-drawn stream of word indices; sentences take consecutive slices of it.
        self.stream = self.np_rng.choice(len(words), size=2_000_000, p=p / p.sum())
        self.rng = rng

    def _take(self, k: int) -> list[str]:
        # A random window each time: consecutive windows would repeat once the stream wraps around.
        start = self.rng.randrange(len(self.stream) - k)
        ws = self.stream[start:start + k]
        return [self.words[i] for i in ws]

    def phrase(self, lo: int = 1, hi: int = 3) -> str:
        return "".join(self._take(self.rng.randint(lo, hi)))

    def sentence(self) -> str:
        r = self.rng.random()
        parts = self._take(self.rng.randint(6, 20))
        cut = self.rng.randint(1, len(parts) - 1)
        end = "。" if r < 0.75 else ("！" if r < 0.85 else "？")
        return "".join(parts[:cut]) + "，" + "".join(parts[cut:]) + end

    def paragraph(self, lo: int = 1, hi: int = 5) -> str:
        return "".join(self.sentence() for _ in range(self.rng.randint(lo, hi)))

    def answer(self) -> str:
        r = self.rng.random()
        if r < 0.12:  # short answers (many firefly tasks are a line or two)
            return self.sentence()
        if r < 0.45:
            n = self.rng.randint(3, 8)
            return self.paragraph(1, 1) + "\n" + "\n".join(f"{i}. {self.paragraph(1, 2)}" for i in range(1, n + 1))
        return "\n\n".join(self.paragraph(2, 4) for _ in range(self.rng.randint(1, 4)))

    def english(self, n: int) -> str:
        return " ".join(self.rng.choice(ENGLISH) for _ in range(n)).capitalize() + "."


def make_pii(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["phone", "phone_fmt", "id", "card", "email", "ipv4", "ipv6"])
    if kind.startswith("phone"):
        num = rng.choice("3456789")
        digits = f"1{num}{rng.randint(0, 9)}{rng.randint(0, 99999999):08d}"
        if kind == "phone_fmt":
            digits = f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}"
        return "phone", digits
    if kind == "id":
        body = f"{rng.choice(PROVINCES)}{rng.randint(0, 9999):04d}{rng.randint(1950, 2005)}" \
               f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
        return "id", body + id_check(body)
    if kind == "card":
        return "card", luhn_complete("62" + "".join(str(rng.randint(0, 9)) for _ in range(15)))
    if kind == "email":
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 10)))
        domain = rng.choice(["qq.com", "163.com", "hit.edu.cn"])
        return "email", f"{name.upper() if rng.random() < 0.3 else name}@{domain}"
    if kind == "ipv4":
        return "ip", ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return "ip", f"2001:db8:{rng.randint(0, 65535):x}::{rng.randint(1, 65535):x}"


def make_decoy(rng: random.Random) -> str:
    kind = rng.choice(["order", "ts", "badid", "date"])
    if kind == "order":
        return "订单号" + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(20, 24)))
    if kind == "ts":
        millis = f"{rng.randint(0, 999):03d}" if rng.random() < 0.5 else ""
        return "时间戳" + str(rng.randint(1_500_000_000, 1_800_000_000)) + millis
    if kind == "badid":
        body = f"{rng.choice(PROVINCES)}0101{rng.randint(1950, 2005)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}" \
               f"{rng.randint(0, 999):03d}"
        good = id_check(body)
        wrong = rng.choice([c for c in "0123456789X" if c != good])
        return "编号" + body + wrong
    return f"{rng.randint(2000, 2024)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"


def punct_variant(rec: dict[str, str], rng: random.Random) -> dict[str, str]:
    out = dict(rec)
    o = out["output"].replace("，", ",", rng.randint(1, 3)).replace("。", ". ", 1)
    out["output"] = ("  " + o) if rng.random() < 0.5 else o + " "
    return out


NEAR_KINDS = ("substitute", "insert", "delete", "append", "remove", "punctuation")
_PUNCT_SWAPS = (("，", ","), ("。", "."), ("：", ":"), ("！", "!"), ("？", "?"), ("，", "；"), ("。", "！"))


def edit_text(text: str, kind: str, tm: TextMaker, rng: random.Random) -> str:
    """One planted near-duplicate edit of `text` (see NEAR_KINDS)."""
    if kind in ("substitute", "insert", "delete"):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            if kind == "substitute":
                new = tm.phrase(1, 1)[0]
                chars[i] = new if new != chars[i] else "变"
            elif kind == "insert":
                chars.insert(i, tm.phrase(1, 1)[0])
            else:
                del chars[i]
        return "".join(chars)
    if kind == "append":
        return text + tm.phrase(1, 2) + "。"
    if kind == "remove":  # a phrase of 2-8 characters cut out
        i = rng.randrange(max(1, len(text) - 8))
        return text[:i] + text[i + rng.randint(2, 8):]
    out = text  # punctuation: marks swapped for others or their ASCII forms, spaces added
    for old, new in rng.sample(_PUNCT_SWAPS, rng.randint(1, 3)):
        out = out.replace(old, new, rng.randint(1, 3))
    return out + " " if out != text else out + "。"


def near_variant(rec: dict[str, str], tm: TextMaker, rng: random.Random) -> tuple[dict[str, str], str]:
    out = dict(rec)
    kind = rng.choice(NEAR_KINDS)
    out["output"] = edit_text(out["output"], kind, tm, rng)
    return out, kind


def read_hit_turns(path: str) -> list[tuple[str, str]]:
    """(user, answer) of every seed-ChatML record in a file written by --seed-chatml."""
    turns = []
    with open(path, "rb") as f:
        for line in f:
            text = orjson.loads(line)["text"]
            parts = text.split("<|beginofutterance|>")
            user = parts[2].split("\n", 1)[1].rsplit("\n<|endofutterance|>", 1)[0]
            answer = parts[3].split("\n", 1)[1].rsplit("\n<|endofutterance|>", 1)[0]
            turns.append((user, answer))
    return turns


def write_seed_chatml(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tm = TextMaker(rng, args.seed)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(args.n):
            system = "你是哈工大的校园助手，" + tm.sentence()
            user = "请问" + tm.phrase(2, 4) + "，" + tm.sentence()
            answer = tm.paragraph(2, 3) + "\n" + "\n".join(f"{i}. {tm.paragraph(1, 2)}" for i in range(1, 4))
            text = (f"<|beginofutterance|>系统\n{system}\n<|endofutterance|>\n<|beginofutterance|>用户\n{user}\n"
                    f"<|endofutterance|>\n<|beginofutterance|>智能助手\n{answer}\n<|endofutterance|>")
            f.write(orjson.dumps({"text": text}) + b"\n")
    print(f"wrote {args.n} seed-ChatML records to {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of records (default 100000)")
    ap.add_argument("--out", required=True, help="output path: .json = one array, --jsonl for JSON Lines, .gz ok")
    ap.add_argument("--jsonl", action="store_true", help="write JSON Lines instead of one JSON array")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--near-dup-rate", type=float, default=0.04, help="share of planted near-duplicates (0.04)")
    ap.add_argument("--exact-dup-rate", type=float, default=0.02, help="share of planted exact duplicates (0.02)")
    ap.add_argument("--lookalike-rate", type=float, default=0.005,
                    help="share of look-alikes: the instruction and half the answer of another record, the other "
                         "half new (not duplicates: a deduplicator must keep them) (0.005)")
    ap.add_argument("--pii-rate", type=float, default=0.015, help="share of rows with real PII (0.015)")
    ap.add_argument("--decoy-rate", type=float, default=0.015, help="share of rows with PII look-alikes (0.015)")
    ap.add_argument("--english-rate", type=float, default=0.05, help="share of English rows (0.05)")
    ap.add_argument("--bad-rate", type=float, default=0.03, help="share of refusal / ad rows (0.03)")
    ap.add_argument("--cross-from", metavar="HIT_FILE",
                    help="a file written by --seed-chatml: plant near-duplicates of its records in this set "
                         "(cross-source pairs, which prep must resolve in favour of the hit record)")
    ap.add_argument("--cross-rate", type=float, default=0.002, help="share of cross-source near copies (0.002)")
    ap.add_argument("--seed-chatml", action="store_true",
                    help="write domain-like records in the seed's ChatML text form ({\"text\": ...} with a system "
                         "prompt) as JSON Lines instead, with nothing planted (a stand-in for the hit file)")
    args = ap.parse_args(argv)
    if args.seed_chatml:
        return write_seed_chatml(args)

    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    tm = TextMaker(rng, args.seed)
    truth: dict[str, Any] = {"n": args.n, "near_pairs": [], "exact_pairs": [], "cross_pairs": [],
                             "lookalike_pairs": [], "pii_rows": {}, "decoy_rows": [], "english_rows": [],
                             "bad_rows": []}
    hit_turns = read_hit_turns(args.cross_from) if args.cross_from else []
    records: list[dict[str, str]] = []
    long_ones: list[int] = []
    for idx in range(args.n):
        r = rng.random()
        edge = args.near_dup_rate
        if r < edge and long_ones:
            src = long_ones[rng.randrange(len(long_ones))]
            rec, kind = near_variant(records[src], tm, rng)
            truth["near_pairs"].append([src, idx, kind])
        elif r < (edge := edge + args.lookalike_rate) and long_ones:
            src = long_ones[rng.randrange(len(long_ones))]
            rec = dict(records[src])
            half = len(rec["output"]) // 2
            new = tm.paragraph(2, 6)
            while len(new) < len(rec["output"]) - half:
                new += tm.paragraph(1, 2)
            rec["output"] = rec["output"][:half] + new[:len(rec["output"]) - half]
            truth["lookalike_pairs"].append([src, idx])
        elif hit_turns and r < (edge := edge + args.cross_rate):
            src = rng.randrange(len(hit_turns))
            user, answer = hit_turns[src]
            kind = rng.choice(NEAR_KINDS)
            rec = {"instruction": user, "input": "", "output": edit_text(answer, kind, tm, rng)}
            truth["cross_pairs"].append([src, idx, kind])
        elif r < (edge := edge + args.exact_dup_rate) and records:
            src = rng.randrange(len(records))
            rec = dict(records[src]) if rng.random() < 0.5 else punct_variant(records[src], rng)
            truth["exact_pairs"].append([src, idx])
        elif r < (edge := edge + args.english_rate):
            rec = {"instruction": tm.english(rng.randint(6, 14)), "input": "",
                   "output": " ".join(tm.english(rng.randint(8, 20)) for _ in range(rng.randint(3, 8)))}
            truth["english_rows"].append(idx)
        else:
            t, t2 = tm.phrase(), tm.phrase()
            tpl = rng.choice(INSTRUCTIONS)
            ins = tpl.format(t=t, t2=t2, s=tm.sentence(), p=tm.paragraph(2, 4))
            inp = tm.paragraph(1, 2) if rng.random() < 0.15 else ""
            out = tm.answer()
            r2 = rng.random()
            if r2 < args.pii_rate:
                kind, value = make_pii(rng)
                cut = rng.randrange(len(out))
                out = out[:cut] + "联系方式" + value + "请" + out[cut:]
                truth["pii_rows"][str(idx)] = kind
            elif r2 < args.pii_rate + args.decoy_rate:
                cut = rng.randrange(len(out))
                out = out[:cut] + make_decoy(rng) + out[cut:]
                truth["decoy_rows"].append(idx)
            elif r2 < args.pii_rate + args.decoy_rate + args.bad_rate:
                out = (rng.choice(REFUSALS) + out) if rng.random() < 0.5 else (out + rng.choice(ADS) + "。")
                truth["bad_rows"].append(idx)
            rec = {"instruction": ins, "input": inp, "output": out}
        records.append(rec)
        if len(rec["output"]) >= 120:
            long_ones.append(idx)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        if args.jsonl:
            for i in range(0, len(records), 10000):
                f.write(b"".join(orjson.dumps(r) + b"\n" for r in records[i:i + 10000]))
        else:
            f.write(b"[\n")
            for i in range(0, len(records), 10000):
                chunk = records[i:i + 10000]
                body = b",\n".join(b"  " + orjson.dumps(r, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n  ")
                                   for r in chunk)
                f.write(body + (b",\n" if i + 10000 < len(records) else b"\n"))
            f.write(b"]\n")
    Path(str(path) + ".truth.json").write_bytes(orjson.dumps(truth))
    print(f"wrote {len(records)} records to {path} ({path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f}s; truth: {len(truth['near_pairs'])} near pairs, "
          f"{len(truth['exact_pairs'])} exact pairs, {len(truth['cross_pairs'])} cross-source pairs, "
          f"{len(truth['pii_rows'])} PII rows, "
          f"{len(truth['decoy_rows'])} decoys, {len(truth['english_rows'])} English, {len(truth['bad_rows'])} bad",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
