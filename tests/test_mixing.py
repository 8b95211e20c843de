"""Ratio arithmetic and the three policies for data that cannot meet the ratio."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.clean.mixing import apportion, choose, draw, plan_mix, requested_shares


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**7), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_apportion_is_within_one_record_of_every_share(total: int, weights: list[float]) -> None:
    shares = {f"s{i}": w for i, w in enumerate(weights)}
    out = apportion(total, shares)
    wsum = sum(weights)
    if wsum == 0:
        assert set(out.values()) == {0}
        return
    assert sum(out.values()) == total
    for name, w in shares.items():
        assert abs(out[name] - total * w / wsum) < 1


def test_apportion_exact_values() -> None:
    assert apportion(300_000, {"hit": 0.4, "firefly": 0.6}) == {"hit": 120_000, "firefly": 180_000}
    assert apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}  # tie: earlier name
    assert apportion(7, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 3, "b": 2, "c": 2}  # remainders .5 .75 .75


def test_exact_when_the_data_allows() -> None:
    plan = plan_mix({"hit": 200_000, "firefly": 250_000}, {"hit": 0.4, "firefly": 0.6}, 300_000)
    assert plan.policy == "exact" and plan.take == {"hit": 120_000, "firefly": 180_000}
    assert plan.warnings == [] and plan.achieved == {"hit": 0.4, "firefly": 0.6}


def test_default_keeps_the_total_and_says_so() -> None:
    # The seed's case: 1,100 usable hit records cannot be 40% of 300,000.
    plan = plan_mix({"hit": 1_100, "firefly": 250_000}, {"hit": 0.4, "firefly": 0.6}, 300_000)
    assert plan.policy == "keep-total"
    assert plan.take == {"hit": 1_100, "firefly": 250_000} and plan.total == 251_100  # not enough data at all
    assert "impossible" in plan.warnings[0] and "--upsample" in plan.warnings[0]
    plan = plan_mix({"hit": 1_100, "firefly": 500_000}, {"hit": 0.4, "firefly": 0.6}, 300_000)
    assert plan.take == {"hit": 1_100, "firefly": 298_900} and plan.total == 300_000
    assert plan.achieved["hit"] == pytest.approx(1_100 / 300_000)


def test_keep_total_spreads_the_shortfall_by_share() -> None:
    plan = plan_mix({"hit": 10, "a": 1000, "b": 1000}, {"hit": 0.5, "a": 0.3, "b": 0.2}, 100)
    assert plan.take == {"hit": 10, "a": 54, "b": 36}  # the other 90 split 3:2


def test_upsample_repeats_up_to_max_repeat() -> None:
    plan = plan_mix({"hit": 1_100, "firefly": 500_000}, {"hit": 0.4, "firefly": 0.6}, 3_000, "upsample", 3)
    assert plan.policy == "upsample" and plan.take == {"hit": 1_200, "firefly": 1_800}
    assert plan.repeat["hit"] == 2 and plan.achieved["hit"] == 0.4
    # 120,000 would need 110 copies: repeat 3x, then fill as keep-total and say so
    plan = plan_mix({"hit": 1_100, "firefly": 500_000}, {"hit": 0.4, "firefly": 0.6}, 300_000, "upsample", 3)
    assert plan.take == {"hit": 3_300, "firefly": 296_700}
    assert "even repeating" in plan.warnings[0]


def test_shrink_keeps_the_ratio_with_a_smaller_total() -> None:
    plan = plan_mix({"hit": 1_100, "firefly": 250_000}, {"hit": 0.4, "firefly": 0.6}, 300_000, "shrink")
    assert plan.policy == "shrink" and plan.total == 2_750 and plan.take == {"hit": 1_100, "firefly": 1_650}
    plan = plan_mix({"hit": 1_101, "firefly": 250_000}, {"hit": 0.4, "firefly": 0.6}, 300_000, "shrink")
    assert plan.take["hit"] <= 1_101 and abs(plan.take["hit"] - 0.4 * plan.total) < 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 8000), st.floats(0.01, 0.99),
       st.sampled_from(["keep-total", "upsample", "shrink"]))
def test_policies_never_overdraw_and_shrink_keeps_the_ratio(hit: int, other: int, total: int, ratio: float,
                                                             policy: str) -> None:
    plan = plan_mix({"hit": hit, "other": other}, {"hit": ratio, "other": 1 - ratio}, total, policy, 2)
    cap = 2 if policy == "upsample" else 1
    assert plan.take["hit"] <= hit * cap and plan.take["other"] <= other * (cap if policy == "upsample" else 1)
    assert plan.total == sum(plan.take.values()) <= total
    if policy == "shrink" and plan.total:
        assert abs(plan.take["hit"] - ratio * plan.total) < 1
    if plan.policy in ("exact", "shrink"):
        assert abs(plan.take["hit"] - ratio * plan.total) < 1
    if policy == "keep-total":
        assert plan.total == min(total, hit + other)


def test_no_total_takes_everything() -> None:
    plan = plan_mix({"hit": 5, "firefly": 7}, {"hit": 0.4, "firefly": 0.6}, None)
    assert plan.policy == "all" and plan.take == {"hit": 5, "firefly": 7}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plan_mix({"a": 1}, {"a": 1}, 1, "random")
    with pytest.raises(ValueError):
        plan_mix({"a": 1}, {"a": 0}, 1)
    with pytest.raises(ValueError):
        plan_mix({"a": 1}, {"a": 1}, 1, "upsample", 0)


def test_draw_without_and_with_repeats() -> None:
    rng = np.random.default_rng(0)
    idx = draw(10, 4, rng)
    assert len(idx) == 4 and len(set(idx.tolist())) == 4 and idx.max() < 10
    idx = draw(4, 10, rng)
    counts = np.bincount(idx, minlength=4)
    assert counts.sum() == 10 and set(counts.tolist()) <= {2, 3}  # every record 2 or 3 times
    assert len(draw(0, 5, rng)) == 0 and len(draw(5, 0, rng)) == 0


def test_requested_shares_domain_ratio_then_weights() -> None:
    assert requested_shares({"hit": 1, "a": 2, "firefly": 1}, 0.4) == pytest.approx({"hit": 0.4, "a": 0.4,
                                                                                      "firefly": 0.2}, abs=1e-15)
    assert requested_shares({"hit": 1, "firefly": 1}, None) == {"hit": 0.5, "firefly": 0.5}
    assert requested_shares({"hit": 1, "a": 0, "b": 0}, 0.2) == pytest.approx({"hit": 0.2, "a": 0.4, "b": 0.4},
                                                                              abs=1e-15)  # zero weights: even
    assert requested_shares({"a": 3, "firefly": 1}, 0.9) == {"a": 0.75, "firefly": 0.25}  # no domain: weights only
    assert requested_shares({"hit": 5}, 0.3) == {"hit": 1.0}
    assert requested_shares({"a": 0, "b": 0}, None) == {"a": 0.5, "b": 0.5}


def test_choose_takes_each_sources_count_and_shuffles() -> None:
    by_source = {"hit": np.array([0, 1, 2]), "firefly": np.array([10, 11, 12, 13, 14, 15])}
    chosen = choose(by_source, {"hit": 6, "firefly": 4}, np.random.default_rng(1))
    assert len(chosen) == 10
    counts = {int(v): int(c) for v, c in zip(*np.unique(chosen, return_counts=True), strict=True)}
    assert {k: counts[k] for k in (0, 1, 2)} == {0: 2, 1: 2, 2: 2}  # hit: every record twice
    assert sum(counts.get(k, 0) for k in range(10, 16)) == 4 and all(counts.get(k, 0) <= 1 for k in range(10, 16))
    rng = np.random.default_rng(1)
    manual = np.concatenate([by_source["hit"][draw(3, 6, rng)], by_source["firefly"][draw(6, 4, rng)]])
    assert chosen.tolist() == manual[rng.permutation(10)].tolist()
    assert choose({}, {}, np.random.default_rng(0)).tolist() == []
