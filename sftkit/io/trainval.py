"""The train/validation split shared by prep (its --val-size hold-out of the domain records) and judge (its
train_val_split): one seeded draw and one meaning of the size asked for.

`val_size` is the validation part: a whole number >= 1 is a count of records, a value in [0, 1) a share of them,
rounded up (sklearn's train_test_split counts its test share the same way; 0.05 of 30 is 2). The split always
keeps at least one training record when there is one: a count or share that would take every record leaves the
last one to training, and `SplitSizes.short` says by how much the validation set fell short of what was asked.
A share above 0 gives at least one validation record once there are two records or more.

The draw does not depend on the input order: the items are sorted, shuffled with `random.Random(seed)`, and the
first ones go to training.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    asked: int  # validation records asked for (before keeping one for training)

    @property
    def short(self) -> int:
        """How many fewer validation records than asked (0 when the split is as asked)."""
        return self.asked - self.val


def check_val_size(val_size: float) -> None:
    """Raise ValueError unless val_size is a share in [0, 1) or a whole number of records >= 1."""
    if not (0 <= val_size < 1 or (val_size >= 1 and val_size == int(val_size))):
        raise ValueError(f"a validation size is a share in [0, 1) or a whole number of records, not {val_size:g}")


def split_sizes(n: int, val_size: float) -> SplitSizes:
    """(train, val, asked) for n records; see the module docstring for what val_size means."""
    check_val_size(val_size)
    if val_size >= 1:
        asked = int(val_size)
    else:  # (the 1e-9: 0.07 * 100 is 7.000000000000001 in floating point)
        asked = max(1, math.ceil(val_size * n - 1e-9)) if val_size > 0 and n else 0
    val = max(0, min(asked, n - 1))
    return SplitSizes(train=n - val, val=val, asked=asked)


def split_train_val(items: Iterable[T], val_size: float, seed: int) -> tuple[list[T], list[T], SplitSizes]:
    """(train, val, sizes): a seeded split of the items (sortable, e.g. ids or row numbers), independent of their
    order. Each list is in the order of the seeded shuffle."""
    order = sorted(items)  # type: ignore[type-var]
    random.Random(seed).shuffle(order)
    sizes = split_sizes(len(order), val_size)
    return order[:sizes.train], order[sizes.train:], sizes
