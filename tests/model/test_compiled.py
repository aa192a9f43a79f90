"""The compiled scorer: its probabilities, SHAP values and reason codes equal the pipeline's and explain's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import split_data
from creditflow.model.compiled import compile_scorer, reason_sets
from creditflow.model.pipeline import build_pipeline
from creditflow.model.shap import raw_shap, reason_codes
from creditflow.train.log_model import shap_reference
from tests.conftest import small_experiment


def quirky_rows(X: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows plus the data set's quirks: sentinels 96/98, missing income and dependents, junk utilization."""
    extra = X.head(6).copy()
    extra.iloc[0, extra.columns.get_loc("NumberOfTimes90DaysLate")] = 98
    extra.iloc[1, extra.columns.get_loc("NumberOfTime30-59DaysPastDueNotWorse")] = 96
    extra.iloc[2, extra.columns.get_loc("MonthlyIncome")] = np.nan
    extra.iloc[3, extra.columns.get_loc("NumberOfDependents")] = np.nan
    extra.iloc[4, extra.columns.get_loc("RevolvingUtilizationOfUnsecuredLines")] = 2_500.0
    extra.iloc[5, extra.columns.get_loc("DebtRatio")] = 3_000.0
    return pd.concat([X, extra], ignore_index=True)


@pytest.fixture(scope="module")
def fitted_families(small_spec, small_data, fitted_logistic, fitted_xgboost, fitted_hist_gradient_boosting):
    """family -> (pipeline fitted on the training split, split); forests and HGB kept small (HGB: the session's)."""
    out = {"logistic": fitted_logistic[1:], "xgboost": fitted_xgboost[1:],
           "hist_gradient_boosting": fitted_hist_gradient_boosting[1:]}
    for family, params in (("random_forest", {"model__n_estimators": 40}),):
        exp = small_experiment("logistic_baseline.yaml", family=family, params=params)
        split = split_data(small_data, exp.test_size, exp.seed)
        out[family] = (build_pipeline(exp, small_spec).fit(split.X_train, split.y_train), split)
    return out


@pytest.mark.parametrize("family", ["logistic", "xgboost", "hist_gradient_boosting", "random_forest"])
def test_compiled_path_equals_the_pipeline_and_its_shap(family, fitted_families, small_spec) -> None:
    pipe, split = fitted_families[family]
    X = quirky_rows(split.X_test[small_spec.raw_columns])
    reference = shap_reference(pipe, split.X_train, small_spec)
    scorer = compile_scorer(pipe, small_spec, None if reference is None else np.asarray(reference))
    scored = scorer.score(X.to_numpy(dtype="float64"))
    expected = pipe.predict_proba(X)[:, 1]
    assert np.max(np.abs(scored.probability - expected)) <= 1e-9
    direct = raw_shap(pipe, small_spec, X, background=split.X_train)
    assert np.max(np.abs(scored.contributions - direct.values.to_numpy())) <= 1e-9
    # reason codes: the same labels as explain.reason_codes on the direct SHAP values
    labels = [small_spec.columns[c].label for c in small_spec.raw_columns]
    sets, which = reason_sets(scored.contributions, 3)
    assert [[labels[j] for j in sets[i]] for i in which] == reason_codes(direct, small_spec, 3)


def test_compiled_preprocessing_equals_scikit_learn(fitted_logistic, small_spec) -> None:
    _, pipe, split = fitted_logistic
    R = quirky_rows(split.X_test[small_spec.raw_columns]).to_numpy(dtype="float64")
    fast = compile_scorer(pipe, small_spec, np.zeros(1))
    slow = compile_scorer(pipe, small_spec, np.zeros(1), fast=False)
    assert np.max(np.abs(fast.transform(R) - slow.transform(R))) <= 1e-12
    assert fast.transform(R).shape == slow.transform(R).shape
