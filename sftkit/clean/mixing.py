"""Mixing sources at an exact ratio, with an explicit policy when the data cannot meet it.

`apportion(total, shares)` splits an integer total by the largest-remainder method, so every source gets
floor or ceil of total * share and the achieved share is within one record of the requested one.

When a source has fewer usable records than its part (1,100 hit records cannot be 40% of 300,000):
- "keep-total" (the default): keep the total; the short source gives all it has, the others fill the rest in
  proportion to their shares; the plan carries a loud warning and the achieved ratio.
- "upsample": repeat records of the short source, each at most `max_repeat` times in all, evenly (every record
  q or q+1 times); if even that is not enough, the rest is filled as in keep-total (and said so).
- "shrink": keep the ratio exactly and lower the total to the largest one the data allows.
With no total, every usable record is taken ("all"), unless the caller asks for the ratio (then shrink from
everything available).

Around the plan: `requested_shares` turns a domain ratio and per-source weights into shares, and `choose` draws
every source's rows for the plan and shuffles them together. (The validation split is drawn before mixing, so it
does not depend on the mixing flags, by the helper prep and judge share: sftkit.io.trainval.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

POLICIES = ("keep-total", "upsample", "shrink")


def apportion(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder split of `total` by `shares` (normalised to sum 1); ties go to the earlier name."""
    names = list(shares)
    weight = sum(max(0.0, shares[n]) for n in names)
    if total <= 0 or weight <= 0:
        return dict.fromkeys(names, 0)
    exact = {n: total * max(0.0, shares[n]) / weight for n in names}
    out = {n: math.floor(exact[n]) for n in names}
    left = total - sum(out.values())
    order = sorted(names, key=lambda n: (-(exact[n] - out[n]), names.index(n)))
    for n in order[:left]:
        out[n] += 1
    return out


@dataclass
class MixPlan:
    policy: str  # what was applied: exact, keep-total, upsample, shrink, all
    requested_total: int | None
    total: int
    shares: dict[str, float]
    available: dict[str, int]
    take: dict[str, int]  # rows per source in the output, repeats included
    repeat: dict[str, int] = field(default_factory=dict)  # the most times one record appears, per source
    warnings: list[str] = field(default_factory=list)

    @property
    def achieved(self) -> dict[str, float]:
        return {n: (self.take[n] / self.total if self.total else 0.0) for n in self.take}

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "requested_total": self.requested_total, "total": self.total,
                "requested_shares": self.shares, "available": self.available, "take": self.take,
                "achieved_shares": {n: round(v, 6) for n, v in self.achieved.items()},
                "max_repeat_used": self.repeat, "warnings": self.warnings}


def _fill_keeping_total(total: int, shares: Mapping[str, float], cap: Mapping[str, int]) -> dict[str, int]:
    """Give short sources everything (up to cap), spread the rest over the others by share, until done."""
    take = dict.fromkeys(shares, 0)
    open_names = [n for n in shares if shares[n] > 0 and cap[n] > 0]
    remaining = total
    while remaining > 0 and open_names:
        part = apportion(remaining, {n: shares[n] for n in open_names})
        short = [n for n in open_names if take[n] + part[n] > cap[n]]
        if not short:
            for n in open_names:
                take[n] += part[n]
            remaining = 0
            break
        for n in short:
            remaining -= cap[n] - take[n]
            take[n] = cap[n]
        open_names = [n for n in open_names if n not in short]
    if remaining > 0:  # sources with share 0 still have records: use them last rather than fall short
        for n in shares:
            extra = min(remaining, cap[n] - take[n])
            take[n] += extra
            remaining -= extra
    return take


def _shrink_total(total: int, shares: Mapping[str, float], cap: Mapping[str, int]) -> int:
    weight = sum(max(0.0, s) for s in shares.values())
    limit = min((cap[n] * weight / shares[n] for n in shares if shares[n] > 0), default=0.0)
    t = min(total, math.floor(limit + 1e-9))
    while t > 0 and any(v > cap[n] for n, v in apportion(t, shares).items()):
        t -= 1
    return t


def plan_mix(available: Mapping[str, int], shares: Mapping[str, float], total: int | None,
             policy: str = "keep-total", max_repeat: int = 1) -> MixPlan:
    """How many records to take from each source; see the module docstring for the policies."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    if max_repeat < 1:
        raise ValueError("max_repeat must be >= 1")
    available = dict(available)
    shares = {n: float(shares.get(n, 0.0)) for n in available}
    if sum(shares.values()) <= 0:
        raise ValueError("shares must not all be zero")
    norm = sum(shares.values())
    shares = {n: s / norm for n, s in shares.items()}
    have = sum(available.values())
    if total is None:
        return MixPlan("all", None, have, shares, available, dict(available), dict.fromkeys(available, 1))
    want = apportion(total, shares)
    plan = MixPlan("exact", total, total, shares, available, want, dict.fromkeys(available, 1))
    short = {n: want[n] - available[n] for n in available if want[n] > available[n]}
    if not short:
        return plan
    desc = ", ".join(f"{n} needs {want[n]} but has {available[n]}" for n in short)
    if policy == "shrink":
        t = _shrink_total(total, shares, available)
        plan.policy, plan.total, plan.take = "shrink", t, apportion(t, shares)
        plan.warnings.append(f"{desc}: total shrunk from {total} to {t} to keep the requested ratio (--shrink)")
        return plan
    cap = dict(available)
    if policy == "upsample":
        cap = {n: available[n] * (max_repeat if n in short else 1) for n in available}
        if all(want[n] <= cap[n] for n in available):
            plan.policy = "upsample"
            plan.repeat = {n: (math.ceil(want[n] / available[n]) if available[n] else 0) for n in available}
            plan.warnings.append(f"{desc}: repeating records (at most {max(plan.repeat.values())}x each) "
                                 "to keep the ratio (--upsample)")
            return plan
    take = _fill_keeping_total(total, shares, cap)
    plan.policy, plan.take, plan.total = ("upsample" if policy == "upsample" else "keep-total"), take, \
        sum(take.values())
    plan.repeat = {n: (math.ceil(take[n] / available[n]) if available[n] else 0) for n in available}
    ach = ", ".join(f"{n} {take[n] / plan.total:.4f} (asked {shares[n]:.4f})" for n in take) if plan.total else ""
    note = (f"{desc}: the requested ratio is impossible; kept the total of {plan.total}"
            f"{' (less than asked: not enough data)' if plan.total < total else ''}; achieved shares: {ach}. "
            "Use --upsample [--max-repeat N] to repeat the short source, or --shrink to keep the ratio with a "
            "smaller total.")
    if policy == "upsample":
        note = f"even repeating each record {max_repeat}x is not enough. " + note
    plan.warnings.append(note)
    return plan


def draw(n_available: int, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (0..n_available-1) of `n_take` rows: a sample without replacement, or every index q or q+1 times
    when n_take exceeds n_available (the extra ones drawn at random)."""
    if n_take <= 0 or n_available <= 0:
        return np.zeros(0, dtype=np.int64)
    q, r = divmod(n_take, n_available)
    if q == 0:
        return np.sort(rng.choice(n_available, size=n_take, replace=False))
    base = np.repeat(np.arange(n_available, dtype=np.int64), q)
    extra = rng.choice(n_available, size=r, replace=False) if r else np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([base, extra]))


def requested_shares(weights: Mapping[str, float], domain_ratio: float | None, domain: str = "hit"
                     ) -> dict[str, float]:
    """Share of every source: with the domain source and others, the domain gets `domain_ratio` (0.5 when None)
    and the others split the rest by weight; otherwise all split by weight (evenly when every weight is 0)."""
    names = list(weights)
    if domain in names and len(names) > 1:
        ratio = 0.5 if domain_ratio is None else domain_ratio
        others = {n: w for n, w in weights.items() if n != domain}
        wsum = sum(others.values())
        shares = {domain: ratio}
        for n, w in others.items():
            shares[n] = (1.0 - ratio) * (w / wsum if wsum > 0 else 1.0 / len(others))
        return shares
    wsum = sum(weights.values())
    return {n: (w / wsum if wsum > 0 else 1.0 / len(names)) for n, w in weights.items()}


def choose(by_source: Mapping[str, np.ndarray], take: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
    """The output rows: `take[n]` rows of each source's `by_source[n]` (`draw`), sources in order, then shuffled."""
    names = list(by_source)
    chosen = np.concatenate([by_source[n][draw(len(by_source[n]), take[n], rng)] for n in names]) \
        if names else np.zeros(0, np.int64)
    return chosen[rng.permutation(len(chosen))]
