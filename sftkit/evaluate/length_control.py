"""Length-controlled win rate for one pair of models: AlpacaEval 2's idea (Dubois et al. 2024), fitted on the
verdicts of both orders.

Each usable verdict v (one judge, one prompt, one order) is a row with
    y_v = 1 (the judge prefers the tuned answer), 1/2 (tie), 0 (the base answer),
    d_v = tanh(length difference / its standard deviation), length difference = tuned minus base, in characters,
    s_v = +1 when the tuned answer is shown first (order tb), -1 when second (order bt),
and the model is  logit P(y_v = 1) = theta + phi * d_v + psi * s_v,  fitted by maximum likelihood with the
fractional targets as they are (a tie is half a preference, as AlpacaEval maps it). The length-controlled win
rate is the predicted win rate at zero length difference, averaged over the two positions:
    lc_win_rate = (sigmoid(theta + psi) + sigmoid(theta - psi)) / 2,
and `length_coef` = phi says how strongly length sways the judge (log-odds between a tie in length and a tuned
answer one standard deviation or more longer: tanh saturates, so a few very long answers cannot dominate).

Kept from AlpacaEval's `glm_winrate.py`: the regressor tanh(delta_len / std(delta_len)) with lengths in
characters and the std over the annotations; ties as a target of 1/2 in a logistic log-loss; no free intercept
beyond the model term; the prediction at delta_len = 0 averaged over the rows' other features.
Left out, and why: the instruction-difficulty term (AlpacaEval estimates it once over the whole leaderboard's
models on its 805 fixed instructions; with one pair of models on the user's own prompts it is not identified),
the regularisation towards "gamed" baselines (their annotations exist only for AlpacaEval's prompts) and the
L1 penalty with cross-validated strength (replaced by a weak Gaussian prior, sd PRIOR_SD on the log-odds scale,
which only keeps the fit finite when every verdict goes one way). Added: the position term psi, since every
prompt is judged in both orders: it absorbs a first-position preference instead of leaving it in the noise.

Interval: a Wald interval for theta on the log-odds scale, mapped through the monotone lc function. Its
standard error is the larger of the model-based one (inverse penalised Hessian) and the prompt-clustered sandwich
one (the two orders of a prompt, and several judges, are not independent), with a Student t quantile on
(prompts - 1) degrees of freedom. tests/test_eval.py checks its coverage by simulation.

Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PRIOR_SD = 2.5  # Gaussian prior on each coefficient (log-odds): weak; only separation makes it matter
MAX_ITER = 100


@dataclass(frozen=True)
class Verdict:
    """One usable verdict: the prompt it is about (the cluster), the target y in {0, 1/2, 1}, the tuned-minus-base
    length difference in characters, and whether the tuned answer was shown first."""

    prompt: int
    y: float
    delta_len: float
    tuned_first: bool


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student t quantile by the Cornish-Fisher expansion around the normal one (error < 0.002 for df >= 3 at
    p = 0.975; df 1 and 2 exactly)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        a = 4 * p * (1 - p)
        return (2 * p - 1) * math.sqrt(2 / a)
    z = _normal_quantile(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal cdf by bisection on math.erf (exact to 1e-12)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _sigmoid(x: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def fit(x: np.ndarray, y: np.ndarray, prior_sd: float = PRIOR_SD) -> tuple[np.ndarray, np.ndarray]:
    """Penalised fractional logistic regression by Newton's method: (coefficients, penalised Hessian)."""
    beta = np.zeros(x.shape[1])
    penalty = np.eye(x.shape[1]) / prior_sd ** 2
    for _ in range(MAX_ITER):
        p = _sigmoid(x @ beta)
        grad = x.T @ (y - p) - penalty @ beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = _sigmoid(x @ beta)
    return beta, (x * (p * (1 - p))[:, None]).T @ x + penalty


def length_controlled(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """lc_win_rate with its 95% interval, the length coefficient with its interval, and what they rest on."""
    n = len(verdicts)
    prompts = sorted({v.prompt for v in verdicts})
    out: dict[str, Any] = {"lc_win_rate": None, "lc_win_rate_ci95": None, "length_coef": None,
                           "length_coef_ci95": None, "position_coef": None, "n_verdicts": n,
                           "n_prompts": len(prompts), "length_std_chars": None}
    if len(prompts) < 2:
        why = "fewer than 2 prompts with a usable verdict"
        return {**out, "na": dict.fromkeys(("lc_win_rate", "lc_win_rate_ci95", "length_coef", "length_coef_ci95",
                                            "position_coef", "length_std_chars"), why)}
    y = np.array([v.y for v in verdicts], dtype=float)
    delta = np.array([v.delta_len for v in verdicts], dtype=float)
    s = np.array([1.0 if v.tuned_first else -1.0 for v in verdicts])
    std = float(np.std(delta, ddof=1))
    na: dict[str, str] = {}
    cols = [np.ones(n)]
    names = ["theta"]
    if std > 0:
        cols.append(np.tanh(delta / std))
        names.append("phi")
        out["length_std_chars"] = round(std, 2)
    else:
        why = "the two models' answers have the same length on every prompt"
        na.update(length_coef=why, length_coef_ci95=why, length_std_chars=why)
    if np.ptp(s) > 0:
        cols.append(s)
        names.append("psi")
    else:
        na["position_coef"] = "usable verdicts in one order only"
    x = np.stack(cols, axis=1)
    beta, hess = fit(x, y)
    cov_model = np.linalg.inv(hess)
    # prompt-clustered sandwich: sum over prompts of the outer product of each prompt's score contribution
    p = _sigmoid(x @ beta)
    scores = x * (y - p)[:, None]
    index = {q: i for i, q in enumerate(prompts)}
    per_prompt = np.zeros((len(prompts), x.shape[1]))
    np.add.at(per_prompt, [index[v.prompt] for v in verdicts], scores)
    g = len(prompts)
    cov_robust = cov_model @ (per_prompt.T @ per_prompt) @ cov_model * g / (g - 1)
    se = np.sqrt(np.maximum(np.diag(cov_model), np.diag(cov_robust)))
    t = t_quantile(g - 1)
    coef = dict(zip(names, beta.tolist(), strict=True))
    ses = dict(zip(names, se.tolist(), strict=True))
    psi = coef.get("psi", 0.0)

    def lc(theta: float) -> float:
        return float((_sigmoid(theta + psi) + _sigmoid(theta - psi)) / 2)

    theta, se_theta = coef["theta"], ses["theta"]
    out["lc_win_rate"] = round(lc(theta), 4)
    out["lc_win_rate_ci95"] = [round(lc(theta - t * se_theta), 4), round(lc(theta + t * se_theta), 4)]
    if "phi" in coef:
        out["length_coef"] = round(coef["phi"], 4)
        out["length_coef_ci95"] = [round(coef["phi"] - t * ses["phi"], 4), round(coef["phi"] + t * ses["phi"], 4)]
    if "psi" in coef:
        out["position_coef"] = round(psi, 4)
    if na:
        out["na"] = na
    return out
