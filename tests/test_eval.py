"""eval.py on CPU: answers from files (no model) judged by scripted judges on the local test server (127.0.0.1) with
known length and position preferences; every figure recomputed here from the judge's own verdict log (what the stub
answered, not what our code journaled); the interval's coverage by simulation; contamination planted and not;
every exit-1 path; resume and retry; verdict keys that survive an inserted line; keys never written; and one small
test with a tiny model whose weights change in place."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import regex

from sftkit.evaluate import length_control as lcm
from sftkit.evaluate import pairwise as pw
from sftkit.evaluate import stats
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
assert _spec and _spec.loader
eval_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_script)

_A = regex.compile(r"\[回答A开始\]\n(.*)\n\[回答A结束\]", regex.S)
_B = regex.compile(r"\[回答B开始\]\n(.*)\n\[回答B结束\]", regex.S)
KEY = "sk-EVAL-secret-4417"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY", "DEEPSEEK_API_KEY", "EVAL_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


# ---- inputs -----------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def prompts(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    """n distinct Chinese prompts, two sources, three categories."""
    topics = ["图书馆", "宿舍", "食堂", "选课", "奖学金", "实验室", "校车", "体育馆", "考试", "毕业论文"]
    verbs = ["开放时间是什么", "需要提前预约吗", "怎么申请", "有哪些注意事项", "在哪里办理", "收费标准如何"]
    return [{"id": f"{prefix}{i}", "source": "hit" if i % 2 else "firefly", "meta": {"category": ["校园", "学习",
             "生活"][i % 3]}, "messages": [{"role": "user", "content": f"第{i}号问题：{topics[i % 10]}的"
                                           f"{verbs[(i // 10) % 6]}？请说明第{i}条规定。"}]} for i in range(n)]


def unit(*parts: Any) -> float:
    """A deterministic uniform number in [0, 1) from `parts` (the scripted judges' coin)."""
    h = hashlib.sha256(orjson.dumps([str(p) for p in parts])).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def answer_pairs(recs: list[dict[str, Any]], delta_mean: float, delta_sd: float, seed: int) -> tuple[dict, dict]:
    """(base, tuned) answers by id: the same content, lengths differing by ~N(delta_mean, delta_sd) characters."""
    rng = np.random.default_rng(seed)
    base, tuned = {}, {}
    for r in recs:
        lb = int(rng.integers(40, 120))
        lt = max(5, lb + round(float(rng.normal(delta_mean, delta_sd))))
        base[r["id"]] = f"{r['id']}号的回答：" + "甲" * lb
        tuned[r["id"]] = f"{r['id']}号的回答：" + "乙" * lt
    return base, tuned


def write_answers(tmp: Path, name: str, answers: dict[str, str]) -> Path:
    return write_jsonl(tmp / name, [{"id": k, "response": v} for k, v in answers.items()])


def write_judges(tmp: Path, base_url: str, judges: list[dict[str, Any]]) -> Path:
    cfg = tmp / "judges.json"
    cfg.write_bytes(orjson.dumps({"judges": [{"base_url": base_url, "retries": 0, "max_concurrency": 4,
                                              "verdict_retries": 0, **j} for j in judges]}))
    return cfg


def verdict(winner: str) -> str:
    return orjson.dumps({"reasons": "先比较准确性与完整性。", "winner": winner}).decode()


class Judge:
    """A scripted judge with known preferences. Per request: with probability `first` it picks A whatever the
    answers; else with probability `tie` it says tie; else it picks A with probability
    sigmoid(length_k * tanh((len A - len B) / length_scale) + quality * (+1 if A is the `better` answer, -1 if B is)).
    `log` is its own verdict log: (model, answer A, answer B, winner) per reply."""

    def __init__(self, *, first: float = 0.0, tie: float = 0.0, length_k: float = 0.0, length_scale: float = 80.0,
                 quality: float = 0.0, better: set[str] | None = None) -> None:
        self.first, self.tie, self.length_k, self.length_scale = first, tie, length_k, length_scale
        self.quality, self.better = quality, better or set()
        self.log: list[tuple[str, str, str, str]] = []

    def __call__(self, body: dict[str, Any], attempt: int) -> Reply:
        text = body["messages"][1]["content"]
        a, b = _A.search(text).group(1), _B.search(text).group(1)
        if unit(a, b, "first") < self.first:
            w = "A"
        elif unit(a, b, "tie") < self.tie:
            w = "tie"
        else:
            x = self.length_k * math.tanh((len(a) - len(b)) / self.length_scale)
            x += self.quality * ((a in self.better) - (b in self.better))
            w = "A" if unit(a, b, "pick") < 1 / (1 + math.exp(-x)) else "B"
        self.log.append((body["model"], a, b, w))
        return Reply.ok(verdict(w))


def recompute(log: list[tuple[str, str, str, str]], tuned: dict[str, str], base: dict[str, str],
              model: str | None = None) -> dict[str, Any]:
    """The figures from a judge's verdict log alone: per prompt the preferred model in each order, the vote (a
    preference that holds in both orders, else tie), win/tie/loss, flip rate and first-position rate."""
    by_text = {v: ("tuned", k) for k, v in tuned.items()} | {v: ("base", k) for k, v in base.items()}
    prefs: dict[str, dict[str, str]] = {}
    picks = Counter()
    for m, a, b, w in log:
        if model is not None and m != model:
            continue
        side_a, rid = by_text[a]
        order = "tb" if side_a == "tuned" else "bt"
        picks[w] += 1
        pref = "tie" if w == "tie" else (by_text[a] if w == "A" else by_text[b])[0]
        prefs.setdefault(rid, {})[order] = pref
    votes = {rid: ("win" if p["tb"] == p["bt"] == "tuned" else "loss" if p["tb"] == p["bt"] == "base" else "tie")
             for rid, p in prefs.items()}
    c = Counter(votes.values())
    flips = sum(p["tb"] != p["bt"] for p in prefs.values())
    return {"votes": votes, "win": c["win"], "tie": c["tie"], "loss": c["loss"], "n": len(votes),
            "win_rate": round((c["win"] + c["tie"] / 2) / len(votes), 4),
            "flip_rate": round(flips / len(prefs), 4), "first_rate": round(picks["A"] / sum(picks.values()), 4)}


def run_eval(tmp: Path, val: Path, cfg: Path | None, base: Path, tuned: Path, *extra: str, out: str = "out") -> int:
    argv = ["--base-answers", str(base), "--tuned-answers", str(tuned), "--input", str(val),
            "--output-dir", str(tmp / out), "--seed", "5", *extra]
    if cfg is not None:
        argv += ["--judges", str(cfg)]
    return eval_script.main(argv)


def report(tmp: Path, out: str = "out") -> dict[str, Any]:
    return orjson.loads((tmp / out / "eval_report.json").read_bytes())


def no_none(text: str) -> None:
    assert regex.search(r"\bNone\b", text) is None, text[:2000]


def nulls_have_reasons(obj: Any, path: str = "") -> None:
    """Every null figure in the report has its reason in the `na` map beside it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v is None:
                assert k in (obj.get("na") or {}), f"{path}.{k} is null without a reason"
            nulls_have_reasons(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            nulls_have_reasons(v, f"{path}[{i}]")


# ---- length and position bias, exact figures from the judge's own log -------------------------------------------


def test_tuned_only_longer_lc_near_half_while_raw_win_rate_is_well_above(tmp_path, capsys):
    recs = prompts(100)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, delta_mean=80, delta_sd=80, seed=1)
    judge = Judge(first=0.15, tie=0.05, length_k=4.0)  # prefers the longer answer and the first position; no quality
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "len", "model": "m-len"}])
        rc = run_eval(tmp_path, val, cfg, write_answers(tmp_path, "b.jsonl", base),
                      write_answers(tmp_path, "t.jsonl", tuned))
    assert rc == 0
    rep = report(tmp_path)
    ref = recompute(judge.log, tuned, base)
    o, j = rep["overall"], rep["per_judge"]["len"]
    for row in (o, j):
        assert (row["n"], row["win"], row["tie"], row["loss"], row["win_rate"]) == (
            ref["n"], ref["win"], ref["tie"], ref["loss"], ref["win_rate"])
    assert j["position_flip_rate"] == ref["flip_rate"] and j["first_position_rate"] == ref["first_rate"]
    assert rep["complete"] is True and rep["missing_verdicts"] == 0
    # raw: well above one half; length-controlled: one half is inside its interval, and it is far below raw
    assert o["win_rate_ci95"][0] > 0.6
    lo, hi = o["lc_win_rate_ci95"]
    assert lo < 0.5 < hi and abs(o["lc_win_rate"] - 0.5) < 0.1 and o["lc_win_rate"] < o["win_rate"] - 0.15
    assert o["length_coef"] > 1 and o["length_coef_ci95"][0] > 0  # length sways this judge, and the fit sees it
    assert j["length_control"]["position_coef"] > 0.3  # the first-position preference lands in the position term
    out = capsys.readouterr().out
    no_none(out)
    nulls_have_reasons(rep)
    no_none((tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8"))
    assert f"win rate {ref['win_rate']:.2f}" in out and "length-controlled win rate" in out


def test_tuned_better_at_equal_length_raw_and_lc_agree(tmp_path):
    recs = prompts(100)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, delta_mean=0, delta_sd=1.5, seed=2)
    judge = Judge(first=0.15, tie=0.1, length_k=0.0, quality=1.0, better=set(tuned.values()))
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "q", "model": "m-q"}])
        assert run_eval(tmp_path, val, cfg, write_answers(tmp_path, "b.jsonl", base),
                        write_answers(tmp_path, "t.jsonl", tuned)) == 0
    o = report(tmp_path)["overall"]
    ref = recompute(judge.log, tuned, base)
    assert (o["win"], o["tie"], o["loss"]) == (ref["win"], ref["tie"], ref["loss"])
    assert o["win_rate_ci95"][0] > 0.5 and o["lc_win_rate_ci95"][0] > 0.5
    assert abs(o["win_rate"] - o["lc_win_rate"]) < 0.06
    lo, hi = o["length_coef_ci95"]
    assert lo < 0 < hi  # no length effect to find


def test_per_category_source_small_n_marked_and_two_judges(tmp_path):
    recs = prompts(30)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, delta_mean=0, delta_sd=3, seed=3)
    judge = Judge(first=0.1, tie=0.2, quality=1.5, better=set(tuned.values()))
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j1", "model": "m1"}, {"name": "j2", "model": "m2"}])
        assert run_eval(tmp_path, val, cfg, write_answers(tmp_path, "b.jsonl", base),
                        write_answers(tmp_path, "t.jsonl", tuned)) == 0
    rep = report(tmp_path)
    r1, r2 = recompute(judge.log, tuned, base, "m1"), recompute(judge.log, tuned, base, "m2")
    for name, ref in (("j1", r1), ("j2", r2)):
        j = rep["per_judge"][name]
        assert (j["win"], j["tie"], j["loss"], j["position_flip_rate"]) == (ref["win"], ref["tie"], ref["loss"],
                                                                             ref["flip_rate"])
    # the combined outcome: sign of the mean vote; per category from the records' meta
    score = {"win": 1, "tie": 0, "loss": -1}
    combined = {rid: ("win" if s > 0 else "loss" if s < 0 else "tie") for rid in r1["votes"]
                for s in [score[r1["votes"][rid]] + score[r2["votes"][rid]]]}
    cats = {r["id"]: r["meta"]["category"] for r in recs}
    for cat, row in rep["per_category"].items():
        mine = [v for rid, v in combined.items() if cats[rid] == cat]
        assert (row["n"], row["win"], row["tie"], row["loss"]) == (len(mine), mine.count("win"), mine.count("tie"),
                                                                  mine.count("loss"))
        assert row["small_n"] is True  # 10 prompts per category
    assert rep["overall"]["small_n"] is False
    md = (tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8")
    assert "| 校园 | 10 (n<20) |" in md
    assert rep["agreement"]["pairs"][0]["n"] == 30


# ---- agreement with people --------------------------------------------------------------------------------------


def test_human_agreement_per_judge_and_combined(tmp_path, caplog):
    recs = prompts(40)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, delta_mean=0, delta_sd=3, seed=4)
    judge = Judge(first=0.2, tie=0.15, quality=1.0, better=set(tuned.values()))
    winners = ["tuned", "tuned", "base", "tie", "tuned"]
    labels = [{"id": r["id"], "winner": winners[int(unit(r["id"], "label") * 5)]} for r in recs[:36]]
    lab = write_jsonl(tmp_path / "labels.jsonl", [*labels, {"id": "nowhere", "winner": "base"},
                                                  {"id": "p39", "winner": "maybe"}, b"{not json"])
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        assert run_eval(tmp_path, val, cfg, write_answers(tmp_path, "b.jsonl", base),
                        write_answers(tmp_path, "t.jsonl", tuned), "--human-labels", str(lab)) == 0
    rep = report(tmp_path)
    votes = recompute(judge.log, tuned, base)["votes"]
    human = {x["id"]: {"tuned": "win", "base": "loss", "tie": "tie"}[x["winner"]] for x in labels}
    both = list(human)
    decisive = [r for r in both if votes[r] != "tie" and human[r] != "tie"]
    # Cohen's kappa written out: observed agreement against the agreement the two marginals give by chance
    po = sum(votes[r] == human[r] for r in both) / len(both)
    pe = sum(sum(votes[r] == k for r in both) * sum(human[r] == k for r in both) for k in ("win", "tie", "loss"))
    pe /= len(both) ** 2
    expect = {"with_ties": round(po, 4), "n_with_ties": 36, "n_without_ties": len(decisive),
              "without_ties": round(sum(votes[r] == human[r] for r in decisive) / len(decisive), 4),
              "kappa": round((po - pe) / (1 - pe), 4)}
    got = rep["per_judge"]["j"]["human_agreement"]
    assert {k: got[k] for k in expect} == expect
    assert {k: rep["human_agreement"]["combined"][k] for k in expect} == expect  # one judge: combined = its votes
    assert rep["human_agreement"]["labels"] == 37 and rep["human_agreement"]["labels_unmatched"] == 1
    assert rep["human_agreement"]["anchors"]["gpt4_vs_human"] == {"with_ties": 0.66, "without_ties": 0.85}
    err = caplog.text
    assert "labels.jsonl:38: winner must be tuned, base or tie" in err and "labels.jsonl:39: invalid JSON" in err
    md = (tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8")
    assert "| MT-Bench: GPT-4 vs humans | 0.66 | | 0.85 | | |" in md


def test_kappa_undefined_is_na_with_the_reason():
    from sftkit.evaluate import human

    a = human.agreement({"x": "win", "y": "win"}, {"x": "win", "y": "win"})
    assert a["kappa"] is None and "same label" in a["na"]["kappa"] and a["with_ties"] == 1.0


# ---- the interval ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie_share", [0.0, 0.2])
def test_wilson_cc_covers_the_truth_in_every_cell(tie_share):
    """2,000 simulated samples per cell at n = 10, 30, 100 and true win rates 0.1, 0.5, 0.9 (ties counted as half
    a win, tie share 0 or 20% of the prompts): the 95% interval holds the true rate at least 94% of the time."""
    rng = np.random.default_rng(20240611)
    for n in (10, 30, 100):
        for p in (0.1, 0.5, 0.9):
            t = min(tie_share, 2 * min(p, 1 - p))
            probs = [p - t / 2, t, 1 - p - t / 2]  # win, tie, loss: E[win + tie/2] = p
            counts = rng.multinomial(n, probs, size=2000)
            covered = 0
            for w, ti, _l in counts:
                lo, hi = stats.wilson_cc(w + ti / 2, n)
                covered += lo <= p <= hi
            assert covered / 2000 >= 0.94, (n, p, tie_share, covered / 2000)


def test_a_percentile_bootstrap_under_covers_at_n_10():
    """Why not the percentile bootstrap the report used before: at n = 10, p = 0.1 it covers far less than 95%."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(500):
        x = (rng.random(10) < 0.1).astype(float)
        means = x[rng.integers(0, 10, size=(500, 10))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        covered += lo <= 0.1 <= hi
    assert covered / 500 < 0.8


def test_interval_never_zero_width_and_matches_newcombe():
    for n in (1, 2, 3, 10, 57):
        for s2 in range(0, 2 * n + 1):
            lo, hi = stats.wilson_cc(s2 / 2, n)
            assert 0 <= lo < s2 / 2 / n + 1e-12 and s2 / 2 / n - 1e-12 < hi <= 1 and hi - lo > 0.01
    # the definition: the continuity-corrected score bounds solve (|p_hat - L| - 1/(2n))^2 = z^2 L (1 - L) / n
    z = stats.Z95
    for s, n in ((81, 263), (15, 148), (7, 10), (2.5, 10), (1, 29)):
        p_hat = s / n
        for bound in stats.wilson_cc(s, n):
            assert abs((abs(p_hat - bound) - 1 / (2 * n)) ** 2 - z * z * bound * (1 - bound) / n) < 1e-12
    # Newcombe (1998, Statistics in Medicine 17:857), method 4 (score with continuity correction)
    for (s, n), (lo, hi) in {(81, 263): (0.2535, 0.3682), (0, 20): (0.0, 0.2005), (1, 29): (0.0018, 0.1963)}.items():
        got = stats.wilson_cc(s, n)
        assert abs(got[0] - lo) < 6e-5 and abs(got[1] - hi) < 6e-5, (s, n, got)
    w = stats.win_tie_loss(["win"] * 3)
    assert w["win_rate"] == 1.0 and w["win_rate_ci95"][1] == 1.0 and w["win_rate_ci95"][0] < 0.5
    w = stats.win_tie_loss(["win", "win", "tie", "loss"])
    assert (w["win_rate"], w["net"]) == (0.625, 0.25)
    assert all(abs(a - (2 * b - 1)) < 3e-4 for a, b in zip(w["net_ci95"], w["win_rate_ci95"], strict=True))
    empty = stats.win_tie_loss([])
    assert empty["win_rate"] is None and empty["na"]["win_rate"] == "no prompt with a vote"


def test_lc_interval_covers_by_simulation():
    """The length-controlled interval at 30 prompts x 2 orders, a judge swayed by length and position: it holds
    the true win rate at zero length difference in at least 92% of 300 samples (95% nominal)."""
    rng = np.random.default_rng(3)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    for theta, phi, psi in ((0.0, 1.5, 0.5), (1.2, 1.0, 0.8)):
        truth = (sig(theta + psi) + sig(theta - psi)) / 2
        covered = 0
        for _ in range(300):
            d = rng.normal(100, 150, 30)
            rows = [lcm.Verdict(i, float(rng.random() < sig(theta + phi * math.tanh(d[i] / 150) + psi * s)), d[i],
                                s > 0) for i in range(30) for s in (1, -1)]
            lo, hi = lcm.length_controlled(rows)["lc_win_rate_ci95"]
            covered += lo <= truth <= hi
        assert covered / 300 >= 0.92, (theta, covered / 300)


def test_lc_without_length_difference_is_na_with_the_reason():
    rows = [lcm.Verdict(i, y, 0.0, s) for i, y in enumerate([1, 1, 0, 0.5, 1]) for s in (True, False)]
    out = lcm.length_controlled(rows)
    assert out["length_coef"] is None and "same length" in out["na"]["length_coef"]
    assert 0.5 < out["lc_win_rate"] < 0.8
    one = lcm.length_controlled(rows[:2])
    assert one["lc_win_rate"] is None and "fewer than 2 prompts" in one["na"]["lc_win_rate"]
    assert abs(lcm.t_quantile(9) - 2.262) < 1e-3 and abs(lcm.t_quantile(1) - 12.706) < 1e-3


# ---- contamination ------------------------------------------------------------------------------------------


def char_jaccard(a: str, b: str) -> float:
    """Jaccard of character 3-gram sets of the lower-cased letters and digits: the definition, written plainly."""
    def grams(t: str) -> set[str]:
        k = "".join(c for c in t.lower() if c.isalnum())
        return {k[i:i + 3] for i in range(len(k) - 2)}
    return len(grams(a) & grams(b)) / len(grams(a) | grams(b))


def test_contamination_found_for_planted_near_copies_and_not_for_distinct_prompts(tmp_path):
    recs = prompts(20)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    q = {r["id"]: r["messages"][0]["content"] for r in recs}
    planted = {"p3": q["p3"],  # an exact copy
               "p7": q["p7"].replace("？", "?").replace("请说明", "请 说明"),  # punctuation and spacing only
               "p11": q["p11"].replace("规定", "规则")}  # one word changed
    near_miss = q["p15"][:6] + "食堂的营业时间和价格表"  # same opening, another question
    assert all(char_jaccard(t, q[k]) >= 0.7 for k, t in planted.items())
    assert char_jaccard(near_miss, q["p15"]) < 0.7
    train = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "训练答案。"}]}
             for t in planted.values()]
    train += [{"instruction": near_miss, "output": "答"}, {"instruction": "完全不同的训练问题：如何写论文摘要？",
                                                          "output": "答"}, b"{broken"]
    tf = write_jsonl(tmp_path / "train.jsonl", train)
    base, tuned = answer_pairs(recs, 0, 3, seed=5)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    judge = Judge(quality=1.0, better=set(tuned.values()))
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        assert run_eval(tmp_path, val, cfg, b, t, "--train-file", str(tf)) == 0
        asked = {a for _m, a, _b, _w in judge.log}
        c = report(tmp_path)["contamination"]
        assert c["found"] == 3 and {x["id"] for x in c["items"]} == set(planted)
        assert c["train_records"] == 5 and c["train_bad_records"] == 1 and c["kept"] is False
        assert report(tmp_path)["prompts"] == 17 and report(tmp_path)["prompts_read"] == 20
        assert not {tuned[k] for k in planted} & asked  # nothing bought for them
        # --keep-contaminated: listed and judged
        assert run_eval(tmp_path, val, cfg, b, t, "--train-file", str(tf), "--keep-contaminated", out="keep") == 0
        rep = report(tmp_path, "keep")
        assert rep["contamination"]["found"] == 3 and rep["contamination"]["kept"] is True and rep["prompts"] == 20
    md = (tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8")
    assert "## Contamination" in md and "- p3: Jaccard 1.00" in md


def test_every_prompt_contaminated_is_exit_2(tmp_path, capsys):
    recs = prompts(3)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=6)
    rc = run_eval(tmp_path, val, write_judges(tmp_path, "http://127.0.0.1:9/v1", [{"name": "j", "model": "m"}]),
                  write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned),
                  "--train-file", str(val))
    assert rc == 2 and "every one of the 3 eval prompts is a near-duplicate" in capsys.readouterr().err


# ---- answers from anywhere -----------------------------------------------------------------------------------


def test_answers_files_missing_prompts_counted_and_matched_by_prompt(tmp_path, caplog):
    recs = [{"messages": r["messages"]} for r in prompts(8)]  # no ids: content ids
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    from sftkit.evaluate.answers import read_prompts

    reqs, _ = read_prompts(str(val))
    ids = [r.record["id"] for r in reqs]
    # infer.py-like rows: the prompt messages, an id of its own numbering (not ours), the answer
    base = [{"id": f"val-{i + 1}", "messages": r.messages, "response": f"基础{i}", "finish_reason": "stop",
             "completion_tokens": 3} for i, r in enumerate(reqs)]
    tuned = [{"id": ids[i], "response": f"调优回答{i}"} for i in range(8) if i not in (2, 5)]
    tuned.append({"id": "not-in-input", "response": "x"})
    # a stale row: the right id but another prompt: never matched by the id
    stale = {"id": ids[2], "messages": [{"role": "user", "content": "另一个问题"}], "response": "旧答案"}
    bf = write_jsonl(tmp_path / "b.jsonl", [*base, {"id": "x", "response": 3}])
    tf = write_jsonl(tmp_path / "t.jsonl", [*tuned, stale])
    judge = Judge(quality=2.0, better={t["response"] for t in tuned})
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        assert run_eval(tmp_path, val, cfg, bf, tf, "--base-name", "基座", "--tuned-name", "微调后") == 0
    rep = report(tmp_path)
    assert rep["prompts"] == 6 and rep["missing_answers"] == {"base": 0, "tuned": 2}
    assert rep["missing_answer_ids"]["tuned"] == [ids[2], ids[5]]
    assert rep["sides"]["tuned"]["answers_file_rows_not_in_input"] == 2
    assert rep["base"] == "基座" and rep["tuned"] == "微调后"
    assert rep["answers"]["base"]["tokens_mean"] == 3.0 and rep["answers"]["tuned"]["tokens_mean"] is None
    assert "completion_tokens" in rep["answers"]["tuned"]["na"]["tokens_mean"]
    nulls_have_reasons(rep)
    assert "旧答案" not in {a for _m, a, _b, _w in judge.log} | {b for _m, _a, b, _w in judge.log}
    err = caplog.text
    assert err.count("have no answer from one side") == 1 and f"tuned (微调后) 2 (first: {ids[2]})" in err
    assert "b.jsonl:9: an answer row needs `response` (a string)" in err


def test_dry_run_with_answer_files_counts_and_sends_nothing(tmp_path, capsys):
    recs = prompts(5)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=7)
    with StubServer(lambda b, a: Reply.ok(verdict("A"))) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "a", "model": "deepseek-chat"}, {"name": "b",
                                                                                            "model": "m-b"}])
        assert run_eval(tmp_path, val, cfg, write_answers(tmp_path, "b.jsonl", base),
                        write_answers(tmp_path, "t.jsonl", tuned), "--dry-run") == 0
        assert srv.requests == []
    text = capsys.readouterr().out
    assert "answers to generate: 0 (base 0, tuned 0) of 0; base from" in text
    assert "judge requests: 20 = 5 prompts x 2 judges x 2 orders" in text
    assert "judge requests not yet journaled (or to ask again): 20" in text
    assert "estimated cost: unknown (a judge has no price)" in text
    assert not (tmp_path / "out").exists()


# ---- never a partial result that looks whole -----------------------------------------------------------------


def run_failing(tmp_path: Path, script: Any, judges: list[dict[str, Any]], *extra: str, n: int = 6
                ) -> tuple[int, StubServer, dict[str, Any]]:
    recs = prompts(n)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=8)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    with StubServer(script) as srv:
        cfg = write_judges(tmp_path, srv.base_url, judges)
        rc = run_eval(tmp_path, val, cfg, b, t, *extra)
    return rc, srv, {"val": val, "cfg": cfg, "b": b, "t": t}


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("eval: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_every_verdict_unusable_exits_1_and_says_so(tmp_path, capsys):
    rc, _srv, _ = run_failing(tmp_path, lambda b, a: Reply.ok("这两个回答都还可以。"), [{"name": "bad", "model": "m"}])
    assert rc == 1
    cap = capsys.readouterr()
    line = one_error_line(cap.err)
    assert "judge 'bad': 12 verdict(s) missing or unusable" in line and "unusable verdict" in line
    assert "--retry-failed" in line
    rep = report(tmp_path)
    assert rep["complete"] is False and rep["judged"] == 0 and rep["missing_verdicts"] == 12
    assert {(m["judge"], m["order"]) for m in rep["missing_verdict_list"]} == {("bad", "tb"), ("bad", "bt")}
    assert rep["overall"]["win_rate"] is None and rep["overall"]["na"]["win_rate"] == "no prompt with a vote"
    md = (tmp_path / "out" / "eval_report.md").read_text(encoding="utf-8")
    assert md.splitlines()[2].startswith("**INCOMPLETE: 12 verdict(s) missing or unusable")
    no_none(cap.out)
    no_none(md)
    nulls_have_reasons(rep)
    assert "win rate n/a (no prompt with a vote)" in cap.out and "[INCOMPLETE]" in cap.out


def test_refused_key_exits_1_naming_the_judge(tmp_path, capsys):
    def script(body: dict[str, Any], attempt: int) -> Reply:
        return Reply.error(401, body=b'{"error": "invalid api key"}') if body["model"] == "m-no" else Reply.ok(
            verdict("A"))
    rc, srv, _ = run_failing(tmp_path, script, [{"name": "ok", "model": "m-ok", "max_concurrency": 1},
                                                {"name": "no", "model": "m-no", "max_concurrency": 1}])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "judge 'no'" in line and "refused" in line and "http_401" in line
    assert report(tmp_path)["complete"] is False
    assert sum(b["model"] == "m-no" for b in srv.requests) == 1  # a refusal stops at once


def test_dead_judge_exits_1_and_a_plain_rerun_asks_only_what_is_missing(tmp_path, capsys):
    up = {"on": False}

    def script(body: dict[str, Any], attempt: int) -> Reply:
        if body["model"] == "m-down" and not up["on"]:
            return Reply.error(503)
        return Reply.ok(verdict("A" if body["model"] == "m-down" else "B"))
    down = {"name": "down", "model": "m-down", "breaker_failures": 2, "breaker_window": 0.5, "max_concurrency": 1}
    recs = prompts(6)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=9)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    with StubServer(script) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "pref", "model": "m-pref"}, down])
        assert run_eval(tmp_path, val, cfg, b, t) == 1
        line = one_error_line(capsys.readouterr().err)
        assert "judge 'down'" in line and "12 verdict(s) missing or unusable" in line
        assert "http_503" in line  # why: the endpoint's own failure, not a generic "not asked"
        rep = report(tmp_path)
        assert rep["complete"] is False and rep["per_judge"]["down"]["vote"] == 0
        assert rep["judge_costs"]["down"]["down"]
        sent_down = sum(x["model"] == "m-down" for x in srv.requests)
        assert sent_down < 12  # the breaker stopped sending
        n_pref = sum(x["model"] == "m-pref" for x in srv.requests)
        up["on"] = True
        assert run_eval(tmp_path, val, cfg, b, t) == 0  # transient failures and unasked verdicts: asked again
        assert sum(x["model"] == "m-pref" for x in srv.requests) == n_pref  # nothing asked twice
        assert sum(x["model"] == "m-down" for x in srv.requests) - sent_down == 12
    assert report(tmp_path)["complete"] is True


def test_transient_failure_is_asked_again_unusable_only_with_retry_failed(tmp_path, capsys):
    state = {"fixed": False}

    def script(body: dict[str, Any], attempt: int) -> Reply:
        text = body["messages"][1]["content"]
        if "第1号问题" in text and not state["fixed"]:
            return Reply.error(500)  # retries 0: journaled as a transient request failure
        if "第2号问题" in text and not state["fixed"]:
            return Reply.ok("没有结论")  # unusable
        if "第3号问题" in text and not state["fixed"]:
            return Reply.error(400, body=b'{"error": "bad request"}')  # rejected: not transient
        return Reply.ok(verdict("A"))
    # a high breaker threshold: one bad prompt does not take the judge down
    rc, _srv, f = run_failing(tmp_path, script, [{"name": "j", "model": "m", "breaker_failures": 50}])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "judge 'j': 6 verdict(s) missing or unusable" in line
    journal = [orjson.loads(x) for x in (tmp_path / "out" / "judgements.jsonl").read_bytes().splitlines()]
    assert sum(bool(e.get("transient")) for e in journal) == 2
    assert {e["error"] for e in journal if not e["ok"]} == {"request:http_500", "invalid", "request:http_400"}
    with StubServer(script) as srv2:
        cfg = write_judges(tmp_path, srv2.base_url, [{"name": "j", "model": "m", "breaker_failures": 50}])
        state["fixed"] = True
        assert run_eval(tmp_path, f["val"], cfg, f["b"], f["t"]) == 1  # the transient ones only
        assert len(srv2.requests) == 2 and all("第1号问题" in x["messages"][1]["content"] for x in srv2.requests)
        assert run_eval(tmp_path, f["val"], cfg, f["b"], f["t"], "--retry-failed") == 0  # now the others
        assert len(srv2.requests) == 6
        assert run_eval(tmp_path, f["val"], cfg, f["b"], f["t"]) == 0 and len(srv2.requests) == 6


def test_journal_that_cannot_be_written_exits_1(tmp_path, capsys, monkeypatch):
    from sftkit.io import jsonl

    real = jsonl.Journal.append
    count = {"n": 0}

    def append(self: Any, entry: Any) -> None:
        if self.path.name == "judgements.jsonl":
            count["n"] += 1
            if count["n"] > 3:
                raise jsonl.JournalWriteError(self.path, OSError(28, "No space left on device"))
        real(self, entry)

    monkeypatch.setattr(jsonl.Journal, "append", append)
    rc, srv, _ = run_failing(tmp_path, lambda b, a: Reply.ok(verdict("A")), [{"name": "j", "model": "m",
                                                                              "max_concurrency": 1}])
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "the verdict journal cannot be written" in line and "No space left" in line
    assert len(srv.requests) < 12  # nothing more bought once verdicts could not be kept
    assert report(tmp_path)["complete"] is False


def test_unwritable_output_is_exit_1_in_one_line_before_any_request(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    recs = prompts(2)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=10)
    with StubServer(lambda b, a: Reply.ok(verdict("A"))) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        rc = eval_script.main(["--base-answers", str(write_answers(tmp_path, "b.jsonl", base)), "--tuned-answers",
                               str(write_answers(tmp_path, "t.jsonl", tuned)), "--input", str(val), "--judges",
                               str(cfg), "--output-dir", str(tmp_path / "afile" / "out")])
        assert rc == 1 and srv.requests == []
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---- keys: verdicts by content id, answers by weights, API keys never written --------------------------------


def test_inserting_a_line_buys_only_the_new_prompts_verdicts(tmp_path):
    recs = [{"messages": r["messages"]} for r in prompts(6)]  # no ids
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    from sftkit.evaluate.answers import read_prompts

    new = {"messages": [{"role": "user", "content": "新插入的问题：校医院在哪里？"}]}
    (tmp_path / "v2").mkdir()
    val2 = write_jsonl(tmp_path / "v2" / "val.jsonl", [new, *recs])  # the same file with a line inserted
    reqs, _ = read_prompts(str(val2))
    base = {r.record["id"]: f"基础回答{i}" for i, r in enumerate(reqs)}
    tuned = {r.record["id"]: f"调优回答{i}" for i, r in enumerate(reqs)}
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    with StubServer(lambda body, a: Reply.ok(verdict("A"))) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        assert run_eval(tmp_path, val, cfg, b, t) == 0
        assert len(srv.requests) == 12
        assert run_eval(tmp_path, val2, cfg, b, t) == 0
        assert len(srv.requests) == 14
        assert all("校医院" in x["messages"][1]["content"] for x in srv.requests[12:])


@pytest.mark.parametrize("how", ["flag", "judge_flag", "env", "dotenv"])
def test_keys_reach_the_judge_and_never_any_output(tmp_path, capfd, caplog, monkeypatch, how):
    def script(body: dict[str, Any], attempt: int) -> Reply:
        if "第0号问题" in body["messages"][1]["content"]:  # an error body that echoes the key back
            return Reply.error(400, body=orjson.dumps({"error": f"bad request with key {KEY}"}))
        return Reply.ok(verdict("A"))
    recs = prompts(3)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=11)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    with StubServer(script) as srv:
        cfg = tmp_path / "judges.json"
        # a remote-looking judge on the loopback server: keys are required and sent
        cfg.write_bytes(orjson.dumps({"judges": [{"name": "j", "model": "m", "base_url": srv.base_url,
                                                  "api_key_env": "EVAL_TEST_KEY", "retries": 0}]}))
        extra = []
        if how == "flag":
            extra = ["--api-key", KEY]
        elif how == "judge_flag":
            extra = ["--api-key", "sk-flag-loses", "--judge-key", f"j={KEY}"]
        elif how == "env":
            monkeypatch.setenv("EVAL_TEST_KEY", KEY)
        else:
            (tmp_path / ".env").write_text(f"EVAL_TEST_KEY={KEY}\n")
        assert run_eval(tmp_path, val, cfg, b, t, *extra) == 1  # one prompt's verdicts were rejected
        assert {h.get("Authorization") for h in srv.headers} == {f"Bearer {KEY}"}
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err and KEY not in caplog.text
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"judgements.jsonl", "eval_report.json", "eval_report.md"}
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


# ---- the judge fallback to the gen endpoint --------------------------------------------------------------------


def test_without_a_judges_config_the_gen_endpoint_judges(tmp_path, capsys, caplog):
    recs = prompts(3)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=12)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    assert run_eval(tmp_path, val, None, b, t) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no judge config and no judge key" in err
    assert "OPENAI_API_KEY to judge with the gen endpoint" in err
    with StubServer(lambda body, a: Reply.ok(verdict("A"))) as srv:
        (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={srv.base_url}\n")
        assert run_eval(tmp_path, val, None, b, t) == 0
        assert {x["model"] for x in srv.requests} == {"deepseek-chat"} and len(srv.requests) == 6
    cap = capsys.readouterr()
    assert "judging with the gen endpoint (deepseek-chat at" in caplog.text
    assert KEY not in cap.err + cap.out + caplog.text
    assert list(report(tmp_path)["per_judge"]) == ["gen"]


def test_judge_py_falls_back_to_the_gen_endpoint_too(tmp_path):
    import importlib

    judge = importlib.import_module("judge") if str(ROOT) in sys.path else None
    if judge is None:
        sys.path.insert(0, str(ROOT))
        judge = importlib.import_module("judge")
    recs = write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", "messages": [
        {"role": "user", "content": "图书馆几点开门？"}, {"role": "assistant", "content": "早上八点。"}]}])
    scores = {d: 8 for d in ("accuracy", "completeness", "logicality", "helpfulness", "safety")}
    with StubServer(lambda body, a: Reply.ok(orjson.dumps({"reasons": {}, "scores": scores}).decode())) as srv:
        (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={srv.base_url}\n")
        assert judge.main(["--input", str(recs), "--output-dir", str(tmp_path / "d")]) == 0
        assert {x["model"] for x in srv.requests} == {"deepseek-chat"}


# ---- bad usage ---------------------------------------------------------------------------------------------


def test_bad_usage_exits_2_with_one_line(tmp_path, capsys):
    recs = prompts(2)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=13)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    cfg = write_judges(tmp_path, "http://127.0.0.1:9/v1", [{"name": "a", "model": "m"}])
    cases = [
        (["--base-answers", str(b), "--tuned-answers", str(t), "--input", str(tmp_path / "nope.jsonl")],
         "no such file"),
        (["--base", "x", "--base-answers", str(b), "--tuned-answers", str(t), "--input", str(val)],
         "give --base MODEL or --base-answers FILE"),
        (["--base-answers", str(b), "--input", str(val)], "give --tuned MODEL or --tuned-answers FILE"),
        (["--base-answers", str(b), "--tuned-answers", str(t), "--adapter", str(tmp_path), "--input", str(val)],
         "--adapter applies to --tuned MODEL"),
        (["--base-answers", str(b), "--tuned-answers", str(tmp_path / "t2.jsonl"), "--input", str(val)],
         "--tuned-answers"),
        (["--base-answers", str(b), "--tuned-answers", str(t), "--input", str(val), "--human-labels",
          str(write_jsonl(tmp_path / "l.jsonl", [{"id": "p0", "winner": "?"}]))], "no usable label"),
        (["--base-answers", str(b), "--tuned-answers", str(write_jsonl(tmp_path / "e.jsonl", [{"x": 1}])),
          "--input", str(val)], "no usable answer"),
    ]
    for argv, expect in cases:
        assert eval_script.main([*argv, "--judges", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err
        assert expect in err and err.strip().startswith("eval") and len(
            [x for x in err.splitlines() if x.startswith("eval")]) == 1, (argv, err)
    assert not (tmp_path / "o").exists()


# ---- the pure parts ---------------------------------------------------------------------------------------


def test_order_combination_counts_a_flip_as_tie():
    assert pw.tuned_side("tb", "A") == "tuned" and pw.tuned_side("bt", "A") == "base"
    assert pw.tuned_side("tb", "B") == "base" and pw.tuned_side("bt", "B") == "tuned"
    assert pw.combine_orders("tuned", "tuned") == "win"
    assert pw.combine_orders("base", "base") == "loss"
    assert pw.combine_orders("tuned", "base") == "tie"  # always picks one position
    assert pw.combine_orders("tuned", "tie") == "tie"
    assert pw.parse_winner('好的 {"reasons": "理由", "winner": "b"}') == ("B", "理由")
    with pytest.raises(ValueError):
        pw.parse_winner('{"reasons": "理由", "winner": "C"}')


def test_position_bias_figures():
    orders = [{"tb": "A", "bt": "A"}, {"tb": "A", "bt": "B"}, {"tb": "tie", "bt": "B"}, {"tb": "B"}]
    p = stats.position_bias(orders)
    # prompt 1 flips (tuned, then base), prompt 2 does not, prompt 3 flips (tie, then tuned); 4 has one order
    assert (p["position_flip_rate"], p["n_both_orders"]) == (round(2 / 3, 4), 3)
    assert (p["decisive_flip_rate"], p["n_decisive"]) == (0.5, 2)
    assert (p["first_position_rate"], p["picks"]) == (round(3 / 7, 4), {"A": 3, "B": 3, "tie": 1})


def test_chrf_is_sacrebleus_character_chrf():
    from sacrebleu.metrics import CHRF

    hyp, ref = "图书馆早上八点开门", "图书馆每天早上八点开门。"
    direct = CHRF(char_order=6, word_order=0)
    got = stats.chrf_figures([hyp], [ref])
    assert got["corpus"] == round(direct.corpus_score([hyp], [[ref]]).score, 2)
    assert got["mean_sentence"] == round(direct.sentence_score(hyp, [ref]).score, 2)
    assert stats.chrf_figures([ref], [ref])["corpus"] == 100.0


def test_fleiss_kappa_on_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert round(stats.fleiss_kappa(table), 3) == 0.210
    votes = [{"a": "win", "b": "win"}, {"a": "tie", "b": "tie"}, {"a": "loss", "b": "loss"}, {"a": "win", "b": "tie"}]
    ag = stats.judge_agreement(votes, ["a", "b"])
    assert ag["pairs"] == [{"judges": ["a", "b"], "n": 4, "agree": 0.75}]
    assert ag["fleiss_kappa"] == round((0.75 - 22 / 64) / (1 - 22 / 64), 4)


def test_refusal_phrases():
    assert stats.is_refusal("抱歉，我无法回答这个问题。")
    assert stats.is_refusal("I’m sorry, but I can't help with that.")
    assert not stats.is_refusal("图书馆早上八点开门。")
    assert not stats.is_refusal("图书馆早上八点开门。" * 30 + "抱歉")  # past the window


# ---- make eval ------------------------------------------------------------------------------------------------


def test_make_eval_with_answer_files_passes_the_training_set(tmp_path):
    recs = prompts(6)
    val = write_jsonl(tmp_path / "val.jsonl", recs)
    base, tuned = answer_pairs(recs, 0, 3, seed=14)
    b, t = write_answers(tmp_path, "b.jsonl", base), write_answers(tmp_path, "t.jsonl", tuned)
    train = write_jsonl(tmp_path / "train_firefly.jsonl", [{"conversation_id": 1, "conversation": [
        {"human": recs[0]["messages"][0]["content"], "assistant": "答"}]}])
    make = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.stamp", "eval", f"PYTHON={sys.executable}",
            f"EVAL_BASE_ANSWERS={b}", f"EVAL_TUNED_ANSWERS={t}", f"EVAL_INPUT={val}", f"STAGE1_DATA={train}",
            f"STAGE2_DATA={tmp_path / 'absent.jsonl'}", f"EVAL_OUT={tmp_path / 'out'}", "EVAL_FLAGS="]
    dry = subprocess.run([*make[:1], "-n", *make[1:]], capture_output=True, text=True, timeout=60)
    assert f"--train-file {train}" in dry.stdout and "absent.jsonl" not in dry.stdout
    assert "--judges" not in dry.stdout  # no EVAL_JUDGES: the default judges or the gen endpoint
    judge = Judge(quality=2.0, better=set(tuned.values()))
    with StubServer(judge) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "pref", "model": "m-pref"}])
        r = subprocess.run([*make, f"EVAL_JUDGES={cfg}"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = report(tmp_path)
    assert rep["contamination"]["found"] == 1 and rep["prompts"] == 5
    assert "contamination: 1 prompt(s) near-duplicate of training records, left out" in r.stdout


# ---- one tiny model: answers follow the weights, not the path ------------------------------------------------


def test_answers_recomputed_after_the_weights_change_in_place(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftkit.testing.tiny_model import build_tiny_model

    base = build_tiny_model(tmp_path / "base", seed=3)

    def adapter(seed: int) -> str:
        torch.manual_seed(seed)
        cfg = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg).save_pretrained(tmp_path / "adapter")
        return str(tmp_path / "adapter")

    ad = adapter(7)
    val = write_jsonl(tmp_path / "val.jsonl", prompts(3))
    out = tmp_path / "out"

    def answers() -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in (out / "answers.jsonl").read_bytes().splitlines()]

    with StubServer(lambda body, a: Reply.ok(verdict("tie"))) as srv:
        cfg = write_judges(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        argv = ["--base", base, "--tuned", base, "--adapter", ad, "--input", str(val), "--judges", str(cfg),
                "--output-dir", str(out), "--template", "minicpm4", "--max-new-tokens", "6"]
        assert eval_script.main(argv) == 0
        first = answers()
        assert len(first) == 6 and report(tmp_path)["complete"] is True
        assert eval_script.main(argv) == 0 and len(answers()) == 6  # same weights: nothing generated
        adapter(8)  # retrained into the same folder
        assert eval_script.main(argv) == 0
        again = answers()[6:]
        assert [e["side"] for e in again] == ["tuned"] * 3
        assert [e["response"] for e in again] != [e["response"] for e in first if e["side"] == "tuned"]
        requests = len(srv.requests)
    assert requests == 6 + 6  # the new tuned answers are judged again, the rest came from the journal
    rep = report(tmp_path)
    assert rep["sides"]["tuned"]["weights_identity"] == rep["sides"]["base"]["weights_identity"]
    assert rep["sides"]["tuned"]["adapter_identity"] and "adapter" not in rep["sides"]["base"]
    nulls_have_reasons(rep)
