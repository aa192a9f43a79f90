"""Pipelines: every family fits on raw columns and returns P(default); explanations map back to raw columns."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from creditflow.errors import SpecError
from creditflow.model.pipeline import FAMILIES, build_pipeline, feature_sources, make_features, predict_default
from creditflow.specs import DatasetSpec
from tests.conftest import small_experiment


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_predicts_default_probability(family, small_spec, small_data) -> None:
    exp = small_experiment("logistic_baseline.yaml", family=family, params={})
    pipe = build_pipeline(exp, small_spec).fit(small_data.X, small_data.y)
    p = predict_default(pipe, small_data.X)
    assert p.shape == (len(small_data.X),) and np.all((p > 0) & (p < 1))
    # P(default), not P(class 0): defaulters score higher on average
    assert p[small_data.y.to_numpy() == 1].mean() > 2 * p[small_data.y.to_numpy() == 0].mean()


def test_feature_sources_map_each_column_to_its_raw_input(fitted_logistic, small_spec) -> None:
    _, pipe, _ = fitted_logistic
    sources = feature_sources(pipe, small_spec)
    assert len(sources) == pipe.named_steps["preprocess"].transform(
        pipe.named_steps["features"].transform(small_spec_frame(small_spec))).shape[1]
    assert set(sources) == set(small_spec.raw_columns)
    # the missing-income indicator and the derived flag both count for MonthlyIncome
    assert sources.count("MonthlyIncome") >= 2


def small_spec_frame(spec):
    import pandas as pd

    return pd.DataFrame({c: [1.0, np.nan] if spec.columns[c].nullable else [1.0, 2.0] for c in spec.raw_columns})


def test_unknown_parameter_is_named(small_spec) -> None:
    exp = small_experiment("logistic_baseline.yaml", params={"model__CC": 1.0})
    with pytest.raises(SpecError, match="unknown pipeline parameter.*model__CC"):
        build_pipeline(exp, small_spec)


def test_unknown_family_is_named(small_spec) -> None:
    with pytest.raises(SpecError, match="unknown model family 'svm'"):
        build_pipeline(small_experiment(family="svm"), small_spec)


def test_features_keep_the_estimator_contract(small_spec, small_data) -> None:
    step = make_features(small_spec)
    assert clone(step).get_params() == step.get_params()
    out = step.fit(small_data.X).transform(small_data.X)
    assert list(out.columns) == list(step.get_feature_names_out())
    assert out["revolving_utilization"].max() <= 1.5  # capped after the indicator saw the raw value
    raw_util = small_data.X["RevolvingUtilizationOfUnsecuredLines"]
    assert out["implausible_utilization"].sum() == (raw_util > 10).sum() > 0


def test_monotone_in_late_payments(fitted_logistic) -> None:
    """Behaviour: more 90-days-late events never lower the default probability."""
    _, pipe, split = fitted_logistic
    X = split.X_test.head(200).copy()
    base = predict_default(pipe, X)
    late = X["NumberOfTimes90DaysLate"]
    X["NumberOfTimes90DaysLate"] = late.where(late > 90, late + 3)  # sentinel rows stay as they are
    after = predict_default(pipe, X)
    assert np.all(after >= base - 1e-12) and after.mean() > base.mean() + 0.05


def test_sentinels_become_missing_in_features(small_spec: DatasetSpec) -> None:
    from creditflow.model.pipeline import make_features

    X = pd.DataFrame({c: [1.0, 1.0] for c in small_spec.raw_columns})
    X.loc[1, ["NumberOfTimes90DaysLate", "NumberOfTime30-59DaysPastDueNotWorse"]] = 96
    X.loc[1, "DebtRatio"] = 3.0
    X.loc[1, "MonthlyIncome"] = np.nan
    out = make_features(small_spec).fit(X).transform(X)
    assert out["late_90"].isna().tolist() == [False, True]
    assert out["late_30_59"].isna().tolist() == [False, True]
    assert out["high_debt_ratio"].tolist() == [0.0, 1.0]
    assert out["missing_monthly_income"].tolist() == [0.0, 1.0]
