"""Load a credit data set as its spec describes it, validate it, and split it.

Every problem a user can cause (unreadable path, empty file, missing column, non-numeric values,
non-binary target) raises `DataError` with one line naming the file or column.
Value rules (ranges, nullability, integers, categories) live in the dataset spec and are checked here
for training and, through the same `rule_violations`, by serving and batch scoring.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from creditflow.errors import DataError
from creditflow.specs import DatasetSpec
from creditflow.synthetic import generate_credit_data

UNNAMED_FIRST = "Unnamed: 0"  # how pandas names cs-training.csv's blank first header cell


@dataclass(frozen=True)
class CreditData:
    """A validated data set: raw applicant columns, binary target, ids, and where it came from."""

    X: pd.DataFrame
    y: pd.Series
    ids: pd.Series
    source: str
    n_rule_violations: int = 0
    true_probability: np.ndarray | None = None


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (or a directory of them) with a one-line error for any failure."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    try:
        if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
            frame = pd.read_parquet(path)
        elif path.is_dir():
            files = sorted(path.glob("*.csv"))
            if not files:
                raise DataError(f"{path}: directory holds no .csv or .parquet files")
            frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        else:
            frame = pd.read_csv(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame


def read_applicants(path: str | Path, spec: DatasetSpec, ids: bool = False) -> pd.DataFrame:
    """A file of applicants as the model reads them: its raw columns typed; one line naming missing columns.

    A nullable column may be absent, as the model's signature allows: it is missing in every row.
    With `ids`, the spec's id column (Kaggle's unnamed first column counts) comes first, as text.
    """
    frame = _named_id_column(read_table(path), spec)
    needed = ([spec.id_column] if ids else []) + [raw for raw, col in spec.columns.items() if not col.nullable]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s): {', '.join(missing)}")
    X = coerce_columns(frame.reindex(columns=spec.raw_columns), spec, origin=str(path))
    if not ids:
        return X
    empty = int(frame[spec.id_column].isna().sum())
    if empty:
        raise DataError(f"{path}: id column '{spec.id_column}' has {empty} empty value(s)")
    return pd.concat([frame[spec.id_column].astype(str), X], axis=1)


def load_dataset(spec: DatasetSpec, path: str | Path | None = None) -> CreditData:
    """Load the data set: `path` (or the spec's source file), or the generated default."""
    source = str(path) if path else spec.source
    if source == "generated":
        gen = generate_credit_data(spec.generated.rows, spec.generated.seed)
        frame, truth = gen.frame, gen.true_probability
        source = f"generated(rows={spec.generated.rows},seed={spec.generated.seed})"
    else:
        frame, truth = read_table(source), None
    return _validated(_named_id_column(frame, spec), spec, source, truth)


def _named_id_column(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Kaggle's cs-training.csv leaves its id column's header blank: give it the spec's id name."""
    if UNNAMED_FIRST in frame.columns and spec.id_column not in frame.columns:
        return frame.rename(columns={UNNAMED_FIRST: spec.id_column})
    return frame


def _validated(frame: pd.DataFrame, spec: DatasetSpec, source: str, truth: np.ndarray | None) -> CreditData:
    required = [spec.id_column, spec.target.column, *spec.raw_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s): {', '.join(missing)}")
    X = coerce_columns(frame[spec.raw_columns], spec, origin=source)
    y = binary_target(frame[spec.target.column], spec, source)
    bad = rule_violations(X, spec)
    keep = (bad == "").to_numpy()
    if truth is not None:
        truth = truth[keep]
    return CreditData(
        X=X[keep].reset_index(drop=True),
        y=y[keep].reset_index(drop=True),
        ids=frame[spec.id_column][keep].reset_index(drop=True),
        source=source,
        n_rule_violations=int((~keep).sum()),
        true_probability=truth,
    )


def coerce_columns(frame: pd.DataFrame, spec: DatasetSpec, origin: str = "input") -> pd.DataFrame:
    """Numeric columns as float64 (NaN for missing), categorical as strings; non-numeric values are errors."""
    out = {}
    for raw, col in spec.columns.items():
        values = frame[raw]
        if col.group == "categorical":
            out[raw] = values.astype("string").astype(object).where(values.notna(), None)
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        wrong = numeric.isna() & values.notna()
        if wrong.any():
            raise DataError(f"{origin}: column '{raw}' has {int(wrong.sum())} non-numeric value(s)")
        out[raw] = numeric.astype("float64")
    return pd.DataFrame(out, index=frame.index)


def binary_target(values: pd.Series, spec: DatasetSpec, origin: str) -> pd.Series:
    """The target as 0/1 (1 = the spec's positive value); anything but two classes is an error."""
    if values.isna().any():
        raise DataError(f"{origin}: target '{spec.target.column}' has {int(values.isna().sum())} missing value(s)")
    classes = set(values.unique().tolist())
    positive = spec.target.positive
    if len(classes) != 2 or positive not in classes:
        shown = ", ".join(map(str, sorted(classes, key=str)[:5]))
        raise DataError(
            f"{origin}: target '{spec.target.column}' must be binary with positive value {positive!r}; found {shown}"
        )
    return (values == positive).astype("int64")


def rule_violations(X: pd.DataFrame, spec: DatasetSpec) -> pd.Series:
    """Per row, the first value rule it breaks ("" when none): the rules travel with the model."""
    reasons, unbroken = np.full(len(X), "", dtype=object), np.ones(len(X), dtype=bool)
    for raw, col in spec.columns.items():
        values = X[raw]
        checks: list[tuple[pd.Series, str]] = []
        if not col.nullable:
            checks.append((values.isna(), f"{raw} is missing"))
        if col.group == "categorical":
            if col.categories:
                checks.append((values.notna() & ~values.isin(col.categories), f"{raw} is not a known category"))
        else:
            allowed = values.isin(col.sentinels)
            if col.min is not None:
                checks.append((values.lt(col.min) & ~allowed, f"{raw} below {col.min:g}"))
            if col.max is not None:
                checks.append((values.gt(col.max) & ~allowed, f"{raw} above {col.max:g}"))
            if col.integer:
                checks.append((values.notna() & (values % 1 != 0), f"{raw} is not a whole number"))
            checks.append((np.isinf(values), f"{raw} is infinite"))
        for mask, reason in checks:  # boolean arrays only: comparing the texts cost ~1 s per 1M rows
            first = mask.to_numpy() & unbroken
            reasons[first], unbroken = reason, unbroken & ~first
    return pd.Series(reasons, index=X.index, dtype=object)


def split_data(data: CreditData, test_size: float, seed: int) -> Split:
    """Stratified train/test split, fixed by the seed."""
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=test_size, random_state=seed, stratify=data.y
    )
    return Split(X_train, X_test, y_train, y_test)


def digest(frame: pd.DataFrame) -> str:
    """A short content hash, stable across runs, to tell data sets apart."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:12]
