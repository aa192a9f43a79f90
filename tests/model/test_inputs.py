"""Applicant input checks: nullable columns may be null or absent; missing and non-numeric columns are named."""

from __future__ import annotations

import numpy as np
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
