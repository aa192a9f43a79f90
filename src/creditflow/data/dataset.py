"""Load a credit data set as its spec describes it, validate it, and split it.

Every problem a user can cause (unreadable path, empty file, missing column, non-numeric values,
non-binary target) raises `DataError` with one line naming the file or column. Rows breaking the
spec's value rules (`data.rules`) are dropped from training and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from creditflow.data.io import id_header, read_table
from creditflow.data.rules import rule_violations
from creditflow.data.synthetic import generate_credit_data
from creditflow.errors import DataError
from creditflow.specs import DatasetSpec


@dataclass(frozen=True)
class CreditData:
    """A validated data set: raw applicant columns, binary target, ids, and where it came from."""

    X: pd.DataFrame
    y: pd.Series
    ids: pd.Series
    source: str
    n_rule_violations: int = 0
    true_probability: np.ndarray | None = None
    segments: pd.Series | None = None  # the dataset spec's segment column, as text (None where missing)


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def read_applicants(path: str | Path, spec: DatasetSpec, ids: bool = False, segment: str = "") -> pd.DataFrame:
    """A file of applicants as the model reads them: its raw columns typed; one line naming missing columns.

    A nullable column may be absent, as the model's signature allows: it is missing in every row.
    With `ids`, the spec's id column (Kaggle's unnamed first column counts) comes first, as text; a spec
    without one is a one-line error. A `segment` column (a routing key, no model input) is kept last, as text.
    """
    id_column = spec.require_id_column("reading applicants by id") if ids else None
    frame = _named_id_column(read_table(path), spec)
    needed = ([id_column] if id_column else []) + [raw for raw, col in spec.columns.items() if not col.nullable]
    missing = [c for c in [*needed, *([segment] if segment else [])] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s): {', '.join(missing)}")
    X = coerce_columns(frame.reindex(columns=spec.raw_columns), spec, origin=str(path))
    if segment:
        X[segment] = as_text(frame[segment])
    if not ids:
        return X
    empty = int(frame[id_column].isna().sum())
    if empty:
        raise DataError(f"{path}: id column '{id_column}' has {empty} empty value(s)")
    return pd.concat([frame[id_column].astype(str), X], axis=1)


def load_dataset(spec: DatasetSpec, path: str | Path | None = None) -> CreditData:
    """Load the data set: `path` (or the spec's source file), or the generated default."""
    source = str(path) if path else spec.source
    if source == "generated":
        gen = generate_credit_data(spec.generated.rows, spec.generated.seed, spec.generated.segments)
        frame, truth = gen.frame, gen.true_probability
        regions = f",segments={spec.generated.segments}" if spec.generated.segments else ""
        source = f"generated(rows={spec.generated.rows},seed={spec.generated.seed}{regions})"
    else:
        frame, truth = read_table(source), None
    return _validated(_named_id_column(frame, spec), spec, source, truth)


def is_generated_source(source: str) -> bool:
    """Whether a data set's source (as `load_dataset` names it) is the embedded generator rather than a file."""
    return source.startswith("generated(")


def _named_id_column(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """The id column under the spec's name (Kaggle's cs-training.csv leaves its header blank)."""
    if not spec.id_column:
        return frame
    found = id_header(list(frame.columns), spec.id_column)
    return frame.rename(columns={found: spec.id_column}) if found and found != spec.id_column else frame


def _validated(frame: pd.DataFrame, spec: DatasetSpec, source: str, truth: np.ndarray | None) -> CreditData:
    required = [*filter(None, [spec.id_column]), spec.target.column, *spec.raw_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s): {', '.join(missing)}")
    if spec.segment and spec.segment not in frame.columns:
        hint = " (generated data has it with `generated: {segments: N}`)" if is_generated_source(source) else ""
        raise DataError(f"{source}: no segment column '{spec.segment}' (the dataset spec '{spec.name}' names it "
                        f"as its segment){hint}")
    X = coerce_columns(frame[spec.raw_columns], spec, origin=source)
    y = binary_target(frame[spec.target.column], spec, source)
    keep = (rule_violations(X, spec) == "").to_numpy()
    if truth is not None:
        truth = truth[keep]
    return CreditData(
        X=X[keep].reset_index(drop=True),
        y=y[keep].reset_index(drop=True),
        ids=row_ids(frame, spec)[keep].reset_index(drop=True),
        source=source,
        n_rule_violations=int((~keep).sum()),
        true_probability=truth,
        segments=as_text(frame[spec.segment])[keep].reset_index(drop=True) if spec.segment else None,
    )


def as_text(values: pd.Series) -> pd.Series:
    """Values as text objects, None where missing: categorical columns, and segment keys (1 and "1" are one)."""
    return values.astype("string").astype(object).where(values.notna(), None)


def row_ids(frame: pd.DataFrame, spec: DatasetSpec) -> pd.Series:
    """Applicant ids: the spec's id column, or the row number in the file (from 0, as text) when it names none."""
    if spec.id_column:
        return frame[spec.id_column]
    return pd.Series(np.arange(len(frame)).astype(str), index=frame.index, name="row")


def coerce_columns(frame: pd.DataFrame, spec: DatasetSpec, origin: str = "input") -> pd.DataFrame:
    """Numeric columns as float64 (NaN for missing), categorical as strings; non-numeric values are errors."""
    out = {}
    for raw, col in spec.columns.items():
        values = frame[raw]
        if col.group == "categorical":
            out[raw] = as_text(values)
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        wrong = numeric.isna() & values.notna()
        if wrong.any():
            raise DataError(f"{origin}: column '{raw}' has {int(wrong.sum())} non-numeric value(s)")
        out[raw] = numeric.astype("float64")
    return pd.DataFrame(out, index=frame.index)


def records_frame(records: list[dict], spec: DatasetSpec, origin: str = "input") -> pd.DataFrame:
    """Applicant records (JSON-typed dicts of raw columns; absent is missing) typed exactly as `coerce_columns`
    types them, without its per-column parsing when every numeric value is a number or None (the usual case)."""
    raw = spec.raw_columns
    numeric = [c for c in raw if spec.columns[c].group != "categorical"]
    cells = [[record.get(c) for c in numeric] for record in records]
    if not all(type(v) in (float, int) or v is None for row in cells for v in row):  # text, bool...: pandas decides
        return coerce_columns(pd.DataFrame(records, columns=raw), spec, origin)
    matrix = np.array(cells, dtype="float64").reshape(len(records), len(numeric))  # None: NaN
    out = pd.DataFrame(matrix, columns=numeric)
    if len(numeric) == len(raw):
        return out
    for column in raw:
        if column not in out.columns:
            out[column] = as_text(pd.Series([record.get(column) for record in records], dtype=object))
    return out[raw]


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


def split_data(data: CreditData, test_size: float, seed: int) -> Split:
    """Stratified train/test split, fixed by the seed."""
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=test_size, random_state=seed, stratify=data.y
    )
    return Split(X_train, X_test, y_train, y_test)


def segment_rows(split: Split, segments: pd.Series, value: str) -> Split:
    """One segment's rows of each part of a split of the whole data set (the split's index is the data's rows)."""
    train = (segments.loc[split.X_train.index] == value).to_numpy()
    test = (segments.loc[split.X_test.index] == value).to_numpy()
    return Split(split.X_train[train], split.X_test[test], split.y_train[train], split.y_test[test])


def digest(frame: pd.DataFrame) -> str:
    """A short content hash, stable across runs, to tell data sets apart."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:12]
