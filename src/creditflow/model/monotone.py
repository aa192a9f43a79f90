"""Monotone behaviour, checked on a model as it will serve: the core of promotion gate (f) and the model card's check.

Each column the dataset spec declares `monotone` is varied alone over a grid spanning its observed values in a
sample of held-out applicants, for each of them, everything else kept; P(default) must never move against the
declared direction by more than a tolerance. Constraints are not trusted (XGBoost's have silently failed:
dmlc/xgboost #5060, #5128): the registered artifact's answers are what is checked. Pure: a model is any function
of raw applicant rows to P(default).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from creditflow.specs import ColumnSpec, DatasetSpec

PDefault = Callable[[pd.DataFrame], np.ndarray]  # raw applicant rows -> P(default), one per row
SIGN = {"increasing": 1.0, "decreasing": -1.0}


@dataclass(frozen=True)
class Move:
    """One applicant's P(default) moving against the declared direction between two neighbouring grid values."""

    row: Hashable  # the applicant's index label in the evaluation rows
    before: float  # the column's value, then
    after: float  # the next value of the grid
    size: float  # P(default) after - before: of the wrong sign


@dataclass(frozen=True)
class ColumnCheck:
    """One declared column: its grid, how many applicants moved against the direction, and the worst move."""

    column: str
    direction: str
    grid: tuple[float, ...]
    applicants: int  # varied
    violations: int  # applicants with at least one move against the direction
    worst: Move | None


def grid_values(values: pd.Series, column: ColumnSpec, size: int) -> np.ndarray:
    """`size` values evenly spaced from the smallest observed value to the largest (whole numbers for a whole-number
    column), and `size` observed quantiles (a heavy tail leaves most values where the applicants are); sorted and
    distinct. Sentinels are codes, not amounts: left out."""
    observed = values.dropna().astype("float64")
    observed = observed[~observed.isin(column.sentinels)].to_numpy()
    if not len(observed):
        return observed
    even = np.linspace(observed.min(), observed.max(), size)
    ranked = np.quantile(observed, np.linspace(0, 1, size), method="inverted_cdf")
    return np.unique(np.concatenate([np.round(even) if column.integer else even, ranked]))


def check_column(p_default: PDefault, X: pd.DataFrame, raw: str, direction: str, grid: np.ndarray,
                 tolerance: float) -> ColumnCheck:
    """Every applicant of `X` with `raw` set to each grid value in turn; the moves against `direction`."""
    frame = pd.concat([X.assign(**{raw: value}) for value in grid], ignore_index=True)
    p = np.asarray(p_default(frame), dtype="float64").reshape(len(grid), len(X)).T  # applicants x grid
    against = -SIGN[direction] * np.diff(p, axis=1)  # > 0: P(default) moved the wrong way
    violating = against > tolerance
    worst = None
    if violating.any():
        i, j = np.unravel_index(np.argmax(against), against.shape)
        worst = Move(X.index[i], float(grid[j]), float(grid[j + 1]), float(p[i, j + 1] - p[i, j]))
    return ColumnCheck(raw, direction, tuple(float(v) for v in grid), len(X), int(violating.any(axis=1).sum()), worst)


def monotone_violations(p_default: PDefault, X: pd.DataFrame, spec: DatasetSpec, grid: int = 20,
                        tolerance: float = 1e-9) -> list[ColumnCheck]:
    """Each declared column of `spec` checked on the applicants of `X` (raw columns), over `grid_values(..., grid)`."""
    checks = []
    for raw, direction in spec.monotone_columns().items():
        values = grid_values(X[raw], spec.columns[raw], grid)
        if len(values) > 1:  # one observed value: nothing to vary
            checks.append(check_column(p_default, X, raw, direction, values, tolerance))
    return checks
