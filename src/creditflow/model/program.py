"""The fitted preprocessing as one program of column operations, run by one compiled (numba) loop.

Every step of the pipelines this project fits works column by column: the features step (sentinels to missing,
derived 0/1 indicators, caps), the imputer (a median per column, missing-value indicators), Yeo-Johnson, the
scaler, and the categorical encoders (a table of the encoder's own answers per code, `model.categories`). So each
preprocessed column is one raw column put through a short chain of operations, and `Program` holds those chains
for all output columns as flat arrays. `Program.run` walks them row by row in one compiled call: a one-applicant
request pays one call instead of a numpy call per column and step (docs/performance.md), and a row's values do not
depend on the rows beside it. The operations are the steps' own arithmetic in the steps' order (scikit-learn's
scaler subtracts, then divides; Yeo-Johnson as `scipy.stats.yeojohnson` writes it), so the matrix equals
scikit-learn's transform (tests/model/test_compiled.py: to 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

# operation codes: x is the value being carried, a and b the operation's arguments
SENTINEL = 0  # x == a: missing
GT, GE, LT, LE = 1, 2, 3, 4  # x > a (or >=, <, <=): 1.0, else 0.0 (missing: 0.0)
ISNAN = 5  # x missing: 1.0, else 0.0
CAP = 6  # min(x, a), missing stays missing
FILL = 7  # missing: a
SUB = 8  # x - a
DIV = 9  # x / a
YEO_JOHNSON = 10  # Yeo-Johnson with lambda a
LOOKUP = 11  # tables[a + index]: index the code x (missing: b - 1; a text in no vocabulary: b - 2), b rows
COMPARISONS = {"gt": GT, "ge": GE, "lt": LT, "le": LE}
EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Chain:
    """One output column in the making: the raw column it reads and the operations applied so far."""

    source: int
    ops: tuple[tuple[int, float, float], ...] = ()

    def then(self, code: int, a: float = 0.0, b: float = 0.0) -> Chain:
        return Chain(self.source, (*self.ops, (code, float(a), float(b))))


@dataclass(frozen=True)
class Program:
    """Output column chains as flat arrays, and the categorical tables the LOOKUP operations read."""

    source: np.ndarray  # intp per output column: the raw column
    starts: np.ndarray  # intp per output column + 1: where its operations begin in codes/args
    codes: np.ndarray  # int64 per operation
    args: np.ndarray  # float64 (operations, 2)
    tables: np.ndarray  # float64, every lookup table flattened (one unused value when there are none)

    @classmethod
    def of(cls, chains: list[Chain], tables: list[np.ndarray] | None = None) -> Program:
        """`tables`: the flat tables the chains' LOOKUPs read, in order (`Tables`)."""
        ops = [op for chain in chains for op in chain.ops]
        starts = np.cumsum([0] + [len(chain.ops) for chain in chains])
        flat = np.concatenate(tables) if tables else np.zeros(1)
        return cls(np.asarray([c.source for c in chains], dtype=np.intp), starts.astype(np.intp),
                   np.asarray([op[0] for op in ops], dtype=np.int64).reshape(len(ops)),
                   np.asarray([op[1:] for op in ops], dtype=np.float64).reshape(len(ops), 2), flat.astype(np.float64))

    @property
    def width(self) -> int:
        return len(self.source)

    def run(self, R: np.ndarray) -> np.ndarray:
        """The preprocessed matrix (rows x output columns, row-major) of a raw float matrix."""
        return _run(np.ascontiguousarray(R, dtype=np.float64), self.source, self.starts, self.codes, self.args,
                    self.tables)


@dataclass
class Tables:
    """The categorical tables of a program being built, flattened one after another."""

    flat: list[np.ndarray] = field(default_factory=list)
    size: int = 0

    def lookups(self, chain: Chain, table: np.ndarray) -> list[Chain]:
        """A categorical column's outputs: one LOOKUP per output column of its table (rows: the codes, a text in no
        vocabulary, missing), the table stored column by column."""
        rows, width = table.shape
        out = [chain.then(LOOKUP, self.size + j * rows, rows) for j in range(width)]
        self.flat.append(np.asarray(table, dtype=np.float64).T.ravel())
        self.size += rows * width
        return out


@njit(cache=True, inline="always")
def _yeo_johnson(x: float, lmbda: float) -> float:
    if x >= 0:
        if abs(lmbda) < EPS:
            return np.log1p(x)
        return np.expm1(np.log1p(x) * lmbda) / lmbda
    if abs(lmbda - 2) > EPS:
        return -np.expm1((2 - lmbda) * np.log1p(-x)) / (2 - lmbda)
    return -np.log1p(-x)


@njit(cache=True, inline="always")
def _apply(code: int, x: float, a: float, b: float, tables: np.ndarray) -> float:
    if code == SENTINEL:
        return np.nan if x == a else x
    if code == GT:
        return 1.0 if x > a else 0.0
    if code == GE:
        return 1.0 if x >= a else 0.0
    if code == LT:
        return 1.0 if x < a else 0.0
    if code == LE:
        return 1.0 if x <= a else 0.0
    if code == ISNAN:
        return 1.0 if np.isnan(x) else 0.0
    if code == CAP:
        return a if x > a else x
    if code == FILL:
        return a if np.isnan(x) else x
    if code == SUB:
        return x - a
    if code == DIV:
        return x / a
    if code == YEO_JOHNSON:
        return _yeo_johnson(x, a)
    rows = int(b)  # LOOKUP
    index = rows - 1 if np.isnan(x) else (rows - 2 if x < 0 else int(x))
    return tables[int(a) + index]


@njit(cache=True, inline="always")
def chain_value(R: np.ndarray, i: int, o: int, source: np.ndarray, starts: np.ndarray, codes: np.ndarray,
                args: np.ndarray, tables: np.ndarray) -> float:
    """Output column o of raw row i: its chain of operations on its raw value (also inlined by `model.linear`)."""
    x = R[i, source[o]]
    for k in range(starts[o], starts[o + 1]):
        x = _apply(codes[k], x, args[k, 0], args[k, 1], tables)
    return x


@njit(cache=True)
def _run(R: np.ndarray, source: np.ndarray, starts: np.ndarray, codes: np.ndarray, args: np.ndarray,
         tables: np.ndarray) -> np.ndarray:
    n, m = R.shape[0], len(source)
    Z = np.empty((n, m))
    for i in range(n):
        for o in range(m):
            Z[i, o] = chain_value(R, i, o, source, starts, codes, args, tables)
    return Z
