"""Applicant input checks: nullable columns may be null or absent; missing and non-numeric columns are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from creditflow.errors import BadRequest
from creditflow.model.inputs import applicant_matrix


def test_applicant_matrix_accepts_null_and_absent_nullable_columns(small_spec, small_data) -> None:
    X = small_data.X[small_spec.raw_columns].head(3).copy()
    X["MonthlyIncome"] = np.nan
    with_nulls = applicant_matrix(X, small_spec)
    absent = applicant_matrix(X.drop(columns=["MonthlyIncome", "NumberOfDependents"]), small_spec)
    assert np.isnan(absent[:, small_spec.raw_columns.index("NumberOfDependents")]).all()
    assert np.array_equal(with_nulls[:, :4], absent[:, :4], equal_nan=True)
    with pytest.raises(BadRequest, match="missing column.*age"):
        applicant_matrix(X.drop(columns=["age"]), small_spec)
    with pytest.raises(BadRequest, match="must hold numbers or null: age"):
        applicant_matrix(X.assign(age=[True, False, True]), small_spec)


def test_a_frame_of_numbers_gives_the_matrix_of_the_column_by_column_path(small_spec, small_data) -> None:
    """Floats, whole numbers, any column order, an absent nullable column, object cells: the same matrix, in the
    spec's column order, never a view of the caller's frame (the scorer's steps must not write into it)."""
    raw = small_spec.raw_columns
    X = small_data.X[raw].head(20).astype("float64")
    X.iloc[:3, X.columns.get_loc("MonthlyIncome")] = np.nan
    for frame in (X, X.astype({"age": "int64"}), X[raw[::-1]], X.drop(columns=["MonthlyIncome"]), X.astype(object)):
        expected = frame.reindex(columns=raw).to_numpy(dtype="float64", na_value=np.nan)
        R = applicant_matrix(frame, small_spec)
        assert R.dtype == np.float64 and np.array_equal(R, expected, equal_nan=True)
        R[:] = -7.0
        assert not (frame.to_numpy(dtype="float64", na_value=np.nan) == -7.0).any()


def test_a_categorical_frame_gives_the_same_matrix_whatever_dtypes_pandas_holds(housing_spec) -> None:
    """Texts as object or pandas' string dtype, missing as None, NaN or pd.NA, numbers as floats, nullable integers
    or objects: each column read as it is held gives the matrix the plain object frame gives."""
    raw = housing_spec.raw_columns
    numbers = [c for c in raw if c != "Housing"]
    rows = [[float(i + j) for j in range(len(numbers))] for i in range(4)]
    plain = pd.DataFrame(rows, columns=pd.Index(numbers, dtype=object), dtype="float64")
    plain["Housing"] = pd.Series(["own", None, "rent", "castle"], dtype=object)
    plain.loc[1, numbers[0]] = np.nan
    expected = applicant_matrix(plain, housing_spec)
    variants = [
        plain.assign(Housing=pd.Series(["own", None, "rent", "castle"], dtype="str")),
        plain.assign(Housing=pd.Series(["own", np.nan, "rent", "castle"], dtype=object)),
        plain.assign(Housing=pd.Series(["own", pd.NA, "rent", "castle"], dtype=object)),
        plain.astype({numbers[1]: "Int64"}),
        plain.astype({numbers[2]: object}),
    ]
    for frame in variants:
        assert np.array_equal(applicant_matrix(frame, housing_spec), expected, equal_nan=True), frame.dtypes
    codes = expected[:, raw.index("Housing")]
    assert np.isnan(codes[1]) and codes[3] == -1 and codes[0] != codes[2]  # missing, unknown, two known
