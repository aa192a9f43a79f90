"""Linear models scored in one compiled pass: the preprocessing program, the log-odds and the raw-column reasons.

A linear model's answer is arithmetic on each preprocessed value: its term coef * z in the log-odds, and its
contribution coef * (z - reference) to the raw column it comes from (exact interventional SHAP against the
reference applicant, `model.shap`). `LinearScorer.score` computes both while `model.program` computes z, row by row
in one compiled call: a one-applicant request pays one call instead of a transform, two products and their
temporaries. The same kernels serve a preprocessed matrix (`margins`, `raw_contributions`: the declined-only path
explains part of the rows it scored), summing in the same order, so every path gives the same bits; a row's values
do not depend on the rows beside it (requests scored together get the answers they get alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from creditflow.model.program import Program, chain_value


@dataclass(frozen=True)
class LinearScorer:
    """A linear model's terms over the preprocessed columns, and the raw column each of them comes from."""

    coef: np.ndarray  # float64 per preprocessed column: the log-odds of default
    intercept: float
    reference: np.ndarray  # float64 per preprocessed column: the reference applicant
    owner: np.ndarray  # intp per preprocessed column: its raw column
    width: int  # raw columns

    @classmethod
    def of(cls, coef: np.ndarray, intercept: float, reference: np.ndarray, to_raw: np.ndarray) -> LinearScorer:
        """`to_raw`: preprocessed x raw columns, 1 where the preprocessed column comes from the raw one (one each)."""
        if not (to_raw.sum(axis=1) == 1).all():
            raise ValueError("every preprocessed column must come from exactly one raw column")
        return cls(np.ascontiguousarray(coef, dtype=np.float64), float(intercept),
                   np.ascontiguousarray(reference, dtype=np.float64), np.argmax(to_raw, axis=1).astype(np.intp),
                   to_raw.shape[1])

    def score(self, program: Program, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-odds, raw-column contributions) of raw rows, the preprocessing run on the way."""
        self._fits(program.width)
        return _scored(np.ascontiguousarray(R, dtype=np.float64), program.source, program.starts, program.codes,
                       program.args, program.tables, self.coef, self.intercept, self.reference, self.owner, self.width)

    def margins(self, Z: np.ndarray) -> np.ndarray:
        """The log-odds of preprocessed rows."""
        self._fits(Z.shape[1])
        return _margins(np.ascontiguousarray(Z, dtype=np.float64), self.coef, self.intercept)

    def raw_contributions(self, Z: np.ndarray) -> np.ndarray:
        """The raw-column contributions of preprocessed rows."""
        self._fits(Z.shape[1])
        return _raw(np.ascontiguousarray(Z, dtype=np.float64), self.coef, self.reference, self.owner, self.width)


    def _fits(self, columns: int) -> None:
        """The kernels index without bounds checks: a matrix of another width is a fault, not garbage."""
        if not columns == len(self.coef) == len(self.reference) == len(self.owner):
            raise ValueError(f"{columns} preprocessed columns for a linear model of {len(self.coef)} coefficients")


@njit(cache=True, inline="always")
def _add_terms(z, o, coef, reference, owner, raw, i):  # noqa: ANN001, ANN202
    """One preprocessed value's contribution to its raw column; its term of the log-odds."""
    raw[i, owner[o]] += (z - reference[o]) * coef[o]
    return z * coef[o]


@njit(cache=True)
def _scored(R, source, starts, codes, args, tables, coef, intercept, reference, owner, width):  # noqa: ANN001, ANN202
    n = R.shape[0]
    margin = np.empty(n)
    raw = np.zeros((n, width))
    for i in range(n):
        total = 0.0
        for o in range(source.shape[0]):
            z = chain_value(R, i, o, source, starts, codes, args, tables)
            total += _add_terms(z, o, coef, reference, owner, raw, i)
        margin[i] = total + intercept
    return margin, raw


@njit(cache=True)
def _margins(Z, coef, intercept):  # noqa: ANN001, ANN202
    margin = np.empty(Z.shape[0])
    for i in range(Z.shape[0]):
        total = 0.0
        for o in range(Z.shape[1]):
            total += Z[i, o] * coef[o]
        margin[i] = total + intercept
    return margin


@njit(cache=True)
def _raw(Z, coef, reference, owner, width):  # noqa: ANN001, ANN202
    raw = np.zeros((Z.shape[0], width))
    for i in range(Z.shape[0]):
        for o in range(Z.shape[1]):
            _add_terms(Z[i, o], o, coef, reference, owner, raw, i)
    return raw
