"""The value rules: each broken rule is named; the compiled check agrees with the data rules row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from creditflow.data.rules import Rule, RuleCheck, broken, rule_violations
from creditflow.data.synthetic import generate_credit_data
from creditflow.specs import DatasetSpec


@pytest.fixture(scope="module")
def raw_frame() -> pd.DataFrame:
    return generate_credit_data(2_000, seed=3).frame


def test_rule_check_agrees_with_the_data_rules(small_spec, small_data) -> None:
    rng = np.random.default_rng(0)
    X = small_data.X[small_spec.raw_columns].head(400).copy()
    for col in X.columns:  # break every rule somewhere: negative, huge, fractional, infinite, missing, sentinel
        rows = rng.choice(len(X), 40, replace=False)
        X.iloc[rows[:8], X.columns.get_loc(col)] = -1.0
        X.iloc[rows[8:16], X.columns.get_loc(col)] = 1e6
        X.iloc[rows[16:24], X.columns.get_loc(col)] = 2.5
        X.iloc[rows[24:28], X.columns.get_loc(col)] = np.inf
        X.iloc[rows[28:32], X.columns.get_loc(col)] = -np.inf
        X.iloc[rows[32:36], X.columns.get_loc(col)] = np.nan
        X.iloc[rows[36:40], X.columns.get_loc(col)] = 98
    compiled = RuleCheck.from_spec(small_spec).reasons(X.to_numpy(dtype="float64"))
    expected = rule_violations(X, small_spec).to_numpy(dtype=object)
    kinds = {"is missing", "below", "above", "not a whole number", "is infinite"}
    assert all(any(kind in reason for reason in expected) for kind in kinds)  # every kind of rule is broken
    assert list(compiled) == list(expected)
    rules, R = RuleCheck.from_spec(small_spec), X.to_numpy(dtype="float64")  # the quick yes/no agrees row by row
    assert [rules.any_broken(R[i:i + 1]) for i in range(len(R))] == [reason != "" for reason in expected]


def test_value_rules_name_the_rule(small_spec: DatasetSpec, raw_frame: pd.DataFrame) -> None:
    X = raw_frame[small_spec.raw_columns].astype("float64").iloc[:6].copy()
    X.loc[0, "age"] = -3
    X.loc[1, "RevolvingUtilizationOfUnsecuredLines"] = np.nan
    X.loc[2, "NumberOfTimes90DaysLate"] = 98  # sentinel: allowed
    X.loc[3, "NumberOfDependents"] = 1.5
    X.loc[4, "MonthlyIncome"] = np.nan  # nullable
    reasons = rule_violations(X, small_spec).tolist()
    assert reasons == ["age below 0", "RevolvingUtilizationOfUnsecuredLines is missing", "",
                       "NumberOfDependents is not a whole number", "", ""]


EDGES = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 1.0, 2.5, 96.0, 98.0, 100.0, 1e6, -0.0])


@pytest.mark.parametrize(("rule", "expected"), [
    (Rule("x", "missing", ""), np.isnan(EDGES)),
    (Rule("x", "category", "", allowed=(0.0, 1.0)), ~np.isnan(EDGES) & ~np.isin(EDGES, [0.0, 1.0])),
    (Rule("x", "below", "", 0.0), EDGES < 0),
    (Rule("x", "above", "", 90.0, (96.0, 98.0)), (EDGES > 90) & ~np.isin(EDGES, [96.0, 98.0])),
    (Rule("x", "whole", ""), ~np.isnan(EDGES) & ~np.isin(EDGES, np.trunc(EDGES[np.isfinite(EDGES)]))),
    (Rule("x", "infinite", ""), np.isinf(EDGES)),
])
def test_each_check_breaks_where_its_numpy_statement_says(rule: Rule, expected: np.ndarray) -> None:
    assert broken(rule, EDGES).tolist() == expected.tolist()
    assert broken(rule, EDGES[::-2]).tolist() == expected[::-2].tolist()  # a strided column, as R[:, j] is


def test_the_matrix_check_reports_each_rows_first_rule_and_stops_at_the_first_broken_row() -> None:
    rules = RuleCheck((Rule("a", "missing", "a is missing"), Rule("a", "below", "a below 0", 0.0),
                       Rule("b", "above", "b above 1", 1.0)), (0, 0, 1),
                      np.asarray(["a is missing", "a below 0", "b above 1"], dtype=object))
    R = np.array([[1.0, 0.0], [np.nan, 5.0], [-1.0, 5.0], [0.5, 2.0], [0.5, 1.0]])
    assert rules.reasons(R).tolist() == ["", "a is missing", "a below 0", "b above 1", ""]
    assert [rules.any_broken(R[i:]) for i in range(len(R))] == [True, True, True, True, False]
    assert not rules.any_broken(R[:0]) and rules.reasons(R[:0]).tolist() == []
    assert RuleCheck((), (), np.asarray([], dtype=object)).reasons(R).tolist() == [""] * 5
