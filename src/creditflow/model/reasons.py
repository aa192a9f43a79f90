"""Reason sets: per applicant, the up-to-k raw columns that raise the risk most, grouped so labels are formatted once.

The served reason codes are the k largest positive contributions of a row (ties: the first column). Rows share few
sets, so callers format labels once per distinct set. Two small numba kernels do the per-row work in one call each
(the numpy version was ~15 calls and a `np.unique`, ~80 us for any size: docs/performance.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _raising(contributions: np.ndarray, k: int) -> np.ndarray:
    """Per row, column + 1 of the i-th largest positive value (ties: the first column), 0 past the last one."""
    n, m = contributions.shape
    digits = np.zeros((n, k), dtype=np.int64)
    for i in range(n):
        for d in range(k):
            best, at = 0.0, -1
            for j in range(m):
                v = contributions[i, j]
                if v > best and not _taken(digits[i], d, j + 1):  # NaN is never greater
                    best, at = v, j
            if at < 0:
                break
            digits[i, d] = at + 1
    return digits


@njit(cache=True, inline="always")
def _taken(row: np.ndarray, d: int, digit: int) -> bool:
    """Whether `digit` is among the row's first d (a loop numba compiles, not a generator)."""
    for e in range(d):  # noqa: SIM110
        if row[e] == digit:
            return True
    return False


@njit(cache=True)
def _groups(digits: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(keys, return_index=True, return_inverse=True)`'s index and inverse for each row's digits read as
    one number in `base`: the distinct rows in key order, where each first appears and which one each row is."""
    n, k = digits.shape
    keys = np.zeros(n, dtype=np.int64)
    for i in range(n):
        for d in range(k - 1, -1, -1):
            keys[i] = keys[i] * base + digits[i, d]
    order = np.argsort(keys, kind="mergesort")  # stable: a group's first row is where it first appears
    first, which = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    groups = 0
    for at in range(n):
        row = order[at]
        if at == 0 or keys[row] != keys[order[at - 1]]:
            first[groups] = row
            groups += 1
        which[row] = groups - 1
    return first[:groups], which


def reason_sets(contributions: np.ndarray, k: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Per row, the up-to-k raw columns raising risk most (positive SHAP), largest first.

    Returned as the distinct column sets and, per row, the index of its set: rows share few sets, so
    callers format labels once per set instead of once per row.
    """
    n, m = contributions.shape
    k = min(k, m)
    digits = _raising(np.ascontiguousarray(contributions, dtype=np.float64), k)
    if (m + 1) ** k < 2**62:  # one integer per row: a 1-D grouping is far cheaper than a row-wise unique
        first, which = _groups(digits, m + 1)
        sets = digits[first]
    else:
        sets, which = np.unique(digits, axis=0, return_inverse=True)
    return [tuple(d - 1 for d in row if d) for row in sets.tolist()], which.reshape(-1)
