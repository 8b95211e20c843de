"""The figures of the eval report: win/tie/loss with a percentile bootstrap, judge agreement (pairwise share and
Fleiss' kappa), chrF against references (sacrebleu), answer lengths, refusals, answers cut at max_new_tokens.

Pure functions, no I/O."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

OUTCOMES = ("win", "tie", "loss")  # of the tuned model against the base, per prompt
SCORE = {"win": 1, "tie": 0, "loss": -1}
BOOTSTRAP_RESAMPLES = 2000

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


def bootstrap_ci(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap of the mean of `values`: `resamples` resamples of len(values) items drawn with
    replacement (numpy default_rng(seed), one row of indices per resample), the (1-level)/2 and 1-(1-level)/2
    percentiles (numpy's linear interpolation) of their means. None for no values."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = x[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return round(float(lo), 4), round(float(hi), 4)


def win_tie_loss(outcomes: Sequence[str], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Counts and shares of win/tie/loss, the win rate wins/n and the net score (wins - losses)/n, each with its
    95% percentile-bootstrap interval over prompts."""
    n = len(outcomes)
    c = Counter(outcomes)
    out: dict[str, Any] = {"n": n, **{k: c[k] for k in OUTCOMES}}
    if not n:
        return {**out, "win_rate": None, "win_rate_ci95": None, "net": None, "net_ci95": None}
    wins = [1.0 if o == "win" else 0.0 for o in outcomes]
    net = [float(SCORE[o]) for o in outcomes]
    return {**out, "win_rate": round(sum(wins) / n, 4), "win_rate_ci95": bootstrap_ci(wins, seed=seed,
                                                                                      resamples=resamples),
            "net": round(sum(net) / n, 4), "net_ci95": bootstrap_ci(net, seed=seed, resamples=resamples)}


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
    kappa over the prompts every judge voted on (None for fewer than two judges)."""
    pairs = []
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            both = [v for v in votes if a in v and b in v]
            same = sum(v[a] == v[b] for v in both)
            pairs.append({"judges": [a, b], "n": len(both), "agree": round(same / len(both), 4) if both else None})
    full = [v for v in votes if all(j in v for j in judges)]
    kappa = None
    if len(judges) >= 2 and full:
        kappa = fleiss_kappa([[sum(v[j] == o for j in judges) for o in OUTCOMES] for v in full])
    return {"pairs": pairs, "fleiss_kappa": None if kappa is None else round(kappa, 4), "fleiss_n": len(full)}


def chrf_scorer() -> Any:
    """Character chrF for Chinese: character n-grams up to 6, no word n-grams (sacrebleu's CHRF, beta 2)."""
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=6, word_order=0)


def chrf_figures(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus chrF and the mean of per-answer chrF, over the answers whose record has a reference."""
    if not hyps:
        return {"n": 0, "corpus": None, "mean_sentence": None}
    scorer = chrf_scorer()
    corpus = scorer.corpus_score(list(hyps), [list(refs)]).score
    sent = [scorer.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)]
    return {"n": len(hyps), "corpus": round(corpus, 2), "mean_sentence": round(sum(sent) / len(sent), 2)}


def side_figures(rows: Sequence[Mapping[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Judge-free figures of one model's answers: chrF against references, lengths, refusals, length cut-offs."""
    chars = [len(r["response"]) for r in rows]
    tokens = [int(r["completion_tokens"]) for r in rows]
    with_ref = [r for r in rows if r.get("reference")]
    n = len(rows)
    return {
        "answers": n,
        "chrf": chrf_figures([r["response"] for r in with_ref], [r["reference"] for r in with_ref]),
        "chars_mean": round(sum(chars) / n, 1) if n else None,
        "chars_median": statistics.median(chars) if n else None,
        "tokens_mean": round(sum(tokens) / n, 1) if n else None,
        "refusal_rate": round(sum(is_refusal(r["response"]) for r in rows) / n, 4) if n else None,
        # a finish_reason "length" is an answer that ran to max_new_tokens without its stop token
        "hit_max_new_tokens_rate": round(sum(r["finish_reason"] == "length" for r in rows) / n, 4) if n else None,
        "max_new_tokens": max_new_tokens,
    }
