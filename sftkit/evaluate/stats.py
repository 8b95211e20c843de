"""The figures of the eval report that need no model: win/tie/loss counted as the field counts it (a tie is half a
win) with Wilson score intervals with continuity correction, Cohen's and Fleiss' kappa, position bias from the
verdicts of both orders, chrF against references (sacrebleu), answer lengths, refusals, answers cut at
max_new_tokens.

Pure functions, no I/O. A figure that cannot be computed is None in the row and its reason is in the row's `na`
map (the report prints `n/a (reason)`, never `None`)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

OUTCOMES = ("win", "tie", "loss")  # of the tuned model against the base, per prompt
SCORE = {"win": 1, "tie": 0, "loss": -1}
HALF = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # a tie is half a win (AlpacaEval, Chatbot Arena, MT-Bench)
Z95 = 1.959963984540054  # the standard normal 97.5% quantile
SMALL_N = 20  # rows with fewer prompts are marked in the report

# Phrases that open or carry a refusal. Matched case-insensitively in the first REFUSAL_WINDOW characters of an
# answer: a refusal says so at once, while a long helpful answer may quote "sorry" later on.
REFUSAL_PHRASES = (
    "我无法", "我不能", "我不便", "无法回答", "无法提供", "不能回答", "不能提供", "抱歉", "对不起", "很遗憾，我",
    "作为一个ai", "作为ai", "作为人工智能", "作为一个人工智能",
    "i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "i'm unable", "i am unable", "as an ai",
    "i won't", "i will not",
)
REFUSAL_WINDOW = 200


def is_refusal(text: str) -> bool:
    head = text[:REFUSAL_WINDOW].lower().replace("’", "'")
    return any(p in head for p in REFUSAL_PHRASES)


# ---- the win rate and its interval -------------------------------------------------------------------------------


def wilson_cc(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval with continuity correction (Newcombe 1998, method 4) for `successes` of `n`.

    `successes` may be a half-integer: the tie-as-half win count wins + ties/2. Why this interval: the per-prompt
    outcome takes the values 0, 1/2 and 1, so its variance p(1-p) - P(tie)/4 is at most the Bernoulli variance
    p(1-p) the Wilson interval assumes; ties only make it conservative. Without the continuity correction the Wilson
    interval covers the truth only 86% of the time at n = 10 near p = 0.01 and 92% at n = 30 and 100 for some p;
    with it, the exact coverage is at least 95.0% for every n from 1 to 200 and every p (tests/test_eval.py
    simulates the cells the issue names). It is never zero-width for n > 0 (3/3 wins: [0.31, 1.0])."""
    if n <= 0:
        raise ValueError("an interval needs n >= 1")
    p = successes / n
    z2 = z * z
    lo = 0.0 if successes <= 0 else (2 * n * p + z2 - 1 - z * math.sqrt(
        max(0.0, z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1)))) / (2 * (n + z2))
    hi = 1.0 if successes >= n else (2 * n * p + z2 + 1 + z * math.sqrt(
        max(0.0, z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1)))) / (2 * (n + z2))
    return max(0.0, lo), min(1.0, hi)


def win_tie_loss(outcomes: Sequence[str]) -> dict[str, Any]:
    """Counts of win/tie/loss, the win rate (wins + ties/2) / n with its Wilson-cc 95% interval, and the net score
    (wins - losses) / n = 2 x win rate - 1 with the same interval mapped. `small_n`: fewer than SMALL_N prompts."""
    n = len(outcomes)
    c = Counter(outcomes)
    out: dict[str, Any] = {"n": n, **{k: c[k] for k in OUTCOMES}, "small_n": n < SMALL_N}
    if not n:
        why = "no prompt with a vote"
        return {**out, "win_rate": None, "win_rate_ci95": None, "net": None, "net_ci95": None,
                "na": dict.fromkeys(("win_rate", "win_rate_ci95", "net", "net_ci95"), why)}
    s = c["win"] + c["tie"] / 2
    lo, hi = wilson_cc(s, n)
    return {**out, "win_rate": round(s / n, 4), "win_rate_ci95": [round(lo, 4), round(hi, 4)],
            "net": round((c["win"] - c["loss"]) / n, 4), "net_ci95": [round(2 * lo - 1, 4), round(2 * hi - 1, 4)]}


# ---- agreement ----------------------------------------------------------------------------------------------------


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> tuple[float | None, str]:
    """Cohen's kappa of two raters' labels over any categories: (kappa, "") or (None, why it is undefined)."""
    if len(a) != len(b):
        raise ValueError("a and b differ in length")
    n = len(a)
    if n == 0:
        return None, "no item rated by both"
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if pe >= 1.0:
        return None, "both gave one and the same label to every item (chance agreement is 1)"
    return (po - pe) / (1 - pe), ""


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories table of rating counts, every subject rated by the same number
    of raters (>= 2). None when undefined (no subjects, or chance agreement 1: everyone used one category)."""
    rows = [list(r) for r in table if sum(r)]
    if not rows:
        return None
    m = sum(rows[0])
    if m < 2 or any(sum(r) != m for r in rows):
        raise ValueError("every subject needs the same number (>= 2) of ratings")
    n = len(rows)
    p_j = [sum(r[j] for r in rows) / (n * m) for j in range(len(rows[0]))]
    p_i = [(sum(c * c for c in r) - m) / (m * (m - 1)) for r in rows]
    p_bar, p_e = sum(p_i) / n, sum(p * p for p in p_j)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def judge_agreement(votes: Sequence[Mapping[str, str]], judges: Sequence[str]) -> dict[str, Any]:
    """Per judge pair: on how many prompts both voted and the share where their votes (win/tie/loss) agree; Fleiss'
    kappa over the prompts every judge voted on."""
    pairs = []
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            both = [v for v in votes if a in v and b in v]
            same = sum(v[a] == v[b] for v in both)
            row: dict[str, Any] = {"judges": [a, b], "n": len(both),
                                   "agree": round(same / len(both), 4) if both else None}
            if not both:
                row["na"] = {"agree": "no prompt both judges voted on"}
            pairs.append(row)
    full = [v for v in votes if all(j in v for j in judges)]
    out: dict[str, Any] = {"pairs": pairs, "fleiss_kappa": None, "fleiss_n": len(full)}
    if len(judges) < 2:
        out["na"] = {"fleiss_kappa": "one judge"}
    elif not full:
        out["na"] = {"fleiss_kappa": "no prompt every judge voted on"}
    else:
        kappa = fleiss_kappa([[sum(v[j] == o for j in judges) for o in OUTCOMES] for v in full])
        if kappa is None:
            out["na"] = {"fleiss_kappa": "every judge gave the same vote on every prompt (chance agreement is 1)"}
        else:
            out["fleiss_kappa"] = round(kappa, 4)
    return out


# ---- position bias ------------------------------------------------------------------------------------------------


def tuned_side(order: str, winner: str) -> str:
    """A judge's winner (A / B / tie) in one order -> the model it prefers: tuned, base or tie. Order `tb` shows the
    tuned answer as A, order `bt` the base answer as A."""
    if winner == "tie":
        return "tie"
    first, second = ("tuned", "base") if order == "tb" else ("base", "tuned")
    return first if winner == "A" else second


def position_bias(orders: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Position bias of one judge from its usable verdicts: `orders` holds per prompt {order: winner} with order
    `tb` (A = tuned) / `bt` (A = base) and winner A / B / tie.

    position_flip_rate: share of the prompts with a usable verdict in both orders whose preferred model (tuned,
    base or tie) changes with the order; 1 - MT-Bench's "consistency". decisive_flip_rate: the same over the prompts
    decisive (not tie) in both orders. first_position_rate: share of all usable verdicts that pick answer A (an
    unbiased judge that never ties: 0.5)."""
    both = [o for o in orders if "tb" in o and "bt" in o]
    flips = sum(tuned_side("tb", o["tb"]) != tuned_side("bt", o["bt"]) for o in both)
    decisive = [o for o in both if o["tb"] != "tie" and o["bt"] != "tie"]
    dflips = sum(tuned_side("tb", o["tb"]) != tuned_side("bt", o["bt"]) for o in decisive)
    picks = Counter(w for o in orders for w in o.values())
    verdicts = sum(picks.values())
    out: dict[str, Any] = {
        "position_flip_rate": round(flips / len(both), 4) if both else None, "n_both_orders": len(both),
        "decisive_flip_rate": round(dflips / len(decisive), 4) if decisive else None, "n_decisive": len(decisive),
        "first_position_rate": round(picks["A"] / verdicts, 4) if verdicts else None, "n_verdicts": verdicts,
        "picks": {"A": picks["A"], "B": picks["B"], "tie": picks["tie"]}}
    na = {}
    if not both:
        na["position_flip_rate"] = "no prompt with a usable verdict in both orders"
    if not decisive:
        na["decisive_flip_rate"] = "no prompt decisive in both orders"
    if not verdicts:
        na["first_position_rate"] = "no usable verdict"
    if na:
        out["na"] = na
    return out


# ---- judge-free figures -------------------------------------------------------------------------------------------


def chrf_scorer() -> Any:
    """Character chrF for Chinese: character n-grams up to 6, no word n-grams (sacrebleu's CHRF, beta 2)."""
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=6, word_order=0)


def chrf_figures(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus chrF and the mean of per-answer chrF, over the answers whose record has a reference."""
    if not hyps:
        why = "no record has a reference answer"
        return {"n": 0, "corpus": None, "mean_sentence": None, "na": {"corpus": why, "mean_sentence": why}}
    scorer = chrf_scorer()
    corpus = scorer.corpus_score(list(hyps), [list(refs)]).score
    sent = [scorer.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)]
    return {"n": len(hyps), "corpus": round(corpus, 2), "mean_sentence": round(sum(sent) / len(sent), 2)}


def side_figures(rows: Sequence[Mapping[str, Any]], max_new_tokens: int | None) -> dict[str, Any]:
    """Judge-free figures of one model's answers: chrF against references, lengths, refusals, length cut-offs.
    Rows from an answers file may lack completion_tokens / finish_reason: those figures are n/a with the reason."""
    chars = [len(r["response"]) for r in rows]
    tokens = [int(r["completion_tokens"]) for r in rows if isinstance(r.get("completion_tokens"), int)]
    finish = [r["finish_reason"] for r in rows if isinstance(r.get("finish_reason"), str)]
    with_ref = [r for r in rows if r.get("reference")]
    n = len(rows)
    na: dict[str, str] = {}
    out: dict[str, Any] = {
        "answers": n,
        "chrf": chrf_figures([r["response"] for r in with_ref], [r["reference"] for r in with_ref]),
        "chars_mean": round(sum(chars) / n, 1) if n else None,
        "chars_median": statistics.median(chars) if n else None,
        "tokens_mean": round(sum(tokens) / n, 1) if n and len(tokens) == n else None,
        "refusal_rate": round(sum(is_refusal(r["response"]) for r in rows) / n, 4) if n else None,
        # a finish_reason "length" is an answer that ran to max_new_tokens without its stop token
        "hit_max_new_tokens_rate": round(sum(f == "length" for f in finish) / n, 4) if n and len(finish) == n
        else None,
        "max_new_tokens": max_new_tokens,
    }
    if not n:
        na.update(dict.fromkeys(("chars_mean", "chars_median", "refusal_rate"), "no answers"))
    if out["tokens_mean"] is None:
        na["tokens_mean"] = "no answers" if not n else "the answers file gives no completion_tokens"
    if out["hit_max_new_tokens_rate"] is None:
        na["hit_max_new_tokens_rate"] = "no answers" if not n else "the answers file gives no finish_reason"
    if max_new_tokens is None:
        na["max_new_tokens"] = "answers read from a file"
    if na:
        out["na"] = na
    return out
