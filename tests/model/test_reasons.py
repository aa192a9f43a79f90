"""Reason sets: the k largest raising columns per row, ties to the first column, grouped in np.unique's order."""

from __future__ import annotations

import numpy as np

from creditflow.model.reasons import reason_sets


def direct(row: np.ndarray, k: int) -> tuple[int, ...]:
    """The row's raising columns, largest first, ties by column, at most k: a sort of (-value, column)."""
    raising = [(-v, j) for j, v in enumerate(row) if v > 0]  # NaN is never > 0
    return tuple(j for _, j in sorted(raising)[:k])


def test_each_row_gets_its_k_largest_raising_columns_ties_to_the_first() -> None:
    rng = np.random.default_rng(5)
    for n, m, k in ((1, 10, 4), (9, 10, 3), (500, 13, 4), (40, 3, 4), (200, 70, 12)):
        c = np.round(rng.normal(size=(n, m)), 1)  # rounding makes ties
        c[::5, 0] = np.nan
        c[::7] = -np.abs(c[::7])  # rows with nothing raising
        sets, which = reason_sets(c, k)
        assert [sets[w] for w in which] == [direct(row, k) for row in c]
        assert len(set(sets)) == len(sets) and which.shape == (n,)


def test_sets_come_in_key_order_each_first_where_it_first_appears() -> None:
    """As np.unique(return_index, return_inverse) of the row keys ordered them (callers index by `which`)."""
    c = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [-1.0, -1.0, -1.0]])
    sets, which = reason_sets(c, 2)
    assert sets == [(), (0,), (1, 2)] and which.tolist() == [2, 1, 2, 0]
    none, at = reason_sets(np.zeros((2, 0)), 3)
    assert none == [()] and at.tolist() == [0, 0]
