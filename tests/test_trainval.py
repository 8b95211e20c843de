"""The train/val split prep and judge share (sftkit.io.trainval): exact counts, counted by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.io.trainval import check_val_size, split_sizes, split_train_val


@pytest.mark.parametrize("n,val_size,train,val,asked", [
    (0, 0.05, 0, 0, 0), (0, 3, 0, 0, 3), (2, 1e-300, 1, 1, 1),
    (1, 0.05, 1, 0, 1),  # one record at prep's default: it stays for training (it all went to val before)
    (1, 1, 1, 0, 1),  # --val-size N with N records
    (1, 0.5, 1, 0, 1),
    (2, 0.05, 1, 1, 1), (2, 1, 1, 1, 1), (2, 2, 1, 1, 2), (2, 5, 1, 1, 5),
    (3, 0.05, 2, 1, 1),  # 0.15 rounded up
    (20, 0.1, 18, 2, 2), (20, 5, 15, 5, 5), (20, 20, 1, 19, 20),
    (30, 0.05, 28, 2, 2),  # 1.5 rounded up
    (50, 0.05, 47, 3, 3),  # 2.5 rounded up (Python's round would give 2)
    (1000, 0.05, 950, 50, 50), (1000, 50, 950, 50, 50),
    (100, 0.07, 93, 7, 7),  # 0.07 * 100 is 7.000000000000001 in floating point: still 7
    (10, 0.1, 9, 1, 1), (10, 1 - 0.9, 9, 1, 1),  # judge's train_val_split 0.9 becomes 0.09999999999999998
    (20, 1 - 0.9, 18, 2, 2), (3, 1 - 0.9, 2, 1, 1), (7, 0, 7, 0, 0),
])
def test_exact_counts(n: int, val_size: float, train: int, val: int, asked: int) -> None:
    sizes = split_sizes(n, val_size)
    assert (sizes.train, sizes.val, sizes.asked) == (train, val, asked)
    assert sizes.short == asked - val


@pytest.mark.parametrize("bad", [-0.1, 1.5, 2.5, float("nan")])
def test_a_size_that_is_neither_share_nor_count_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="whole number"):
        check_val_size(bad)
    with pytest.raises(ValueError):
        split_sizes(10, bad)


def test_the_split_is_seeded_whole_and_independent_of_input_order() -> None:
    ids = [f"r{i:02d}" for i in range(20)]
    train, val, sizes = split_train_val(ids, 0.25, seed=7)
    assert (len(train), len(val), sizes.asked) == (15, 5, 5)
    assert sorted(train + val) == ids and not set(train) & set(val)
    again = split_train_val(list(reversed(ids)), 0.25, seed=7)
    assert again[0] == train and again[1] == val
    assert split_train_val(ids, 0.25, seed=8)[1] != val
    assert split_train_val(ids, 5, seed=7)[1] == val  # the count 5 is the share 0.25 of 20: the same draw


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 500), st.one_of(st.floats(0, 0.999), st.integers(1, 600)))
def test_always_one_training_record_and_never_more_val_than_asked(n: int, val_size: float) -> None:
    sizes = split_sizes(n, val_size)
    assert sizes.train + sizes.val == n and 0 <= sizes.val <= sizes.asked
    if n:
        assert sizes.train >= 1
    if n >= 2 and val_size > 0:
        assert sizes.val >= 1
